"""Starting and stopping what the bench measures: databases of its own on the PostgreSQL
server, a private redis-server, uvicorn web processes (product and baseline), a Celery worker.

Everything started here is stopped here, by process id (each child in its own session, so
its own children go too); the databases are dropped at the end, whatever happened.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.processes import (
    PYTHON,
    REDIS_READY,
    ROOT,
    UVICORN_READY,
    WORKER_READY,
    Proc,
    free_port,
    inherited_environ,
    postgres_url,
    redis_server_args,
    uvicorn_args,
    worker_args,
)

__all__ = ["PYTHON", "ROOT", "Proc", "Stack", "free_port", "make_workdir"]

# A Celery worker with nothing to do still wakes up (heartbeats, broker polls): below this
# much CPU in half a second it counts as idle.
WORKER_IDLE_CPU_S = 0.02


@dataclass
class Postgres:
    """Databases of our own on the shared server: created now, dropped in `drop_all`."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    created: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> Postgres:
        return cls(
            host=os.environ.get("BENCH_PGHOST", "127.0.0.1"),
            port=int(os.environ.get("BENCH_PGPORT", "5432")),
            user=os.environ.get("BENCH_PGUSER", "postgres"),
            password=os.environ.get("BENCH_PGPASSWORD", ""),
        )

    def dsn(self, dbname: str = "postgres") -> str:
        return postgres_url(
            user=self.user, password=self.password, host=self.host, port=self.port, name=dbname
        )

    def create(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # our own generated name, no input
        self.created.append(name)
        return self.dsn(name)

    def drop_all(self) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for name in self.created:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    [name],
                )
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        self.created.clear()


