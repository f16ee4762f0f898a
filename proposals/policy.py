"""Policy as pure functions: routing, quorum and deadlines.

Plain values in, plain values out: no database, no clock reads (callers pass `now`). Each
function has a table-driven test in tests/proposals/test_policy.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import jsonpatch
import re2
from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as SchemaViolation

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
    """How many approvals end the review, fixed at submission time. Escalation widens who may
    supply them (see permissions.electorate), never the number."""
    if rule == "any":
        return 1
    if rule == "count":
        return max(1, count)
    if rule == "all":
        return max(1, eligible)
    if rule == "majority":
        return eligible // 2 + 1
    raise ValueError(f"unknown quorum rule {rule!r}")


@dataclass(frozen=True)
class Ballot:
    """One vote as the quorum rule sees it: the decision and, for an approve on a proposal
    with options, the option it chose ("" otherwise)."""

    decision: str
    option: str = ""


@dataclass(frozen=True)
class Tally:
    approvals: dict[str, int]  # by option; "" for proposals without options
    rejections: int
    changes_requested: int

    @property
    def voters(self) -> int:
        return sum(self.approvals.values()) + self.rejections + self.changes_requested

    def leaders(self) -> list[str]:
        """The options with the most approvals (more than one on a tie), none without any."""
        best = max(self.approvals.values(), default=0)
        return sorted(o for o, n in self.approvals.items() if n == best and n > 0)


def tally(ballots: Iterable[Ballot]) -> Tally:
    approvals: dict[str, int] = {}
    rejections = changes = 0
    for ballot in ballots:
        if ballot.decision == "approve":
            approvals[ballot.option] = approvals.get(ballot.option, 0) + 1
        elif ballot.decision == "reject":
            rejections += 1
        else:
            changes += 1
    return Tally(approvals=approvals, rejections=rejections, changes_requested=changes)


@dataclass(frozen=True)
class RoundOutcome:
    outcome: QuorumOutcome
    option: str = ""  # the approved option, when the proposal has options
    reason: str = ""


def evaluate_round(
    *, ballots: Iterable[Ballot], required: int, veto: bool, eligible: int
) -> RoundOutcome:
    """The outcome of the current revision's votes: the only quorum rule.

    Approvals count per option (a proposal without options has the one option ""): an option
    wins when its approvals reach `required`. A round that can no longer reach quorum ends
    `rejected` once a vote went elsewhere (a reject, or an approval of another option), so
    reviewers who split over options never leave it pending with everyone voted. A round
    that only lacks votes stays pending: reviewers granted later, or escalation, may still
    supply them. Callers hold the proposal's row lock."""
    counted = tally(ballots)
    if counted.changes_requested > 0:
        return RoundOutcome("changes_requested", reason="a reviewer requested changes")
    if counted.rejections > 0 and veto:
        return RoundOutcome("rejected", reason="vetoed")
    winners = [o for o, n in counted.approvals.items() if n >= required]
    if winners:
        option = max(sorted(winners), key=lambda o: counted.approvals[o])
        return RoundOutcome("approved", option=option, reason="quorum reached")
    best = max(counted.approvals.values(), default=0)
    undecided = max(0, eligible - counted.voters)
    elsewhere = counted.voters - best
    if elsewhere > 0 and best + undecided < required:
        return RoundOutcome("rejected", reason="the quorum can no longer be reached")
    return RoundOutcome("pending")


def evaluate_quorum(
    *,
    required: int,
    veto: bool,
    eligible: int,
    approvals: int,
    rejections: int,
    changes_requested: int,
) -> QuorumOutcome:
    """`evaluate_round` for a proposal without options, from counts."""
    ballots = (
        [Ballot("approve")] * approvals
        + [Ballot("reject")] * rejections
        + [Ballot("request_changes")] * changes_requested
    )
    return evaluate_round(ballots=ballots, required=required, veto=veto, eligible=eligible).outcome


