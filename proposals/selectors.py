"""Reads that authorize: every query for proposals or checkpoints goes through these, so lists
and details apply the same visibility rule (proposals.permissions)."""

from __future__ import annotations

import functools
import operator
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from json import JSONDecoder
from json.scanner import make_scanner
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connections, router
from django.db.models import Prefetch, Q, QuerySet
from django.db.models.fields.json import JSONField, KeyTextTransform
from django.db.models.lookups import Exact
from django.db.models.query import ValuesIterable

from audit.models import AuditEvent
from proposals.errors import NotFound
from proposals.models import Checkpoint, Proposal, Vote
from proposals.permissions import (
    Access,
    reviewable_proposals_arms,
    reviewable_proposals_q,
    visible_proposals_arms,
    visible_proposals_q,
)


def checkpoint_list(access: Access) -> QuerySet[Checkpoint]:
    return Checkpoint.objects.filter(pk__in=access.visible_checkpoint_ids).order_by("slug")


def checkpoint_get(access: Access, slug: str) -> Checkpoint:
    checkpoint = checkpoint_list(access).filter(slug=slug).first()
    if checkpoint is None:
        raise NotFound(f"Checkpoint {slug!r} not found.")
    return checkpoint


@dataclass(frozen=True)
class ProposalFilters:
    status: list[str] | None = None
    checkpoint: str | None = None
    region: str | None = None
    priority: list[str] | None = None
    labels: dict[str, str] | None = None
    reviewable_by_me: bool = False
    submitted_by_me: bool = False
    external_id: str | None = None


# The lists' order: the SLA deadline, ties by id (keyset pagination, `after_cursor`).
PAGE_ORDER = ("sla_due_at", "id")


def proposal_list(access: Access, filters: ProposalFilters) -> QuerySet[Proposal]:
    """Visible proposals, filtered, ordered by PAGE_ORDER. A page of it in that order is
    `proposal_page`, which reads the same set on indexes."""
    visible = reviewable_proposals_q if filters.reviewable_by_me else visible_proposals_q
    conditions = _conditions(access, filters, _checkpoint_id(filters))
    qs = Proposal.objects.filter(visible(access), *conditions)
    return qs.select_related("checkpoint", "submitted_by", "claimed_by").order_by(*PAGE_ORDER)


def proposal_page(
    access: Access,
    filters: ProposalFilters,
    *,
    size: int,
    after: tuple[datetime, uuid.UUID] | None = None,
    shape: Callable[[QuerySet[Proposal]], QuerySet[Any]] | None = None,
) -> list[Any]:
    """The first `size` rows of `proposal_list` after the cursor, in PAGE_ORDER, as one UNION
    ALL of the visibility rule's disjoint arms (permissions.visible_proposals_arms), each
    ordered and limited on its own: each arm is an index scan in order (the open queue's when
    it holds most of it, a checkpoint's or a submitter's partial index when it holds few rows)
    and PostgreSQL merges them (Merge Append) without sorting the table, so page 1,000 costs
    what page 1 does, for a reviewer with three items as for one with the whole queue. Their OR
    was misestimated and filtered the whole open queue for a reviewer with few items. `shape`
    refines every arm alike (more filters, annotations, `.values()`); rows are what it selects.

    A `.values()` page runs SQL compiled once per shape of query (`_CompiledPage`): building
    it through the ORM cost the list more CPU than PostgreSQL spent running it."""
    db = router.db_for_read(Proposal)
    inputs = _PageInputs(access, filters, _checkpoint_id(filters), after)
    compiled = compiled_page(inputs, size, shape, db)
    if compiled is None:
        return _run_orm(_page_query(inputs, size, shape, db))
    return compiled()


def compiled_page(
    inputs: _PageInputs,
    size: int,
    shape: Callable[[QuerySet[Proposal]], QuerySet[Any]] | None,
    db: str,
) -> Callable[[], list[dict[str, Any]]] | None:
    """The page as its compiled SQL with these inputs' values, ready to run; None when pages
    of this shape are left to the ORM (model rows, a JSON parameter, no SQL at all)."""
    stand_in = _stand_ins(inputs, _VARIANTS[0])
    if stand_in is None:
        return None
    key = (db, connections[db].vendor, size, shape, stand_in.key)
    # Read once: another thread may clear the cache between a check and a read.
    compiled = _compiled_pages.get(key, _NOT_BUILT)
    if compiled is _NOT_BUILT:
        if len(_compiled_pages) >= _COMPILED_PAGES_MAX:
            _compiled_pages.clear()
        compiled = _compiled_pages[key] = _CompiledPage.build(inputs, size, shape, db)
    if compiled is None:
        return None
    return functools.partial(compiled.run, db, stand_in.real)


@dataclass(frozen=True)
class _PageInputs:
    """What a page's SQL is built from besides its size and shape."""

    access: Access
    filters: ProposalFilters
    # The `checkpoint` filter's id, None when it names no checkpoint (or is not set).
    checkpoint_id: int | None
    after: tuple[datetime, uuid.UUID] | None


def _page_query(
    inputs: _PageInputs,
    size: int,
    shape: Callable[[QuerySet[Proposal]], QuerySet[Any]] | None,
    db: str,
) -> QuerySet[Any] | None:
    """The page as one queryset (None: no arm, no rows)."""
    access, filters = inputs.access, inputs.filters
    arms = (
        reviewable_proposals_arms(access)
        if filters.reviewable_by_me
        else visible_proposals_arms(access)
    )
    if len(arms) > 1 and not connections[db].features.supports_slicing_ordering_in_compound:
        # SQLite (the embedded mode) takes no ORDER BY or LIMIT inside a UNION: one arm, their
        # OR, the same rows.
        arms = [reduce(operator.or_, arms)]
    conditions = _conditions(access, filters, inputs.checkpoint_id)
    pages = []
    for arm in arms:
        qs = Proposal.objects.filter(arm, *conditions)
        if inputs.after is not None:
            qs = after_cursor(qs, *inputs.after)
        if shape is not None:
            qs = shape(qs)
        pages.append(qs.order_by(*PAGE_ORDER)[:size])
    if not pages:
        return None
    if len(pages) == 1:
        return pages[0]
    return pages[0].union(*pages[1:], all=True).order_by(*PAGE_ORDER)[:size]


def _run_orm(qs: QuerySet[Any] | None) -> list[Any]:
    return [] if qs is None else list(qs)


# Stand-ins for the values a page's SQL takes as parameters: two sets, far from real values,
# each keeping the order of the values it stands for (the arms sort checkpoint ids).
_VARIANTS = (
    (-1_000_000_000, "\x00a", datetime(1000, 1, 1, tzinfo=UTC), 1 << 100),
    (-1_500_000_000, "\x00b", datetime(1500, 1, 1, tzinfo=UTC), 2 << 100),
)
_COMPILED_PAGES_MAX = 512
# Query shape -> its compiled page, or None: the ORM builds pages of that shape each time.
_compiled_pages: dict[Hashable, _CompiledPage | None] = {}
_NOT_BUILT: Any = object()


@dataclass(frozen=True)
class _StandIn:
    inputs: _PageInputs
    # The shape of the query: equal keys, equal SQL up to parameters.
    key: Hashable
    # What each stand-in stands for.
    real: dict[Any, Any]


def _stand_ins(inputs: _PageInputs, variant: tuple[int, str, datetime, int]) -> _StandIn | None:
    """The inputs with every value the SQL takes as a parameter replaced by a stand-in: the
    user's and checkpoints' ids, the filters' strings, the cursor. Equal values get the same
    stand-in, and stand-ins keep their order and truth, so the ORM builds the same query from
    them. None when a value cannot be stood in for safely (an id that is not positive)."""
    int_base, str_prefix, moment_base, uuid_base = variant
    access, filters = inputs.access, inputs.filters
    ids = (
        access.user_id,
        inputs.checkpoint_id,
        *(i for ids in access.by_perm.values() for i in ids),
    )
    ints = {i for i in ids if i is not None}
    if any(type(i) is not int or i <= 0 for i in ints):
        return None
    strings = {*(filters.status or ()), *(filters.priority or ())}
    strings.update(s for s in (filters.region, filters.external_id) if s)
    real: dict[Any, Any] = {}
    int_of = {i: int_base + rank for rank, i in enumerate(sorted(ints))}
    str_of = {s: f"{str_prefix}{rank:06d}" for rank, s in enumerate(sorted(strings))}
    for values in (int_of, str_of):
        real.update((stand_in, value) for value, stand_in in values.items())
    after = None
    if inputs.after is not None:
        moment, pk = inputs.after
        after = (moment_base, uuid.UUID(int=uuid_base))
        real[after[0]], real[after[1]] = moment, pk
    stand_in_filters = ProposalFilters(
        status=None if filters.status is None else [str_of[s] for s in filters.status],
        # Only its id reaches the SQL.
        checkpoint="*" if filters.checkpoint else filters.checkpoint,
        region=str_of.get(filters.region, filters.region) if filters.region else filters.region,
        priority=None if filters.priority is None else [str_of[s] for s in filters.priority],
        labels=filters.labels,
        reviewable_by_me=filters.reviewable_by_me,
        submitted_by_me=filters.submitted_by_me,
        external_id=str_of[filters.external_id] if filters.external_id else filters.external_id,
    )
    stand_in_access = Access(
        user_id=None if access.user_id is None else int_of[access.user_id],
        by_perm={c: frozenset(int_of[i] for i in ids) for c, ids in access.by_perm.items()},
    )
    checkpoint_id = None if inputs.checkpoint_id is None else int_of[inputs.checkpoint_id]
    key = (
        stand_in_access.user_id,
        tuple(sorted((c, tuple(sorted(ids))) for c, ids in stand_in_access.by_perm.items())),
        tuple(
            tuple(v) if isinstance(v, list) else v
            for v in (
                stand_in_filters.status,
                stand_in_filters.checkpoint,
                stand_in_filters.region,
                stand_in_filters.priority,
                stand_in_filters.reviewable_by_me,
                stand_in_filters.submitted_by_me,
                stand_in_filters.external_id,
            )
        ),
        tuple(sorted((filters.labels or {}).items())),
        checkpoint_id,
        after,
    )
    return _StandIn(_PageInputs(stand_in_access, stand_in_filters, checkpoint_id, after), key, real)


_SUBSTITUTABLE = (int, str, datetime, uuid.UUID)


@dataclass(frozen=True)
class _CompiledPage:
    """A `.values()` page's SQL, compiled by the ORM from stand-ins; run with the real values
    in their places. Built only when two sets of stand-ins compile to the same SQL with each
    stand-in at the same positions and every other parameter equal: then the parameters are
    the stand-ins' values and nothing else, and the SQL is what the ORM builds for any values."""

    sql: str
    # Per parameter: a stand-in (replaced by its value) or a constant.
    params: tuple[tuple[bool, Any], ...]
    names: tuple[str, ...]
    # The columns' converters as the ORM looks them up (position, converters, expression),
    # called by `_one_argument` with the running request's connection. They are the fields'
    # and the backend's (the key of `_compiled_pages` holds the alias and vendor): looking them
    # up on every run walked every column of every page.
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]

    @classmethod
    def build(
        cls,
        inputs: _PageInputs,
        size: int,
        shape: Callable[[QuerySet[Proposal]], QuerySet[Any]] | None,
        db: str,
    ) -> _CompiledPage | None:
        compiled = []
        for variant in _VARIANTS:
            stand_in = _stand_ins(inputs, variant)
            assert stand_in is not None  # the first variant took these inputs
            qs = _page_query(stand_in.inputs, size, shape, db)
            if qs is None or qs._iterable_class is not ValuesIterable:
                return None
            compiler = qs.query.get_compiler(db)
            try:
                sql, params = compiler.as_sql()
            except (EmptyResultSet, FullResultSet):
                return None
            fields = [s[0] for s in compiler.select[: compiler.col_count]]
            if compiler.has_composite_fields(fields):
                return None
            compiled.append((stand_in, sql, params, compiler, fields))
        (first, sql, params, compiler, fields), (second, sql_2, params_2, *_) = compiled
        if sql != sql_2 or len(params) != len(params_2):
            return None
        plan = []
        for p, p_2 in zip(params, params_2, strict=True):
            stood_1 = isinstance(p, _SUBSTITUTABLE) and p in first.real
            stood_2 = isinstance(p_2, _SUBSTITUTABLE) and p_2 in second.real
            if stood_1 != stood_2:
                return None
            if stood_1:
                if first.real[p] != second.real[p_2]:
                    return None
            elif p != p_2:
                return None
            plan.append((stood_1, p))
        query = compiler.query
        if query.selected:
            names = list(query.selected)
        else:
            names = [*query.extra_select, *query.values_select, *query.annotation_select]
        converters = tuple(
            (pos, tuple(convs), expression)
            for pos, (convs, expression) in compiler.get_converters(fields).items()
        )
        return cls(sql, tuple(plan), tuple(names), converters)

    def run(self, db: str, real: dict[Any, Any]) -> list[dict[str, Any]]:
        params = [real[p] if stood else p for stood, p in self.params]
        connection = connections[db]
        with connection.cursor() as cursor:
            _load_utc_timestamps_natively(connection, cursor)
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        converters = [
            (pos, _one_argument(convs, expression, connection))
            for pos, convs, expression in self.converters
        ]
        names, width = self.names, len(self.names)
        out = []
        for row in rows:
            values = list(row[:width])
            for pos, convert in converters:
                values[pos] = convert(values[pos])
            out.append(dict(zip(names, values, strict=True)))
        return out


# The standard library's compiled JSON scanner: what json.loads runs, minus its per-call layers.
_scan_json = make_scanner(JSONDecoder())  # type: ignore[arg-type]  # typeshed: the C scanner takes any decoder


def _decode_json(value: Any, fallback: Callable[[Any], Any]) -> Any:
    """JSONField.from_db_value (no custom decoder) of a column's text: the same objects
    json.loads builds, a quarter of its cost on the small documents a page holds (six JSON
    columns a row). Anything but one whole JSON document goes to the field itself."""
    if value is None:
        return None
    if type(value) is str:
        try:
            decoded, end = _scan_json(value, 0)
        except (StopIteration, ValueError):  # not JSON at 0, or malformed further on
            return fallback(value)
        if end == len(value):
            return decoded
    return fallback(value)


def _one_argument(convs: Sequence[Any], expression: Any, connection: Any) -> Callable[[Any], Any]:
    """A column's converters as one call of its value, JSON columns decoded by `_decode_json`."""

    def chain(value: Any) -> Any:
        for convert in convs:
            value = convert(value, expression, connection)
        return value

    (only,) = convs if len(convs) == 1 else (None,)
    field = getattr(only, "__self__", None)
    if (
        getattr(only, "__func__", None) is JSONField.from_db_value
        and isinstance(field, JSONField)
        and field.decoder is None
    ):
        return functools.partial(_decode_json, fallback=chain)
    return chain


def _load_utc_timestamps_natively(connection: Any, cursor: Any) -> None:
    """Django loads every timestamptz through a Python subclass of psycopg's loader that puts
    the connection's time zone on it (postgresql.psycopg_any.BaseTzLoader): 60% of the CPU of
    reading a page. When that zone and the session's are both UTC, psycopg's own (compiled)
    loader gives the same datetimes, in datetime.timezone.utc; otherwise Django's stays."""
    if connection.vendor != "postgresql" or connection.timezone is not UTC:
        return
    raw = cursor.cursor
    if raw.connection.pgconn.parameter_status(b"TimeZone") != b"UTC":
        return
    from psycopg.types.datetime import TimestamptzLoader

    raw.adapters.register_loader("timestamptz", TimestamptzLoader)


def _checkpoint_id(filters: ProposalFilters) -> int | None:
    """The `checkpoint` filter's id: filtering on checkpoint_id lets the per-checkpoint partial
    index serve the query (a join on slug would not)."""
    if not filters.checkpoint:
        return None
    return Checkpoint.objects.filter(slug=filters.checkpoint).values_list("pk", flat=True).first()


def _conditions(
    access: Access, filters: ProposalFilters, checkpoint_id: int | None
) -> list[Q | Exact]:
    """The filters besides visibility, as conditions on the proposal row (`checkpoint_id`:
    the `checkpoint` filter resolved)."""
    conditions: list[Q | Exact] = []
    if filters.submitted_by_me:
        conditions.append(Q(submitted_by_id=access.user_id))
    if filters.status:
        # On open work this lets PostgreSQL use the partial queue indexes.
        conditions.append(Q(status__in=filters.status))
    if filters.checkpoint:
        conditions.append(Q(checkpoint_id=checkpoint_id) if checkpoint_id else Q(pk__in=[]))
    if filters.region:
        conditions.append(Q(region=filters.region))
    if filters.priority:
        conditions.append(Q(priority__in=filters.priority))
    if filters.external_id:
        conditions.append(Q(external_id=filters.external_id))
    db = router.db_for_read(Proposal)
    conditions.extend(_label_is(db, key, value) for key, value in (filters.labels or {}).items())
    return conditions


def _label_is(db: str, key: str, value: str) -> Q | Exact:
    """labels[key] == value. PostgreSQL: jsonb containment (`@>`), the form a GIN index on
    labels serves. SQLite has no containment lookup (NotSupportedError): compare the key's text."""
    if connections[db].vendor == "postgresql":
        return Q(labels__contains={key: value})
    # KeyTextTransform quotes the key into the JSON path itself, so any key is just a key.
    return Exact(KeyTextTransform(key, "labels"), value)


def after_cursor(qs: QuerySet[Proposal], sla_due_at: datetime, pk: uuid.UUID) -> QuerySet[Proposal]:
    """Rows strictly after (sla_due_at, id). The leading range predicate lets the index seek."""
    return qs.filter(sla_due_at__gte=sla_due_at).filter(Q(sla_due_at__gt=sla_due_at) | Q(id__gt=pk))


def proposal_get(access: Access, proposal_id: Any, *, with_children: bool = False) -> Proposal:
    """A proposal the caller may see, or NotFound (never 403: no existence leak)."""
    try:
        uuid.UUID(str(proposal_id))
    except ValueError:
        raise NotFound("Proposal not found.") from None
    qs = Proposal.objects.select_related("checkpoint", "submitted_by", "claimed_by")
    if with_children:
        qs = qs.prefetch_related(
            "revisions__author",
            Prefetch("votes", queryset=Vote.objects.select_related("reviewer")),
        )
    proposal = qs.filter(pk=proposal_id).first()
    if proposal is None or not access.may_view(proposal):
        raise NotFound("Proposal not found.")
    return proposal


def proposal_events(access: Access, proposal_id: Any) -> QuerySet[AuditEvent]:
    proposal = proposal_get(access, proposal_id)
    return AuditEvent.objects.filter(proposal=proposal).order_by("seq")
