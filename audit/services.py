"""Writing to and checking the audit chain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import rfc8785
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditEvent

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    from proposals.models import Checkpoint, Proposal

GENESIS_HASH = "0" * 64
# pg_advisory_xact_lock(class, object) namespace for the chain; other locks use other classes.
AUDIT_LOCK_CLASS = 7301


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def jsonable(value: Any) -> Any:
    """What the JSONField will hand back after a round trip (Decimals, dates and UUIDs as
    strings), so the hash computed now matches the hash recomputed from the stored row."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


# How `hash` was computed, stored per row (AuditEvent.hash_version) so rows written by older
# code keep verifying under the rule they were written with. Rows are never re-hashed: the
# table is append-only, and re-hashing would bless whatever had been edited before.
HASH_V1_PYTHON_JSON = 1  # sha256 over Python's json.dumps text: jsonb rewrites some numbers
HASH_V2_JCS = 2  # sha256 over RFC 8785 (JCS): survives jsonb and SQLite round trips
HASH_VERSION = HASH_V2_JCS

# jsonb hands integral floats from 1e16 up back as ints ("1e+16" -> 10000000000000000):
# below that Python writes them with ".0", which jsonb keeps.
_V1_JSONB_INT_FROM = 10**16


def _as_jcs_numbers(value: Any) -> Any:
    """Every number as the IEEE double JSON means (RFC 8785 / I-JSON): 1e16, 10000000000000000
    and 1.0e16 are one value, whatever text or type a database hands back. Integers beyond
    2**53 therefore hash at double precision, as in every JCS implementation."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # beyond any double: no JSON number means it; keep the digits
            return str(value)
    if isinstance(value, dict):
        return {_utf8(key): _as_jcs_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_jcs_numbers(item) for item in value]
    return value


def _utf8(text: str) -> str:
    """JSON's "\\ud800" parses to a lone surrogate, which SQLite stores and hands back but
    RFC 8785 (UTF-8 only) refuses: hash its escape instead of failing the write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _event_body(
    *,
    seq: int,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    verb: str,
    proposal_id: Any,
    checkpoint_id: int | None,
    revision: int | None,
    data: Any,
    reason: str,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "created_at": created_at.isoformat(),
        "actor_id": actor_id,
        "actor_label": actor_label,
        "verb": verb,
        "proposal_id": str(proposal_id) if proposal_id is not None else None,
        "checkpoint_id": checkpoint_id,
        "revision": revision,
        "data": data,
        "reason": reason,
    }


def event_hash(*, prev_hash: str, hash_version: int = HASH_VERSION, **fields: Any) -> str:
    body = _event_body(**fields)
    if hash_version == HASH_V1_PYTHON_JSON:
        text = canonical_json(body).encode()
    elif hash_version == HASH_V2_JCS:
        # The version is hashed too: relabelling a row as v1 cannot dodge the v2 check.
        text = rfc8785.dumps(_as_jcs_numbers({**body, "hash_version": hash_version}))
    else:
        raise ValueError(f"unknown audit hash version {hash_version}")
    return hashlib.sha256(text + prev_hash.encode()).hexdigest()


def _fields_of(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "created_at": event.created_at,
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "verb": event.verb,
        "proposal_id": event.proposal_id,
        "checkpoint_id": event.checkpoint_id,
        "revision": event.revision,
        "data": event.data,
        "reason": event.reason,
        "prev_hash": event.prev_hash,
    }


