"""An MCP client asking humans before acting, through `python -m nihil_obstat.mcp` (stdio).

NIHIL_OBSTAT_URL=... NIHIL_OBSTAT_TOKEN=nok_... python examples/mcp_client.py
"""

import asyncio
import os
import sys

from mcp import ClientSession, StdioServerParameters, stdio_client

ORDER = {"cost": 250, "businesses": 40, "segment": "bakeries"}


async def main() -> None:
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "nihil_obstat.mcp"], env=dict(os.environ)
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        ask = {"checkpoint": "data-purchase", "title": "Buy leads", "payload": ORDER}
        result = await session.call_tool("request_approval", ask)
        decision = result.structured_content
        while decision["status"] == "pending":  # humans take longer than one tool call
            print("still waiting for humans ...", flush=True)
            again = {"proposal_id": decision["proposal_id"], "wait_seconds": 30}
            decision = (await session.call_tool("get_decision", again)).structured_content
        if decision["approved"]:
            print("buying", decision["approved_payload"])
        else:
            print("not buying:", decision["status"], decision["reason"])


asyncio.run(main())
