"""`manage.py up`: the whole embedded install in one command.

Prepares the database (migrate, collectstatic, seed_demo), then supervises Redis (embedded
unless REDIS_URL is set), the ASGI server, a Celery worker and Celery beat as child processes.
Every child gets the same environment, so they agree on the database, the broker and the
secret key. Ctrl-C or SIGTERM stops them all; if any child dies, the others are stopped too
and the command exits non-zero.

Children run in their own sessions: a Ctrl-C in the terminal reaches only this supervisor,
which then stops them in order (web and Celery first, Redis last) instead of everyone racing
to exit on the same signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from hitl import embedded
from hitl.management.commands.seed_demo import default_credentials_file, read_credential_rows
from hitl.ops.metrics import MULTIPROC_ENV, fresh_multiproc_dir

STOP_TIMEOUT_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 60.0
COLORS = ("36", "33", "35", "32", "34", "31")  # ANSI: cyan, yellow, magenta, green, blue, red


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    pump: threading.Thread | None = None


class Output:
    """Line-prefixed, thread-safe writes: children's lines and our own never interleave."""

    def __init__(self, stream: IO[str], color: bool) -> None:
        self.stream = stream
        self.color = color
        self.lock = threading.RLock()  # re-entrant: the signal handler writes too
        self.width = 7
        self.colors: dict[str, str] = {}

    def prefix(self, name: str) -> str:
        label = f"{name:<{self.width}} |"
        if not self.color:
            return label
        code = self.colors.setdefault(name, COLORS[len(self.colors) % len(COLORS)])
        return f"\033[{code}m{label}\033[0m"

    def line(self, name: str, text: str) -> None:
        with self.lock:
            self.stream.write(f"{self.prefix(name)} {text}\n")
            self.stream.flush()

    def block(self, text: str) -> None:
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def pump(self, name: str, pipe: IO[bytes]) -> threading.Thread:
        def run() -> None:
            for raw in iter(pipe.readline, b""):
                self.line(name, raw.decode(errors="replace").rstrip("\r\n"))
            pipe.close()

        thread = threading.Thread(target=run, name=f"pump-{name}", daemon=True)
        thread.start()
        return thread


