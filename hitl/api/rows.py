"""List pages rendered from `.values()` rows instead of model instances (issue 10): building a
Proposal (and its checkpoint and users) per row and walking DRF's serializer over them cost
ten times the page's SQL. The output is the serializer's own, field by field: each value goes
through the very field object `ProposalOutputSerializer` declares (`to_representation`), and
`None` stays `None` as DRF does, so the two cannot drift apart (tests/hitl/test_api_rows.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from functools import cache, lru_cache
from operator import itemgetter
from typing import Any, NamedTuple, cast
from zoneinfo import ZoneInfo

import orjson
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework import ISO_8601, serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.settings import api_settings

from hitl.api.serializers import ProposalOutputSerializer
from proposals.models import Decision, Proposal, Status, Vote
from proposals.permissions import Access, allowed_actions

# The serializer's fields whose value is not a column of the proposal row itself.
_RELATED_SOURCES = {
    "checkpoint": "checkpoint__slug",
    "submitted_by": "submitted_by__username",
    "claimed_by": "claimed_by__username",
}


def _as_is(field: serializers.Field) -> bool:
    """Whether the field's `to_representation` gives back what `.values()` reads unchanged:
    str() of a text column, int() of an integer, float() of a float, a choice's own string,
    a JSON value (not in binary mode). Skipping those calls is a third of a page's rendering."""
    if isinstance(field, serializers.JSONField):
        return not field.binary
    return type(field) in (
        serializers.CharField,
        serializers.ChoiceField,
        serializers.IntegerField,
        serializers.FloatField,
        serializers.BooleanField,
    )


@cache
def _plan() -> tuple[tuple[str, str, serializers.Field | None], ...]:
    """(output name, values() key, the field, or None for "as is") per field, in order."""
    plan = []
    for name, field in ProposalOutputSerializer().fields.items():
        source = _RELATED_SOURCES.get(name, name)
        # The related names are plain strings already (CharField would only str() them).
        as_is = name in _RELATED_SOURCES or _as_is(field)
        plan.append((name, source, None if as_is else field))
    return tuple(plan)


def _converters() -> list[tuple[str, str, Callable[[Any], Any] | None]]:
    """(output name, values() key, converter or None for "as is") per field, in order, for
    this request (a datetime is shown in its current time zone, DRF's default)."""
    return _converters_in(timezone.get_current_timezone() if settings.USE_TZ else None)


@lru_cache(maxsize=64)
def _converters_in(
    current_zone: tzinfo | None,
) -> list[tuple[str, str, Callable[[Any], Any] | None]]:
    """`_converters` for pages shown in `current_zone`, built once per zone (they hold no
    state): building them cost a page as much as rendering two of its rows."""
    return [
        (name, source, None if field is None else _converter(field, current_zone))
        for name, source, field in _plan()
    ]


def _converter(field: serializers.Field, current_zone: tzinfo | None) -> Callable[[Any], Any]:
    if type(field) is serializers.DateTimeField:
        return _iso_datetime(field, current_zone)
    if type(field) is serializers.UUIDField and field.uuid_format == "hex_verbose":
        return str
    return field.to_representation


def _iso_datetime(
    field: serializers.DateTimeField, current_zone: tzinfo | None
) -> Callable[[Any], Any]:
    """`DateTimeField.to_representation` of an aware datetime in ISO 8601, the time zone
    looked up once per page instead of once per value (a third of a page's rendering); any
    other value or setting, and a value out of range there, goes to DRF itself."""
    output_format = getattr(field, "format", api_settings.DATETIME_FORMAT)
    if output_format is None or output_format.lower() != ISO_8601:
        return field.to_representation
    zone = field.timezone if hasattr(field, "timezone") else current_zone
    if not isinstance(zone, tzinfo):
        return field.to_representation

    # The database's datetimes arrive in UTC (selectors: psycopg's own loader), and shown in
    # UTC they need no conversion: the zone's astimezone would give the same fields back.
    in_utc = _is_utc(zone)

    def iso(value: Any) -> Any:
        if type(value) is datetime and (value.tzinfo is zone or (in_utc and value.tzinfo is UTC)):
            text = value.isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        if type(value) is not datetime or value.utcoffset() is None:
            return field.to_representation(value)
        try:
            text = value.astimezone(zone).isoformat()
        except OverflowError:
            return field.to_representation(value)
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return iso


def _is_utc(zone: tzinfo) -> bool:
    return zone is UTC or (isinstance(zone, ZoneInfo) and zone.key == "UTC")


def value_names() -> list[str]:
    return [source for _name, source, _field in _plan()]


# What `allowed_actions` reads of a proposal besides the serializer's fields.
_FACTS = ("checkpoint_id", "submitted_by_id", "checkpoint__revocation_window_seconds")


def proposal_rows(qs: QuerySet[Any]) -> QuerySet[Any]:
    """The list's queryset as the dicts `render` takes (same filters, order and slicing)."""
    return qs.values(*value_names(), *_FACTS)


# Named tuples, not frozen dataclasses: one is built per row, and a frozen dataclass's
# __init__ sets each field through object.__setattr__.
class _Window(NamedTuple):
    revocation_window_seconds: int


class _Facts(NamedTuple):
    """The attributes of a Proposal that `allowed_actions` reads, from a row."""

    pk: Any
    checkpoint_id: int
    submitted_by_id: int
    escalated_at: datetime | None
    status: str
    due_at: datetime | None
    decided_at: datetime | None
    revision: int
    checkpoint: _Window


