"""The outbox relay: turns committed OutboxEvent rows into deliveries.

Kicked on commit of every transaction that wrote events (notifications.services; a burst of
commits shares one queued run, notifications.tasks.kick_relay), and run by beat every
HITL_RELAY_INTERVAL_SECONDS as a safety net, so an event whose kick was lost (crash between
commit and send, broker down) is relayed on the next pass. Batches are claimed with
SKIP LOCKED: several relays split the work. Delivery is at-least-once; consumers dedupe by the
event id (webhook-id, websocket `id`).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from hitl.ops import metrics as ops_metrics
from notifications import emails, live, webhooks
from notifications.models import OutboxEvent, WebhookEndpoint
from proposals.permissions import RightsCache, electorate_ids

logger = logging.getLogger(__name__)

BATCH_SIZE = 200
NEW_WORK_TOPICS = ("proposal.submitted", "proposal.revised")
# Mailed at once. Reviewers, holders and managers are resolved by the mail task when it
# sends (rights and votes as they are then); a decision goes to its submitter, if a person.
RECIPIENTS_AT_SEND_TOPICS = (
    "proposal.reminder",
    "proposal.escalated",
    "proposal.sla_breached",
)
DECISION_EMAIL_TOPICS = (
    "proposal.approved",
    "proposal.rejected",
    "proposal.changes_requested",
    "proposal.cancelled",
    "proposal.revoked",
)


# Proposal and checkpoint columns the relay never reads (deferred in its batch query).
_UNREAD = (
    *(
        f"proposal__{name}"
        for name in (
            "summary",
            "payload",
            "options",
            "context",
            "labels",
            "payload_schema",
            "approved_payload",
        )
    ),
    *(
        f"proposal__checkpoint__{name}"
        for name in ("description", "review_when", "payload_schema", "bypass_reason")
    ),
)


def _live_messages(event: OutboxEvent) -> list[tuple[str, live.LiveMessage]]:
    proposal = event.proposal
    if proposal is None:
        return []
    message: live.LiveMessage = {
        "type": "proposal.update",
        "event": event.topic,
        "id": str(event.pk),
        "proposal": str(proposal.pk),
        "checkpoint": proposal.checkpoint.slug,
        "status": event.payload.get("status", proposal.status),
        "revision": event.payload.get("revision", proposal.revision),
        "version": event.created_at.isoformat(),
    }
    groups = live.groups_for(
        checkpoint_id=proposal.checkpoint_id,
        submitter_id=proposal.submitted_by_id,
        proposal_id=proposal.pk,
        escalated=proposal.escalated_at is not None,
    )
    return [(group, message) for group in groups]


def relay_batch(limit: int = BATCH_SIZE) -> int:
    """Claim a batch of events in order and hand it on: deliveries planned and events marked
    in a few statements for the whole batch, new work queued for digests, and after commit the
    live messages, one delivery task per planned delivery and one mail task per event that has
    someone to mail (the submitter of a decision is read with the batch: a service account is
    mailed nothing, so a sweep of its proposals queues no mail tasks)."""
    endpoints = list(WebhookEndpoint.objects.filter(active=True))
    with transaction.atomic():
        events = list(
            OutboxEvent.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(dispatched_at__isnull=True)
            .select_related("proposal__checkpoint", "proposal__submitted_by__service_account")
            # Nothing here reads what the proposal proposes: its JSON, decoded per event,
            # is left in the database (the deliveries send the event's own payload).
            .defer(*_UNREAD)
            .order_by("created_at")[:limit]
        )
        if not events:
            return 0
        delivery_ids = [d.pk for d in webhooks.plan_deliveries(events, endpoints)]
        email_event_ids: list[Any] = []
        messages: list[tuple[str, live.LiveMessage]] = []
        # A burst of submits to one checkpoint by one agent asks the same question per event:
        # answered once per batch, and across batches while the rights version holds.
        reviewers_of: dict[tuple[int, int | None], frozenset[int]] = {}
        rights: list[str | None] = []  # the rights version, read when first needed
        new_work: list[tuple[Any, frozenset[int]]] = []
        for event in events:
            messages += _live_messages(event)
            proposal = event.proposal
            if proposal is None:
                continue
            # The proposal's status now, not the event's: a submission that policy approved
            # in the same transaction announced itself as pending first.
            if event.topic in NEW_WORK_TOPICS and proposal.status == "pending":
                asked = (proposal.checkpoint_id, proposal.submitted_by_id)
                if asked not in reviewers_of:
                    if not rights:
                        rights.append(_rights_version())
                    reviewers_of[asked] = _reviewer_ids(proposal.checkpoint, asked[1], rights[0])
                new_work.append((proposal, reviewers_of[asked]))
            elif event.topic in RECIPIENTS_AT_SEND_TOPICS or (
                event.topic in DECISION_EMAIL_TOPICS
                and emails.decision_recipient(proposal) is not None
            ):
                email_event_ids.append(event.pk)
        if new_work:
            emails.queue_new_work(new_work)
        OutboxEvent.objects.filter(pk__in=[e.pk for e in events]).update(
            dispatched_at=timezone.now()
        )
        transaction.on_commit(lambda: _after_commit(delivery_ids, email_event_ids, messages))
        ops_metrics.relayed(events)  # counters and the override alert, after this commit
    return len(events)


# eligible_reviewers' ids per (checkpoint, submitter), remembered in this process under the
# rights version read at the start of the batch, as the API remembers electorate sizes: a
# stream of relay runs for one agent's submits asks the grants once, not once per run.
_reviewers: RightsCache[tuple[int, int | None], frozenset[int]] = RightsCache()


def _rights_version() -> str | None:
    version = live.rights_version()
    return version if isinstance(version, str) else None  # unknown: nothing is remembered


def _reviewer_ids(checkpoint: Any, submitter_id: int | None, rights: str | None) -> frozenset[int]:
    """Who a new-work notice goes to (eligible_reviewers; their ids are all a notice needs)."""
    key = (checkpoint.pk, submitter_id)
    ids = _reviewers.get(key, rights)
    if ids is None:
        generation = _reviewers.generation()
        ids = frozenset(electorate_ids(checkpoint, submitter_id=submitter_id, escalated=False))
        _reviewers.put(key, ids, rights, generation)
    return ids


def _after_commit(
    delivery_ids: list[Any],
    email_event_ids: list[Any],
    messages: list[tuple[str, live.LiveMessage]],
) -> None:
    from notifications import tasks

    live.broadcast(messages)
    for delivery_id in delivery_ids:
        tasks.enqueue(tasks.deliver_webhook, str(delivery_id))
    for event_id in email_event_ids:
        tasks.enqueue(tasks.send_event_email, str(event_id))


def relay_all(max_batches: int = 50) -> int:
    total = 0
    for _ in range(max_batches):
        count = relay_batch()
        total += count
        if count < BATCH_SIZE:
            break
    return total
