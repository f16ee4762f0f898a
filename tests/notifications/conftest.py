"""Real moving parts for the delivery tests: a loopback HTTP receiver, a private redis-server,
and a Celery worker in its own process.

Everything here listens on 127.0.0.1 only, on ports the kernel picks, and is torn down by the
fixture that started it (by process id; nothing is ever killed by name).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from bench.processes import (
    PYTHON,
    REDIS_READY,
    WORKER_READY,
    Proc,
    free_port,
    inherited_environ,
    postgres_url,
    redis_server_args,
)

LOOPBACK = ["127.0.0.0/8"]


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; return its value, or the last falsy one."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


# --- channels' test communicator -----------------------------------------------------------


def websocket_communicator_class() -> type[Any]:
    """channels.testing.WebsocketCommunicator. The package's __init__ also imports its
    live-server helper, which needs daphne, a server this project does not install; when it
    is missing, load the package without that helper (the communicators don't need it)."""
    try:
        from channels.testing import WebsocketCommunicator
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("daphne"):
            raise
        import types

        import channels

        package = types.ModuleType("channels.testing")
        package.__path__ = [str(Path(channels.__file__).parent / "testing")]
        sys.modules["channels.testing"] = package
        from channels.testing.application import ApplicationCommunicator
        from channels.testing.http import HttpCommunicator
        from channels.testing.websocket import WebsocketCommunicator

        package.ApplicationCommunicator = ApplicationCommunicator  # type: ignore[attr-defined]
        package.HttpCommunicator = HttpCommunicator  # type: ignore[attr-defined]
        package.WebsocketCommunicator = WebsocketCommunicator  # type: ignore[attr-defined]
    return WebsocketCommunicator


# --- the loopback webhook receiver ---------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


Script = int | tuple[int, dict[str, str]]


@dataclass
class Receiver:
    """Answers POSTs from a script of statuses (then 200), recording every request. Its
    `effects` apply each webhook-id once, whatever the response: dedupe as a receiver must."""

    script: list[Script] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    effects: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def base(self) -> str:
        return self.url.rsplit("/", 1)[0]

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def ids(self) -> set[str]:
        with self.lock:
            return {r.webhook_id for r in self.requests if "webhook-id" in r.headers}

    def handle(self, request: Received) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.requests.append(request)
            if "webhook-id" in request.headers:
                self.effects.setdefault(request.webhook_id, request.body)
            step: Script = self.script.pop(0) if self.script else 200
        return step if isinstance(step, tuple) else (step, {})


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers[":method"] = self.command
            status, extra = receiver.handle(Received(self.path, headers, body))
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_PUT = do_POST  # a followed redirect may turn into a GET: record it too

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """receiver(statuses=[500, 500, (429, {"retry-after": "120"}), ...]) -> a live Receiver."""
    started: list[Receiver] = []

    def make(statuses: list[Script] | None = None) -> Receiver:
        recv = Receiver(script=list(statuses or []))
        recv.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(recv))
        recv.server.daemon_threads = True
        threading.Thread(target=recv.server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(recv)
        return recv

    yield make
    for recv in started:
        assert recv.server is not None
        recv.server.shutdown()
        recv.server.server_close()


# --- a private redis-server ----------------------------------------------------------------


class RedisServer:
    """A throwaway redis-server on its own port, so stopping it never touches the shared
    6379 other suites (and developers) use."""

    def __init__(self) -> None:
        self.port = free_port()
        assert self.port != 6379
        self.proc: subprocess.Popen[bytes] | None = None  # for SIGSTOP/SIGCONT in the tests
        self._server: Proc | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="nihil-redis-")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        assert self._server is None
        directory = Path(self._dir.name)
        self._server = Proc(
            redis_server_args(self.port, directory), inherited_environ(), directory / "redis.log"
        )
        self._server.wait_for(REDIS_READY, timeout=10)
        self.proc = self._server.popen

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop(timeout=10)  # SIGTERM: redis exits without saving (--save "")
        self._server = self.proc = None


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the Celery app's broker, as seen from this (the web) process ---------------------------