def _facts(row: dict[str, Any]) -> Proposal:
    facts = _Facts(
        pk=row["id"],
        checkpoint_id=row["checkpoint_id"],
        submitted_by_id=row["submitted_by_id"],
        escalated_at=row["escalated_at"],
        status=row["status"],
        due_at=row["due_at"],
        decided_at=row["decided_at"],
        revision=row["revision"],
        checkpoint=_Window(row["checkpoint__revocation_window_seconds"]),
    )
    # Duck-typed: the rule reads only these attributes, so a row needs no model instance.
    return cast(Proposal, facts)


def _approvals_by_me(access: Access, proposals: list[Proposal]) -> dict[Any, list[Vote]]:
    """My approving votes on the page's approved proposals, the one thing `allowed_actions`
    reads beyond the row (may I revoke?): one query, and none on a page with nothing approved."""
    approved = [p.pk for p in proposals if p.status == Status.APPROVED]
    votes: dict[Any, list[Vote]] = {}
    if approved and access.user_id is not None:
        for vote in Vote.objects.filter(
            proposal_id__in=approved, reviewer_id=access.user_id, decision=Decision.APPROVE
        ).only("proposal_id", "reviewer_id", "revision", "decision"):
            votes.setdefault(vote.proposal_id, []).append(vote)
    return votes


def render(rows: Sequence[dict[str, Any]], access: Access | None = None) -> list[dict[str, Any]]:
    """The serializer's fields of each row; with `access`, also `permissions`: what this user
    may do with it now, from `allowed_actions` as on the detail."""
    plan = _converters()
    out = [
        {
            name: (row[source] if convert is None or row[source] is None else convert(row[source]))
            for name, source, convert in plan
        }
        for row in rows
    ]
    if access is not None:
        facts = [_facts(row) for row in rows]
        votes = _approvals_by_me(access, facts)
        now = timezone.now()
        for item, proposal in zip(out, facts, strict=True):
            allowed = allowed_actions(access, proposal, votes=votes.get(proposal.pk, ()), now=now)
            item["permissions"] = allowed.as_dict()
    return out


# --- the page's JSON --------------------------------------------------------------------------

# orjson writes what DRF's JSONRenderer writes here (json.dumps: compact, not ASCII-escaped)
# for str, int, bool, None, and lists and dicts of them, in a tenth of the time: the page's
# largest cost after its rows. It refuses (JSONEncodeError) what json.dumps would write another
# way or refuse too: other types (with these options: Decimal, datetimes, dataclasses, any
# subclass of a builtin), keys that are not strings, integers past 64 bits, lone surrogates,
# nesting past 254 levels; DRF's renderer writes those pages. The one type it takes and may
# write differently is float (0.00001 for 1e-05, 1e-7 for 1e-07, null for NaN where DRF
# refuses), checked below with what else it would take (enums, UUIDs) in the values that may
# hold them.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# Serializer fields whose value is never a float nor holds one: a string (or, for a Decimal
# or datetime left as is by DRF's settings, a value orjson refuses), an integer, a boolean.
_NO_FLOATS = (
    serializers.CharField,
    serializers.ChoiceField,
    serializers.IntegerField,
    serializers.BooleanField,
    serializers.UUIDField,
    serializers.DateTimeField,
    serializers.DecimalField,
)


@cache
def _values_that_may_hold_floats() -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """Reads a row's values that may be or hold a float: a float column's, a JSON document."""
    fields = ProposalOutputSerializer().fields
    names = [
        name
        for name, _source, _field in _plan()
        if name not in _RELATED_SOURCES and type(fields[name]) not in _NO_FLOATS
    ]
    if len(names) == 1:  # itemgetter of one name gives the value, not a tuple
        return lambda item: (item[names[0]],)
    return itemgetter(*names)


# What a JSON document holds besides lists, dicts and floats; orjson writes these as json.dumps.
_SCALARS = frozenset({str, int, bool, type(None)})


def _floats_alike(values: Iterable[Any]) -> bool:
    """Whether orjson writes these values, and the lists and dicts they hold, as json.dumps
    does: every float as float.__repr__ writes it, no type but JSON's own."""
    if set(map(type, values)) <= _SCALARS:  # most documents: no float, no nesting
        return True
    # Not the empty ones: None, "", 0, {}, [] (0.0 and -0.0 are written alike).
    for value in filter(None, values):
        kind = type(value)
        if kind is float:
            if orjson.dumps(value) != float.__repr__(value).encode():
                return False
        elif kind is dict:
            if not _floats_alike(value.values()):
                return False
        elif kind is list or kind is tuple:
            if not _floats_alike(value):
                return False
        elif kind not in _SCALARS:
            return False  # DRF's renderer writes the page
    return True


class PageRenderer(JSONRenderer):
    """DRF's JSONRenderer, byte for byte, through orjson for a list page (`render`'s rows
    under "results", the next page's URL under "next")."""

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if (
            type(data) is dict
            and data.keys() == {"results", "next"}
            and self.compact
            and not self.ensure_ascii
            and self.get_indent(accepted_media_type or "", renderer_context or {}) is None
            and _page_floats_alike(data["results"])
        ):
            try:
                text = orjson.dumps(data, option=_ORJSON_OPTIONS)
            except orjson.JSONEncodeError:
                pass
            else:
                # As DRF does: these two are valid JSON but end a line in JavaScript.
                return text.replace(b"\xe2\x80\xa8", b"\\u2028").replace(
                    b"\xe2\x80\xa9", b"\\u2029"
                )
        return cast(bytes, super().render(data, accepted_media_type, renderer_context))


def _page_floats_alike(items: Any) -> bool:
    if type(items) is not list or set(map(type, items)) - {dict}:
        return False
    read = _values_that_may_hold_floats()
    try:
        return _floats_alike([value for item in items for value in read(item)])
    except KeyError:  # not rows of `render`
        return False
