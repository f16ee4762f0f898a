"""Running the real processes, for the bench and the tests alike: a child in its own session
with its output in a log file, waited for by what it prints and always stopped (SIGTERM, then
SIGKILL for its whole session); the command lines of a web process and a Celery worker as
deployed and of a private redis-server, and what each prints when ready. No pytest and no
Django here: the bench runs without either; the tests add their fixtures on top
(tests/processes.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

UVICORN_READY = r"Uvicorn running on"
WORKER_READY = r"(\S+@\S+) ready\."  # group 1: the worker's node name
REDIS_READY = r"Ready to accept connections"

# What configures the product: a child gets it from its caller, never from this process.
_CONFIGURATION_PREFIXES = ("DJANGO_", "HITL_", "CELERY_", "PYTEST_", "DB_")
_CONFIGURATION_NAMES = ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY")


def inherited_environ() -> dict[str, str]:
    """This process's environment without the product's configuration (PATH, HOME and the
    like stay)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_CONFIGURATION_PREFIXES) and key not in _CONFIGURATION_NAMES
    }


def postgres_url(*, user: str, password: str, host: str, port: int | str, name: str) -> str:
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return f"postgres://{auth}@{host}:{port}/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_args(port: int, app: str = "config.asgi") -> list[str]:
    """One process per port, as behind a load balancer and as `up` and deploy/ run it:
    --lifespan off (Django's ASGI app has no lifespan protocol), no access log (production
    turns it off), no per-socket compression of the live fan-out."""
    return [
        *(PYTHON, "-m", "uvicorn", f"{app}:application", "--host", "127.0.0.1"),
        *("--port", str(port), "--lifespan", "off", "--no-access-log"),
        *("--ws-per-message-deflate", "false"),
    ]


def worker_args(node: str, *options: str) -> list[str]:
    """A Celery worker of config's app named `node` (e.g. "bench-1@%h"); no mingle or gossip,
    which only slow a lone worker's start."""
    return [
        *(PYTHON, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "-n", node),
        *("--without-mingle", "--without-gossip", *options),
    ]


def redis_server_args(port: int, directory: Path) -> list[str]:
    """A private redis-server on a loopback port that writes nothing to disk."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
    return [
        *(executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *("--appendonly", "no", "--dir", str(directory)),
    ]


class Proc:
    """A child process in its own session, its output in a log file."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        name: str = "",
        cwd: Path = ROOT,
    ) -> None:
        self.name = name or log_path.stem
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
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
        """The first match of `pattern` in the output; raises if the process exits first or
        `timeout` passes, with the output's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name}: {pattern!r} not seen (exit {self.popen.poll()}); output:\n"
            f"{self.output()[-4000:]}"
        )

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the main process (a warm shutdown lets running tasks finish), then
        SIGKILL for whatever of its session is left."""
        try:
            self.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        finally:
            self._log.close()

    def cpu_seconds(self) -> float:
        """CPU of this process and its descendants (user + system)."""
        try:
            root = psutil.Process(self.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                with suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.NoSuchProcess:
            return 0.0


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """The predicate's first true value; raises after `timeout` seconds of false ones."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
