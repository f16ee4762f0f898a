"""Every Redis client of a process gives up on a frozen Redis within its timeouts.

A private redis-server is stopped with SIGSTOP (it still accepts connections, never answers,
as a partitioned or saturated Redis looks). Each client then takes its documented "Redis
unavailable" path in about REDIS_SOCKET_TIMEOUT, where before it waited for minutes: the
heartbeats (cache), beat's leader lock, a Celery publish and a websocket broadcast.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import override_settings

from hitl import beat, heartbeat
from notifications import live, tasks
from tests.notifications.conftest import RedisServer, celery_broker, unique_queue
from tests.notifications.test_redis_outage import redis_settings

pytestmark = pytest.mark.django_db(transaction=True)

BOUND = 5.0  # seconds; each client's own timeout is 0.5 s (generous for a loaded machine)
HUNG = 60.0


@pytest.fixture
def frozen() -> Iterator[RedisServer]:
    """A private Redis every client of this process points at, warmed up, then frozen."""
    server = RedisServer()
    server.start()
    url = server.url()
    try:
        with redis_settings(url), celery_broker(url, queue=unique_queue()):
            heartbeat.beat_alive()  # open the cache's pooled connection while Redis answers
            assert tasks.enqueue(tasks.relay_outbox) is True
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
            try:
                yield server
            finally:
                server.proc.send_signal(signal.SIGCONT)
    finally:
        server.stop()


def timed(call: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """(result, exception, seconds) of `call` run in a thread that may not hang the test."""
    box: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["result"] = call()
        except BaseException as exc:
            box["error"] = exc
        finally:
            box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HUNG)
    assert not thread.is_alive(), f"still waiting for the frozen Redis after {HUNG:.0f}s"
    return box.get("result"), box.get("error"), box["seconds"]


def test_heartbeats_fail_within_the_socket_timeout(frozen: RedisServer) -> None:
    _, error, seconds = timed(heartbeat.worker_alive)
    assert error is not None  # the callers (beat's tick, the worker signal) log and go on
    assert seconds < BOUND
    _, error, seconds = timed(heartbeat.read)
    assert error is not None and seconds < BOUND  # hitl_status reports it (test_ops_commands)


def test_beat_stands_by_when_it_cannot_reach_the_leader_lock(frozen: RedisServer) -> None:
    lock = beat.LeaderLock(beat.lock_client())
    leads, error, seconds = timed(lock.hold)
    assert (leads, error) == (False, None)
    assert seconds < BOUND


def test_a_celery_publish_gives_up_and_reports_it(frozen: RedisServer) -> None:
    sent, error, seconds = timed(lambda: tasks.enqueue(tasks.relay_outbox))
    assert (sent, error) == (False, None)  # beat's safety net resends later
    assert seconds < BOUND


def test_a_websocket_broadcast_gives_up_and_reports_it(frozen: RedisServer) -> None:
    message: Any = {"type": "proposal.event", "event": "test"}
    with override_settings(HITL_LIVE_SEND_TIMEOUT_SECONDS=1):
        sent, error, seconds = timed(lambda: live.broadcast([("checkpoint-1", message)]))
    assert (sent, error) == (False, None)
    assert seconds < BOUND
