"""The Python client against the real thing: uvicorn serving the app on the test database,
a private Redis database, and a scripted reviewer deciding through the REST API.

One server per module (starting uvicorn is the slow part); each test gets fresh rows
(`transaction=True` flushes the tables the server reads).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from guardian.shortcuts import assign_perm

from proposals.permissions import REVIEW
from tests.factories import CheckpointFactory, GroupFactory, UserFactory, make_service_account
from tests.factories import token_for as _token_for
from tests.processes import BASE_DIR, private_redis_db, start_server, subprocess_env

VENV_PYTHON = str(BASE_DIR / ".venv" / "bin" / "python")


@pytest.fixture(scope="package")
def live_url(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_redis_db() as redis_url:
        server, url = start_server(tmp_path_factory.mktemp("uvicorn"), subprocess_env(redis_url))
        try:
            yield url
        finally:
            server.stop()


@dataclass
class Reviewer:
    """A human, scripted: reads and votes through the API with a personal key."""

    url: str
    token: str

    def _http(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def get(self, proposal_id: str) -> dict[str, Any]:
        with self._http() as http:
            response = http.get(f"/proposals/{proposal_id}/")
        response.raise_for_status()
        return dict(response.json())

    def vote(
        self, proposal_id: str, decision: str, comment: str = "", **extra: Any
    ) -> dict[str, Any]:
        revision = self.get(proposal_id)["revision"]
        body = {"decision": decision, "revision": revision, "comment": comment, **extra}
        with self._http() as http:
            response = http.post(f"/proposals/{proposal_id}/votes/", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def pending(self) -> set[str]:
        with self._http() as http:
            response = http.get(
                "/proposals/", params={"reviewable": "me", "status": "pending", "page_size": 200}
            )
        response.raise_for_status()
        return {str(item["id"]) for item in response.json()["results"]}

    def next_pending(self, known: set[str], timeout: float = 60) -> str:
        """The id of a proposal waiting for this reviewer that is not in `known` (taken
        before the agent started), polling until one arrives."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self.pending() - known
            if new:
                return new.pop()
            time.sleep(0.2)
        raise AssertionError("no new proposal reached the reviewer")


@dataclass
class Desk:
    """The world of these tests: the demo's `data-purchase` rules (review when cost > 100;
    two buyers must approve), an agent with a key, two buyers."""

    url: str
    agent_token: str
    bruno: Reviewer
    bianca: Reviewer

    def approve(
        self, proposal_id: str, patch: list[dict[str, Any]] | None = None, comment: str = "ok"
    ) -> dict[str, Any]:
        """Both buyers approve; Bruno edits first when a patch is given (his edit makes a
        new revision, Bianca approves that one)."""
        extra = {"patch": patch} if patch else {}
        self.bruno.vote(proposal_id, "approve", comment, **extra)
        return self.bianca.vote(proposal_id, "approve", "fine by me")

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for an example or agent process: the README's two variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
        env.update(
            NIHIL_OBSTAT_URL=self.url,
            NIHIL_OBSTAT_TOKEN=self.agent_token,
            PYTHONUNBUFFERED="1",
            **extra,
        )
        return env


@pytest.fixture(scope="package")
def desk(django_db_blocker: Any, live_url: str) -> Iterator[Desk]:
    with django_db_blocker.unblock():
        world = _make_world(live_url)
    try:
        yield world
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)


def _make_world(live_url: str) -> Desk:
    checkpoint = CheckpointFactory(
        slug="data-purchase",
        name="Data purchase",
        review_when=[
            {"path": "cost", "op": "gt", "value": 100},
            {"path": "businesses", "op": "gt", "value": 1000},
        ],
        auto_approve_at=0.0,
        quorum_rule="count",
        quorum_count=2,
    )
    buyers = GroupFactory(name="buyers")
    assign_perm(REVIEW, buyers, checkpoint)
    bruno, bianca = UserFactory(username="bruno"), UserFactory(username="bianca")
    for user in (bruno, bianca):
        user.groups.add(buyers)
    agent = make_service_account("demo-agent", checkpoint)
    return Desk(
        url=live_url,
        agent_token=_token_for(agent),
        bruno=Reviewer(live_url, _token_for(bruno)),
        bianca=Reviewer(live_url, _token_for(bianca)),
    )


def run_python(
    args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A Python process of the server's venv (where the client and its extras are installed)."""
    return subprocess.run(
        [VENV_PYTHON, *args],
        env=env,
        cwd=cwd or BASE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def started(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    handle = log.open("w")
    return subprocess.Popen(
        [VENV_PYTHON, *args],
        env=env,
        cwd=BASE_DIR,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def in_thread(work: Callable[[], Any]) -> Any:
    import threading

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


assert sys.version_info >= (3, 11)
