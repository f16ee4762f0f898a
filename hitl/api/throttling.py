"""Rate limits that fail open: the counters live in Redis, and a Redis outage must not turn
every API call into an error (decisions keep flowing; the outbox catches up afterwards).

Each caller has one counter per fixed window of the rate's period (the clock's minute for
`6000/minute`): one INCR + EXPIRE round trip per request. DRF's own throttles keep the list of
every request's time in the window, read, unpickled, pickled and written back whole by every
request (two round trips, and a 6,000-entry list at the default user rate). The price of the
fixed window: a caller may spend one window's allowance at its end and the next one's at the
start of the next, up to twice the rate across a boundary.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from hitl.cache import count_in_window

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


class _FixedWindow:
    """SimpleRateThrottle's rate, scope, key and settings, counted per fixed window."""

    rate: str | None
    num_requests: int
    duration: int
    timer: Any

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)  # type: ignore[attr-defined]
        if key is None:
            return True
        now = self.timer()
        window = int(now // self.duration)
        self.wait_seconds = (window + 1) * self.duration - now
        return count_in_window(f"{key}:{window}", self.duration) <= self.num_requests

    def wait(self) -> float:
        """Retry-After: until this window ends, in whole seconds (at least one)."""
        return float(max(1, math.ceil(self.wait_seconds)))


class AnonThrottle(_FailOpen, _FixedWindow, AnonRateThrottle):
    pass


class UserThrottle(_FailOpen, _FixedWindow, UserRateThrottle):
    pass
