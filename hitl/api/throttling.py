"""Rate limits that fail open: the counters live in Redis, and a Redis outage must not turn
every API call into an error (decisions keep flowing; the outbox catches up afterwards)."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)


class _FailOpen:
    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return bool(super().allow_request(request, view))  # type: ignore[misc]
        except Exception:  # the cache backend's connection errors vary by client library
            logger.warning("rate limiting skipped: cache unavailable", exc_info=True)
            return True


class AnonThrottle(_FailOpen, AnonRateThrottle):
    pass


class UserThrottle(_FailOpen, UserRateThrottle):
    pass
