"""Running the real thing from tests: a Redis database of one's own, the test database as a
URL for subprocesses, subprocesses that always stop, a Celery worker, a live ASGI server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)
CELERY = str(BASE_DIR / ".venv" / "bin" / "celery")
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
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def subprocess_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "HITL_", "CELERY_", "PYTEST_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "DEBUG")
    }
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


class Proc:
    """A subprocess in its own session, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            cwd=BASE_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.output()[-4000:]
        raise AssertionError(f"{pattern!r} not seen (exit {self.popen.poll()}); output:\n{tail}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the main process (a warm shutdown lets running tasks finish), then
        SIGKILL for whatever of its session is left."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout)
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        finally:
            self._log.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def start_worker(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[Proc, str]:
    node = f"timers-{uuid.uuid4().hex[:8]}@%h"
    worker = Proc(
        [
            *(CELERY, "-A", "config", "worker", "--loglevel", "INFO", "-n", node),
            *("--without-mingle", "--without-gossip", *args),
        ],
        env,
        tmp_path / f"{node.split('@')[0]}.log",
    )
    match = worker.wait_for(r"(timers-\w+@\S+) ready\.")
    return worker, match[1]


def send(redis_url: str, task: str) -> str:
    """Put one task on the worker's broker, as beat or a web process would."""
    probe = Celery("probe", broker=redis_url, set_as_current=False)
    with probe.connection_for_write() as conn:  # its own connection: no pool left behind
        return str(probe.send_task(task, connection=conn).id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(tmp_path: Path, env: dict[str, str]) -> tuple[Proc, str]:
    """uvicorn serving config.asgi (HTTP and websockets) on a free loopback port."""
    port = free_port()
    server = Proc(
        [
            str(BASE_DIR / ".venv" / "bin" / "python"),
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env,
        tmp_path / f"uvicorn-{port}.log",
    )
    server.wait_for(r"Uvicorn running on")
    return server, f"http://127.0.0.1:{port}"
