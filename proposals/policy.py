"""Policy as pure functions: routing, quorum and deadlines.

Plain values in, plain values out: no database, no clock reads (callers pass `now`). Each
function has a table-driven test in tests/proposals/test_policy.py.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from django.core.exceptions import ValidationError

CONDITION_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists")
PRIORITIES = ("critical", "high", "medium", "low")
DECISIONS = ("approve", "reject", "request_changes")

_MISSING = object()


# --- routing -------------------------------------------------------------------------------

RouteOutcome = Literal["review", "approve", "reject"]


@dataclass(frozen=True)
class Route:
    outcome: RouteOutcome
    resolution: Literal["", "policy", "bypass"]
    reason: str


def resolve_path(payload: Any, path: str) -> Any:
    """Walk a dotted path ("vendor.cost", "items.0.qty") through dicts and lists."""
    current = payload
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's, true is not 1 and false is not 0, at any depth."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def condition_matches(condition: dict[str, Any], payload: Any) -> bool:
    """True when the condition holds. Missing paths and type mismatches never match (except
    `exists: false`), so a malformed payload cannot raise: it simply does not match."""
    op = condition["op"]
    expected = condition.get("value")
    actual = resolve_path(payload, condition["path"])
    if op == "exists":
        return (actual is not _MISSING) == (expected if isinstance(expected, bool) else True)
    if actual is _MISSING:
        return False
    if op == "eq":
        return _same(actual, expected)
    if op == "ne":
        return not _same(actual, expected)
    if op in ("gt", "gte", "lt", "lte"):
        comparable = (_is_number(actual) and _is_number(expected)) or (
            isinstance(actual, str) and isinstance(expected, str)
        )
        if not comparable:
            return False
        return {
            "gt": actual > expected,
            "gte": actual >= expected,
            "lt": actual < expected,
            "lte": actual <= expected,
        }[op]
    if op == "in":
        return isinstance(expected, list) and any(_same(actual, item) for item in expected)
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list):
            return any(_same(item, expected) for item in actual)
        if isinstance(actual, dict):
            return isinstance(expected, str) and expected in actual
        return False
    raise ValueError(f"unknown operator {op!r}")


def sample_fraction(proposal_id: str) -> float:
    """A stable number in [0, 1) derived from the id: the same proposal always samples the same
    way, on every process, so a retried submission cannot dodge (or double) a spot-check."""
    digest = hashlib.sha256(str(proposal_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(
    *,
    proposal_id: str,
    payload: Any,
    confidence: float | None,
    enabled: bool,
    bypass_active: bool,
    auto_approve_at: float | None,
    auto_reject_below: float | None,
    review_when: list[dict[str, Any]],
    sample_rate: float,
) -> Route:
    """Decide whether a human must look. Order matters and is the contract:
    disabled > bypass > risky payload (review_when) > auto-reject > auto-approve (minus the
    spot-check sample) > review."""
    if not enabled:
        return Route("approve", "policy", "checkpoint disabled")
    if bypass_active:
        return Route("approve", "bypass", "emergency bypass active")
    for condition in review_when:
        if condition_matches(condition, payload):
            return Route(
                "review",
                "",
                f"review_when matched: {condition['path']} {condition['op']} "
                f"{condition.get('value')!r}",
            )
    if confidence is not None and auto_reject_below is not None and confidence < auto_reject_below:
        return Route("reject", "policy", f"confidence {confidence} below {auto_reject_below}")
    # A missing confidence counts as 0: only a threshold of 0 ("approve whatever review_when
    # lets through") approves it. It is never auto-rejected: absence is not low confidence.
    effective = confidence if confidence is not None else 0.0
    if auto_approve_at is not None and effective >= auto_approve_at:
        if sample_rate > 0 and sample_fraction(proposal_id) < sample_rate:
            return Route("review", "", "sampled for spot-check")
        return Route("approve", "policy", f"confidence {confidence} at or above {auto_approve_at}")
    return Route("review", "", "needs review")


# --- quorum --------------------------------------------------------------------------------

QuorumOutcome = Literal["pending", "approved", "rejected", "changes_requested"]


def required_approvals(rule: str, count: int, eligible: int) -> int:
    """How many approvals end the review, fixed at submission time."""
    if rule == "any":
        return 1
    if rule == "count":
        return max(1, count)
    if rule == "all":
        return max(1, eligible)
    if rule == "majority":
        return eligible // 2 + 1
    raise ValueError(f"unknown quorum rule {rule!r}")


def evaluate_quorum(
    *,
    required: int,
    veto: bool,
    eligible: int,
    approvals: int,
    rejections: int,
    changes_requested: int,
) -> QuorumOutcome:
    """The outcome of the current revision's votes. `approvals` counts approves for the leading
    option when the proposal has options. Callers hold the proposal's row lock."""
    if changes_requested > 0:
        return "changes_requested"
    if rejections > 0 and veto:
        return "rejected"
    if approvals >= required:
        return "approved"
    # Without veto, rejections still end it once the required approvals can no longer come.
    undecided = max(0, eligible - approvals - rejections)
    if rejections > 0 and approvals + undecided < required:
        return "rejected"
    return "pending"


