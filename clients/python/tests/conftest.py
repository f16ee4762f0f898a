"""The client's own tests: no server, no Django. A small in-memory fake of the API behind
httpx.MockTransport stands in where the client's own logic (retries, keys, the wait loop,
decoding) is what is tested; tests/clients in the server's suite runs it against the real
server."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

BASE = "http://nihil.test"


@dataclass
class FakeAPI:
    """Just enough of /api/v1/proposals for the client: idempotent submits, wait, get."""

    proposals: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    # Callables run before a request is handled; one may raise a transport error or return a
    # response to send instead (an outage, a lost response).
    faults: list[Callable[[httpx.Request], httpx.Response | None]] = field(default_factory=list)
    on_wait: Callable[[dict[str, Any]], None] | None = None

    def proposal(self, body: dict[str, Any]) -> dict[str, Any]:
        pid = str(uuid.uuid4())
        data = {
            "id": pid,
            "checkpoint": body["checkpoint"],
            "title": body["title"],
            "status": "pending",
            "resolution": "",
            "revision": 1,
            "payload": body["payload"],
            "approved_payload": None,
            "selected_option": "",
            "votes": [],
            "revisions": [
                {
                    "number": 1,
                    "kind": "submitted",
                    "payload": body["payload"],
                    "author": "agent",
                    "patch": [],
                    "summary": "",
                    "reason": "",
                }
            ],
        }
        self.proposals[pid] = data
        return data

    def decide(
        self, pid: str, decision: str, comment: str = "", edit: dict[str, Any] | None = None
    ) -> None:
        data = self.proposals[pid]
        if edit:
            data["revision"] += 1
            data["payload"] = {**data["payload"], **edit}
            data["revisions"].append(
                {
                    "number": data["revision"],
                    "kind": "edited",
                    "payload": data["payload"],
                    "author": "rita",
                    "patch": [
                        {"op": "replace", "path": f"/{k}", "value": v} for k, v in edit.items()
                    ],
                    "summary": "",
                    "reason": comment,
                }
            )
        data["votes"].append(
            {
                "reviewer": "rita",
                "decision": decision,
                "revision": data["revision"],
                "comment": comment,
                "selected_option": "",
                "created_at": "",
            }
        )
        data["status"] = {
            "approve": "approved",
            "reject": "rejected",
            "request_changes": "changes_requested",
        }[decision]
        data["resolution"] = "reviewers"
        if decision == "approve":
            data["approved_payload"] = data["payload"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for fault in list(self.faults):
            answer = fault(request)
            if answer is not None:
                return answer
        path = request.url.path.removeprefix("/api/v1")
        if request.method == "POST" and path == "/proposals/":
            body = json.loads(request.content)
            key = request.headers["idempotency-key"]
            if key in self.keys:
                return httpx.Response(
                    201,
                    json=self.proposals[self.keys[key]],
                    headers={"Idempotent-Replayed": "true"},
                )
            data = self.proposal(body)
            self.keys[key] = data["id"]
            return httpx.Response(201, json=data)
        parts = path.strip("/").split("/")
        if parts[0] == "proposals" and len(parts) >= 2:
            data = self.proposals.get(parts[1])
            if data is None:
                return httpx.Response(
                    404, json={"error": {"code": "not_found", "message": "Not found."}}
                )
            if len(parts) == 3 and parts[2] == "wait":
                if self.on_wait is not None:
                    self.on_wait(data)
                return httpx.Response(200, json=data)
            if len(parts) == 3 and parts[2] == "revisions":
                body = json.loads(request.content)
                data["revision"] += 1
                data["payload"] = body["payload"]
                data["status"] = "pending"
                return httpx.Response(201, json=data)
            return httpx.Response(200, json=data)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "?"}})


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def transport(api: FakeAPI) -> httpx.MockTransport:
    return httpx.MockTransport(api.handle)


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff sleeps are recorded, not slept."""
    slept: list[float] = []
    import nihil_obstat.client as module

    monkeypatch.setattr(module.time, "sleep", slept.append)
    return slept


@pytest.fixture
def slept(_no_real_sleep: list[float]) -> list[float]:
    return _no_real_sleep


assert "django" not in sys.modules
