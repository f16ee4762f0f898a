"""deploy/: the web unit's exact command line serves /readyz against this run's database
(through a TCP relay the test cuts to take the database away), and the alert rules and the
dashboard name only series /metrics exports."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml
from prometheus_client import Counter, Histogram

from hitl.ops import metrics
from tests.processes import (
    BASE_DIR,
    Proc,
    database_url,
    free_port,
    private_redis_db,
    subprocess_env,
    wait_until,
)

DEPLOY = BASE_DIR / "deploy"
INSTALL_DIR = "/opt/nihil-obstat"  # where the units expect the checkout
TOKEN = "deploy-test-metrics-token-0123456789"


def unit_service_section(path: Path) -> dict[str, list[str]]:
    """A systemd unit's [Service] keys (a key may repeat: Environment=, ExecStart=)."""
    section = ""
    keys: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


class TcpRelay:
    """127.0.0.1:<port> → PostgreSQL, which the test can cut (the database "goes away":
    open connections drop, new ones are refused) and restore on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self.lock:
            self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:  # accepted while stop() ran: cut it too
                    client.close()
                    server.close()
                    continue
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            conns, self.conns = self.conns, []
        if listener is not None:
            listener.close()
        for sock in conns:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def db_relay() -> Iterator[TcpRelay]:
    parts = urlsplit(database_url())
    relay = TcpRelay((parts.hostname or "127.0.0.1", parts.port or 5432))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_web_unit_command_serves_readyz_503_without_its_database_and_200_again(
    tmp_path: Path, db_relay: TcpRelay
) -> None:
    unit = unit_service_section(DEPLOY / "systemd" / "nihil-web@.service")
    (exec_start,) = unit["ExecStart"]
    port = free_port()
    argv = [
        arg.replace(INSTALL_DIR, str(BASE_DIR)).replace("%i", str(port))
        for arg in shlex.split(exec_start)
    ]
    environment = dict(item.split("=", 1) for item in unit["Environment"])
    assert environment["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    environment["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    parts = urlsplit(database_url())
    through_relay = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{db_relay.port}"))
    with private_redis_db() as redis_url:
        env = subprocess_env(
            redis_url,
            **environment,
            DATABASE_URL=through_relay,
            SECRET_KEY="deploy-test-secret-key-0123456789abcdefghijklmnop",
            HITL_READYZ_TIMEOUT_SECONDS="2",
            DB_POOL_TIMEOUT="3",
            HITL_METRICS_TOKEN=TOKEN,
        )
        web = Proc(argv, env, tmp_path / "web.log")
        try:
            web.wait_for(r"Uvicorn running on", timeout=60)
            base = f"http://127.0.0.1:{port}"

            def readyz() -> httpx.Response:
                return httpx.get(f"{base}/readyz", timeout=20)

            # Production settings redirect http to https, but not the probes.
            first = wait_until(lambda: readyz().status_code == 200, 30, "/readyz 200")
            assert first
            body = readyz().json()
            assert body["ready"] is True, body
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200

            db_relay.stop()  # the database goes away
            down = wait_until(lambda: (r := readyz()).status_code == 503 and r, 30, "/readyz 503")
            checks = down.json()["checks"]
            assert checks["database"]["ok"] is False and checks["database"]["error"]
            assert checks["redis"]["ok"] is True
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # still alive
            # /metrics still answers, saying which source it could not read.
            scrape = httpx.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
            assert scrape.status_code == 200
            assert 'nihil_scrape_source_up{source="database"} 0.0' in scrape.text, scrape.text
            assert 'nihil_scrape_source_up{source="redis"} 1.0' in scrape.text

            db_relay.start()  # back, on the same address
            wait_until(lambda: readyz().status_code == 200, 60, "/readyz 200 again", step=0.5)
        finally:
            web.stop()
            db_relay.stop()


def known_series(collected: list[Any]) -> set[str]:
    names = {family.name for family in collected}
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(f"{value._name}_total")
        elif isinstance(value, Histogram):
            names |= {f"{value._name}_{suffix}" for suffix in ("bucket", "count", "sum")}
    return names


NAME = re.compile(r"\bnihil_[a-z_]+\b")


@pytest.mark.django_db
def test_alert_rules_and_dashboard_use_only_exported_series() -> None:
    exported = known_series(list(metrics.StateCollector().collect()))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for wanted in (
        "NihilObstatSlaBreachesRising",
        "NihilObstatOutboxBacklogGrowing",
        "NihilObstatReviewBacklogGrowing",
        "NihilObstatHeartbeatStale",
        "NihilObstatOverrideRateHigh",
    ):
        assert wanted in alerts
    used: set[str] = set()
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        used |= set(NAME.findall(rule["expr"]))
    dashboard = json.loads((DEPLOY / "grafana" / "nihil-obstat.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(NAME.findall(target["expr"]))
    assert used, "no series referenced"
    assert used - exported == set()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    rules = DEPLOY / "prometheus"
    for argv in (
        ["promtool", "check", "rules", "alerts.yml"],
        ["promtool", "test", "rules", "alerts_test.yml"],
    ):
        result = subprocess.run(argv, cwd=rules, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
