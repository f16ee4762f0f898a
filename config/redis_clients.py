"""How every Redis client of the project is configured, in one place.

Settings build CACHES, CHANNEL_LAYERS and Celery's broker options from these functions, and
tests that point a process at another Redis use the same functions, so no client is ever
configured without its timeouts. Plain functions of plain values: no Django import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# channels_redis waits this long in BZPOPMIN for a websocket's next message (its
# `brpop_timeout`): the channel layer's socket timeout must outlast it, or every idle
# websocket would see a timeout error instead of "nothing yet".
CHANNEL_LAYER_RECEIVE_SECONDS = 5


@dataclass(frozen=True)
class Timeouts:
    connect: float  # seconds to open a TCP connection
    socket: float  # seconds to wait for any one reply


def client_options(timeouts: Timeouts) -> dict[str, Any]:
    """Keyword arguments for redis-py's Redis / ConnectionPool."""
    return {"socket_connect_timeout": timeouts.connect, "socket_timeout": timeouts.socket}


def cache_config(url: str, timeouts: Timeouts) -> dict[str, Any]:
    """Django's Redis cache (rate-limit counters, heartbeats)."""
    return {
        "BACKEND": "hitl.cache.SharedPoolRedisCache",  # one pool per process
        "LOCATION": url,
        "KEY_PREFIX": "nihil",
        "OPTIONS": client_options(timeouts),
    }


def channel_layer_config(url: str, timeouts: Timeouts) -> dict[str, Any]:
    """channels_redis. Sends are bounded by HITL_LIVE_SEND_TIMEOUT_SECONDS as well."""
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": url,
                    "socket_connect_timeout": timeouts.connect,
                    "socket_timeout": CHANNEL_LAYER_RECEIVE_SECONDS + timeouts.socket,
                }
            ]
        },
    }


def broker_transport_options(timeouts: Timeouts) -> dict[str, Any]:
    """Celery's Redis broker (kombu).

    Redis redelivers an unacked message after the visibility timeout: it must outlast the
    longest countdown/ETA we schedule (webhook retries wait in the database, not in Redis).
    The rest bounds how long a publisher (a web request's on-commit kick) waits for a broker
    that is down or frozen: one quick retry, then the caller logs and moves on; beat's safety
    nets resend. The worker reads only when its socket is readable, so the socket timeout
    does not cut its blocking BRPOP short.
    """
    return {
        "visibility_timeout": 3600,
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
        **client_options(timeouts),
    }
