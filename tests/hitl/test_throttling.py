"""The API rate limit: one Redis counter per caller and fixed window, counted in one round
trip (for a remembered API key, the same round trip as the rights-version read), refusing with
429 and a Retry-After that points at the window's end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.cache import cache
from redis.connection import AbstractConnection
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from hitl.api import throttling
from hitl.api.throttling import AnonThrottle, UserThrottle
from notifications import live
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


def _counter_value(user: Any) -> bytes | None:
    key = UserThrottle.cache_format % {"scope": "user", "ident": user.pk}
    counter = cache.make_and_validate_key(f"{key}:{WINDOW_START // 60}")
    value: bytes | None = cache._cache.get_client(counter).get(counter)  # type: ignore[attr-defined]
    return value


@contextmanager
def redis_round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every round trip to Redis (one send of one or more commands), by its first command."""
    trips: list[bytes] = []
    send = AbstractConnection.send_packed_command

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        first = command[0] if isinstance(command, list) else command
        trips.append(bytes(first).split(b"\r\n")[2])
        send(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_packed_command", counting)
        yield trips


def test_a_remembered_key_costs_one_redis_round_trip_per_request(
    world: Any, clock: list[float], private_rights_version: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rights-version read and the rate limit's count go together once the key is
    remembered; the count is the same as when they went separately."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(world.reviewer)}")
    assert client.get(LIST).status_code == 200  # reads the key: version, then count
    with redis_round_trips(monkeypatch) as trips:
        assert client.get(LIST).status_code == 200
    assert trips == [b"EVALSHA"]
    assert _counter_value(world.reviewer) == b"2"
    assert _statuses(client, 2) == [200, 429]  # 3/minute, as before


def test_a_request_is_counted_once_when_the_rights_version_moved_under_it(
    world: Any, clock: list[float], private_rights_version: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The combined round trip counts only when the remembered rights still hold; when the
    version moved, the key is read again and the throttle counts the request itself: once."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(world.reviewer)}")
    assert _statuses(client, 2) == [200, 200]
    cache.set(live.RIGHTS_VERSION_KEY, "moved-elsewhere", timeout=None)
    with redis_round_trips(monkeypatch) as trips:
        assert client.get(LIST).status_code == 200
    assert trips == [b"EVALSHA", b"INCRBY"]  # nothing counted, then INCR + EXPIRE
    assert _counter_value(world.reviewer) == b"3"
    assert client.get(LIST).status_code == 429


def test_a_call_builds_each_throttle_once(
    world: Any, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The authentication (counters_for) and DRF's check share the view's throttles: the
    key's first call and a remembered one each build the anonymous and the user throttle
    once, and count once (3/minute still refuses the fourth call)."""
    built: list[str] = []
    for throttle in (UserThrottle, AnonThrottle):
        original = throttle.__init__

        def counting(self: Any, _original: Any = original) -> None:
            built.append(type(self).__name__)
            _original(self)

        monkeypatch.setattr(throttle, "__init__", counting)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(world.reviewer)}")
    for _ in range(2):
        built.clear()
        assert client.get(LIST).status_code == 200
        assert sorted(built) == ["AnonThrottle", "UserThrottle"]
    assert _statuses(client, 2) == [200, 429]
