"""The MCP server's tools (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from nihil_obstat.client import AsyncClient
from nihil_obstat.models import Proposal

MAX_WAIT_ENV = "NIHIL_OBSTAT_MCP_MAX_WAIT"
DEFAULT_MAX_WAIT = 50.0
PROGRESS_EVERY = 5.0  # seconds between progress notifications while humans decide


def result_of(proposal: Proposal) -> dict[str, Any]:
    """What the agent reads: the decision, the payload to act on, the humans' words."""
    result: dict[str, Any] = {
        "proposal_id": proposal.id,
        "status": proposal.status,
        "resolution": proposal.resolution,
        "approved": proposal.approved,
        "approved_payload": proposal.approved_payload,
        "selected_option": proposal.selected_option,
        "reason": proposal.reason,
        "edited": proposal.edited,
        "edit_patch": proposal.edit_patch,
        "comments": [
            {"reviewer": v.reviewer, "decision": v.decision, "comment": v.comment}
            for v in proposal.comments
        ],
    }
    if proposal.status == "pending":
        result["message"] = (
            "Humans have not decided yet. Do not act. Call get_decision with this "
            "proposal_id later to pick the decision up."
        )
    elif proposal.approved:
        result["message"] = "Approved: act with approved_payload (it may carry a human's edit)."
    else:
        result["message"] = f"Not approved ({proposal.status}): do not act. {proposal.reason}"
    return result


def build_server(client: AsyncClient, *, max_wait: float = DEFAULT_MAX_WAIT) -> MCPServer:
    # An approval answers one request, not every identical one for days: without a run_id
    # from the agent, equal requests share a proposal only within this server's lifetime.
    session_run_id = f"mcp-{uuid.uuid4()}"
    server = MCPServer(
        "nihil-obstat",
        instructions=(
            "Before a risky or irreversible action, call request_approval and act only on "
            "approved_payload when approved is true."
        ),
    )

    async def wait_with_progress(proposal: Proposal, limit: float, ctx: Context) -> Proposal:
        started = time.monotonic()
        while proposal.status == "pending":
            left = limit - (time.monotonic() - started)
            if left <= 0:
                break
            proposal = await client.wait(proposal.id, min(PROGRESS_EVERY, left))
            elapsed = time.monotonic() - started
            await ctx.report_progress(
                min(elapsed, limit), limit, f"waiting for human review ({elapsed:.0f} s)"
            )
        return proposal

    @server.tool()
    async def request_approval(
        checkpoint: str,
        title: str,
        payload: dict[str, Any],
        ctx: Context,
        summary: str = "",
        confidence: float | None = None,
        context: dict[str, Any] | None = None,
        wait_seconds: float | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """Ask humans to approve an action before doing it. `payload` is the action's
        parameters; reviewers may edit them. Waits for the decision (at most `wait_seconds`,
        bounded by the server's limit) and returns it; if humans are still deciding, returns
        status "pending" with a proposal_id for get_decision. The same title and payload
        asked again with the same `run_id` (default: this server process) return the same
        proposal; a new `run_id` asks the humans again."""
        proposal = await client.submit(
            checkpoint,
            title,
            payload,
            action=f"mcp:{title}",
            run_id=run_id or session_run_id,
            summary=summary or None,
            confidence=confidence,
            context=context,
        )
        limit = max_wait if wait_seconds is None else max(0.0, min(wait_seconds, max_wait))
        return result_of(await wait_with_progress(proposal, limit, ctx))

    @server.tool()
    async def get_decision(
        proposal_id: str, ctx: Context, wait_seconds: float = 0
    ) -> dict[str, Any]:
        """The decision on a proposal made by request_approval, waiting up to
        `wait_seconds` (bounded by the server's limit) while it is pending."""
        proposal = await client.get(proposal_id)
        limit = max(0.0, min(wait_seconds, max_wait))
        return result_of(await wait_with_progress(proposal, limit, ctx))

    @server.tool()
    async def list_checkpoints() -> list[dict[str, Any]]:
        """The checkpoints this agent may submit to, with what each guards."""
        return [
            {"slug": c.slug, "name": c.name, "description": c.description}
            for c in await client.checkpoints()
        ]

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nihil_obstat.mcp")
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--max-wait",
        type=float,
        default=float(os.environ.get(MAX_WAIT_ENV, DEFAULT_MAX_WAIT)),
        help="longest wait of one tool call, seconds (default 50, or NIHIL_OBSTAT_MCP_MAX_WAIT)",
    )
    args = parser.parse_args(argv)
    # One line per long-poll would drown the MCP client's log of this server's stderr.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    server = build_server(AsyncClient(), max_wait=args.max_wait)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)
