"""Django's Redis cache with one client (and connection pool) per process.

Django builds its cache objects per request context (`caches` is an asgiref Local), and each
RedisCache built its own connection pool: under ASGI, where every request runs in a context of
its own, each request opened a fresh Redis connection (DNS lookup and TCP connect) for its
rate-limit check and its rights-version read. The client and redis-py's pool are thread-safe;
the pool reconnects after a fork by itself. Django's client also builds a redis-py client
object around its pool for every command; ours keeps one per pool.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property
from redis.commands.core import Script

_clients: dict[str, RedisCacheClient] = {}
_lock = threading.Lock()


class _OneRedisPerPool(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redis: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._redis.get(id(pool))
        if client is None:
            client = self._redis[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client


class SharedPoolRedisCache(RedisCache):
    @cached_property
    def _cache(self) -> Any:
        mine = vars(self)  # RedisCache's own attributes (not in django-stubs)
        servers, options = mine["_servers"], mine["_options"]
        key = repr((servers, sorted(options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = _OneRedisPerPool(servers, **options)
        return client


def count_in_window(key: str, seconds: int) -> int:
    """Add one to the counter `key` of the default cache and return it; the counter lives
    `seconds` from its last count. INCR and EXPIRE go to Redis in one round trip."""
    cache = caches["default"]
    key = cache.make_key(key)  # no validate_key: see read_then_count
    client = cache._cache.get_client(key, write=True)  # type: ignore[attr-defined]
    count, _ = client.pipeline(transaction=False).incr(key).expire(key, seconds).execute()
    return int(count)


# KEYS[1]: a value; KEYS[2..]: counters; ARGV[1]: the value the caller expects (its raw bytes,
# "" for none); ARGV[2..]: each counter's lifetime. The value as stored (or ""), then, only if it
# was the expected one, each counter's new count.
_READ_THEN_COUNT = Script(
    None,  # type: ignore[arg-type]  # run on the cache's own client (`client=` below)
    b"""
local value = redis.call('GET', KEYS[1]) or ''
local reply = {value}
if value ~= ARGV[1] then
  return reply
end
for i = 2, #KEYS do
  reply[i] = redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[i])
end
return reply
""",
)


def read_then_count(
    key: str, expected: bytes, counters: Sequence[tuple[str, int]]
) -> tuple[bytes, list[int] | None]:
    """The raw value of the default cache's `key` (b"" when absent) and, only when it is still
    `expected`, one added to each (counter, seconds) of `counters` as `count_in_window` does,
    with their new counts (else None: nothing counted). One round trip, a Lua script: a request
    that finds its expectation stale is not counted on a guess."""
    cache = caches["default"]
    # make_key, not make_and_validate_key: validation only warns of keys memcached would refuse
    # (Redis takes any), checking each character in Python: 5 % of a submit's CPU for three
    # keys per request.
    version_key = cache.make_key(key)
    keys = [version_key, *(cache.make_key(name) for name, _ in counters)]
    client = cache._cache.get_client(version_key, write=True)  # type: ignore[attr-defined]
    reply = _READ_THEN_COUNT(keys, [expected, *(seconds for _, seconds in counters)], client)
    value = bytes(reply[0])
    if value != expected:
        return value, None
    return value, [int(count) for count in reply[1:]]


def cached_value(raw: bytes) -> Any:
    """A raw value as the default cache's `get` returns it (None for b"": absent)."""
    if raw == b"":
        return None
    return caches["default"]._cache._serializer.loads(raw)  # type: ignore[attr-defined]