class Command(BaseCommand):
    help = (
        "Run everything for local use: migrate, collectstatic, demo data, then an embedded "
        "Redis (unless REDIS_URL is set), the web server, a Celery worker and Celery beat."
    )
    requires_system_checks: list[str] = []  # the children run the checks that matter

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="web server address")
        parser.add_argument("--port", type=int, default=8000, help="web server port")
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="web (ASGI) processes sharing the port (default: $WEB_CONCURRENCY or 1); "
            "each has its own database pool of up to DB_POOL_MAX_SIZE connections",
        )
        parser.add_argument("--no-worker", action="store_true", help="do not start a worker")
        parser.add_argument("--no-beat", action="store_true", help="do not start Celery beat")
        parser.add_argument("--no-seed", action="store_true", help="skip seed_demo")
        parser.add_argument(
            "--run-dir",
            type=Path,
            default=None,
            help="state of this install: SQLite file, Redis dir, secret key, beat schedule, "
            "demo logins and API key (default: $NIHIL_RUN_DIR or .run/)",
        )
        parser.add_argument(
            "--rotate-demo-key",
            action="store_true",
            help="revoke the demo agent's API key and print a new one (it is otherwise kept "
            "across restarts)",
        )

    # -- lifecycle -------------------------------------------------------------------------

    def handle(self, *args: Any, **options: Any) -> None:
        self.out = Output(sys.stdout, color=sys.stdout.isatty())
        self.children: list[Child] = []
        self.redis: embedded.EmbeddedRedis | None = None
        self.redis_pump: threading.Thread | None = None
        self.stop_signal: int | None = None
        self.state_written = False
        # manage.py put --run-dir into NIHIL_RUN_DIR before settings loaded (embedded.py),
        # so settings.RUN_DIR is already this directory: SQLite file and key included.
        self.run_dir = (options["run_dir"] or Path(settings.RUN_DIR)).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rotate_demo_key = options["rotate_demo_key"]
        host, port = options["host"], options["port"]
        if embedded.port_in_use(host, port):
            raise CommandError(f"Port {port} on {host} is already in use; pick another: --port.")

        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        started = time.monotonic()
        try:
            env = self._environment()
            # Links in the demo's (console) emails point at this server.
            env.setdefault("HITL_PUBLIC_URL", f"http://{_connect_host(host)}:{port}")
            self._publish_state(env, f"http://{_connect_host(host)}:{port}")
            seed = self._prepare(env, seed=not options["no_seed"])
            if self.stop_signal is not None:
                return
            self._start_services(env, host, port, options)
            if not self._wait_until_ready(host, port):
                return
            self.out.block(self._banner(env, host, port, seed, time.monotonic() - started))
            self._supervise()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            self.out.line("up", f"{signal.Signals(signum).name} received; stopping ...")

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
        env.setdefault("DEBUG", "true")
        env[embedded.RUN_DIR_ENV] = str(self.run_dir)
        key_file = self.run_dir / embedded.SECRET_KEY_NAME
        self.secret_key_file: Path | None = None
        if not env.get("SECRET_KEY") or (
            key_file.exists() and env["SECRET_KEY"] == key_file.read_text().strip()
        ):
            env["SECRET_KEY"] = embedded.load_or_create_secret_key(key_file)
            self.secret_key_file = key_file
        env["PYTHONUNBUFFERED"] = "1"
        # Prometheus multiprocess mode (README "For operators"): web and worker write their
        # counters under the run dir and /metrics sums them; emptied at each start.
        env.setdefault(MULTIPROC_ENV, str(fresh_multiproc_dir(self.run_dir / "metrics")))
        if env.get("REDIS_URL"):
            self.out.line("up", f"Using the Redis at REDIS_URL={env['REDIS_URL']}")
        else:
            try:
                executable = embedded.find_redis_server()
                self.out.line("up", f"Starting an embedded Redis ({executable}) ...")
                self.redis = embedded.start_redis(self.run_dir, executable=executable)
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
            if self.redis.process.stdout is not None:
                self.redis_pump = self.out.pump("redis", self.redis.process.stdout)
            env["REDIS_URL"] = self.redis.url
        return env

    def _publish_state(self, env: dict[str, str], base_url: str) -> None:
        """<run dir>/up.json: how the other commands of this install (hitl_status,
        create_api_key, ...) find its database, key and Redis while it runs (embedded.py)."""
        self.state_written = True
        embedded.write_up_state(
            self.run_dir,
            embedded.UpState(
                pid=os.getpid(),
                debug=env["DEBUG"],
                redis_url=env["REDIS_URL"],
                redis_embedded=self.redis is not None,
                database_url=env.get("DATABASE_URL") or None,
                secret_key_file=str(self.secret_key_file) if self.secret_key_file else None,
                base_url=base_url,
            ),
        )

    def _manage(self, *args: str) -> list[str]:
        return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]

    def _prepare(self, env: dict[str, str], *, seed: bool) -> dict[str, Any] | None:
        self._step("migrate", self._manage("migrate", "--noinput"), env)
        self._step("static", self._manage("collectstatic", "--noinput", "-v", "0"), env)
        if not seed or self.stop_signal is not None:
            return None
        argv = self._manage(
            *("seed_demo", "--json", "--credentials-file", str(self.credentials)),
            *("--api-key-file", str(self.run_dir / "demo-api-key")),
            *(["--rotate-key"] if self.rotate_demo_key else []),
        )
        output = self._step("seed", argv, env, capture=True)
        try:
            result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise CommandError(f"seed_demo printed something unexpected: {output!r}") from None
        return result

    def _step(self, name: str, argv: list[str], env: dict[str, str], capture: bool = False) -> str:
        """Run a preparation command to completion, its output prefixed; stdout is returned
        instead of shown when `capture`."""
        if self.stop_signal is not None:
            return ""
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=settings.BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
        )
        assert process.stdout is not None
        captured = ""
        if capture:
            assert process.stderr is not None
            pump = self.out.pump(name, process.stderr)
            captured = process.stdout.read().decode()
        else:
            pump = self.out.pump(name, process.stdout)
        code = process.wait()
        pump.join(timeout=5)
        if code != 0 and self.stop_signal is None:
            raise CommandError(f"`manage.py {' '.join(argv[2:])}` failed with exit code {code}.")
        return captured

    def _start_services(
        self, env: dict[str, str], host: str, port: int, options: dict[str, Any]
    ) -> None:
        python = sys.executable
        workers = web_workers(options.get("workers"))
        services: list[tuple[str, list[str]]] = [
            (
                "web",
                [
                    python,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--lifespan",
                    "off",  # Django's ASGI app has no lifespan protocol
                    # Live messages are small and go to hundreds of sockets: compressing each
                    # frame for each socket cost more CPU than the whole rest of the fan-out.
                    *("--ws-per-message-deflate", "false"),
                    # N processes on one listening socket (uvicorn's supervisor restarts one
                    # that dies). Websockets need nothing more: every process subscribes to
                    # the groups of its own sockets (notifications.live), and Prometheus
                    # files are per process id in the shared multiprocess dir.
                    *(["--workers", str(workers)] if workers > 1 else []),
                ],
            )
        ]
        if not options["no_worker"]:
            services.append(
                (
                    "worker",
                    [
                        *(python, "-m", "celery", "-A", "config", "worker"),
                        *("--loglevel", "INFO", "--concurrency", "2"),
                    ],
                )
            )
        if not options["no_beat"]:
            services.append(
                (
                    "beat",
                    [
                        *(python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"),
                        *("--schedule", str(self.run_dir / "celerybeat-schedule")),
                    ],
                )
            )
        for name, argv in services:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=settings.BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert process.stdout is not None
            child = Child(name=name, process=process)
            child.pump = self.out.pump(name, process.stdout)
            self.children.append(child)

    def _dead_child(self) -> str | None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                return f"{child.name} exited with code {code}"
        if self.redis is not None and self.redis.process.poll() is not None:
            return f"redis exited with code {self.redis.process.returncode}"
        return None

    def _wait_until_ready(self, host: str, port: int) -> bool:
        url = f"http://{_connect_host(host)}:{port}/admin/login/"
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.stop_signal is not None:
                return False
            dead = self._dead_child()
            if dead:
                raise CommandError(f"{dead} during start-up; stopped the others.")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise CommandError(f"The web server did not answer {url} within 60s.")

    def _supervise(self) -> None:
        while self.stop_signal is None:
            dead = self._dead_child()
            if dead:
                raise CommandError(f"{dead}; stopped the others.")
            time.sleep(0.2)

    def _stop_all(self) -> None:
        """SIGTERM every child at once, wait, SIGKILL the stragglers' whole process groups
        (a Celery worker's pool processes included); Redis goes last, after its clients."""
        running = [c for c in self.children if c.process.poll() is None]
        for child in running:
            _signal(child.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in running:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.out.line("up", f"{child.name} did not stop in time; killing it")
                _signal(child.process, signal.SIGKILL, group=True)
                child.process.wait()
        for child in self.children:
            # Leftover grandchildren (pool processes) would keep the pipe open forever.
            _signal(child.process, signal.SIGKILL, group=True)
            if child.pump is not None:
                child.pump.join(timeout=2)
        if self.redis is not None:
            self.redis.stop()
            if self.redis_pump is not None:
                self.redis_pump.join(timeout=2)
        if self.children or self.redis is not None:
            self.out.line("up", "stopped")

    # -- the banner --------------------------------------------------------------------------

    def _banner(
        self,
        env: dict[str, str],
        host: str,
        port: int,
        seed: dict[str, Any] | None,
        elapsed: float,
    ) -> str:
        base = f"http://{_connect_host(host)}:{port}"
        database = settings.DATABASES["default"]
        names = ", ".join(c.name for c in self.children)
        rule = "=" * 78
        lines = [
            "",
            rule,
            f"Nihil Obstat is up ({names}; ready in {elapsed:.1f}s)",
            f"  Review queue {base}/queue/",
            f"  Dashboard    {base}/dashboard/ (managers)",
            f"  Connect      {base}/connect/ (an agent: key and snippets)",
            f"  Admin        {base}/admin/",
            f"  API docs     {base}/api/docs/",
            f"  API          {base}/api/v1/",
            f"  Database     {database['ENGINE'].rsplit('.', 1)[-1]}: {database['NAME']}",
            f"  Redis        {env['REDIS_URL']}"
            + (" (embedded)" if self.redis is not None else ""),
            f"  DEBUG={env.get('DEBUG')}  settings={env['DJANGO_SETTINGS_MODULE']}",
            "",
        ]
        logins = (seed or {}).get("logins") or self._known_logins()
        if logins:
            lines.append("Demo logins:")
            for login in logins:
                password = login.get("password") or "(unknown: seed_demo --reset-passwords)"
                lines.append(f"  {login['username']:<9} {password:<20} {login['role']}")
            lines.append("")
        if seed and seed.get("api_key"):
            key = seed["api_key"]
            lines += [
                f"API key of the demo agent {seed.get('agent', '')!r} (kept across restarts; "
                "--rotate-demo-key for a new one):",
                f"  {key}",
                f"  curl -H 'Authorization: Bearer {key}' {base}/api/v1/checkpoints/",
                "",
            ]
        lines += ["Press Ctrl-C to stop.", rule]
        return "\n".join(lines)

    def _known_logins(self) -> list[dict[str, Any]]:
        return [vars(row) for row in read_credential_rows(self.credentials)]

    @property
    def credentials(self) -> Path:
        return self.run_dir / default_credentials_file().name


def web_workers(option: int | None) -> int:
    """--workers, else $WEB_CONCURRENCY (the variable uvicorn and gunicorn read), else 1."""
    if option is None:
        raw = os.environ.get("WEB_CONCURRENCY", "").strip()
        try:
            option = int(raw) if raw else 1
        except ValueError:
            raise CommandError(f"WEB_CONCURRENCY={raw!r} is not a number.") from None
    if option < 1:
        raise CommandError("--workers must be at least 1.")
    return option


def _connect_host(host: str) -> str:
    """Where to point a browser for a server bound to `host`."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _signal(process: subprocess.Popen[bytes], sig: int, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(process.pid, sig)  # the child leads its own session/process group
        else:
            process.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass
