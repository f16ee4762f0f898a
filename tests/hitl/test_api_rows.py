"""The list renders `.values()` rows (hitl.api.rows); it must say exactly what the serializer
says about the same proposals, whatever their fields hold."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from hitl.api import rows
from hitl.api.serializers import ProposalOutputSerializer
from proposals import services
from proposals.models import Proposal, Status
from tests.factories import submit

pytestmark = pytest.mark.django_db


def test_rows_render_exactly_what_the_serializer_renders(world):
    submit(world.submitter, world.checkpoint, title="plain")
    submit(
        world.submitter,
        world.checkpoint,
        title="full",
        payload={"n": 1.5, "nested": {"a": [1, None]}},
        summary="s",
        confidence=0.42,
        impact=Decimal("12.5"),
        region="eu",
        labels={"team": "ops"},
        external_id="ext-1",
        callback_url="https://example.com/hook",
        priority="high",
        timeout_seconds=60,
        payload_schema={"type": "object"},
    )
    claimed = submit(world.submitter, world.checkpoint, title="claimed")
    services.proposal_claim(proposal_id=claimed.pk, actor=world.reviewer)
    decided = submit(world.submitter, world.checkpoint, title="decided")
    services.proposal_cancel(proposal_id=decided.pk, actor=world.submitter, reason="no")

    qs = Proposal.objects.select_related("checkpoint", "submitted_by", "claimed_by").order_by(
        "sla_due_at", "id"
    )
    expected = [dict(item) for item in ProposalOutputSerializer(qs, many=True).data]
    assert rows.render(rows.proposal_rows(qs)) == expected
    assert {row["title"] for row in expected} == {"plain", "full", "claimed", "decided"}


def test_rows_render_datetimes_as_the_serializer_in_any_time_zone(world):
    """Datetimes go through a per-page converter (rows._iso_datetime): in UTC, in the
    request's current time zone, with microseconds, and in the serializer's key order."""
    claimed = submit(world.submitter, world.checkpoint, title="claimed")
    services.proposal_claim(proposal_id=claimed.pk, actor=world.reviewer)
    Proposal.objects.filter(pk=claimed.pk).update(
        due_at=datetime(2031, 3, 30, 1, 30, 0, 123456, tzinfo=UTC)
    )
    qs = Proposal.objects.select_related("checkpoint", "submitted_by", "claimed_by")
    for zone in ("UTC", "Asia/Kolkata", "America/St_Johns"):
        with timezone.override(zone):
            expected = [dict(item) for item in ProposalOutputSerializer(qs, many=True).data]
            rendered = rows.render(rows.proposal_rows(qs))
        assert rendered == expected
        assert [list(item) for item in rendered] == [list(item) for item in expected]
    assert expected[0]["due_at"] == "2031-03-29T23:00:00.123456-02:30"


@pytest.mark.parametrize(
    "text",
    [
        None,
        "{}",
        "[]",
        '{"cost": 1, "rows": 10}',
        '{"n": 1.5, "big": 1e400, "nested": {"a": [1, null, true, "\\u00e9"]}}',
        '"a string"',
        "12",
        " {}",  # not one whole document from its first character: the field decides
        "{} ",
        "\ufeff{}",
        "{} {}",
        "not json",
        '{"a": }',  # malformed after the first character: the field's answer, not an error
        "[1, 2",
        "NaN",
        "",
    ],
)
def test_json_columns_decode_as_the_field_decodes(text):
    from django.db.models import JSONField

    from proposals.selectors import _one_argument

    field: JSONField[Any] = JSONField()
    unused: Any = None  # the expression and connection, which a plain column's decoding ignores
    fast = _one_argument([field.from_db_value], unused, unused)
    assert isinstance(fast, functools.partial)  # the fast decoder took the column
    expected = field.from_db_value(text, unused, unused)
    got = fast(text)
    assert repr(got) == repr(expected)  # NaN is not equal to itself
    assert type(got) is type(expected)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize(
    "value_zone", [UTC, ZoneInfo("UTC"), ZoneInfo("Asia/Kolkata"), dt_timezone(timedelta(hours=-3))]
)
def test_the_datetime_converter_says_what_drf_says(zone, value_zone):
    """Whatever zone a value carries (the compiled page's loader gives UTC) and whatever zone
    the request shows, the per-page converter and DRF's field write the same text."""
    from rest_framework import serializers

    field = serializers.DateTimeField()
    value = datetime(2031, 3, 30, 1, 30, 0, 123456, tzinfo=UTC).astimezone(value_zone)
    with timezone.override(zone):
        convert = dict((name, c) for name, _source, c in rows._converters())["due_at"]
        assert convert is not None
        assert convert(value) == field.to_representation(value)


@pytest.mark.parametrize(
    "value",
    [
        {"cost": 1, "rows": 10},
        1.5,
        0.1 + 0.2,
        -0.0,
        1e-05,  # orjson: 0.00001
        4.2e-05,
        1e-07,  # orjson: 1e-7
        1e16,
        1.5e22,
        5e-324,
        1.7976931348623157e308,
        2**70,  # past orjson's 64 bits
        -(2**63) - 1,
        '\u2028 \u2029 \x00\x1f\x7f é 😀 \\ " </script>',
        {"n": [1e-07, {"deep": [1.5, 1e300, None, True]}], "s": "x"},
        [[[[2.5]]], (1e-05,)],
        {1: "a key that is not a string"},
        Decimal("1.5"),
        datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "\ud800",  # a lone surrogate: neither can write it
        uuid.UUID(int=1),
        Status.PENDING,  # a str subclass
    ],
)
def test_the_page_renderer_writes_what_drfs_json_renderer_writes(value):
    """rows.PageRenderer writes a list page through orjson, and must write every byte DRF's
    JSONRenderer (json.dumps) writes, or refuse as it refuses."""
    from rest_framework.renderers import JSONRenderer

    item: dict[str, Any] = {name: None for name, _source, _field in rows._plan()}
    item["payload"] = value
    item["labels"] = {"wrapped": [value]}
    if type(value) is float:
        item["confidence"] = value
    item["permissions"] = {"vote": True, "revise": False}
    page = {"results": [item, dict(item, title="\u2028")], "next": "https://h/?cursor=x"}
    try:
        expected = JSONRenderer().render(page)
    except (ValueError, UnicodeError) as exc:
        with pytest.raises(type(exc)):
            rows.PageRenderer().render(page)
        return
    assert rows.PageRenderer().render(page) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_the_page_renderer_refuses_what_drf_refuses(value):
    """orjson would write null; DRF's strict JSON refuses these (a 500, as before)."""
    item: dict[str, Any] = {name: None for name, _source, _field in rows._plan()}
    item["confidence"] = value
    with pytest.raises(ValueError):
        rows.PageRenderer().render({"results": [item], "next": None})