def timeout_outcome(
    *, timeout_action: str, status: str, has_options: bool, ballots: Iterable[Ballot]
) -> RoundOutcome:
    """What the timeout does. A safe default means the safe outcome: it never approves what a
    human objected to or did not choose.
    - `changes_requested`: a reviewer asked to change this content, so it is rejected, always;
    - `timeout_action: reject`: rejected;
    - `approve`: rejected when someone in this round rejected; with options, it approves only
      the one option reviewers approved most (rejected when none or a tie), never one that
      no human picked; without options, the current payload (the agent's, or the one a
      reviewer edited and approved), as the checkpoint declared."""
    if status == "changes_requested":
        return RoundOutcome("rejected", reason="changes were requested and none came in time")
    if timeout_action != "approve":
        return RoundOutcome("rejected", reason="timeout_action is reject")
    counted = tally(ballots)
    if counted.rejections or counted.changes_requested:
        return RoundOutcome("rejected", reason="a reviewer rejected it")
    if has_options:
        leaders = counted.leaders()
        if len(leaders) != 1:
            return RoundOutcome("rejected", reason="no option was chosen by reviewers")
        return RoundOutcome("approved", option=leaders[0], reason="timeout_action is approve")
    return RoundOutcome("approved", reason="timeout_action is approve")


def approved_content(
    *, payload: Any, options: list[dict[str, Any]], option_key: str
) -> dict[str, Any]:
    """The fields an approval sets: with options, the chosen option's payload and key;
    without, the current payload. The one place "approve with an option" is spelled out."""
    if not options:
        return {"approved_payload": payload, "selected_option": ""}
    option = next((o for o in options if isinstance(o, dict) and o.get("key") == option_key), None)
    if option is None:
        raise ValueError(f"no option {option_key!r}")
    return {"approved_payload": option.get("payload"), "selected_option": option_key}


def policy_option(options: list[dict[str, Any]]) -> str:
    """The option a routing approval (auto-approve, disabled checkpoint, bypass) takes: the
    most confident one, the first on ties. Only routing uses it: the checkpoint's policy
    approved the agent's choice. A timeout never does (see timeout_outcome)."""
    if not options:
        return ""
    return str(max(options, key=lambda o: o.get("confidence") or 0)["key"])


# --- votes: what a ballot may carry and when voting is open ---------------------------------


def ballot_problem(
    *,
    decision: str,
    option_keys: list[str],
    selected_option: str,
    edits: bool,
) -> str | None:
    """Why this ballot is malformed for the proposal, or None. Only an approve selects an
    option or edits; a proposal with options is approved by choosing one, never edited."""
    if decision != "approve" and (selected_option or edits):
        return "Only an approve vote may select an option or edit the payload."
    if option_keys and decision == "approve":
        if selected_option not in option_keys:
            return "Approving this proposal means choosing one of its options."
        if edits:
            return "Proposals with options cannot be edited; pick an option."
    elif selected_option:
        return "This proposal has no options to select."
    return None


def reason_missing(*, decision: str, require_reason_on: list[str], comment: str) -> bool:
    return decision in (require_reason_on or []) and not comment.strip()


def past_deadline(*, due_at: datetime | None, now: datetime) -> bool:
    """Late votes and revisions lose to the timeout even before a sweep has applied it."""
    return due_at is not None and due_at <= now


def voting_open(*, status: str, due_at: datetime | None, now: datetime) -> bool:
    return status == "pending" and not past_deadline(due_at=due_at, now=now)


def revising_open(*, status: str, due_at: datetime | None, now: datetime) -> bool:
    return status == "changes_requested" and not past_deadline(due_at=due_at, now=now)


def is_open(*, status: str) -> bool:
    """Open work: it may be cancelled, claimed, and times out."""
    return status in ("pending", "changes_requested")


# --- payload bounds ---------------------------------------------------------------------------

# The same bounds hold for every payload, however it arrives: submitted, revised, an option's,
# or a reviewer's edit. The byte bound is the request body limit (DATA_UPLOAD_MAX_MEMORY_SIZE),
# so no edit can store more than a submission could.
MAX_PAYLOAD_DEPTH = 32
MAX_PATCH_OPERATIONS = 100


class PayloadBoundExceeded(ValueError):
    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_size(value: Any) -> int:
    """Bytes of the value as compact UTF-8 JSON."""
    return len(_compact(value).encode())