@contextlib.contextmanager
def celery_broker(url: str | None = None, *, queue: str | None = None) -> Iterator[None]:
    """Point this process's Celery app at another broker and/or route every task to `queue`,
    then restore. Celery caches its connection pools and router, so both are reset."""
    from kombu import pools as kombu_pools

    from config.celery import app

    def reset_pools() -> None:
        if app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        amqp = app.__dict__.get("amqp")
        if amqp is not None and amqp._producer_pool is not None:
            amqp._producer_pool.force_close_all()
            amqp._producer_pool = None
        # kombu keeps producer pools in a process-wide registry keyed by connection: without
        # this, the next publish to the restored broker gets the pool closed above.
        kombu_pools.reset()

    # The app reads Django settings under the CELERY_ namespace, and a read looks up the
    # prefixed key (CELERY_BROKER_URL, found in django.conf.settings) before the plain one:
    # so the override goes into the app's own changes under the prefixed name. update()
    # is used for task_routes because it also tells the router to reload.
    old_routes = app.conf.task_routes  # (a first read also finishes the app's lazy setup)
    changes = app.conf.changes
    had_url, old_url = "CELERY_BROKER_URL" in changes, changes.get("CELERY_BROKER_URL")
    if url is not None:
        reset_pools()
        changes["CELERY_BROKER_URL"] = url
        assert app.conf.broker_url == url
    if queue is not None:
        app.conf.update(task_routes={"*": {"queue": queue}})
    try:
        yield
    finally:
        if url is not None:
            reset_pools()
            if had_url:
                changes["CELERY_BROKER_URL"] = old_url
            else:
                changes.pop("CELERY_BROKER_URL", None)
        if queue is not None:
            app.conf.update(task_routes=old_routes)


# --- a Celery worker in another process ----------------------------------------------------

# The worker consumes only its own queue (and routes what it sends there too): the shared
# Redis db 15 holds tasks left over by every other test run, which must neither delay this
# worker nor be run against this test's database.
WORKER_SCRIPT = """
import sys
from config.celery import app
queue = sys.argv[1]
app.conf.update(task_routes={"*": {"queue": queue}})
app.worker_main([
    "worker", "--loglevel", "INFO", "--concurrency", "1", "-Q", queue, "-n", queue + "@%h",
    "--without-gossip", "--without-mingle", "--without-heartbeat",
])
"""


def unique_queue() -> str:
    return f"nihil-test-{uuid.uuid4().hex[:12]}"


class Worker:
    def __init__(
        self, *, redis_url: str, extra_env: dict[str, str] | None = None, queue: str | None = None
    ) -> None:
        self.queue = queue or unique_queue()
        self.redis_url = redis_url
        database = settings.DATABASES["default"]
        self.env = {
            **inherited_environ(),
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": postgres_url(
                user=database["USER"] or "postgres",
                password=database.get("PASSWORD") or "",
                host=database["HOST"] or "127.0.0.1",
                port=database["PORT"] or 5432,
                name=database["NAME"],
            ),
            "REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            "CELERY_TASK_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        self._log_dir = tempfile.mkdtemp(prefix="nihil-worker-")
        self.proc: Proc | None = None

    def output(self) -> str:
        return self.proc.output() if self.proc is not None else ""

    def start(self, timeout: float = 30) -> None:
        self.proc = Proc(
            [PYTHON, "-c", WORKER_SCRIPT, self.queue],
            self.env,
            Path(self._log_dir) / f"{self.queue}.log",
        )
        try:
            self.proc.wait_for(WORKER_READY, timeout=timeout)
        except RuntimeError as exc:
            self.stop()
            pytest.fail(f"celery worker did not start: {exc}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)  # warm shutdown, then SIGKILL for its whole session
        # Our queue is ours alone: leave nothing behind in the shared Redis.
        with contextlib.suppress(redis.exceptions.RedisError):
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)
            client.delete(self.queue, f"_kombu.binding.{self.queue}")
            client.close()
        if os.environ.get("KEEP_WORKER_LOGS") is None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
        elif self.proc is not None:
            sys.stderr.write(f"worker log kept at {self.proc.log_path}\n")
        self.proc = None


@pytest.fixture
def celery_worker_process() -> Iterator[Callable[..., Worker]]:
    """celery_worker_process(redis_url=..., extra_env=...) -> a started Worker (stopped at the
    end of the test, whatever happens). Route this process's tasks to `worker.queue` with
    `celery_broker(queue=worker.queue)`."""
    workers: list[Worker] = []

    def start(
        *,
        redis_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        queue: str | None = None,
    ) -> Worker:
        worker = Worker(redis_url=redis_url or settings.REDIS_URL, extra_env=extra_env, queue=queue)
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()
