"""A Celery beat scheduler that only schedules while it holds a Redis leader lock.

Run as many beats as you like (one per host for availability): one leads and sends, the others
stand by and take over within the lock's TTL when it stops. The sweeps are also safe to run
twice at once (SKIP LOCKED), so even a lock handover cannot double anything.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import redis
from celery.beat import PersistentScheduler
from django.conf import settings

from config import redis_clients
from hitl import heartbeat

logger = logging.getLogger(__name__)

LOCK_KEY = "nihil:beat:leader"
LOCK_TTL_MS = 30_000

# Set the key to our token if free, or refresh it if it is already ours; 1 when we lead.
_ACQUIRE_OR_RENEW = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2]) return 1
end
return 0
"""


_RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaderLock:
    def __init__(self, client: redis.Redis, key: str = LOCK_KEY, ttl_ms: int = LOCK_TTL_MS):
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self._script = client.register_script(_ACQUIRE_OR_RENEW)
        self._release_script = client.register_script(_RELEASE_IF_OURS)

    def hold(self) -> bool:
        try:
            return bool(self._script(keys=[self.key], args=[self.token, self.ttl_ms]))
        except redis.RedisError:
            logger.warning("beat: cannot reach Redis for the leader lock; standing by")
            return False

    def release(self) -> None:
        # Compare-and-delete in one step: never delete a lock another beat took since.
        with contextlib.suppress(redis.RedisError):
            self._release_script(keys=[self.key], args=[self.token])


def lock_client() -> redis.Redis:
    """Bounded waits: a frozen Redis must not stall the scheduler loop (config.redis_clients)."""
    return redis.Redis.from_url(
        settings.REDIS_URL, **redis_clients.client_options(settings.REDIS_TIMEOUTS)
    )


class LeaderScheduler(PersistentScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.leader_lock = LeaderLock(lock_client())
        self.leading = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            heartbeat.beat_alive()
        except Exception:  # Redis down: stand by (hold() fails too) rather than crash beat
            logger.warning("beat: cannot record the heartbeat", exc_info=True)
        leading = self.leader_lock.hold()
        if leading != self.leading:
            logger.info("beat: %s", "leading" if leading else "standing by (another beat leads)")
            self.leading = leading
        if not leading:
            return float(getattr(self, "max_interval", 5))
        return float(super().tick(*args, **kwargs))  # type: ignore[misc]  # stubs lack tick

    def close(self) -> None:
        self.leader_lock.release()
        super().close()
