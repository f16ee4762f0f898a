"""The outbox relay: turns committed OutboxEvent rows into deliveries.

Kicked on commit of every transaction that wrote events (notifications.services; a burst of
commits shares one queued run, notifications.tasks.kick_relay), and run by beat every
HITL_RELAY_INTERVAL_SECONDS as a safety net, so an event whose kick was lost (crash between
commit and send, broker down) is relayed on the next pass. Batches are claimed with
SKIP LOCKED: several relays split the work. Delivery is at-least-once; consumers dedupe by the
event id (webhook-id, websocket `id`).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Model
from django.db.models.base import ModelState
from django.utils import timezone

from hitl.models import ServiceAccount
from hitl.ops import metrics as ops_metrics
from notifications import emails, live, webhooks
from notifications.models import OutboxEvent
from proposals.models import Checkpoint, Proposal
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


class _Claimed(NamedTuple):
    """What the relay reads of a claimed event, its proposal, checkpoint and submitter: a
    column each, in one row (model instances for the four tables cost ~0.1 ms per event)."""

    event: OutboxEvent  # its proposal (when any) holds only the columns below
    checkpoint_slug: str | None
    submitter_id: int | None
    escalated: bool
    submitter_mailable: bool  # emails.decision_recipient's rule: a person with an address


def _claim_sql() -> str:
    """Claim the oldest undispatched events (SKIP LOCKED: another relay takes the next ones),
    mark them dispatched and read what relaying them needs, in one statement. The UPDATE's
    RETURNING loses the claim's order, hence the final ORDER BY on the same key."""
    quote = connection.ops.quote_name
    outbox = quote(OutboxEvent._meta.db_table)
    proposal = quote(Proposal._meta.db_table)
    checkpoint = quote(Checkpoint._meta.db_table)
    user_model = get_user_model()
    user = quote(user_model._meta.db_table)
    service = quote(ServiceAccount._meta.db_table)
    return f"""
        WITH claimed AS (
            SELECT id FROM {outbox}
            WHERE dispatched_at IS NULL
            ORDER BY created_at, id
            LIMIT %s
            FOR UPDATE SKIP LOCKED
        ), marked AS (
            UPDATE {outbox} o SET dispatched_at = %s
            FROM claimed WHERE o.id = claimed.id
            RETURNING o.id, o.topic, o.proposal_id, o.checkpoint_id, o.payload, o.created_at
        )
        SELECT m.id, m.topic, m.proposal_id, m.checkpoint_id, m.payload::text, m.created_at,
               p.status, p.revision, p.created_at, p.callback_url, p.checkpoint_id,
               p.submitted_by_id, p.escalated_at IS NOT NULL, c.slug,
               s.id IS NULL AND u.email <> ''
        FROM marked m
        LEFT JOIN {proposal} p ON p.id = m.proposal_id
        LEFT JOIN {checkpoint} c ON c.id = p.checkpoint_id
        LEFT JOIN {user} u ON u.{quote(user_model._meta.pk.column)} = p.submitted_by_id
        LEFT JOIN {service} s ON s.user_id = u.{quote(user_model._meta.pk.column)}
        ORDER BY m.created_at, m.id
    """  # noqa: S608 (table names from the models, values as parameters)


def _claim_portable(limit: int, now: datetime) -> list[_Claimed]:
    """The same claim through the ORM, for SQLite (embedded mode): its transactions take the
    write lock at BEGIN (IMMEDIATE), so one relay claims at a time with no SKIP LOCKED, and it
    has neither that clause nor an UPDATE inside WITH."""
    events = list(
        OutboxEvent.objects.filter(dispatched_at__isnull=True)
        .select_related("proposal__checkpoint", "proposal__submitted_by__service_account")
        .order_by("created_at", "id")[:limit]
    )
    OutboxEvent.objects.filter(pk__in=[event.pk for event in events]).update(dispatched_at=now)
    claimed = []
    for event in events:
        event.dispatched_at = now
        proposal = event.proposal
        if proposal is None:
            claimed.append(_Claimed(event, None, None, False, False))
            continue
        claimed.append(
            _Claimed(
                event,
                proposal.checkpoint.slug,
                proposal.submitted_by_id,
                proposal.escalated_at is not None,
                emails.decision_recipient(proposal) is not None,
            )
        )
    return claimed


