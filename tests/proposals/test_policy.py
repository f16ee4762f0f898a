"""Table-driven tests for the pure policy functions. No database, no clock: plain values in,
plain values out (proposals/policy.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from proposals import policy
from proposals.policy import (
    Deadlines,
    condition_matches,
    deadlines,
    evaluate_quorum,
    required_approvals,
    revocable,
    route,
    sample_fraction,
    validate_checkpoint_policy,
)

# --- route -----------------------------------------------------------------------------------

ROUTE_DEFAULTS: dict[str, Any] = {
    "proposal_id": "00000000-0000-0000-0000-000000000001",
    "payload": {"cost": 50},
    "confidence": 0.5,
    "enabled": True,
    "bypass_active": False,
    "auto_approve_at": None,
    "auto_reject_below": None,
    "review_when": [],
    "sample_rate": 0.0,
}
RISKY = [{"path": "cost", "op": "gt", "value": 100}]

ROUTE_TABLE: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, overrides, expected outcome, expected resolution)
    ("no policy at all: review", {}, "review", ""),
    ("no confidence: review", {"confidence": None, "auto_approve_at": 0.5}, "review", ""),
    (
        "no confidence is approved only by a threshold of 0",
        {"confidence": None, "auto_approve_at": 0.0},
        "approve",
        "policy",
    ),
    (
        "no confidence never auto-rejects",
        {"confidence": None, "auto_reject_below": 0.5},
        "review",
        "",
    ),
    ("disabled checkpoint approves by policy", {"enabled": False}, "approve", "policy"),
    (
        "disabled beats review_when, auto-reject and bypass",
        {
            "enabled": False,
            "bypass_active": True,
            "payload": {"cost": 500},
            "review_when": RISKY,
            "confidence": 0.0,
            "auto_reject_below": 0.5,
        },
        "approve",
        "policy",
    ),
    ("active bypass approves", {"bypass_active": True}, "approve", "bypass"),
    (
        "bypass beats review_when and auto-reject",
        {
            "bypass_active": True,
            "payload": {"cost": 500},
            "review_when": RISKY,
            "confidence": 0.0,
            "auto_reject_below": 0.5,
        },
        "approve",
        "bypass",
    ),
    (
        "review_when match forces review at high confidence",
        {
            "payload": {"cost": 500},
            "review_when": RISKY,
            "confidence": 0.99,
            "auto_approve_at": 0.9,
        },
        "review",
        "",
    ),
    (
        "review_when match beats auto-reject",
        {
            "payload": {"cost": 500},
            "review_when": RISKY,
            "confidence": 0.01,
            "auto_reject_below": 0.5,
        },
        "review",
        "",
    ),
    (
        "any one of several conditions forces review",
        {
            "payload": {"cost": 10, "businesses": 5000},
            "review_when": [*RISKY, {"path": "businesses", "op": "gt", "value": 1000}],
            "confidence": 0.99,
            "auto_approve_at": 0.0,
        },
        "review",
        "",
    ),
    (
        "review_when not matching falls through to auto-approve",
        {"payload": {"cost": 50}, "review_when": RISKY, "confidence": 0.99, "auto_approve_at": 0.9},
        "approve",
        "policy",
    ),
    (
        "malformed payload does not match review_when",
        {
            "payload": {"cost": "lots"},
            "review_when": RISKY,
            "confidence": 0.95,
            "auto_approve_at": 0.9,
        },
        "approve",
        "policy",
    ),
    (
        "below auto_reject_below rejects",
        {"confidence": 0.1, "auto_reject_below": 0.2},
        "reject",
        "policy",
    ),
    (
        "at auto_reject_below does not reject",
        {"confidence": 0.2, "auto_reject_below": 0.2},
        "review",
        "",
    ),
    (
        "auto-reject is checked before auto-approve",
        {"confidence": 0.1, "auto_reject_below": 0.5, "auto_approve_at": 0.0},
        "reject",
        "policy",
    ),
    (
        "at auto_approve_at approves",
        {"confidence": 0.9, "auto_approve_at": 0.9},
        "approve",
        "policy",
    ),
    (
        "above auto_approve_at approves",
        {"confidence": 0.95, "auto_approve_at": 0.9},
        "approve",
        "policy",
    ),
    (
        "just below auto_approve_at: review",
        {"confidence": 0.8999, "auto_approve_at": 0.9},
        "review",
        "",
    ),
    (
        "auto_approve_at 0 approves any confidence",
        {"confidence": 0.0, "auto_approve_at": 0.0},
        "approve",
        "policy",
    ),
    (
        "between the thresholds: review",
        {"confidence": 0.5, "auto_reject_below": 0.2, "auto_approve_at": 0.9},
        "review",
        "",
    ),
    (
        "sample_rate 0 never samples",
        {"confidence": 0.99, "auto_approve_at": 0.9, "sample_rate": 0.0},
        "approve",
        "policy",
    ),
    (
        "sample_rate 1 samples every policy approval",
        {"confidence": 0.99, "auto_approve_at": 0.9, "sample_rate": 1.0},
        "review",
        "",
    ),
    (
        "sampling never turns a rejection into review",
        {"confidence": 0.1, "auto_reject_below": 0.5, "sample_rate": 1.0},
        "reject",
        "policy",
    ),
    (
        "sampling does not apply to a disabled checkpoint",
        {"enabled": False, "sample_rate": 1.0},
        "approve",
        "policy",
    ),
    (
        "sampling does not apply to a bypass",
        {"bypass_active": True, "sample_rate": 1.0},
        "approve",
        "bypass",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "outcome", "resolution"),
    [pytest.param(o, out, res, id=case) for case, o, out, res in ROUTE_TABLE],
)
def test_route(overrides: dict[str, Any], outcome: str, resolution: str) -> None:
    result = route(**{**ROUTE_DEFAULTS, **overrides})
    assert (result.outcome, result.resolution) == (outcome, resolution)
    assert result.reason  # every decision says why (it is audited)


def test_route_reason_names_the_matched_condition() -> None:
    result = route(
        **{**ROUTE_DEFAULTS, "payload": {"cost": 500}, "review_when": RISKY, "confidence": 1.0}
    )
    assert "cost" in result.reason and "gt" in result.reason and "100" in result.reason


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i * 7919 + 13)) for i in range(n)]


def test_sample_fraction_is_deterministic_and_in_unit_interval() -> None:
    for proposal_id in _ids(200):
        first = sample_fraction(proposal_id)
        assert first == sample_fraction(proposal_id)
        assert first == sample_fraction(uuid.UUID(proposal_id))  # type: ignore[arg-type]
        assert 0.0 <= first < 1.0
    # Not a constant: different ids spread out.
    assert len({sample_fraction(i) for i in _ids(200)}) == 200


def test_route_sampling_is_deterministic_by_id() -> None:
    kwargs = {**ROUTE_DEFAULTS, "confidence": 0.99, "auto_approve_at": 0.9, "sample_rate": 0.3}
    for proposal_id in _ids(300):
        first = route(**{**kwargs, "proposal_id": proposal_id})
        again = route(**{**kwargs, "proposal_id": proposal_id})
        assert first == again
        # The decision is exactly "the id's fraction is below the rate".
        expected = "review" if sample_fraction(proposal_id) < 0.3 else "approve"
        assert first.outcome == expected


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_route_sampling_fraction_is_roughly_the_rate(rate: float) -> None:
    kwargs = {**ROUTE_DEFAULTS, "confidence": 0.99, "auto_approve_at": 0.9, "sample_rate": rate}
    ids = [str(uuid.uuid4()) for _ in range(2000)]
    sampled = sum(route(**{**kwargs, "proposal_id": i}).outcome == "review" for i in ids)
    # Binomial(2000, 0.3) has sd ~20; a 5-sigma band never flakes and still catches a broken
    # sampler (0 %, 100 % or inverted rate).
    assert abs(sampled / 2000 - rate) < 0.06


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_route_sampling_extremes_over_many_ids(rate: float) -> None:
    kwargs = {**ROUTE_DEFAULTS, "confidence": 0.99, "auto_approve_at": 0.9, "sample_rate": rate}
    outcomes = {route(**{**kwargs, "proposal_id": i}).outcome for i in _ids(2000)}
    assert outcomes == ({"approve"} if rate == 0.0 else {"review"})


# --- condition_matches -------------------------------------------------------------------------

PAYLOAD: dict[str, Any] = {
    "cost": 150,
    "ratio": 0.5,
    "name": "Acme Corp",
    "currency": "EUR",
    "flag": True,
    "off": False,
    "count": 1,
    "zero": 0,
    "nothing": None,
    "tags": ["urgent", "gdpr", 3],
    "vendor": {"name": "Acme", "cost": 120, "address": {"country": "DE"}},
    "items": [{"qty": 5, "sku": "A"}, {"qty": 50, "sku": "B"}],
    "matrix": [[1, 2], [3, 4]],
    "meta": {"key": "v", "0": "zero-key"},
    "empty": {},
    "letters": "b",
    "bits": [1, 0],
}

CONDITION_TABLE: list[tuple[str, dict[str, Any], bool]] = [
    # eq / ne
    ("eq number", {"path": "cost", "op": "eq", "value": 150}, True),
    ("eq int equals float", {"path": "cost", "op": "eq", "value": 150.0}, True),
    ("eq number differs", {"path": "cost", "op": "eq", "value": 151}, False),
    ("eq string", {"path": "currency", "op": "eq", "value": "EUR"}, True),
    ("eq is case sensitive", {"path": "currency", "op": "eq", "value": "eur"}, False),
    ("eq string vs number", {"path": "cost", "op": "eq", "value": "150"}, False),
    ("eq null", {"path": "nothing", "op": "eq", "value": None}, True),
    ("eq missing vs null", {"path": "absent", "op": "eq", "value": None}, False),
    ("eq dict", {"path": "meta", "op": "eq", "value": {"key": "v", "0": "zero-key"}}, True),
    ("eq list", {"path": "matrix.0", "op": "eq", "value": [1, 2]}, True),
    ("eq bool true", {"path": "flag", "op": "eq", "value": True}, True),
    ("eq bool false", {"path": "off", "op": "eq", "value": False}, True),
    ("eq bool vs other bool", {"path": "flag", "op": "eq", "value": False}, False),
    ("eq bool true vs number 1", {"path": "flag", "op": "eq", "value": 1}, False),
    ("eq number 1 vs bool true", {"path": "count", "op": "eq", "value": True}, False),
    ("eq number 0 vs bool false", {"path": "zero", "op": "eq", "value": False}, False),
    ("ne number", {"path": "cost", "op": "ne", "value": 100}, True),
    ("ne same number", {"path": "cost", "op": "ne", "value": 150}, False),
    ("ne string vs number is not equal", {"path": "cost", "op": "ne", "value": "150"}, True),
    ("ne bool true vs number 1 is not equal", {"path": "flag", "op": "ne", "value": 1}, True),
    ("ne missing never matches", {"path": "absent", "op": "ne", "value": 1}, False),
    # gt / gte / lt / lte
    ("gt above", {"path": "cost", "op": "gt", "value": 100}, True),
    ("gt equal", {"path": "cost", "op": "gt", "value": 150}, False),
    ("gt below", {"path": "cost", "op": "gt", "value": 200}, False),
    ("gt float", {"path": "ratio", "op": "gt", "value": 0.25}, True),
    ("gt negative threshold", {"path": "zero", "op": "gt", "value": -1}, True),
    ("gte equal", {"path": "cost", "op": "gte", "value": 150}, True),
    ("gte above", {"path": "cost", "op": "gte", "value": 151}, False),
    ("lt below", {"path": "cost", "op": "lt", "value": 200}, True),
    ("lt equal", {"path": "cost", "op": "lt", "value": 150}, False),
    ("lte equal", {"path": "cost", "op": "lte", "value": 150}, True),
    ("lte below", {"path": "cost", "op": "lte", "value": 149}, False),
    ("gt string vs number", {"path": "name", "op": "gt", "value": 1}, False),
    ("gt number vs string", {"path": "cost", "op": "gt", "value": "100"}, False),
    ("lt number vs string", {"path": "cost", "op": "lt", "value": "1000"}, False),
    ("gte null vs number", {"path": "nothing", "op": "gte", "value": 0}, False),
    ("lte list vs number", {"path": "tags", "op": "lte", "value": 10}, False),
    ("gt dict vs number", {"path": "vendor", "op": "gt", "value": 0}, False),
    ("gt bool is not a number", {"path": "flag", "op": "gt", "value": 0}, False),
    ("gte bool threshold is not a number", {"path": "cost", "op": "gte", "value": True}, False),
    ("lt bool vs bool", {"path": "off", "op": "lt", "value": True}, False),
    ("gt strings compare lexically", {"path": "letters", "op": "gt", "value": "a"}, True),
    ("lt strings compare lexically", {"path": "letters", "op": "lt", "value": "a"}, False),
    ("gt missing", {"path": "absent", "op": "gt", "value": 0}, False),
    ("lt missing", {"path": "absent", "op": "lt", "value": 10**9}, False),
    # in
    ("in list", {"path": "currency", "op": "in", "value": ["USD", "EUR"]}, True),
    ("in list miss", {"path": "currency", "op": "in", "value": ["USD", "GBP"]}, False),
    ("in numbers", {"path": "cost", "op": "in", "value": [1, 150]}, True),
    ("in string vs number", {"path": "cost", "op": "in", "value": ["150"]}, False),
    ("in bool vs number", {"path": "flag", "op": "in", "value": [1, 2]}, False),
    ("in value not a list", {"path": "currency", "op": "in", "value": "EUR"}, False),
    ("in missing", {"path": "absent", "op": "in", "value": [None]}, False),
    ("in null member", {"path": "nothing", "op": "in", "value": [None]}, True),
    ("in empty list", {"path": "currency", "op": "in", "value": []}, False),
    # contains
    ("contains substring", {"path": "name", "op": "contains", "value": "Acme"}, True),
    ("contains substring miss", {"path": "name", "op": "contains", "value": "acme"}, False),
    ("contains number in string", {"path": "name", "op": "contains", "value": 1}, False),
    ("contains list member", {"path": "tags", "op": "contains", "value": "gdpr"}, True),
    ("contains list number member", {"path": "tags", "op": "contains", "value": 3}, True),
    ("contains list miss", {"path": "tags", "op": "contains", "value": "none"}, False),
    ("contains list string vs number", {"path": "tags", "op": "contains", "value": "3"}, False),
    ("contains list bool vs number", {"path": "bits", "op": "contains", "value": True}, False),
    ("contains dict key", {"path": "vendor", "op": "contains", "value": "name"}, True),
    ("contains dict key miss", {"path": "vendor", "op": "contains", "value": "Acme"}, False),
    ("contains dict number", {"path": "vendor", "op": "contains", "value": 1}, False),
    ("contains on a number", {"path": "cost", "op": "contains", "value": 1}, False),
    ("contains on null", {"path": "nothing", "op": "contains", "value": "x"}, False),
    ("contains on bool", {"path": "flag", "op": "contains", "value": True}, False),
    ("contains missing", {"path": "absent", "op": "contains", "value": "x"}, False),
    # exists
    ("exists present", {"path": "cost", "op": "exists"}, True),
    ("exists present, value true", {"path": "cost", "op": "exists", "value": True}, True),
    ("exists present, value false", {"path": "cost", "op": "exists", "value": False}, False),
    ("exists missing", {"path": "absent", "op": "exists"}, False),
    ("exists missing, value false", {"path": "absent", "op": "exists", "value": False}, True),
    ("exists null value is present", {"path": "nothing", "op": "exists"}, True),
    ("exists false value is present", {"path": "off", "op": "exists"}, True),
    ("exists empty dict is present", {"path": "empty", "op": "exists"}, True),
    ("exists nested", {"path": "vendor.address.country", "op": "exists"}, True),
    ("exists nested missing", {"path": "vendor.address.city", "op": "exists"}, False),
    ("exists index out of range", {"path": "items.2", "op": "exists"}, False),
    ("exists non-bool value means true", {"path": "cost", "op": "exists", "value": "yes"}, True),
    # dotted paths and list indexes
    ("nested dict", {"path": "vendor.cost", "op": "gt", "value": 100}, True),
    ("deeply nested", {"path": "vendor.address.country", "op": "eq", "value": "DE"}, True),
    ("list index", {"path": "items.0.qty", "op": "eq", "value": 5}, True),
    ("second list index", {"path": "items.1.qty", "op": "gte", "value": 50}, True),
    ("negative list index", {"path": "items.-1.sku", "op": "eq", "value": "B"}, True),
    ("negative index past start", {"path": "items.-3.sku", "op": "exists"}, False),
    ("list of lists", {"path": "matrix.1.0", "op": "eq", "value": 3}, True),
    ("index out of range", {"path": "items.5.qty", "op": "gt", "value": 0}, False),
    ("non-numeric index into list", {"path": "items.qty", "op": "gt", "value": 0}, False),
    ("path through a scalar", {"path": "cost.amount", "op": "exists"}, False),
    ("path through a string", {"path": "name.0", "op": "exists"}, False),
    ("path through null", {"path": "nothing.x", "op": "eq", "value": None}, False),
    ("digit key on a dict", {"path": "meta.0", "op": "eq", "value": "zero-key"}, True),
    ("missing top level", {"path": "absent.deeper", "op": "eq", "value": 1}, False),
    ("empty path segment", {"path": "vendor..name", "op": "exists"}, False),
]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [pytest.param(c, e, id=case) for case, c, e in CONDITION_TABLE],
)
def test_condition_matches(condition: dict[str, Any], expected: bool) -> None:
    assert condition_matches(condition, PAYLOAD) is expected


@pytest.mark.parametrize("payload", [None, 42, "text", [1, 2], True, {}])
@pytest.mark.parametrize("op", ["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains"])
def test_condition_on_non_object_payload_never_matches_nor_raises(op: str, payload: Any) -> None:
    value: Any = [1] if op == "in" else 1
    assert condition_matches({"path": "cost", "op": op, "value": value}, payload) is False


def test_condition_paths_index_into_a_top_level_list() -> None:
    assert condition_matches({"path": "1.cost", "op": "eq", "value": 7}, [{}, {"cost": 7}])


def test_condition_unknown_op_raises() -> None:
    # validate_checkpoint_policy keeps unknown ops out of the database; evaluation is loud.
    with pytest.raises(ValueError, match="unknown operator"):
        condition_matches({"path": "cost", "op": "between", "value": [1, 2]}, PAYLOAD)


# --- required_approvals ------------------------------------------------------------------------

REQUIRED_TABLE: list[tuple[str, int, int, int]] = [
    # (rule, quorum_count, eligible, required)
    ("any", 1, 0, 1),
    ("any", 5, 1, 1),
    ("any", 3, 5, 1),
    ("count", 1, 5, 1),
    ("count", 2, 0, 2),
    ("count", 2, 1, 2),
    ("count", 2, 5, 2),
    ("count", 3, 3, 3),
    ("count", 0, 4, 1),
    ("all", 1, 0, 1),
    ("all", 1, 1, 1),
    ("all", 1, 2, 2),
    ("all", 1, 3, 3),
    ("all", 7, 4, 4),
    ("all", 1, 5, 5),
    ("majority", 1, 0, 1),
    ("majority", 1, 1, 1),
    ("majority", 1, 2, 2),
    ("majority", 1, 3, 2),
    ("majority", 1, 4, 3),
    ("majority", 9, 5, 3),
    ("majority", 1, 6, 4),
]


@pytest.mark.parametrize(("rule", "count", "eligible", "required"), REQUIRED_TABLE)
def test_required_approvals(rule: str, count: int, eligible: int, required: int) -> None:
    assert required_approvals(rule, count, eligible) == required


def test_majority_is_more_than_half() -> None:
    for eligible in range(1, 30):
        required = required_approvals("majority", 1, eligible)
        assert required > eligible / 2
        assert required - 1 <= eligible / 2


def test_required_approvals_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown quorum rule"):
        required_approvals("some", 1, 3)


# --- evaluate_quorum ---------------------------------------------------------------------------

QUORUM_TABLE: list[tuple[str, dict[str, Any], str]] = [
    # (case, required/veto/eligible/approvals/rejections/changes_requested, outcome)
    ("no votes", {"required": 1, "veto": True, "eligible": 2}, "pending"),
    (
        "one approve of any",
        {"required": 1, "veto": True, "eligible": 2, "approvals": 1},
        "approved",
    ),
    (
        "count 2, one approve",
        {"required": 2, "veto": True, "eligible": 3, "approvals": 1},
        "pending",
    ),
    (
        "count 2, two approves",
        {"required": 2, "veto": True, "eligible": 3, "approvals": 2},
        "approved",
    ),
    (
        "more than required",
        {"required": 2, "veto": True, "eligible": 3, "approvals": 3},
        "approved",
    ),
    (
        "veto: one reject ends it",
        {"required": 2, "veto": True, "eligible": 3, "rejections": 1},
        "rejected",
    ),
    (
        "veto: reject beats enough approvals",
        {"required": 2, "veto": True, "eligible": 4, "approvals": 2, "rejections": 1},
        "rejected",
    ),
    (
        "no veto: one reject while quorum still reachable",
        {"required": 2, "veto": False, "eligible": 3, "rejections": 1},
        "pending",
    ),
    (
        "no veto: approvals win despite a reject",
        {"required": 2, "veto": False, "eligible": 3, "approvals": 2, "rejections": 1},
        "approved",
    ),
    (
        "no veto: quorum impossible rejects",
        {"required": 2, "veto": False, "eligible": 3, "rejections": 2},
        "rejected",
    ),
    (
        "no veto: impossible with an approve in",
        {"required": 3, "veto": False, "eligible": 3, "approvals": 1, "rejections": 1},
        "rejected",
    ),
    (
        "no veto: exactly reachable stays pending",
        {"required": 2, "veto": False, "eligible": 3, "approvals": 1, "rejections": 1},
        "pending",
    ),
    (
        "no veto, all: any reject makes it impossible",
        {"required": 3, "veto": False, "eligible": 3, "rejections": 1},
        "rejected",
    ),
    (
        "no veto, majority of 5: two rejects still reachable",
        {"required": 3, "veto": False, "eligible": 5, "rejections": 2},
        "pending",
    ),
    (
        "no veto, majority of 5: three rejects impossible",
        {"required": 3, "veto": False, "eligible": 5, "rejections": 3},
        "rejected",
    ),
    (
        "no veto, no rejections: never impossible-rejected",
        {"required": 5, "veto": False, "eligible": 1},
        "pending",
    ),
    (
        "no veto, zero eligible, a reject",
        {"required": 1, "veto": False, "eligible": 0, "rejections": 1},
        "rejected",
    ),
    (
        "more votes than eligible do not go negative",
        {"required": 2, "veto": False, "eligible": 1, "approvals": 1, "rejections": 3},
        "rejected",
    ),
    (
        "request_changes ends the round",
        {"required": 2, "veto": True, "eligible": 3, "changes_requested": 1},
        "changes_requested",
    ),
    (
        "request_changes beats approvals",
        {"required": 1, "veto": True, "eligible": 3, "approvals": 1, "changes_requested": 1},
        "changes_requested",
    ),
    (
        "request_changes beats a veto reject",
        {"required": 2, "veto": True, "eligible": 3, "rejections": 1, "changes_requested": 1},
        "changes_requested",
    ),
    (
        "request_changes without veto",
        {"required": 2, "veto": False, "eligible": 3, "changes_requested": 1},
        "changes_requested",
    ),
]


@pytest.mark.parametrize(
    ("counts", "outcome"), [pytest.param(c, o, id=case) for case, c, o in QUORUM_TABLE]
)
def test_evaluate_quorum(counts: dict[str, Any], outcome: str) -> None:
    kwargs = {"approvals": 0, "rejections": 0, "changes_requested": 0, **counts}
    assert evaluate_quorum(**kwargs) == outcome


# --- deadlines ---------------------------------------------------------------------------------

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DEFAULT_SLA = {"critical": 3600, "high": 14400, "medium": 86400, "low": 259200}

DEADLINE_TABLE: list[tuple[str, dict[str, Any], int | None, int]] = [
    # (case, kwargs, due after seconds or None, sla after seconds)
    ("default timeout, medium", {"priority": "medium", "timeout_seconds": 86400}, 86400, 86400),
    ("no timeout", {"priority": "medium", "timeout_seconds": None}, None, 86400),
    ("zero timeout means none", {"priority": "high", "timeout_seconds": 0}, None, 14400),
    ("short timeout", {"priority": "critical", "timeout_seconds": 60}, 60, 3600),
    ("low priority", {"priority": "low", "timeout_seconds": 10}, 10, 259200),
    (
        "checkpoint sla overrides",
        {"priority": "high", "timeout_seconds": 5, "sla_seconds": {**DEFAULT_SLA, "high": 7}},
        5,
        7,
    ),
    (
        "missing priority falls back to the default",
        {"priority": "critical", "timeout_seconds": 5, "sla_seconds": {"low": 1}},
        5,
        3600,
    ),
    (
        "empty sla map: defaults",
        {"priority": "low", "timeout_seconds": 5, "sla_seconds": {}},
        5,
        259200,
    ),
    (
        "empty sla map, medium",
        {"priority": "medium", "timeout_seconds": 5, "sla_seconds": {}},
        5,
        86400,
    ),
    (
        "empty sla map, high",
        {"priority": "high", "timeout_seconds": 5, "sla_seconds": {}},
        5,
        14400,
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "due_after", "sla_after"),
    [pytest.param(k, d, s, id=case) for case, k, d, s in DEADLINE_TABLE],
)
def test_deadlines(kwargs: dict[str, Any], due_after: int | None, sla_after: int) -> None:
    kwargs = {"sla_seconds": DEFAULT_SLA, **kwargs}
    result = deadlines(start=START, **kwargs)
    expected_due = None if due_after is None else START + timedelta(seconds=due_after)
    assert result == Deadlines(due_at=expected_due, sla_due_at=START + timedelta(seconds=sla_after))


TIMER_TABLE: list[tuple[str, int | None, int | None, int | None, int | None, int | None]] = [
    # (case, timeout, remind_after, escalate_after, remind at +s or None, escalate at +s or None)
    ("no timers", 86400, None, None, None, None),
    ("both before the timeout", 86400, 3600, 7200, 3600, 7200),
    ("zero means off", 86400, 0, 0, None, None),
    ("at the timeout: never fires", 600, 600, 600, None, None),
    ("after the timeout: never fires", 600, 601, 9000, None, None),
    ("one before, one after", 600, 599, 601, 599, None),
    ("no timeout: timers still fire", None, 60, 120, 60, 120),
]


@pytest.mark.parametrize(
    ("timeout", "remind", "escalate", "remind_at", "escalate_at"),
    [pytest.param(t, r, e, ra, ea, id=case) for case, t, r, e, ra, ea in TIMER_TABLE],
)
def test_deadlines_reminder_and_escalation(
    timeout: int | None,
    remind: int | None,
    escalate: int | None,
    remind_at: int | None,
    escalate_at: int | None,
) -> None:
    result = deadlines(
        start=START,
        priority="medium",
        timeout_seconds=timeout,
        sla_seconds=DEFAULT_SLA,
        remind_after_seconds=remind,
        escalate_after_seconds=escalate,
    )
    assert result.remind_at == (None if remind_at is None else START + timedelta(seconds=remind_at))
    assert result.escalate_at == (
        None if escalate_at is None else START + timedelta(seconds=escalate_at)
    )
    assert result.due_at == (None if timeout is None else START + timedelta(seconds=timeout))


# --- revocable ---------------------------------------------------------------------------------

US = timedelta(microseconds=1)
REVOCABLE_TABLE: list[tuple[str, datetime | None, int, datetime, bool]] = [
    ("never decided", None, 300, START, False),
    ("right after the decision", START, 300, START + timedelta(seconds=1), True),
    ("at the decision instant", START, 300, START, True),
    ("exactly at the window's end", START, 300, START + timedelta(seconds=300), True),
    ("one microsecond late", START, 300, START + timedelta(seconds=300) + US, False),
    ("long after", START, 300, START + timedelta(days=1), False),
    ("zero window, same instant", START, 0, START, True),
    ("zero window, a microsecond later", START, 0, START + US, False),
]


@pytest.mark.parametrize(
    ("decided_at", "window", "now", "expected"),
    [pytest.param(d, w, n, e, id=case) for case, d, w, n, e in REVOCABLE_TABLE],
)
def test_revocable(decided_at: datetime | None, window: int, now: datetime, expected: bool) -> None:
    assert revocable(decided_at=decided_at, window_seconds=window, now=now) is expected


# --- validate_checkpoint_policy ----------------------------------------------------------------

VALID_POLICY: dict[str, Any] = {
    "review_when": [{"path": "cost", "op": "gt", "value": 100}],
    "sla_seconds": dict(DEFAULT_SLA),
    "require_reason_on": ["reject", "request_changes"],
    "auto_approve_at": 0.9,
    "auto_reject_below": 0.1,
}

VALID_TABLE: list[tuple[str, dict[str, Any]]] = [
    ("the full example", {}),
    ("empty everything", {"review_when": [], "sla_seconds": {}, "require_reason_on": []}),
    ("no thresholds", {"auto_approve_at": None, "auto_reject_below": None}),
    ("thresholds at the bounds", {"auto_approve_at": 0.0, "auto_reject_below": 1.0}),
    ("exists needs no value", {"review_when": [{"path": "vendor.iban", "op": "exists"}]}),
    ("in with a list", {"review_when": [{"path": "country", "op": "in", "value": ["KP", "IR"]}]}),
    ("null value", {"review_when": [{"path": "x", "op": "eq", "value": None}]}),
    (
        "every op",
        {"review_when": [{"path": "p", "op": op, "value": [1]} for op in policy.CONDITION_OPS]},
    ),
    ("partial sla map", {"sla_seconds": {"critical": 60}}),
    (
        "all decisions need a reason",
        {"require_reason_on": ["approve", "reject", "request_changes"]},
    ),
]


@pytest.mark.parametrize("overrides", [pytest.param(o, id=case) for case, o in VALID_TABLE])
def test_validate_checkpoint_policy_accepts(overrides: dict[str, Any]) -> None:
    validate_checkpoint_policy(**{**VALID_POLICY, **overrides})


INVALID_TABLE: list[tuple[str, dict[str, Any], str]] = [
    # (case, overrides, field named in the error)
    ("review_when not a list", {"review_when": {"path": "cost"}}, "review_when"),
    ("review_when a string", {"review_when": "cost > 100"}, "review_when"),
    ("condition not an object", {"review_when": ["cost > 100"]}, "review_when"),
    ("condition without path", {"review_when": [{"op": "gt", "value": 1}]}, "review_when"),
    (
        "condition with empty path",
        {"review_when": [{"path": "", "op": "gt", "value": 1}]},
        "review_when",
    ),
    (
        "condition with numeric path",
        {"review_when": [{"path": 3, "op": "gt", "value": 1}]},
        "review_when",
    ),
    ("unknown op", {"review_when": [{"path": "cost", "op": "between", "value": 1}]}, "review_when"),
    ("missing op", {"review_when": [{"path": "cost", "value": 1}]}, "review_when"),
    ("missing value", {"review_when": [{"path": "cost", "op": "gt"}]}, "review_when"),
    (
        "in without a list",
        {"review_when": [{"path": "c", "op": "in", "value": "EUR"}]},
        "review_when",
    ),
    (
        "infinite value",
        {"review_when": [{"path": "c", "op": "gt", "value": float("inf")}]},
        "review_when",
    ),
    (
        "nan value",
        {"review_when": [{"path": "c", "op": "lt", "value": float("nan")}]},
        "review_when",
    ),
    (
        "second condition bad",
        {"review_when": [{"path": "c", "op": "gt", "value": 1}, {"path": "d", "op": "??"}]},
        "review_when",
    ),
    ("sla not a map", {"sla_seconds": [3600]}, "sla_seconds"),
    ("sla unknown priority", {"sla_seconds": {"urgent": 60}}, "sla_seconds"),
    ("sla zero", {"sla_seconds": {"high": 0}}, "sla_seconds"),
    ("sla negative", {"sla_seconds": {"low": -5}}, "sla_seconds"),
    ("sla float", {"sla_seconds": {"low": 1.5}}, "sla_seconds"),
    ("sla string", {"sla_seconds": {"low": "3600"}}, "sla_seconds"),
    ("sla boolean", {"sla_seconds": {"high": True}}, "sla_seconds"),
    ("require_reason_on not a list", {"require_reason_on": "reject"}, "require_reason_on"),
    ("require_reason_on unknown decision", {"require_reason_on": ["veto"]}, "require_reason_on"),
    ("auto_approve_at above 1", {"auto_approve_at": 1.5}, "auto_approve_at"),
    ("auto_approve_at negative", {"auto_approve_at": -0.1}, "auto_approve_at"),
    ("auto_approve_at nan", {"auto_approve_at": float("nan")}, "auto_approve_at"),
    ("auto_reject_below above 1", {"auto_reject_below": 2.0}, "auto_reject_below"),
    ("auto_reject_below negative", {"auto_reject_below": -1.0}, "auto_reject_below"),
]


@pytest.mark.parametrize(
    ("overrides", "field"), [pytest.param(o, f, id=case) for case, o, f in INVALID_TABLE]
)
def test_validate_checkpoint_policy_rejects(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        validate_checkpoint_policy(**{**VALID_POLICY, **overrides})
    assert list(excinfo.value.message_dict) == [field]
    assert all(excinfo.value.message_dict[field])  # a message a human can act on


# --- evaluate_round: the one quorum rule, options included ---------------------------------------


def ballots(spec: str) -> list[policy.Ballot]:
    """ "a a b R C" -> approve a, approve a, approve b, reject, request changes ("+" = approve
    without options)."""
    out = []
    for token in spec.split():
        if token == "R":
            out.append(policy.Ballot("reject"))
        elif token == "C":
            out.append(policy.Ballot("request_changes"))
        else:
            out.append(policy.Ballot("approve", "" if token == "+" else token))
    return out


ROUND_TABLE: list[tuple[str, str, int, bool, int, str, str]] = [
    # (case, ballots, required, veto, eligible, outcome, option)
    ("no votes", "", 2, True, 3, "pending", ""),
    ("plain approve reaches any", "+", 1, True, 3, "approved", ""),
    ("option approve reaches any", "b", 1, True, 3, "approved", "b"),
    ("all of 2, split options: impossible", "a b", 2, True, 2, "rejected", ""),
    ("all of 3, split options, one undecided", "a b", 3, True, 3, "rejected", ""),
    ("majority of 3, split, third undecided", "a b", 2, True, 3, "pending", ""),
    ("majority of 3, third joins b", "a b b", 2, True, 3, "approved", "b"),
    ("majority of 5, 2-2 split, one left", "a a b b", 3, True, 5, "pending", ""),
    ("majority of 5, 2-2-1 split", "a a b b c", 3, True, 5, "rejected", ""),
    ("count above eligible, only lacking votes", "+", 5, True, 1, "pending", ""),
    ("count above eligible, a vote elsewhere", "a b", 5, True, 2, "rejected", ""),
    ("no veto: reject while reachable", "R", 2, False, 3, "pending", ""),
    ("no veto: options and a reject", "a R", 2, False, 3, "pending", ""),
    ("no veto: reject makes it impossible", "a R", 3, False, 3, "rejected", ""),
    ("veto ends it", "a a R", 3, True, 4, "rejected", ""),
    ("request changes beats option approvals", "a a C", 2, True, 4, "changes_requested", ""),
    ("more voters than counted never go negative", "a b c", 2, True, 1, "rejected", ""),
]


@pytest.mark.parametrize(
    ("spec", "required", "veto", "eligible", "outcome", "option"),
    [pytest.param(*row[1:], id=row[0]) for row in ROUND_TABLE],
)
def test_evaluate_round(
    spec: str, required: int, veto: bool, eligible: int, outcome: str, option: str
) -> None:
    result = policy.evaluate_round(
        ballots=ballots(spec), required=required, veto=veto, eligible=eligible
    )
    assert (result.outcome, result.option) == (outcome, option)


# --- timeout_outcome ------------------------------------------------------------------------------

TIMEOUT_TABLE: list[tuple[str, str, str, bool, str, str, str]] = [
    # (case, timeout_action, status, has_options, ballots, outcome, option)
    ("reject action", "reject", "pending", False, "", "rejected", ""),
    ("approve action, no votes", "approve", "pending", False, "", "approved", ""),
    ("approve action, a partial approval", "approve", "pending", False, "+", "approved", ""),
    ("approve action, someone rejected", "approve", "pending", False, "+ R", "rejected", ""),
    (
        "changes requested, approve action",
        "approve",
        "changes_requested",
        False,
        "C",
        "rejected",
        "",
    ),
    ("changes requested, reject action", "reject", "changes_requested", False, "C", "rejected", ""),
    ("options, nobody chose", "approve", "pending", True, "", "rejected", ""),
    ("options, one chosen", "approve", "pending", True, "b", "approved", "b"),
    ("options, a leader", "approve", "pending", True, "a b b", "approved", "b"),
    ("options, a tie", "approve", "pending", True, "a b", "rejected", ""),
    ("options, reject action", "reject", "pending", True, "a", "rejected", ""),
]


@pytest.mark.parametrize(
    ("action", "status", "has_options", "spec", "outcome", "option"),
    [pytest.param(*row[1:], id=row[0]) for row in TIMEOUT_TABLE],
)
def test_timeout_outcome(
    action: str, status: str, has_options: bool, spec: str, outcome: str, option: str
) -> None:
    result = policy.timeout_outcome(
        timeout_action=action, status=status, has_options=has_options, ballots=ballots(spec)
    )
    assert (result.outcome, result.option) == (outcome, option)
    assert result.reason


# --- ballots, deadlines, approvals ----------------------------------------------------------------

BALLOT_TABLE: list[tuple[str, str, list[str], str, bool, str | None]] = [
    # (case, decision, option keys, selected, edits, problem starts with)
    ("plain approve", "approve", [], "", False, None),
    ("plain edit-and-approve", "approve", [], "", True, None),
    ("reject with an edit", "reject", [], "", True, "Only an approve"),
    ("reject selecting an option", "reject", ["a"], "a", False, "Only an approve"),
    ("approve without choosing", "approve", ["a", "b"], "", False, "Approving this proposal"),
    ("approve an unknown option", "approve", ["a", "b"], "z", False, "Approving this proposal"),
    ("approve an option", "approve", ["a", "b"], "b", False, None),
    ("approve an option and edit", "approve", ["a", "b"], "b", True, "Proposals with options"),
    ("select without options", "approve", [], "a", False, "This proposal has no options"),
    ("reject with options", "reject", ["a"], "", False, None),
]


@pytest.mark.parametrize(
    ("decision", "keys", "selected", "edits", "problem"),
    [pytest.param(*row[1:], id=row[0]) for row in BALLOT_TABLE],
)
def test_ballot_problem(
    decision: str, keys: list[str], selected: str, edits: bool, problem: str | None
) -> None:
    found = policy.ballot_problem(
        decision=decision, option_keys=keys, selected_option=selected, edits=edits
    )
    assert (found is None) if problem is None else (found or "").startswith(problem)


NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "due_at", "vote", "revise"),
    [
        ("pending", None, True, False),
        ("pending", NOW + timedelta(seconds=1), True, False),
        ("pending", NOW, False, False),  # the deadline itself belongs to the timeout
        ("changes_requested", NOW + timedelta(hours=1), False, True),
        ("changes_requested", NOW - timedelta(seconds=1), False, False),
        ("approved", None, False, False),
    ],
)
def test_voting_and_revising_open(
    status: str, due_at: datetime | None, vote: bool, revise: bool
) -> None:
    assert policy.voting_open(status=status, due_at=due_at, now=NOW) is vote
    assert policy.revising_open(status=status, due_at=due_at, now=NOW) is revise


def test_approved_content_is_the_chosen_option_or_the_payload() -> None:
    options = [{"key": "a", "payload": {"v": 1}}, {"key": "b", "payload": {"v": 2}}]
    assert policy.approved_content(payload={"p": 0}, options=[], option_key="") == {
        "approved_payload": {"p": 0},
        "selected_option": "",
    }
    assert policy.approved_content(payload={"p": 0}, options=options, option_key="b") == {
        "approved_payload": {"v": 2},
        "selected_option": "b",
    }
    with pytest.raises(ValueError):
        policy.approved_content(payload={}, options=options, option_key="")


# --- who may vote: the pure rule behind Access and the electorate ---------------------------------


@pytest.mark.parametrize(
    ("grants", "is_submitter", "escalated", "expected"),
    [
        ({"review_checkpoint"}, False, False, True),
        ({"review_checkpoint"}, True, False, False),
        ({"review_escalated_checkpoint"}, False, False, False),
        ({"review_escalated_checkpoint"}, False, True, True),
        ({"review_escalated_checkpoint"}, True, True, False),
        ({"manage_checkpoint", "submit_to_checkpoint"}, False, True, False),
        (set(), False, True, False),
    ],
)
def test_may_vote_with(
    grants: set[str], is_submitter: bool, escalated: bool, expected: bool
) -> None:
    from proposals.permissions import may_vote_with

    assert may_vote_with(grants, is_submitter=is_submitter, escalated=escalated) is expected


# --- payload bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "depth"),
    [(1, 0), ({}, 1), ([], 1), ({"a": 1}, 1), ({"a": {}}, 2), ({"a": [1, {"b": []}]}, 4)],
)
def test_json_depth(value: Any, depth: int) -> None:
    assert policy.json_depth(value) == depth


BOUNDS = {"max_bytes": 1000, "max_depth": 5, "max_operations": 10}

PATCH_TABLE: list[tuple[str, dict[str, Any], list[dict[str, Any]], Any]] = [
    # (case, payload, patch, result or the detail key that refuses it)
    ("replace", {"a": 1}, [{"op": "replace", "path": "/a", "value": 2}], {"a": 2}),
    (
        "copy within bounds",
        {"a": [1]},
        [{"op": "copy", "from": "/a", "path": "/b"}],
        {"a": [1], "b": [1]},
    ),
    (
        "too many operations",
        {"a": 1},
        [{"op": "test", "path": "/a", "value": 1}] * 11,
        "max_operations",
    ),
    (
        "add past the size",
        {"a": 1},
        [{"op": "add", "path": "/b", "value": "x" * 1000}],
        "max_bytes",
    ),
    (
        "copies doubling past the size",
        {"a": {"s": "x" * 300}},
        [{"op": "copy", "from": "/a", "path": f"/a/k{i}"} for i in range(10)],
        "max_bytes",
    ),
    (
        "add past the depth",
        {"a": 1},
        [{"op": "add", "path": "/b", "value": {"c": {"d": {"e": {"f": {}}}}}}],
        "max_depth",
    ),
    (
        "move deeper past the depth",
        {"a": {"b": {"c": {}}}, "x": {"y": {}}},
        [{"op": "move", "from": "/a", "path": "/x/y/z"}],
        "max_depth",
    ),
    (
        "copying and removing past the copy budget",
        {"a": "x" * 400},
        [{"op": "copy", "from": "/a", "path": "/b"}, {"op": "remove", "path": "/b"}] * 3,
        "max_copied_bytes",
    ),
    (
        "remove then add stays in bounds",
        {"a": "x" * 900},
        [{"op": "remove", "path": "/a"}, {"op": "add", "path": "/b", "value": "y" * 900}],
        {"b": "y" * 900},
    ),
]


@pytest.mark.parametrize(
    ("payload", "patch", "expected"), [pytest.param(*row[1:], id=row[0]) for row in PATCH_TABLE]
)
def test_apply_bounded_patch(payload: dict[str, Any], patch: list[Any], expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(policy.PayloadBoundExceeded) as refused:
            policy.apply_bounded_patch(payload, patch, **BOUNDS)
        assert expected in refused.value.details
    else:
        before = repr(payload)
        assert policy.apply_bounded_patch(payload, patch, **BOUNDS) == expected
        assert repr(payload) == before  # the proposal's payload is never changed in place


# --- typed payloads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object"}, None),
        ({}, None),
        ({"properties": {"a": {"type": "integer", "minimum": 0}}}, None),
        ([], "must be a JSON object"),
        ({"type": "objekt"}, "Not a valid JSON Schema"),
        ({"properties": {"a": {"minimum": "zero"}}}, "'/properties/a/minimum'"),
    ],
)
def test_schema_problem(schema: Any, problem: str | None) -> None:
    found = policy.schema_problem(schema)
    assert (found is None) if problem is None else problem in (found or "")


SCHEMA = {
    "type": "object",
    "properties": {
        "cost": {"type": "integer", "maximum": 10},
        "items": {"type": "array", "items": {"type": "string"}},
        "a/b": {"type": "boolean"},
    },
    "required": ["cost"],
}


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({"cost": 1}, []),
        ({}, [("", "required")]),
        ({"cost": 11}, [("/cost", "maximum")]),
        ({"cost": True}, [("/cost", "type")]),  # a boolean is not an integer
        ({"cost": 1, "items": ["a", 2, 3]}, [("/items/1", "type"), ("/items/2", "type")]),
        ({"cost": 1, "a/b": 1}, [("/a~1b", "type")]),
    ],
)
def test_payload_errors(payload: Any, errors: list[tuple[str, str]]) -> None:
    found = policy.payload_errors(payload, SCHEMA)
    assert [(e["path"], e["keyword"]) for e in found] == errors
    assert all(e["message"] for e in found)


@pytest.mark.parametrize(
    ("requested", "checkpoint", "problem"),
    [
        (None, 3600, None),
        (600, 3600, None),
        (3600, 3600, None),
        (3601, 3600, "at most the checkpoint's (3600)"),
        (0, 3600, "at least 1"),
        (600, None, None),  # a checkpoint without timeout: a proposal may still set one
    ],
)
def test_timeout_problem(
    requested: int | None, checkpoint: int | None, problem: str | None
) -> None:
    found = policy.timeout_problem(requested=requested, checkpoint_timeout=checkpoint)
    assert (found is None) if problem is None else problem in (found or "")
