"""The pool's health check (config/postgresql): a connection handed out a moment ago goes out
again without the empty-query round trip psycopg's check sends; one idle for longer is
checked, and a dead one is replaced before any request sees it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from config.postgresql import base as backend

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    settings_dict = {
        **connection.settings_dict,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {**connection.settings_dict["OPTIONS"], "pool": {"min_size": 0, "max_size": 1}},
    }
    wrapper = backend.DatabaseWrapper(settings_dict, alias="pool-check-test")
    pool = wrapper.pool
    assert pool is not None
    pool.open(wait=False)
    try:
        yield pool
    finally:
        wrapper.close_pool()


def backend_pid(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def test_the_shipped_settings_use_the_checking_backend() -> None:
    from config.settings import base as shipped

    if shipped.DATABASES["default"].get("OPTIONS", {}).get("pool"):
        assert shipped.DATABASES["default"]["ENGINE"] == "config.postgresql"
        assert shipped.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True


def test_a_connection_just_used_is_handed_out_without_a_check_round_trip(
    pool: ConnectionPool,
) -> None:
    first = backend_pid(pool)
    with mock.patch.object(
        ConnectionPool, "check_connection", wraps=ConnectionPool.check_connection
    ) as check:
        for _ in range(5):
            assert backend_pid(pool) == first
    assert check.call_count == 0


def test_an_idle_connection_is_checked_and_a_dead_one_replaced(
    pool: ConnectionPool, monkeypatch: Any
) -> None:
    dead = backend_pid(pool)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [dead])
    later = backend.monotonic() + backend.RECENTLY_USED_SECONDS + 1
    monkeypatch.setattr(backend, "monotonic", lambda: later)
    with mock.patch.object(
        ConnectionPool, "check_connection", wraps=ConnectionPool.check_connection
    ) as check:
        replacement = backend_pid(pool)  # would raise if the dead connection were handed out
    assert replacement != dead
    assert check.call_count >= 1
