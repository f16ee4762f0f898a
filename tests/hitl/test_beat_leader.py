"""The beat leader lock (hitl.beat): one beat schedules, the others stand by and take over."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from config.celery import app as celery_app
from hitl import heartbeat
from hitl.beat import LOCK_KEY, LeaderLock, LeaderScheduler
from tests.processes import CELERY, Proc, private_redis_db, subprocess_env, wait_until


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def key(client: redis.Redis) -> Iterator[str]:
    """A lock key of this test's own: other runs share the Redis database."""
    name = f"test:beat-leader:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def test_only_one_holder_at_a_time_until_it_releases(client: redis.Redis, key: str) -> None:
    first, second = LeaderLock(client, key), LeaderLock(client, key)
    assert first.hold()
    assert not second.hold()
    assert first.hold()  # renewing is holding
    assert not second.hold()
    assert client.get(key) == first.token.encode()

    second.release()  # not the holder: a no-op
    assert client.get(key) == first.token.encode()
    assert not second.hold()

    first.release()
    assert client.get(key) is None
    assert second.hold()
    assert not first.hold()
    assert client.get(key) == second.token.encode()


def test_the_holder_renews_its_ttl(client: redis.Redis, key: str) -> None:
    lock = LeaderLock(client, key, ttl_ms=2000)
    assert lock.hold()
    time.sleep(0.5)
    assert client.pttl(key) <= 1600
    assert lock.hold()
    assert client.pttl(key) > 1600


def test_a_holder_that_stops_renewing_loses_the_lock_after_its_ttl(
    client: redis.Redis, key: str
) -> None:
    leader, standby = LeaderLock(client, key, ttl_ms=300), LeaderLock(client, key, ttl_ms=300)
    assert leader.hold()
    # While the leader renews more often than the TTL, the standby never gets in.
    for _ in range(8):
        time.sleep(0.1)
        assert leader.hold()
        assert not standby.hold()
    time.sleep(0.4)  # the leader is gone (no release): the key expires
    assert standby.hold()
    assert not leader.hold()


def test_an_unreachable_redis_means_standing_by() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    lock = LeaderLock(unreachable, "test:beat-leader:unreachable")
    assert lock.hold() is False
    lock.release()  # must not raise either


def test_release_never_deletes_a_lock_another_beat_took(client: redis.Redis, key: str) -> None:
    """A leader paused past its TTL, then shutting down, must not delete the lock the standby
    took meanwhile (release is one compare-and-delete script, not GET then DEL)."""
    old_leader = LeaderLock(client, key, ttl_ms=50)
    new_leader = LeaderLock(client, key)
    assert old_leader.hold()
    time.sleep(0.1)  # the old leader's TTL runs out...
    assert new_leader.hold()  # ...and the standby leads
    old_leader.release()
    assert client.get(key) == new_leader.token.encode(), "release() deleted another's lock"
    new_leader.release()
    assert client.get(key) is None


def test_the_scheduler_leads_and_releases_on_close(tmp_path: Path) -> None:
    with private_redis_db() as redis_url:
        caches = {"default": {**settings.CACHES["default"], "LOCATION": redis_url}}
        with override_settings(REDIS_URL=redis_url, CACHES=caches):
            scheduler = LeaderScheduler(
                app=celery_app, schedule_filename=str(tmp_path / "schedule"), lazy=False
            )
            try:
                assert scheduler.tick() <= settings.CELERY_BEAT_MAX_LOOP_INTERVAL
                assert scheduler.leading is True
                lock = redis.Redis.from_url(redis_url)
                assert lock.get(LOCK_KEY) == scheduler.leader_lock.token.encode()
                assert not next(b for b in heartbeat.read() if b.name == "beat").stale
            finally:
                scheduler.close()
            assert lock.get(LOCK_KEY) is None  # the next beat need not wait for the TTL


def test_a_beat_that_cannot_reach_redis_stands_by(tmp_path: Path) -> None:
    """PRODUCT BUG (hitl.beat.LeaderScheduler.tick): LeaderLock.hold() turns a Redis outage
    into "standing by", but tick() first writes the beat heartbeat through the Django cache
    (hitl.heartbeat.beat_alive), which raises redis.ConnectionError; the exception leaves
    celery.beat.Service.start and the beat process (or the worker's embedded beat) exits
    instead of standing by until Redis is back."""
    unreachable = "redis://127.0.0.1:1/0"
    caches = {"default": {**settings.CACHES["default"], "LOCATION": unreachable}}
    with override_settings(REDIS_URL=unreachable, CACHES=caches):
        scheduler = LeaderScheduler(
            app=celery_app, schedule_filename=str(tmp_path / "schedule"), lazy=False
        )
        try:
            interval = scheduler.tick()
        finally:
            scheduler.close()
    assert interval == settings.CELERY_BEAT_MAX_LOOP_INTERVAL
    assert scheduler.leading is False


@pytest.mark.slow
def test_two_beat_processes_one_leads_the_other_takes_over(tmp_path: Path) -> None:
    """Two real `celery beat` processes with the LeaderScheduler: only one logs "leading" and
    sends tasks; when it stops (releasing the lock), the other takes over."""
    with private_redis_db() as redis_url:
        env = subprocess_env(
            redis_url,
            HITL_SWEEP_INTERVAL_SECONDS="1",
            DATABASE_URL="postgres://postgres@127.0.0.1:5432/unused",  # beat needs no database
        )
        beats: list[Proc] = []
        try:
            for name in ("a", "b"):
                beats.append(
                    Proc(
                        [
                            *(CELERY, "-A", "config", "beat", "--loglevel", "INFO"),
                            *("--schedule", str(tmp_path / f"schedule-{name}")),
                        ],
                        env,
                        tmp_path / f"beat-{name}.log",
                    )
                )
            for beat in beats:
                beat.wait_for(r"beat: Starting")
            leader = wait_until(
                lambda: [b for b in beats if "beat: leading" in b.output()], 30, "a leader"
            )
            time.sleep(3)  # several ticks and sweeps later, still one leader
            assert len([b for b in beats if "beat: leading" in b.output()]) == 1
            (leader_proc,) = leader
            (standby,) = [b for b in beats if b is not leader_proc]
            assert "Sending due task hitl-sweep" in leader_proc.output()
            assert "Sending due task" not in standby.output()
            assert redis.Redis.from_url(redis_url).exists(LOCK_KEY)

            leader_proc.stop()  # a clean stop releases the lock
            standby.wait_for(r"beat: leading", timeout=20)
            standby.wait_for(r"Sending due task hitl-sweep", timeout=10)
        finally:
            for beat in beats:
                beat.stop()
