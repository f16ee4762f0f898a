"""Delivery tasks. Each takes ids, re-reads state and is a no-op when the work is done."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.app.task import Task

from notifications import emails, relay, webhooks
from notifications.models import OutboxEvent
from proposals.models import Vote
from proposals.permissions import MANAGE, REVIEW_ESCALATED, eligible_reviewers, holders

logger = logging.getLogger(__name__)


class _Sent:
    """What a send hands back here: the id, nothing else. `apply_async` answers with an
    AsyncResult, whose constructor fetches the app's result backend; Celery caches that backend
    per thread, and the ASGI server runs every request in a fresh thread, so each publish on
    commit rebuilt a Redis result backend (three quarters of the kick's time). No task here
    has a result to fetch (task_ignore_result), so nothing needs the backend."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def enqueue(task: Task, *args: Any) -> bool:
    """Send a task without ever failing the caller: when the broker is down the beat safety
    nets (relay, due deliveries) pick the work up later. Published through the app's
    process-wide producer pool; the broker's bounded-publish options (redis_clients) keep a
    down broker from holding the caller."""
    try:
        task.app.send_task(
            task.name,
            args=args,
            retry=False,
            ignore_result=True,
            result_cls=_Sent,  # type: ignore[arg-type]  # duck-typed: Celery only sets .ignored
        )
    except Exception:
        logger.warning(
            "could not enqueue %s%r; the periodic sweep will retry", task.name, args, exc_info=True
        )
        return False
    return True


def kick_relay() -> None:
    enqueue(relay_outbox)


@shared_task(name="notifications.tasks.relay_outbox", ignore_result=True)
def relay_outbox() -> int:
    return relay.relay_all()


@shared_task(name="notifications.tasks.deliver_webhook", ignore_result=True)
def deliver_webhook(delivery_id: str) -> str | None:
    return webhooks.deliver(delivery_id)


@shared_task(name="notifications.tasks.deliver_due_webhooks", ignore_result=True)
def deliver_due_webhooks() -> int:
    """Retries (and first attempts whose task was lost) come due in the database."""
    ids = webhooks.due_delivery_ids()
    for delivery_id in ids:
        enqueue(deliver_webhook, str(delivery_id))
    return len(ids)


@shared_task(name="notifications.tasks.send_digests", ignore_result=True)
def send_digests() -> int:
    return emails.send_due_digests()


@shared_task(name="notifications.tasks.send_event_email", ignore_result=True)
def send_event_email(event_id: str) -> None:
    event = (
        OutboxEvent.objects.select_related(
            "proposal__checkpoint", "proposal__submitted_by__service_account"
        )
        .filter(pk=event_id)
        .first()
    )
    if event is None or event.proposal is None:
        return
    proposal = event.proposal
    checkpoint = proposal.checkpoint
    if event.topic == "proposal.reminder":
        if proposal.status != "pending":
            return
        voted = Vote.objects.filter(proposal=proposal, revision=proposal.revision).values(
            "reviewer_id"
        )
        reviewers = eligible_reviewers(checkpoint, exclude_user_id=proposal.submitted_by_id)
        emails.send_reminder(proposal, list(reviewers.exclude(pk__in=voted)))
    elif event.topic == "proposal.escalated":
        emails.send_escalation(
            proposal,
            list(holders(checkpoint, REVIEW_ESCALATED, exclude_user_id=proposal.submitted_by_id)),
        )
    elif event.topic == "proposal.sla_breached":
        emails.send_sla_breach(proposal, list(holders(checkpoint, MANAGE)))
    else:  # a decision or a request for changes: tell a human submitter
        recipient = emails.decision_recipient(proposal)
        if recipient is not None:
            emails.send_decision(proposal, recipient)
