"""One Redis client per process for Django's cache (hitl.cache): Django builds a cache object
per request context, and each used to open its own connection pool, so under ASGI every
request connected to Redis anew for its rate limit and rights-version reads; and Django's client
wraps its pool in a new redis-py client for every command."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches


def test_cache_objects_of_different_requests_share_one_client_and_pool():
    seen: list[Any] = []

    def one_request() -> None:  # a thread starts with a context of its own, as a request does
        cache = caches["default"]
        cache.get("hitl-cache-pool-probe")
        client = cache._cache  # type: ignore[attr-defined]  # RedisCache's, not in the stubs
        seen.append((cache, client, client.get_client(write=True)))

    threads = [threading.Thread(target=one_request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    (first_cache, first_client, first_redis), (second_cache, second_client, second_redis) = seen
    assert first_cache is not second_cache  # Django's own per-context objects...
    assert first_client is second_client  # ...over one client and its pool...
    assert first_redis is second_redis  # ...and one redis-py client, not one per command
