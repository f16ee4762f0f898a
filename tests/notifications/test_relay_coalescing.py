"""A burst of commits shares one relay run, and no event is left behind.

The on-commit kick (notifications.tasks.kick_relay) publishes a relay run only when none is
queued and not yet started (a flag beside the message, in the broker's Redis); the run clears
the flag before it reads the outbox. Against the real broker Redis, on a queue of the test's
own: the relay messages in that queue are the runs published.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.conf import settings

from notifications import relay, tasks
from notifications.models import OutboxEvent, WebhookDelivery
from tests.factories import submit
from tests.notifications.conftest import LOOPBACK, celery_broker, unique_queue, wait_for
from tests.notifications.test_relay import loopback_endpoint

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 12


@pytest.fixture
def queue() -> Iterator[str]:
    """This process's tasks routed to a queue nobody consumes (until a test starts a worker
    on it); its messages and flag are deleted afterwards."""
    name = unique_queue()
    with celery_broker(queue=name):
        flag = tasks._relay_pending_key()
        yield name
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(name, f"_kombu.binding.{name}", flag)
    client.close()


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


def relay_runs_queued(broker: redis.Redis, queue: str) -> int:
    """relay_outbox messages waiting in `queue` (a relay also queues webhook deliveries)."""
    messages: list[bytes] = broker.lrange(queue, 0, -1)  # type: ignore[assignment]
    return sum(1 for m in messages if json.loads(m)["headers"]["task"] == tasks.relay_outbox.name)


def undispatched() -> set[Any]:
    return set(OutboxEvent.objects.filter(dispatched_at__isnull=True).values_list("pk", flat=True))


def relayed_once_each() -> None:
    """Every event dispatched, and planned for the endpoint exactly once."""
    assert not undispatched()
    events = set(OutboxEvent.objects.values_list("pk", flat=True))
    planned = list(WebhookDelivery.objects.values_list("event_id", flat=True))
    assert sorted(map(str, planned)) == sorted(map(str, events))


def test_a_burst_of_commits_publishes_one_relay_run_that_relays_them_all(world, queue, broker):
    loopback_endpoint("everything")
    for n in range(BURST):
        submit(world.submitter, world.checkpoint, title=f"burst {n}")  # a commit each
    assert OutboxEvent.objects.count() == BURST
    assert relay_runs_queued(broker, queue) == 1  # one run queued for the whole burst, not BURST

    assert tasks.relay_outbox() == BURST  # the run that message stands for
    relayed_once_each()

    # That run cleared the flag: the next commit kicks again.
    submit(world.submitter, world.checkpoint, title="after")
    assert relay_runs_queued(broker, queue) == 2
    assert tasks.relay_outbox() == 1
    relayed_once_each()


def test_an_event_committed_while_a_run_is_in_progress_is_relayed_by_a_following_run(
    world, queue, broker, monkeypatch
):
    loopback_endpoint("everything")
    submit(world.submitter, world.checkpoint, title="first")
    assert relay_runs_queued(broker, queue) == 1
    real_relay_all = relay.relay_all
    committed_during: list[Any] = []

    def relay_all_then_a_commit() -> int:
        count = real_relay_all()
        # The run has read the outbox and is not finished: a commit now is not its to relay.
        committed_during.append(submit(world.submitter, world.checkpoint, title="during"))
        return count

    monkeypatch.setattr(relay, "relay_all", relay_all_then_a_commit)
    assert tasks.relay_outbox() == 1
    monkeypatch.setattr(relay, "relay_all", real_relay_all)

    (during,) = committed_during
    assert undispatched() == set(
        OutboxEvent.objects.filter(proposal=during).values_list("pk", flat=True)
    )
    assert relay_runs_queued(broker, queue) == 2  # its commit kicked a following run
    assert tasks.relay_outbox() == 1
    relayed_once_each()


def test_a_run_right_after_another_waits_and_relays_the_commits_meanwhile(
    world, queue, broker, monkeypatch
):
    """Under a stream of commits a run waits out RELAY_COALESCE_SECONDS since the previous
    one ended, its flag still set: the commits meanwhile publish no run of their own and
    this run relays them with the rest."""
    loopback_endpoint("everything")
    submit(world.submitter, world.checkpoint, title="first")
    assert relay_runs_queued(broker, queue) == 1
    waits: list[float] = []

    def commits_while_waiting(seconds: float) -> None:
        waits.append(seconds)
        for n in range(3):
            submit(world.submitter, world.checkpoint, title=f"meanwhile {n}")

    clock = SimpleNamespace(monotonic=time.monotonic, sleep=commits_while_waiting)
    monkeypatch.setattr(tasks, "time", clock)
    monkeypatch.setattr(tasks, "_last_run_end", time.monotonic())  # a run just ended
    assert tasks.relay_outbox() == 4
    assert len(waits) == 1 and 0 < waits[0] <= tasks.RELAY_COALESCE_SECONDS
    assert relay_runs_queued(broker, queue) == 1  # nothing published during the wait
    relayed_once_each()

    monkeypatch.setattr(tasks, "_last_run_end", time.monotonic() - 1)  # after a quiet spell
    submit(world.submitter, world.checkpoint, title="later")
    assert tasks.relay_outbox() == 1
    assert len(waits) == 1  # started at once
    relayed_once_each()


def test_a_kick_that_cannot_publish_leaves_no_flag_behind(world, queue, broker, monkeypatch):
    """A failed publish must not hold off the next commit's kick for the flag's lifetime."""

    def broker_refuses(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker refused the message")

    monkeypatch.setattr(tasks, "_send", broker_refuses)
    submit(world.submitter, world.checkpoint, title="lost kick")
    assert not broker.exists(tasks._relay_pending_key())
    monkeypatch.undo()
    submit(world.submitter, world.checkpoint, title="next")
    assert relay_runs_queued(broker, queue) == 1
    assert tasks.relay_outbox() == 2


@pytest.mark.slow
def test_a_worker_relays_a_burst_in_one_run(world, queue, celery_worker_process):
    """End to end: BURST commits while the worker is away, then one relay run on a real
    worker relays every event."""
    loopback_endpoint("everything")
    for n in range(BURST):
        submit(world.submitter, world.checkpoint, title=f"burst {n}")
    worker = celery_worker_process(
        queue=queue, extra_env={"HITL_WEBHOOK_ALLOWED_NETWORKS": ",".join(LOOPBACK)}
    )
    assert wait_for(lambda: not undispatched(), timeout=60, interval=0.1), worker.output()[-3000:]
    relayed_once_each()
    received = [
        line
        for line in worker.output().splitlines()
        if "notifications.tasks.relay_outbox[" in line and "received" in line
    ]
    assert len(received) == 1, worker.output()[-3000:]
