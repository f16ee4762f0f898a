"""Rate limits that fail open: the counters live in Redis, and a Redis outage must not turn
every API call into an error (decisions keep flowing; the outbox catches up afterwards)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)

# After a failed lookup, this process stops asking Redis for a while: a frozen Redis costs
# each lookup a full socket timeout (REDIS_SOCKET_TIMEOUT), which every request would pay
# again, holding its thread and database connection, for as long as the outage lasts.
SKIP_AFTER_FAILURE_SECONDS = 5.0


class _Breaker:
    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def open(self) -> bool:
        return time.monotonic() < self._until

    def trip(self) -> None:
        with self._lock:
            self._until = time.monotonic() + SKIP_AFTER_FAILURE_SECONDS


breaker = _Breaker()


def cache_failed() -> None:
    """A Redis read failed (here or in the key cache, hitl.authentication): skip Redis, the
    rate limit with it, for a while."""
    breaker.trip()
    logger.warning(
        "rate limiting skipped for %.0f s: cache unavailable",
        SKIP_AFTER_FAILURE_SECONDS,
        exc_info=True,
    )


class _FailOpen:
    def allow_request(self, request: Any, view: Any) -> bool:
        if breaker.open():
            return True
        try:
            return bool(super().allow_request(request, view))  # type: ignore[misc]
        except Exception:  # the cache backend's connection errors vary by client library
            cache_failed()
            return True


class AnonThrottle(_FailOpen, AnonRateThrottle):
    pass


class UserThrottle(_FailOpen, UserRateThrottle):
    pass
