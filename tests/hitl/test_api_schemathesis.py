"""The OpenAPI schema describes the API, checked from outside: schemathesis drives a live
server (uvicorn on the test database and a Redis of its own) from /api/schema/, as an
integrator and as a reviewer, with bounded examples. Zero server errors, zero responses the
schema does not describe (status, content type, body), and every request the schema forbids is
refused (negative_data_rejection: `"confidence": true` would fail it)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.factories import submit, token_for
from tests.processes import BASE_DIR, private_redis_db, start_server, subprocess_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCHEMATHESIS = str(BASE_DIR / ".venv" / "bin" / "schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)
# Bounded for a 2-core machine: a few examples per operation and mode, a fixed seed so a
# failure reproduces.
MAX_EXAMPLES = 3
SEED = 20261129


def _run(base_url: str, token: str, report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{base_url}/api/schema/",
            "--checks",
            CHECKS,
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--no-shrink",
            "--request-timeout",
            "30",
            "--header",
            f"Authorization: Bearer {token}",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_live_api_matches_its_openapi_schema(world, tmp_path):
    pending = submit(world.submitter, world.checkpoint, title="Inspect", payload={"a": 1})
    assert pending.status == "pending"
    with private_redis_db() as redis_url:
        # A short long-poll ceiling: generated `?timeout=` values must not make the run wait.
        env = subprocess_env(redis_url, HITL_WAIT_MAX_SECONDS="1")
        server, base_url = start_server(tmp_path, env)
        try:
            failures = []
            for who in ("submitter", "reviewer"):
                started = time.monotonic()
                done = _run(base_url, token_for(getattr(world, who)), tmp_path / f"{who}.xml")
                print(f"schemathesis as {who}: {time.monotonic() - started:.1f}s")
                if done.returncode != 0:
                    failures.append(
                        f"--- as {who} (exit {done.returncode}):\n{done.stdout[-6000:]}"
                    )
        finally:
            server.stop()
    assert not failures, "\n".join(failures) + "\n--- server log:\n" + server.output()[-3000:]
