"""Running the real thing from tests: a Redis database of one's own, the test database as a
URL for subprocesses, a Celery worker, a live ASGI server. The processes themselves (started in
their own session, waited for, always stopped) are bench/processes.py's, shared with the
bench."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.db import connection

from bench.processes import (
    PYTHON,
    UVICORN_READY,
    WORKER_READY,
    Proc,
    free_port,
    inherited_environ,
    postgres_url,
    uvicorn_args,
    wait_until,
    worker_args,
)

__all__ = ["BASE_DIR", "CELERY", "Proc", "free_port", "wait_until"]  # used by the tests

BASE_DIR = Path(settings.BASE_DIR)
CELERY = str(Path(PYTHON).parent / "celery")
REDIS_HOST = "redis://127.0.0.1:6379"
CLAIM_DB = 15  # where the claims on the other databases are recorded


@contextmanager
def private_redis_db() -> Iterator[str]:
    """A Redis database nobody uses (empty, and claimed in db 15 for the test's length);
    flushed afterwards. Yields its URL."""
    registry = redis.Redis.from_url(f"{REDIS_HOST}/{CLAIM_DB}")
    for number in range(14, 0, -1):
        claim = f"nihil:test:redis-db-claim:{number}"
        if not registry.set(claim, os.getpid(), nx=True, ex=900):
            continue
        candidate = redis.Redis.from_url(f"{REDIS_HOST}/{number}")
        if candidate.dbsize() == 0:
            break
        registry.delete(claim)
    else:
        pytest.fail("no free Redis database in 1..14")
    try:
        yield f"{REDIS_HOST}/{number}"
    finally:
        candidate.flushdb()
        registry.delete(claim)


def database_url() -> str:
    """The database this pytest process tests against, as a URL for a subprocess."""
    db = connection.settings_dict
    return postgres_url(
        user=db["USER"] or "",
        password=db.get("PASSWORD") or "",
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        name=db["NAME"],
    )


def subprocess_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = inherited_environ()
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=database_url(),
        REDIS_URL=redis_url,
        DB_CONN_MAX_AGE="0",
        PYTHONUNBUFFERED="1",
        CELERY_TASK_LOG_LEVEL="INFO",  # the tests read "received"/"succeeded" lines
    )
    env.update(extra)
    return env


def start_worker(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[Proc, str]:
    """A worker and its node name, once it is ready."""
    name = f"timers-{uuid.uuid4().hex[:8]}"
    worker = Proc(worker_args(f"{name}@%h", *args), env, tmp_path / f"{name}.log")
    return worker, worker.wait_for(WORKER_READY)[1]


def send(redis_url: str, task: str) -> str:
    """Put one task on the worker's broker, as beat or a web process would."""
    probe = Celery("probe", broker=redis_url, set_as_current=False)
    with probe.connection_for_write() as conn:  # its own connection: no pool left behind
        return str(probe.send_task(task, connection=conn).id)


def start_server(tmp_path: Path, env: dict[str, str]) -> tuple[Proc, str]:
    """uvicorn serving config.asgi (HTTP and websockets) on a free loopback port, as
    deployed."""
    port = free_port()
    server = Proc(uvicorn_args(port), env, tmp_path / f"uvicorn-{port}.log")
    server.wait_for(UVICORN_READY)
    return server, f"http://127.0.0.1:{port}"
