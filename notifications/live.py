"""Live updates over Channels: group names and the broadcast the relay makes after commit.

Groups mirror the visibility rule (proposals.permissions): a socket joins the group of each
checkpoint its user may review or manage, the `.escalated` group of checkpoints it reviews only
once escalated, its own user group (as a submitter), and for the detail socket the proposal's
group. A message therefore only reaches people who may see that proposal.

Broadcasting is best effort with a bounded timeout: a channel-layer or Redis failure is logged
and never fails anything; the outbox row stays the source of truth.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)


class LiveMessage(TypedDict):
    type: str  # the consumer handler: "proposal.update"
    event: str
    id: str  # the outbox event id: clients dedupe on it
    proposal: str
    checkpoint: str
    status: str
    revision: int
    version: str


def checkpoint_group(checkpoint_id: int) -> str:
    return f"checkpoint.{checkpoint_id}"


def escalated_group(checkpoint_id: int) -> str:
    return f"checkpoint.{checkpoint_id}.escalated"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def proposal_group(proposal_id: Any) -> str:
    return f"proposal.{proposal_id}"


def groups_for(
    *, checkpoint_id: int, submitter_id: int, proposal_id: Any, escalated: bool
) -> list[str]:
    groups = [
        checkpoint_group(checkpoint_id),
        user_group(submitter_id),
        proposal_group(proposal_id),
    ]
    if escalated:
        groups.append(escalated_group(checkpoint_id))
    return groups


async def _send_all(messages: list[tuple[str, LiveMessage]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    by_group: dict[str, list[LiveMessage]] = {}
    for group, message in messages:
        by_group.setdefault(group, []).append(message)

    async def in_order(group: str, batch: list[LiveMessage]) -> None:
        for message in batch:  # a group hears its events in the order they happened
            await layer.group_send(group, dict(message))

    await asyncio.wait_for(
        asyncio.gather(*(in_order(group, batch) for group, batch in by_group.items())),
        timeout=settings.HITL_LIVE_SEND_TIMEOUT_SECONDS,
    )


def broadcast(messages: list[tuple[str, LiveMessage]]) -> bool:
    """Send (group, message) pairs; False (logged) when the layer is unreachable."""
    if not messages:
        return True
    try:
        async_to_sync(_send_all)(messages)
    except Exception:  # a live update must never break the caller; the outbox catches up
        logger.warning("live update failed for %d message(s)", len(messages), exc_info=True)
        return False
    return True