def _claim(limit: int, now: datetime) -> list[_Claimed]:
    if connection.vendor != "postgresql":
        return _claim_portable(limit, now)
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(), [limit, now])
        rows = cursor.fetchall()
    claimed = []
    alias = connection.alias  # (a thread-local read through the proxy: once, not per row)
    cache_proposal = OutboxEvent.proposal.field.set_cached_value
    for (
        pk,
        topic,
        proposal_id,
        checkpoint_id,
        payload,
        created_at,
        status,
        revision,
        proposal_created_at,
        callback_url,
        proposal_checkpoint_id,
        submitter_id,
        escalated,
        slug,
        mailable,
    ) in rows:
        event = _loaded(
            OutboxEvent,
            alias,
            {
                "id": pk,
                "topic": topic,
                "proposal_id": proposal_id,
                "checkpoint_id": checkpoint_id,
                "payload": json.loads(payload),
                "created_at": created_at,
                "dispatched_at": now,
            },
        )
        proposal = None
        if proposal_id is not None:  # its other columns stay deferred
            proposal = _loaded(
                Proposal,
                alias,
                {
                    "id": proposal_id,
                    "status": status,
                    "revision": revision,
                    "created_at": proposal_created_at,
                    "callback_url": callback_url,
                    "checkpoint_id": proposal_checkpoint_id,
                    "submitted_by_id": submitter_id,
                },
            )
        cache_proposal(event, proposal)
        claimed.append(_Claimed(event, slug, submitter_id, bool(escalated), bool(mailable)))
    return claimed


_M = TypeVar("_M", bound=Model)


def _loaded(model: type[_M], alias: str, values: dict[str, Any]) -> _M:
    """An instance as the ORM reads one, with `values` (by attname) loaded and the rest
    deferred, built as unpickling builds one: from_db and Model.__init__ walk every field of
    the model with a setattr each, a sixth of a sweep event's relay CPU for its event and its
    proposal. (Neither model has pre_init or post_init receivers to skip.)"""
    instance = model.__new__(model)
    instance.__dict__.update(values)
    state = instance._state = ModelState()
    state.adding = False
    state.db = alias
    return instance


def _live_messages(claimed: _Claimed) -> list[tuple[str, live.LiveMessage]]:
    event = claimed.event
    proposal = event.proposal
    if proposal is None or claimed.submitter_id is None or claimed.checkpoint_slug is None:
        return []
    proposal_id = str(proposal.pk)
    message: live.LiveMessage = {
        "type": "proposal.update",
        "event": event.topic,
        "id": str(event.pk),
        "proposal": proposal_id,
        "checkpoint": claimed.checkpoint_slug,
        "status": event.payload.get("status", proposal.status),
        "revision": event.payload.get("revision", proposal.revision),
        "version": event.created_at.isoformat(),
    }
    groups = live.groups_for(
        checkpoint_id=proposal.checkpoint_id,
        submitter_id=claimed.submitter_id,
        proposal_id=proposal_id,
        escalated=claimed.escalated,
    )
    return [(group, message) for group in groups]


def relay_batch(limit: int = BATCH_SIZE) -> int:
    """Claim a batch of events in order and hand it on: claimed, marked and read in one
    statement, deliveries planned for the whole batch, new work queued for digests, and after
    commit the live messages, one delivery task per planned delivery and one mail task per
    event that has someone to mail (whether the submitter of a decision is a person with an
    address is read with the batch: a service account is mailed nothing, so a sweep of its
    proposals queues no mail tasks)."""
    with transaction.atomic():
        batch = _claim(limit, timezone.now())
        if not batch:
            return 0  # (a run kicked for events an earlier run took reads nothing else)
        events = [claimed.event for claimed in batch]
        endpoints = webhooks.active_endpoints()
        delivery_ids = [d.pk for d in webhooks.plan_deliveries(events, endpoints)]
        email_event_ids: list[Any] = []
        messages: list[tuple[str, live.LiveMessage]] = []
        # A burst of submits to one checkpoint by one agent asks the same question per event:
        # answered once per batch, and across batches while the rights version holds.
        reviewers_of: dict[tuple[int, int | None], frozenset[int]] = {}
        rights: list[str | None] = []  # the rights version, read when first needed
        new_work: list[tuple[Any, frozenset[int]]] = []
        for claimed in batch:
            messages += _live_messages(claimed)
            event = claimed.event
            proposal = event.proposal
            if proposal is None:
                continue
            # The proposal's status now, not the event's: a submission that policy approved
            # in the same transaction announced itself as pending first.
            if event.topic in NEW_WORK_TOPICS and proposal.status == "pending":
                asked = (proposal.checkpoint_id, claimed.submitter_id)
                if asked not in reviewers_of:
                    if not rights:
                        rights.append(_rights_version())
                    reviewers_of[asked] = _reviewer_ids(asked[0], asked[1], rights[0])
                new_work.append((proposal, reviewers_of[asked]))
            elif event.topic in RECIPIENTS_AT_SEND_TOPICS or (
                event.topic in DECISION_EMAIL_TOPICS and claimed.submitter_mailable
            ):
                email_event_ids.append(event.pk)
        if new_work:
            emails.queue_new_work(new_work)
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


def _reviewer_ids(
    checkpoint_id: int, submitter_id: int | None, rights: str | None
) -> frozenset[int]:
    """Who a new-work notice goes to (eligible_reviewers; their ids are all a notice needs)."""
    key = (checkpoint_id, submitter_id)
    ids = _reviewers.get(key, rights)
    if ids is None:
        generation = _reviewers.generation()
        checkpoint = Checkpoint.objects.get(pk=checkpoint_id)
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