# --- deadlines -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Deadlines:
    due_at: datetime | None
    sla_due_at: datetime
    remind_at: datetime | None = None
    escalate_at: datetime | None = None


def _after(start: datetime, seconds: int | None) -> datetime | None:
    return start + timedelta(seconds=seconds) if seconds else None


def deadlines(
    *,
    start: datetime,
    priority: str,
    timeout_seconds: int | None,
    sla_seconds: dict[str, int],
    remind_after_seconds: int | None = None,
    escalate_after_seconds: int | None = None,
) -> Deadlines:
    """When each timer fires for a proposal submitted (or revised) at `start`. A timer that
    would fire at or after the timeout never fires: the timeout decides first."""
    due_at = _after(start, timeout_seconds)
    defaults = {"critical": 3600, "high": 14400, "medium": 86400, "low": 259200}
    sla = sla_seconds.get(priority, defaults[priority])
    remind_at = _after(start, remind_after_seconds)
    escalate_at = _after(start, escalate_after_seconds)
    if due_at is not None:
        remind_at = remind_at if remind_at is not None and remind_at < due_at else None
        escalate_at = escalate_at if escalate_at is not None and escalate_at < due_at else None
    return Deadlines(
        due_at=due_at,
        sla_due_at=start + timedelta(seconds=sla),
        remind_at=remind_at,
        escalate_at=escalate_at,
    )


def revocable(*, decided_at: datetime | None, window_seconds: int, now: datetime) -> bool:
    return decided_at is not None and now <= decided_at + timedelta(seconds=window_seconds)


# --- validation of policy fields (admin and API write paths) --------------------------------


def validate_condition(condition: Any) -> None:
    if not isinstance(condition, dict):
        raise ValidationError("Each review_when condition must be an object.")
    path, op = condition.get("path"), condition.get("op")
    if not isinstance(path, str) or not path:
        raise ValidationError("A review_when condition needs a non-empty string 'path'.")
    if op not in CONDITION_OPS:
        raise ValidationError(f"Unknown op {op!r}; use one of {', '.join(CONDITION_OPS)}.")
    if op != "exists" and "value" not in condition:
        raise ValidationError(f"Condition on {path!r} with op {op!r} needs a 'value'.")
    if op == "in" and not isinstance(condition.get("value"), list):
        raise ValidationError(f"Condition on {path!r} with op 'in' needs a list value.")
    value = condition.get("value")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError("Condition values must be finite.")


def validate_checkpoint_policy(
    *,
    review_when: Any,
    sla_seconds: Any,
    require_reason_on: Any,
    auto_approve_at: float | None,
    auto_reject_below: float | None,
) -> None:
    if not isinstance(review_when, list):
        raise ValidationError({"review_when": "Must be a list of conditions."})
    try:
        for condition in review_when:
            validate_condition(condition)
    except ValidationError as exc:
        raise ValidationError({"review_when": exc.messages}) from None
    if not isinstance(sla_seconds, dict) or any(
        key not in PRIORITIES or isinstance(value, bool) or not isinstance(value, int) or value <= 0
        for key, value in sla_seconds.items()
    ):
        raise ValidationError(
            {"sla_seconds": "Map priorities (critical/high/medium/low) to positive seconds."}
        )
    if not isinstance(require_reason_on, list) or any(
        d not in DECISIONS for d in require_reason_on
    ):
        raise ValidationError({"require_reason_on": f"A list drawn from {', '.join(DECISIONS)}."})
    for name, value in (
        ("auto_approve_at", auto_approve_at),
        ("auto_reject_below", auto_reject_below),
    ):
        if value is not None and not 0 <= value <= 1:
            raise ValidationError({name: "Must be between 0 and 1."})
