"""Delivery tasks. Each takes ids, re-reads state and is a no-op when the work is done."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.app.task import Task
from django.db import connection

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
        _send(task, *args)
    except Exception:
        logger.warning(
            "could not enqueue %s%r; the periodic sweep will retry", task.name, args, exc_info=True
        )
        return False
    return True


def _send(task: Task, *args: Any, producer: Any = None) -> None:
    task.app.send_task(
        task.name,
        args=args,
        producer=producer,
        retry=False,
        ignore_result=True,
        result_cls=_Sent,  # type: ignore[arg-type]  # duck-typed: Celery only sets .ignored
    )


# A burst of commits shares one relay run: while a relay_outbox message waits in the broker
# (not yet started), a flag beside it says so and further kicks publish nothing; that run
# reads their events, since it clears the flag before it reads the outbox. The flag expires
# on its own in case its message is lost (the beat's periodic relay covers that too).
RELAY_PENDING_SECONDS = 10


def _relay_pending_key() -> str:
    """Per database and per queue the relay is routed to: what "a run is on its way" means
    (tests route tasks to a queue of their own, several test databases share one Redis)."""
    app: Any = relay_outbox.app  # (celery's stubs lack amqp.router)
    queue = app.amqp.router.route({}, relay_outbox.name)["queue"].name
    return f"nihil:relay-pending:{connection.settings_dict['NAME']}:{queue}"


# A Redis client per producer channel, kept while the channel lives: kombu's conn_or_acquire
# builds a new one per call (a redis.Redis and its ~80 response callbacks), most of the CPU of
# setting or clearing the flag. It draws connections from the channel's pool as before.
_flag_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


@contextmanager
def _broker_client() -> Iterator[tuple[Any, Any]]:
    """A producer from the app's pool and a Redis client on its broker connection."""
    app: Any = relay_outbox.app  # (celery's stubs miss FallbackContext's context manager)
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        client = _flag_clients.get(channel)
        if client is None:
            with channel.conn_or_acquire() as client:
                _flag_clients[channel] = client
        yield producer, client


def kick_relay() -> None:
    """After a commit that wrote outbox events: make sure a relay run is on its way. The flag
    lives in the broker's Redis (SET NX on the publishing connection), so it is set where its
    message is queued and a broker that is down costs one bounded failure, not two. A kick
    that fails only logs, as before: the beat's periodic relay picks the events up."""
    try:
        with _broker_client() as (producer, client):
            key = _relay_pending_key()
            if not client.set(key, 1, nx=True, ex=RELAY_PENDING_SECONDS):
                return  # a run not yet started will read this commit's events
            try:
                _send(relay_outbox, producer=producer)
            except Exception:
                client.delete(key)  # no run is on its way after all: the next commit kicks
                raise
    except Exception:
        logger.warning(
            "could not kick the relay; the periodic relay will pick the events up", exc_info=True
        )


def _relay_no_longer_pending() -> None:
    """Before a run reads the outbox: from here on a commit finds no flag and kicks another
    run, so an event committed during this one is never left behind. If the broker cannot be
    reached, the flag expires within RELAY_PENDING_SECONDS."""
    try:
        with _broker_client() as (_, client):
            client.delete(_relay_pending_key())
    except Exception:
        logger.warning("could not clear the relay-pending flag; it expires", exc_info=True)


# Under a stream of commits runs follow each other back to back, each for the few events
# committed while the one before ran: a run costs ~2.5 ms of CPU whatever its size (its
# statements, the broadcast, the flag) plus ~4 ms in a prefork worker for the task itself
# (receipt, the pipe to the child, the late ack), and ~0.05-0.07 ms per event. A run that starts
# within this long of the end of this process's previous one first waits out the rest of it,
# its pending flag still set, so the commits meanwhile publish nothing and it relays them
# too. Events then wait at most this much longer, and only while events keep coming; a run
# after a quiet spell starts at once. At 100 ms a stream of commits costs the worker at most
# ten runs a second (at 50 ms, twenty: ~0.5 ms of worker CPU per submit at 170 submits/s,
# competing with the web processes for the same cores); a reviewer's screen or a webhook
# hears of an event at most that much later.
RELAY_COALESCE_SECONDS = 0.1
_last_run_end = -RELAY_COALESCE_SECONDS  # time.monotonic() when this process's last run ended


@shared_task(name="notifications.tasks.relay_outbox", ignore_result=True)
def relay_outbox() -> int:
    global _last_run_end
    wait = RELAY_COALESCE_SECONDS - (time.monotonic() - _last_run_end)
    if wait > 0:
        time.sleep(wait)
    _relay_no_longer_pending()
    try:
        return relay.relay_all()
    finally:
        _last_run_end = time.monotonic()


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
