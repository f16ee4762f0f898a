"""/healthz and /readyz in this process, against the test database and a private
redis-server that the tests stop and freeze; the database-down case runs a real web process
(tests/ops/test_deploy.py)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from django.test import Client, override_settings

from hitl.ops import health
from tests.notifications.conftest import RedisServer

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_anything(
    client: Client, django_assert_num_queries: Any
) -> None:
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"), django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_each_check_with_its_latency(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"database", "redis", "migrations"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert check["error"] is None
        assert isinstance(check["latency_ms"], float) and check["latency_ms"] >= 0


def test_readyz_is_503_while_redis_is_down_or_frozen_and_200_after(client: Client) -> None:
    server = RedisServer()
    server.start()
    try:
        with override_settings(REDIS_URL=server.url(), HITL_READYZ_TIMEOUT_SECONDS=2.0):
            assert client.get("/readyz").status_code == 200

            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)  # frozen: accepts, never answers
            try:
                started = time.monotonic()
                response = client.get("/readyz")
                took = time.monotonic() - started
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert response.status_code == 503
            body = response.json()
            assert body["ready"] is False
            assert body["checks"]["redis"]["ok"] is False
            assert body["checks"]["database"]["ok"] is True
            assert took < 10, f"a frozen Redis held /readyz for {took:.1f}s"

            assert client.get("/readyz").status_code == 200

            server.stop()  # down: connection refused
            response = client.get("/readyz")
            assert response.status_code == 503
            assert "redis" in response.json()["checks"]
            assert response.json()["checks"]["redis"]["error"]

            server.start()
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_run_checks_reports_a_check_that_never_answers_within_the_bound() -> None:
    def stuck() -> None:
        time.sleep(3)

    original = dict(health.CHECKS)
    health.CHECKS["stuck"] = stuck
    try:
        started = time.monotonic()
        result = health.run_checks(timeout=0.5)
        took = time.monotonic() - started
    finally:
        health.CHECKS.clear()
        health.CHECKS.update(original)
    assert result["ready"] is False
    assert result["checks"]["stuck"] == {
        "ok": False,
        "latency_ms": result["checks"]["stuck"]["latency_ms"],
        "error": "no answer within 0.5 s",
    }
    assert took < 2.5