def _big_ints(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return 1 if abs(value) >= _V1_JSONB_INT_FROM else 0
    if isinstance(value, dict):
        return sum(_big_ints(item) for item in value.values())
    if isinstance(value, list):
        return sum(_big_ints(item) for item in value)
    return 0


def _with_floats(value: Any, mask: int, counter: list[int]) -> Any:
    """`value` with the big ints whose position (in walk order) is set in `mask` as floats."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _V1_JSONB_INT_FROM:
        position = counter[0]
        counter[0] += 1
        if mask >> position & 1:
            try:
                return float(value)
            except OverflowError:
                return value
        return value
    if isinstance(value, dict):
        return {key: _with_floats(item, mask, counter) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_floats(item, mask, counter) for item in value]
    return value


# Version-1 rows with more big numbers than this are checked as read and all as floats only.
_V1_MAX_SPELLINGS = 10


def _hash_matches(event: AuditEvent) -> bool:
    fields = _fields_of(event)
    if event.hash_version != HASH_V1_PYTHON_JSON:
        return event_hash(hash_version=event.hash_version, **fields) == event.hash
    # A v1 row written as 1e+16 reads back from jsonb as 10000000000000000: the text it was
    # hashed over is gone, so also accept each big int spelled as the float that may have been
    # written. Only the int/float spelling is forgiven; any change of value still fails.
    count = _big_ints(event.data)
    masks = range(2**count) if count <= _V1_MAX_SPELLINGS else (0, 2**count - 1)
    for mask in masks:
        fields["data"] = _with_floats(event.data, mask, [0])
        if event_hash(hash_version=HASH_V1_PYTHON_JSON, **fields) == event.hash:
            return True
    return False


def _lock_chain() -> None:
    """Serialize appends: the chain has one head. Held to the end of the transaction, so callers
    take it last, after every row lock they need (a holder never waits on a proposal row, which
    keeps appenders deadlock-free). SQLite already serializes writers."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [AUDIT_LOCK_CLASS])


def audit_record(
    *,
    verb: str,
    actor: User | AnonymousUser | None,
    proposal: Proposal | None = None,
    checkpoint: Checkpoint | None = None,
    revision: int | None = None,
    data: dict[str, Any] | None = None,
    reason: str = "",
) -> AuditEvent:
    """Append one event. Precondition: inside the transaction that makes the change it records."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction it records.")
    _lock_chain()
    last = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
    seq = last.seq + 1 if last else 1
    prev_hash = last.hash if last else GENESIS_HASH
    authenticated = actor is not None and actor.is_authenticated
    actor_user = cast("User | None", actor if authenticated else None)
    if checkpoint is None and proposal is not None:
        checkpoint = proposal.checkpoint
    event = AuditEvent(
        seq=seq,
        created_at=timezone.now(),
        actor=actor_user,
        actor_label=actor_user.get_username() if actor_user is not None else "system",
        verb=verb,
        proposal=proposal,
        checkpoint=checkpoint,
        revision=revision,
        data=jsonable(data or {}),
        reason=reason,
        prev_hash=prev_hash,
        hash_version=HASH_VERSION,
    )
    event.hash = event_hash(hash_version=HASH_VERSION, **_fields_of(event))
    event.save(force_insert=True)
    return event


@dataclass(frozen=True)
class BrokenLink:
    seq: int
    event_id: int
    problem: str


class ChainWalk:
    """One pass over the chain in seq order, in chunks (constant memory whatever its length).
    Iterating yields every problem, not just the first: a false alarm must not hide real breaks
    after it. `checked` counts the events seen so far."""

    def __init__(self, chunk_size: int = 2000) -> None:
        self.chunk_size = chunk_size
        self.checked = 0
        self.broken = 0

    def __iter__(self) -> Generator[BrokenLink, None, None]:
        expected_seq = 1
        prev_hash = GENESIS_HASH
        # One statement, one snapshot (a server-side cursor on PostgreSQL): appends during
        # the walk are not half-seen.
        events = cast(
            "Generator[AuditEvent, None, None]",  # what QuerySet.iterator() really returns
            AuditEvent.objects.order_by("seq").iterator(chunk_size=self.chunk_size),
        )
        # closing(): a walk abandoned early closes its cursor before its transaction ends.
        with transaction.atomic(), closing(events):
            for event in events:
                self.checked += 1
                problems = []
                if event.seq != expected_seq:
                    problems.append(f"expected seq {expected_seq} (row missing)")
                if event.prev_hash != prev_hash:
                    problems.append("prev_hash does not match the previous event")
                if not _hash_matches(event):
                    problems.append("content does not match its hash (edited)")
                for problem in problems:
                    self.broken += 1
                    yield BrokenLink(event.seq, event.pk, problem)
                expected_seq = event.seq + 1
                prev_hash = event.hash


def audit_verify() -> tuple[int, BrokenLink | None]:
    """Return (events checked, first broken link or None); with a break, the count is of the
    events before it. `manage.py audit_verify` reports every break."""
    with closing(iter(ChainWalk())) as problems:
        for problem in problems:
            return problem.seq - 1, problem
    return AuditEvent.objects.count(), None


def event_as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_label,
        "actor_id": event.actor_id,
        "verb": event.verb,
        "proposal_id": str(event.proposal_id) if event.proposal_id else None,
        "checkpoint_id": event.checkpoint_id,
        "revision": event.revision,
        "data": event.data,
        "reason": event.reason,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "hash_version": event.hash_version,
    }
