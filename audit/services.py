"""Writing to and checking the audit chain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

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


def event_hash(
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
    prev_hash: str,
) -> str:
    body = canonical_json(
        {
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
    )
    return hashlib.sha256((body + prev_hash).encode()).hexdigest()


def _hash_of(event: AuditEvent) -> str:
    return event_hash(
        seq=event.seq,
        created_at=event.created_at,
        actor_id=event.actor_id,
        actor_label=event.actor_label,
        verb=event.verb,
        proposal_id=event.proposal_id,
        checkpoint_id=event.checkpoint_id,
        revision=event.revision,
        data=event.data,
        reason=event.reason,
        prev_hash=event.prev_hash,
    )


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
    )
    event.hash = _hash_of(event)
    event.save(force_insert=True)
    return event


@dataclass(frozen=True)
class BrokenLink:
    seq: int
    event_id: int
    problem: str


def iter_chain_problems(chunk_size: int = 2000) -> Iterator[BrokenLink]:
    """Walk the chain in order and yield what is wrong, first break first."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    with transaction.atomic():  # one snapshot: appends during the walk are not half-seen
        for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=chunk_size):
            if event.seq != expected_seq:
                yield BrokenLink(event.seq, event.pk, f"expected seq {expected_seq} (row missing)")
            if event.prev_hash != prev_hash:
                yield BrokenLink(event.seq, event.pk, "prev_hash does not match the previous event")
            if _hash_of(event) != event.hash:
                yield BrokenLink(event.seq, event.pk, "content does not match its hash (edited)")
            expected_seq = event.seq + 1
            prev_hash = event.hash


def audit_verify() -> tuple[int, BrokenLink | None]:
    """Return (events checked, first broken link or None)."""
    for problem in iter_chain_problems():
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
    }
