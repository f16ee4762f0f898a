"""Readiness checks, shared by GET /readyz and `hitl_status --json`.

Each check runs in a small, fixed pool of threads and is waited for at most
HITL_READYZ_TIMEOUT_SECONDS: a frozen PostgreSQL or Redis (a partition, a stopped process)
accepts connections and never answers, and a load balancer must hear "not ready" within its
own probe timeout, not hang with it. A check still stuck from an earlier probe keeps its
thread; the pool is small, so a frozen dependency costs at most that many threads, and later
probes time out at once instead of piling up more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypedDict

import redis
from django.conf import settings
from django.db import connection

from config import redis_clients

_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")
_migrations_applied = False  # once true in this process, the files cannot change under it


class CheckResult(TypedDict):
    ok: bool
    latency_ms: float
    error: str | None


class Checks(TypedDict):
    ready: bool
    checks: dict[str, CheckResult]


def _database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread's connection: back to the pool, none left behind


def _redis() -> None:
    client = redis.Redis.from_url(
        settings.REDIS_URL, **redis_clients.client_options(settings.REDIS_TIMEOUTS)
    )
    try:
        client.ping()
    finally:
        client.close()


def _migrations() -> None:
    global _migrations_applied
    if _migrations_applied:
        return
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.close()
    if plan:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5])
        raise RuntimeError(f"{len(plan)} migration(s) not applied: {names}")
    _migrations_applied = True


CHECKS: dict[str, Callable[[], None]] = {
    "database": _database,
    "redis": _redis,
    "migrations": _migrations,
}


def _timed(check: Callable[[], None]) -> CheckResult:
    started = time.monotonic()
    try:
        check()
    except Exception as exc:  # every failure means the same thing here: not ready
        error: str | None = f"{type(exc).__name__}: {exc}".strip()[:300]
    else:
        error = None
    return {"ok": error is None, "latency_ms": _ms(started), "error": error}


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def run_checks(timeout: float | None = None) -> Checks:
    """Run every check at once; each is bounded by `timeout` seconds (default
    HITL_READYZ_TIMEOUT_SECONDS). Never raises."""
    bound = settings.HITL_READYZ_TIMEOUT_SECONDS if timeout is None else timeout
    started = time.monotonic()
    futures = {name: _POOL.submit(_timed, check) for name, check in CHECKS.items()}
    results: dict[str, CheckResult] = {}
    for name, future in futures.items():
        remaining = max(0.0, bound - (time.monotonic() - started))
        try:
            results[name] = future.result(timeout=remaining)
        except FutureTimeout:
            future.cancel()  # still queued behind a stuck check: never run it
            results[name] = {
                "ok": False,
                "latency_ms": _ms(started),
                "error": f"no answer within {bound:g} s",
            }
    return {"ready": all(r["ok"] for r in results.values()), "checks": results}
