"""Django's Redis cache with one client (and connection pool) per process.

Django builds its cache objects per request context (`caches` is an asgiref Local), and each
RedisCache built its own connection pool: under ASGI, where every request runs in a context of
its own, each request opened a fresh Redis connection (DNS lookup and TCP connect) for its
rate-limit check and its rights-version read. The client and redis-py's pool are thread-safe;
the pool reconnects after a fork by itself.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[str, RedisCacheClient] = {}
_lock = threading.Lock()


class SharedPoolRedisCache(RedisCache):
    @cached_property
    def _cache(self) -> Any:
        mine = vars(self)  # RedisCache's own attributes (not in django-stubs)
        servers, options = mine["_servers"], mine["_options"]
        key = repr((servers, sorted(options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = mine["_class"](servers, **options)
        return client


def count_in_window(key: str, seconds: int) -> int:
    """Add one to the counter `key` of the default cache and return it; the counter lives
    `seconds` from its last count. INCR and EXPIRE go to Redis in one round trip."""
    cache = caches["default"]
    key = cache.make_and_validate_key(key)
    client = cache._cache.get_client(key, write=True)  # type: ignore[attr-defined]
    count, _ = client.pipeline(transaction=False).incr(key).expire(key, seconds).execute()
    return int(count)
