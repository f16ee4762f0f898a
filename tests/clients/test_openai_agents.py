"""The OpenAI Agents SDK adapter's guard: a tool wrapped by `AgentApprovals.tool` never runs
for a call the humans have not approved, even when the run state says it was approved."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.clients.conftest import Desk

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def test_the_wrapped_tool_refuses_a_call_without_a_human_approval(desk: Desk) -> None:
    from agents import function_tool
    from agents.tool_context import ToolContext
    from nihil_obstat import AsyncClient
    from nihil_obstat.openai_agents import AgentApprovals

    ran: list[int] = []

    @function_tool
    def buy_leads(cost: int, businesses: int) -> str:
        """Buy sales leads."""
        ran.append(cost)
        return "bought"

    async def scenario() -> tuple[str, str]:
        async with AsyncClient(desk.url, desk.agent_token) as client:
            approvals = AgentApprovals(client, "data-purchase", run_id=str(uuid.uuid4()))
            tool = approvals.tool(buy_leads)
            arguments = json.dumps({"cost": 250, "businesses": 40})

            def context(call_id: str) -> ToolContext[None]:
                return ToolContext(
                    context=None,
                    tool_name="buy_leads",
                    tool_call_id=call_id,
                    tool_arguments=arguments,
                )

            # As if the run state had been approved behind the humans' back.
            refused = await tool.on_invoke_tool(context("call-1"), arguments)
            proposal = await approvals._submit("buy_leads", "call-1", arguments)
            desk.approve(proposal.id, [{"op": "replace", "path": "/cost", "value": 120}])
            allowed = await tool.on_invoke_tool(context("call-1"), arguments)
            return str(refused), str(allowed)

    refused, allowed = asyncio.run(scenario())
    assert refused.startswith("Not run: no human approved this call (pending)")
    assert allowed == "bought" and ran == [120]
