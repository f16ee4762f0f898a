"""Writing outbox rows. The relay that delivers them lives beside them in this app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.utils import timezone

from audit.services import jsonable
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
    if checkpoint is None and proposal is not None:
        checkpoint = proposal.checkpoint
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
    return OutboxEvent.objects.create(
        topic=topic,
        proposal=proposal,
        checkpoint=checkpoint,
        payload=jsonable(payload),
        created_at=timezone.now(),
    )