def json_depth(value: Any) -> int:
    """Nesting depth as the API counts it: {} is 1, {"a": {}} is 2, a scalar 0."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level + 1)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((v, level + 1) for v in item)
    return deepest


def check_payload_bounds(payload: Any, *, max_bytes: int, max_depth: int) -> None:
    size = json_size(payload)
    if size > max_bytes:
        raise PayloadBoundExceeded(
            f"The payload is {size} bytes; the limit is {max_bytes}.",
            {"bytes": size, "max_bytes": max_bytes},
        )
    depth = json_depth(payload)
    if depth > max_depth:
        raise PayloadBoundExceeded(
            f"The payload is nested {depth} levels deep; the limit is {max_depth}.",
            {"depth": depth, "max_depth": max_depth},
        )


def _pointer_tokens(pointer: Any) -> int:
    return len(str(pointer).split("/")) - 1 if pointer else 0


def apply_bounded_patch(
    payload: dict[str, Any],
    operations: list[Any],
    *,
    max_bytes: int,
    max_depth: int,
    max_operations: int = MAX_PATCH_OPERATIONS,
) -> Any:
    """Apply an RFC 6902 patch one operation at a time, refusing (PayloadBoundExceeded) the
    operation that would take the document past the bounds BEFORE it runs: a `copy` can
    double the document, so twenty of them in a 1 KB body would otherwise build megabytes.
    The document never grows past `max_bytes` plus one inserted value. Raises jsonpatch's
    exceptions for operations that do not apply."""
    if len(operations) > max_operations:
        raise PayloadBoundExceeded(
            f"A patch may have at most {max_operations} operations, not {len(operations)}.",
            {"operations": len(operations), "max_operations": max_operations},
        )
    # A private copy; a JSON round trip is many times cheaper than copy.deepcopy.
    document = json.loads(_compact(payload))
    # Upper bounds on the document's size and depth, kept close by subtracting what removals
    # take out and made exact only when they would pass a limit. A subtree at a pointer of k
    # tokens is at most (depth - k) deep, so most copies and moves need no walk. Copies share
    # one budget of `max_bytes`: copying and removing a large subtree a hundred times would
    # otherwise cost seconds of CPU within the size bound.
    size = json_size(document)
    depth_bound = json_depth(document)
    copied = 0
    for index, operation in enumerate(operations):
        if not isinstance(operation, dict):
            raise jsonpatch.InvalidJsonPatch(f"Operation {index} is not an object.")
        op, path = operation.get("op"), operation.get("path")
        text: str | None = None
        if op in ("remove", "replace"):
            removed = jsonpatch.JsonPointer(str(path)).resolve(document)
            size -= json_size(removed)
        if op in ("add", "replace") and "value" in operation:
            # The value came in the request body, so it is already bounded.
            depth = _pointer_tokens(path) + json_depth(operation["value"])
            text = _compact(operation["value"])
        elif op in ("copy", "move") and "from" in operation:
            source_pointer = str(operation["from"])
            source = jsonpatch.JsonPointer(source_pointer).resolve(document)
            depth = _pointer_tokens(path) + max(0, depth_bound - _pointer_tokens(source_pointer))
            if depth > max_depth:
                depth = _pointer_tokens(path) + json_depth(source)
            if op == "copy":
                text = _compact(source)
        else:  # remove, test
            document = jsonpatch.JsonPatch([operation]).apply(document, in_place=True)
            continue
        if depth > max_depth:
            raise PayloadBoundExceeded(
                f"Patch operation {index} would nest the payload {depth} levels deep; "
                f"the limit is {max_depth}.",
                {"operation": index, "depth": depth, "max_depth": max_depth},
            )
        depth_bound = max(depth_bound, depth)
        if text is not None:
            grown = len(text.encode()) + len(str(path))
            if size + grown > max_bytes:
                size = json_size(document)
            if size + grown > max_bytes:
                raise PayloadBoundExceeded(
                    f"Patch operation {index} would make the payload larger than "
                    f"{max_bytes} bytes.",
                    {"operation": index, "max_bytes": max_bytes},
                )
            size += grown
        if op == "copy":
            copied += len(text or "")
            if copied > max_bytes:
                raise PayloadBoundExceeded(
                    f"Patch operation {index} would copy more than {max_bytes} bytes in all.",
                    {"operation": index, "max_copied_bytes": max_bytes},
                )
            # Applied as an add of the copy already serialised for the size check.
            operation = {"op": "add", "path": path, "value": json.loads(text or "null")}
        document = jsonpatch.JsonPatch([operation]).apply(document, in_place=True)
    return document


# --- typed payloads (JSON Schema 2020-12) ------------------------------------------------------

MAX_SCHEMA_ERRORS = 50

# Schemas come from agents and managers, so their regular expressions are untrusted input:
# Python's backtracking `re` takes 2^n steps for ^(a+)+$ against n a's and a "!", a web
# process pinned for minutes by a 30-character payload. Payload patterns run on RE2, which
# matches in time linear in the text and refuses what it cannot do so (back-references,
# look-arounds, repetitions over 1000). The pattern keywords are replaced through jsonschema's
# public `extend`; its metaschema checks `pattern` and `patternProperties` keys as
# `format: regex`, so a format checker of RE2's compile refuses, with the path, what the
# validator could not run.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's answer, not a log line


def _regex(pattern: str) -> Any:
    """The pattern compiled by RE2 (re2 keeps the last 128 compiled); raises re2.error."""
    return re2.compile(pattern, _RE2_OPTIONS)


def _re2_problem(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else exc
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield SchemaViolation(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _regex(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Any:
    """jsonschema's own keyword, shown only the keys no `patternProperties` key matches by RE2
    (given the patterns, it would search every key again with `re`)."""
    if "patternProperties" in schema and validator.is_type(instance, "object"):
        patterns = [_regex(pattern) for pattern in schema["patternProperties"]]
        instance = {k: v for k, v in instance.items() if not any(p.search(k) for p in patterns)}
        schema = {k: v for k, v in schema.items() if k != "patternProperties"}
    yield from _ADDITIONAL_PROPERTIES(validator, additional, instance, schema)


_ADDITIONAL_PROPERTIES = Draft202012Validator.VALIDATORS["additionalProperties"]
# Draft 2020-12 with its pattern keywords on RE2: the validator of every payload schema.
PayloadValidator = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)

_RE2_FORMATS = FormatChecker(Draft202012Validator.FORMAT_CHECKER.checkers)


@_RE2_FORMATS.checks("regex", raises=re2.error)
def _is_re2_pattern(instance: object) -> bool:
    return not isinstance(instance, str) or _regex(instance) is not None


def _keys(schema: Any) -> set[str]:
    """Every object key anywhere in the schema (keywords, and names that look like them)."""
    keys: set[str] = set()
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.update(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return keys


def schema_problem(schema: Any) -> str | None:
    """Why this is not a usable JSON Schema (2020-12), or None. Its patterns must be ones RE2
    runs."""
    if not isinstance(schema, dict):
        return "A payload schema must be a JSON object."
    try:
        PayloadValidator.check_schema(schema, format_checker=_RE2_FORMATS)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        if isinstance(exc.cause, re2.error):
            return (
                f"Not a pattern RE2 can run at '/{where}': {_re2_problem(exc.cause)} "
                "(patterns are matched by RE2, in linear time: no back-references, "
                "look-arounds, or repetitions over 1000)."
            )
        return f"Not a valid JSON Schema (2020-12) at '/{where}': {exc.message}"
    if {"unevaluatedProperties", "patternProperties"} <= _keys(schema):
        # jsonschema finds the properties left unevaluated by searching every
        # patternProperties key with Python's backtracking `re`, past the RE2 keywords.
        return (
            "A payload schema may not combine unevaluatedProperties with patternProperties "
            "(use additionalProperties)."
        )
    return None


def _pointer(path: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def payload_errors(payload: Any, schema: dict[str, Any]) -> list[dict[str, str]]:
    """Every way the payload breaks the schema (the first MAX_SCHEMA_ERRORS, by path): each
    with its JSON Pointer `path` ("" is the payload itself), the failing `keyword` and a
    `message`. Raises referencing's Unresolvable for a `$ref` that cannot be resolved (no
    schema is ever fetched over the network)."""
    errors = sorted(
        PayloadValidator(schema).iter_errors(payload),
        key=lambda e: (_pointer(e.absolute_path), str(e.validator)),
    )
    return [
        {
            "path": _pointer(error.absolute_path),
            "keyword": str(error.validator),
            "message": error.message,
        }
        for error in errors[:MAX_SCHEMA_ERRORS]
    ]


def timeout_problem(*, requested: int | None, checkpoint_timeout: int | None) -> str | None:
    """A proposal's own timeout may shorten the checkpoint's, never lengthen it."""
    if requested is None:
        return None
    if requested < 1:
        return "timeout_seconds must be at least 1."
    if checkpoint_timeout is not None and requested > checkpoint_timeout:
        return f"timeout_seconds may be at most the checkpoint's ({checkpoint_timeout})."
    return None


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
