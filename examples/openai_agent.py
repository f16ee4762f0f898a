"""Agents SDK, scripted model: 2 calls needing approval pause the run; decide both, rerun."""

import asyncio
import os
from pathlib import Path

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call
from nihil_obstat import AsyncClient
from nihil_obstat.openai_agents import AgentApprovals

saved = Path(os.environ.get("AGENT_STATE", "agent-run.json"))
calls = [
    function_call("buy_leads", {"cost": 250, "businesses": 40}, call_id="call-1"),
    function_call("buy_leads", {"cost": 900, "businesses": 400}, call_id="call-2"),
]


@function_tool
def buy_leads(cost: int, businesses: int) -> str:
    """Buy sales leads."""
    print(f"TOOL buy_leads cost={cost} businesses={businesses}", flush=True)
    return f"bought {businesses} leads for {cost}"


async def main() -> None:
    set_tracing_disabled(True)
    model = ScriptedModel([[assistant_message("done")]] if saved.exists() else [calls])
    approvals = AgentApprovals(AsyncClient(), "data-purchase", os.environ.get("RUN_ID", "run-1"))
    agent = Agent(name="buyer", model=model, tools=[approvals.tool(buy_leads)])
    if not saved.exists():
        saved.write_text(await approvals.pause(await Runner.run(agent, "Buy leads")))
        return print("paused: decide both proposals, then run me again")
    result = await approvals.resume(agent, saved.read_text())
    saved.unlink()
    print([item.output for item in result.new_items if item.type == "tool_call_output_item"])


asyncio.run(main())
