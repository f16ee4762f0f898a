"""An MCP server that gives any MCP-capable agent a "request human approval" tool.

    python -m nihil_obstat.mcp                              # stdio (desktop MCP clients)
    python -m nihil_obstat.mcp --transport streamable-http --port 8765

Configuration: NIHIL_OBSTAT_URL, NIHIL_OBSTAT_TOKEN, and NIHIL_OBSTAT_MCP_MAX_WAIT (seconds,
default 50): the longest a single tool call waits for humans. Many MCP clients give up on a
request after about a minute, while humans take minutes or days; so `request_approval`
waits with progress notifications up to that limit and then returns
`{"status": "pending", "proposal_id": ...}`, and `get_decision(proposal_id)` picks the
decision up later. Asking again with the same arguments finds the same proposal.

Needs the `[mcp]` extra.
"""

from __future__ import annotations

from nihil_obstat.mcp.server import build_server, main

__all__ = ["build_server", "main"]
