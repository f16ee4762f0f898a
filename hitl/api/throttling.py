"""Rate limits that fail open: the counters live in Redis, and a Redis outage must not turn
every API call into an error (decisions keep flowing; the outbox catches up afterwards).

Each caller has one counter per fixed window of the rate's period (the clock's minute for
`6000/minute`): one INCR + EXPIRE round trip per request. DRF's own throttles keep the list of
every request's time in the window, read, unpickled, pickled and written back whole by every
request (two round trips, and a 6,000-entry list at the default user rate). The price of the
fixed window: a caller may spend one window's allowance at its end and the next one's at the
start of the next, up to twice the rate across a boundary.

A request authenticated by a remembered API key is counted by the authentication, in the same
round trip as its rights-version read (`counters_for`, hitl.authentication); the throttles
then use that count instead of asking Redis again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
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


@dataclass(frozen=True)
class Counter:
    """One throttle's counter for one request: `key` names the caller and scope (the
    throttle's cache key), `name` the counter of the window `now` falls in."""

    key: str
    name: str
    seconds: int
    now: float


class _FixedWindow:
    """SimpleRateThrottle's rate, scope, key and settings, counted per fixed window."""

    rate: str | None
    num_requests: int
    duration: int
    timer: Any

    def counter(self, key: str, now: float) -> Counter:
        return Counter(key, f"{key}:{int(now // self.duration)}", self.duration, now)

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)  # type: ignore[attr-defined]
        if key is None:
            return True
        precounted = getattr(getattr(request, "_request", None), "hitl_counted", {}).pop(key, None)
        counter, count = precounted or (self.counter(key, self.timer()), None)
        self.wait_seconds = (counter.now // counter.seconds + 1) * counter.seconds - counter.now
        if count is None:
            count = count_in_window(counter.name, counter.seconds)
        return bool(count <= self.num_requests)

    def wait(self) -> float:
        """Retry-After: until this window ends, in whole seconds (at least one)."""
        return float(max(1, math.ceil(self.wait_seconds)))


class AnonThrottle(_FailOpen, _FixedWindow, AnonRateThrottle):
    pass


class UserThrottle(_FailOpen, _FixedWindow, UserRateThrottle):
    pass


def counters_for(request: Any, user: Any) -> list[Counter]:
    """The counters the throttles of the request's view would add one to, were `user` its
    caller. Asked by the authentication before `request.user` exists, so the throttles find
    their key on a stand-in that has the user and the request's headers (what DRF's rate
    throttles key on)."""
    view = (request.parser_context or {}).get("view")
    if view is None or breaker.open():
        return []
    caller = SimpleNamespace(user=user, META=request._request.META)
    counters = []
    for throttle in view.get_throttles():
        if isinstance(throttle, _FixedWindow) and throttle.rate is not None:
            key = throttle.get_cache_key(caller, view)  # type: ignore[attr-defined]
            if key is not None:
                counters.append(throttle.counter(key, throttle.timer()))
    return counters


def counted(request: Any, counters: list[Counter], counts: list[int]) -> None:
    """Counted already: the throttles take these counts (and their windows) from the request."""
    request._request.hitl_counted = {
        counter.key: (counter, count) for counter, count in zip(counters, counts, strict=True)
    }
