"""`python -m nihil_obstat.mcp` driven by the official MCP SDK's client over stdio: an approval
with an edit, a rejection, and a human wait longer than the client's timeout; then once over
streamable HTTP."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.clients.conftest import VENV_PYTHON, Desk
from tests.processes import Proc, free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

EDIT = [{"op": "replace", "path": "/cost", "value": 120}]
MAX_WAIT = 3.0  # the server's limit for one tool call
CLIENT_TIMEOUT = 8.0  # the MCP client's own request timeout: longer than MAX_WAIT


def decide_when_asked(desk: Desk, known: set[str], decide: Any) -> threading.Thread:
    def work() -> None:
        decide(desk.bruno.next_pending(known))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


async def until_decided(session: ClientSession, result: dict[str, Any]) -> dict[str, Any]:
    while result["status"] == "pending":
        again = await session.call_tool(
            "get_decision",
            {"proposal_id": result["proposal_id"], "wait_seconds": MAX_WAIT},
            read_timeout_seconds=CLIENT_TIMEOUT,
        )
        result = again.structured_content
    return result


def test_request_approval_over_stdio(desk: Desk) -> None:
    server = StdioServerParameters(
        command=VENV_PYTHON,
        args=["-m", "nihil_obstat.mcp", "--max-wait", str(MAX_WAIT)],
        env=desk.env(),
    )
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def ask(session: ClientSession, cost: int, **more: Any) -> dict[str, Any]:
        payload = {"cost": cost, "businesses": 40}
        result = await session.call_tool(
            "request_approval",
            {"checkpoint": "data-purchase", "title": "Buy leads", "payload": payload, **more},
            read_timeout_seconds=CLIENT_TIMEOUT,
            progress_callback=on_progress,
        )
        assert not result.is_error, result.content
        return dict(result.structured_content)

    async def scenario() -> None:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert tools == {"request_approval", "get_decision", "list_checkpoints"}
            listed = await session.call_tool("list_checkpoints", {})
            assert "data-purchase" in str(listed.structured_content)

            # Approved with an edit: the agent gets the edited payload.
            thread = decide_when_asked(desk, desk.bruno.pending(), lambda p: desk.approve(p, EDIT))
            approved = await until_decided(session, await ask(session, 250))
            thread.join(30)
            assert approved["approved"] and approved["edited"]
            assert approved["approved_payload"] == {"cost": 120, "businesses": 40}
            assert approved["edit_patch"] == EDIT

            # Rejected: data, not an error, with the reviewer's reason.
            thread = decide_when_asked(
                desk, desk.bruno.pending(), lambda p: desk.bruno.vote(p, "reject", "no budget")
            )
            rejected = await until_decided(session, await ask(session, 260))
            thread.join(30)
            assert rejected["status"] == "rejected" and not rejected["approved"]
            assert rejected["reason"] == "no budget"

            # Nobody decides within the server's limit: the call returns, well inside the
            # client's timeout, with a pending result; the decision is fetched later.
            progress.clear()
            pending = await ask(session, 270)
            assert pending["status"] == "pending" and "get_decision" in pending["message"]
            assert progress and progress[-1][1] == MAX_WAIT
            # Asking again (a retried tool call) finds the same proposal; another run asks anew.
            again = await ask(session, 270, wait_seconds=0)
            assert again["proposal_id"] == pending["proposal_id"]
            other = await ask(session, 270, wait_seconds=0, run_id="another-task")
            assert other["proposal_id"] != pending["proposal_id"]
            desk.approve(pending["proposal_id"])
            later = await until_decided(session, pending)
            assert later["approved"] and later["approved_payload"] == {
                "cost": 270,
                "businesses": 40,
            }

    asyncio.run(scenario())


def test_streamable_http_transport(desk: Desk, tmp_path: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    arguments = ["--transport", "streamable-http", "--port", str(port), "--max-wait", "3"]
    server = Proc(
        [VENV_PYTHON, "-m", "nihil_obstat.mcp", *arguments],
        desk.env(),
        tmp_path / "mcp-http.log",
    )
    try:
        server.wait_for(r"Uvicorn running on")

        async def scenario() -> dict[str, Any]:
            url = f"http://127.0.0.1:{port}/mcp"
            async with (
                streamable_http_client(url) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                asked = await session.call_tool(
                    "request_approval",
                    {
                        "checkpoint": "data-purchase",
                        "title": "Buy leads",
                        "payload": {"cost": 280, "businesses": 40},
                        "wait_seconds": 0,
                    },
                )
                pending = dict(asked.structured_content)
                assert pending["status"] == "pending"
                desk.approve(pending["proposal_id"], EDIT)
                return await until_decided(session, pending)

        decided = asyncio.run(scenario())
        assert decided["approved_payload"] == {"cost": 120, "businesses": 40}
    finally:
        server.stop()
