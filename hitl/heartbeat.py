"""Liveness of the worker and beat processes, kept in Redis for `hitl_status` and /health."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

WORKER_KEY = "heartbeat:worker"
BEAT_KEY = "heartbeat:beat"
TTL_SECONDS = 24 * 3600


def beat_alive() -> None:
    cache.set(BEAT_KEY, {"at": time.time(), "host": socket.gethostname()}, TTL_SECONDS)


def worker_alive(hostname: str | None = None) -> None:
    cache.set(
        WORKER_KEY, {"at": time.time(), "host": hostname or socket.gethostname()}, TTL_SECONDS
    )


@dataclass(frozen=True)
class Heartbeat:
    name: str
    age_seconds: float | None  # None: never seen
    host: str | None

    @property
    def stale(self) -> bool:
        return self.age_seconds is None or self.age_seconds > settings.HITL_HEARTBEAT_STALE_SECONDS


def read() -> list[Heartbeat]:
    now = time.time()
    beats = []
    for name, key in (("worker", WORKER_KEY), ("beat", BEAT_KEY)):
        value = cache.get(key)
        if value is None:
            beats.append(Heartbeat(name, None, None))
        else:
            beats.append(Heartbeat(name, max(0.0, now - value["at"]), value.get("host")))
    return beats
