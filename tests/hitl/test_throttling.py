"""The API rate limit: one Redis counter per caller and fixed window, counted in one round
trip, refusing with 429 and a Retry-After that points at the window's end."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from hitl.api import throttling
from hitl.api.throttling import AnonThrottle, UserThrottle
from tests.factories import token_for

pytestmark = pytest.mark.django_db

LIST = "/api/v1/proposals/"
WINDOW_START = 1_800_000_000  # a multiple of 60 and of 3600: a minute's and an hour's start


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The throttles' clock, 10 s into a window; counters under keys of this test only (other
    runs share the Redis)."""
    now = [WINDOW_START + 10.0]
    tag = uuid.uuid4().hex
    for throttle in (UserThrottle, AnonThrottle):
        monkeypatch.setattr(throttle, "timer", staticmethod(lambda: now[0]))
        monkeypatch.setattr(throttle, "cache_format", f"throttle_{tag}_%(scope)s_%(ident)s")
        monkeypatch.setattr(throttle, "THROTTLE_RATES", {"user": "3/minute", "anon": "2/hour"})
    monkeypatch.setattr(throttling.breaker, "_until", 0.0)  # not skipping after a failure
    return now


def _statuses(client: APIClient, count: int) -> list[int]:
    return [client.get(LIST).status_code for _ in range(count)]


def test_a_caller_gets_its_rate_per_window_then_429_until_the_window_ends(
    world: Any, clock: list[float]
) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(world.reviewer)}")
    assert _statuses(client, 3) == [200, 200, 200]
    refused = client.get(LIST)
    assert refused.status_code == 429
    assert refused["Retry-After"] == "50"  # 10 s into the minute
    assert refused.json()["error"]["details"] == {"retry_after_seconds": 50}
    clock[0] += 49.5
    assert client.get(LIST)["Retry-After"] == "1"  # half a second: rounded up, never 0
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(world.submitter)}")
    assert other.get(LIST).status_code == 200  # each caller counts on its own
    clock[0] += 1  # the next minute
    assert _statuses(client, 4) == [200, 200, 200, 429]


def test_anonymous_callers_are_counted_by_address(clock: list[float]) -> None:
    """Every API view asks for a key before its throttles run, so the anonymous limit is
    checked here on the throttle itself (the same counter as the user's)."""
    factory = APIRequestFactory()

    def allowed(address: str) -> bool:
        request = Request(factory.get(LIST, REMOTE_ADDR=address))
        request.user = AnonymousUser()
        throttle = AnonThrottle()
        if throttle.allow_request(request, None):
            return True
        assert throttle.wait() == 3600 - 10
        return False

    assert [allowed("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert allowed("10.0.0.2")


def test_the_counter_is_one_integer_that_expires_with_its_window(
    world: Any, clock: list[float]
) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(world.reviewer)}")
    _statuses(client, 2)
    key = UserThrottle.cache_format % {"scope": "user", "ident": world.reviewer.pk}
    counter = cache.make_and_validate_key(f"{key}:{WINDOW_START // 60}")
    redis = cache._cache.get_client(counter)  # type: ignore[attr-defined]
    assert redis.get(counter) == b"2"
    assert 0 < redis.ttl(counter) <= 60