@dataclass
class Stack:
    """The product and the baseline, up; `stop` tears everything down."""

    workdir: Path
    web_processes: int
    procs: list[Proc] = field(default_factory=list)
    pg: Postgres = field(default_factory=Postgres.from_env)
    product_db: str = ""
    baseline_db: str = ""
    redis_url: str = ""
    product_urls: list[str] = field(default_factory=list)
    baseline_urls: list[str] = field(default_factory=list)
    product_web: list[Proc] = field(default_factory=list)
    baseline_web: list[Proc] = field(default_factory=list)
    worker: Proc | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    src: Path = ROOT  # the code every child runs: a snapshot taken by `start`
    _outbox_conn: psycopg.Connection[Any] | None = None

    @property
    def own_sql_dir(self) -> Path:
        """Where the bench leaves the product's list-page SQL for the baseline to run."""
        return self.workdir / "own-sql"

    # -- environments ----------------------------------------------------------------------

    def product_env(self, **extra: str) -> dict[str, str]:
        """config.settings.production, as deployed: DEBUG off, HTTPS expected from the load
        balancer (clients send X-Forwarded-Proto: https, so nothing is weakened)."""
        env = inherited_environ()
        env.update(
            NIHIL_SKIP_BOOTSTRAP="1",
            DJANGO_SETTINGS_MODULE="config.settings.production",
            SECRET_KEY=self.secret_key,
            DATABASE_URL=self.pg.dsn(self.product_db),
            REDIS_URL=self.redis_url,
            NIHIL_RUN_DIR=str(self.workdir / "run"),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="WARNING",
            # The per-user rate limit is a deployment knob (default 100/s) that the bench
            # would hit; it stays on (its Redis round trip is measured), just out of reach.
            API_THROTTLE_USER="100000000/minute",
            API_THROTTLE_ANON="100000000/minute",
            EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        )
        env.update(extra)
        return env

    def baseline_env(self, **extra: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DJANGO_", "PYTEST_"))
            and key not in ("DATABASE_URL", "DEBUG", "SECRET_KEY")
        }
        env.update(
            DJANGO_SETTINGS_MODULE="bench.baseline.settings",
            SECRET_KEY=self.secret_key,
            DATABASE_URL=self.pg.dsn(self.baseline_db),
            # For the list page's own SQL (bench.baseline.views.own_sql).
            BENCH_PRODUCT_DATABASE_URL=self.pg.dsn(self.product_db),
            BENCH_OWN_SQL_DIR=str(self.own_sql_dir),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def start(
        self, log: Callable[[str], None] = print, after_migrate: Callable[[], object] | None = None
    ) -> None:
        """Everything up. Start-up is mostly imports and migrations, so they overlap: the web
        processes and the worker import while `migrate` runs (none of them touches the
        database before its first request or task), and `after_migrate` (the seeding) runs
        while they finish starting."""
        self.src = snapshot_source(self.workdir / "src")
        log(f"measuring a snapshot of the working tree: {self.src}")
        # run/static: where collectstatic would put files (the API paths serve none).
        (self.workdir / "run" / "static").mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.product_db = f"bench_nihil_{tag}"
        self.baseline_db = f"bench_base_{tag}"
        self.pg.create(self.product_db)
        self.pg.create(self.baseline_db)
        self._start_redis()
        migrate = self.spawn(
            "migrate",
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            self.product_env(),
        )
        self.run_checked(
            "baseline-schema", [PYTHON, "-m", "bench.baseline.schema"], self.baseline_env()
        )
        for number in range(self.web_processes):
            for app, env, procs, urls in (
                ("bench.baseline.asgi", self.baseline_env(), self.baseline_web, self.baseline_urls),
                ("config.asgi", self.product_env(), self.product_web, self.product_urls),
            ):
                port = free_port()
                side = "baseline" if app.startswith("bench") else "product"
                procs.append(self.spawn(f"{side}-web-{number}", uvicorn_args(port, app), env))
                urls.append(f"http://127.0.0.1:{port}")
        self.worker = self.spawn(
            "worker",
            worker_args(f"bench-{tag}@%h", "--concurrency", "2"),
            self.product_env(CELERY_TASK_LOG_LEVEL="WARNING"),
        )
        code = migrate.popen.wait(600)
        if code != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.output()[-3000:]}")
        log("migrated")
        if after_migrate is not None:
            after_migrate()
        for proc in [*self.baseline_web, *self.product_web]:
            proc.wait_for(UVICORN_READY, timeout=120)
        self.worker.wait_for(WORKER_READY, timeout=120)
        for url in [*self.product_urls, *self.baseline_urls]:
            _wait_http(url + "/healthz-does-not-matter")
        log("web processes and worker ready")

    def outbox_pending(self) -> int:
        """Undispatched outbox rows. One connection, kept for the run (a poll loop that
        connects every 0.1 s would compete for the server's connection slots)."""
        for attempt in range(5):
            try:
                if self._outbox_conn is None or self._outbox_conn.closed:
                    self._outbox_conn = psycopg.connect(
                        self.pg.dsn(self.product_db), autocommit=True
                    )
                row = self._outbox_conn.execute(
                    "SELECT count(*) FROM notifications_outboxevent WHERE dispatched_at IS NULL"
                ).fetchone()
                return int(row[0]) if row else 0
            except psycopg.OperationalError:
                # A busy shared server ("too many clients"): wait a moment, try again.
                self._outbox_conn = None
                if attempt == 4:
                    raise
                time.sleep(1)
        return 0

    def wait_outbox_drained(self, timeout: float = 300) -> float | None:
        """Seconds until the worker has relayed every outbox row (None: not within
        `timeout`). Stages wait for it so one stage's after-commit work does not land in the
        next one's numbers."""
        started = time.monotonic()
        while self.outbox_pending():
            if time.monotonic() - started > timeout:
                return None
            time.sleep(0.1)
        # Relayed is not finished: the relay queues tasks (mails, webhook deliveries) that the
        # worker runs after it. Done when the worker has gone idle.
        if self.worker is not None:
            last = self.worker.cpu_seconds()
            while True:
                time.sleep(0.5)
                now = self.worker.cpu_seconds()
                if now - last < WORKER_IDLE_CPU_S:
                    break
                last = now
                if time.monotonic() - started > timeout:
                    return None
        return time.monotonic() - started

    def _start_redis(self) -> None:
        port = free_port()
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir(exist_ok=True)
        proc = self.spawn("redis", redis_server_args(port, redis_dir), dict(os.environ))
        proc.wait_for(REDIS_READY, timeout=30)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(args, env, self.workdir / f"{name}.log", name=name, cwd=self.src)
        self.procs.append(proc)
        return proc

    def run_checked(
        self, name: str, args: list[str], env: dict[str, str], timeout: float = 600
    ) -> str:
        """Run to completion; stdout returned, stderr in the log; raises on failure."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            done = subprocess.run(
                args,
                cwd=self.src,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} failed ({done.returncode}):\n{tail}")
        return done.stdout.decode()

    def stop(self) -> None:
        """SIGTERM to all at once, then each is waited for (SIGKILL after its grace), then
        the databases go."""
        try:
            if self._outbox_conn is not None:
                self._outbox_conn.close()
            for proc in self.procs:
                proc.terminate()
            for proc in reversed(self.procs):
                proc.stop()
            self.procs.clear()
        finally:
            self.pg.drop_all()


def _wait_http(url: str, timeout: float = 120) -> None:
    """Until the server answers anything at all (a 404 is an answer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # As the load balancer says it: HTTPS was terminated in front (no SSL redirect).
            httpx.get(url, headers={"X-Forwarded-Proto": "https"}, timeout=10)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def snapshot_source(dest: Path) -> Path:
    """A copy of the working tree (tracked and untracked files, not ignored ones) that every
    child runs from. Others may edit the tree while a run lasts (a model gains a field, a
    migration lands): a child started later would then run other code than the one migrated
    and measured first. The virtualenv stays shared (children put their working directory,
    the snapshot, first on sys.path)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file() or name.startswith("bench/results/"):
            continue  # deleted in the working tree, or a recorded run
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="nihil-bench-"))
