"""Writing outbox rows. The relay that delivers them lives beside them in this app."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.utils import timezone

from audit.services import copy_rows, jsonable
from notifications import kicks
from notifications.models import OutboxEvent

if TYPE_CHECKING:
    from proposals.models import Checkpoint, Proposal


def outbox_emit(
    topic: str,
    *,
    proposal: Proposal | None = None,
    checkpoint: Checkpoint | None = None,
    data: dict[str, Any] | None = None,
) -> OutboxEvent:
    """Precondition: inside the transaction that makes the change announced."""
    event = _outbox_event(topic, proposal=proposal, checkpoint=checkpoint, data=data)
    _kick_relay_on_commit()
    event.save(force_insert=True)
    return event


def outbox_event(
    topic: str, *, proposal: Proposal, data: dict[str, Any] | None = None
) -> OutboxEvent:
    """`outbox_emit`'s row, not yet written: the caller inserts it in this transaction with
    its own rows (a submit writes it in the statement that writes the proposal)."""
    _kick_relay_on_commit()
    return _outbox_event(topic, proposal=proposal, data=data)


def outbox_emit_many(events: list[tuple[str, Proposal, dict[str, Any]]]) -> None:
    """`outbox_emit(topic, proposal=..., data=...)` for each (topic, proposal, data), in one
    COPY on PostgreSQL (a sweep chunk). Same precondition."""
    if not events:
        return
    _kick_relay_on_commit()
    if connection.vendor != "postgresql":
        OutboxEvent.objects.bulk_create(
            [_outbox_event(topic, proposal=p, data=data) for topic, p, data in events]
        )
        return
    copy_rows(
        OutboxEvent,
        _COPIED,
        (
            # Each its own created_at, as outbox_emit: the relay keeps the order they were
            # written in (ties would go by the random id).
            (uuid.uuid4(), topic, p.pk, p.checkpoint_id, _payload(topic, p, data), timezone.now())
            for topic, p, data in events
        ),
    )


_COPIED = ("id", "topic", "proposal_id", "checkpoint_id", "payload", "created_at")


def _outbox_event(
    topic: str,
    *,
    proposal: Proposal | None = None,
    checkpoint: Checkpoint | None = None,
    data: dict[str, Any] | None = None,
) -> OutboxEvent:
    if checkpoint is None and proposal is not None:
        checkpoint = proposal.checkpoint
    return OutboxEvent(
        topic=topic,
        proposal=proposal,
        checkpoint=checkpoint,
        payload=_payload(topic, proposal, data),
        created_at=timezone.now(),
    )


def _payload(topic: str, proposal: Proposal | None, data: dict[str, Any] | None) -> Any:
    payload: dict[str, Any] = {"type": topic}
    if proposal is not None:
        payload.update(
            proposal_id=str(proposal.pk),
            checkpoint=proposal.checkpoint.slug,
            status=proposal.status,
            resolution=proposal.resolution,
            revision=proposal.revision,
        )
    payload.update(data or {})
    return jsonable(payload)


def _kick_relay_on_commit() -> None:
    """Once per transaction, however many events it writes: after commit, ask a worker to
    relay (notifications.kicks: in a web process, off the request's path). Django keeps
    pending callbacks in connection.run_on_commit."""
    if any(entry[1] is kicks.after_commit for entry in connection.run_on_commit):
        return
    transaction.on_commit(kicks.after_commit, robust=True)
