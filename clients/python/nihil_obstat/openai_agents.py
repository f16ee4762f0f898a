"""OpenAI Agents SDK: tool calls that need approval become proposals, and the humans'
decisions are applied to the run's `RunState`.

    approvals = AgentApprovals(client, checkpoint="data-purchase", run_id=conversation_id)
    agent = Agent(..., tools=[approvals.tool(buy_leads)])     # a @function_tool

    result = await Runner.run(agent, "buy leads")
    stored = await approvals.pause(result)      # one proposal per interruption; keep `stored`
    ...                                         # (this process may exit here)
    result = await approvals.resume(agent, stored)   # waits, approves/rejects, runs on

Each interruption of a turn is its own proposal, decided independently; the key of each is
derived from the run id and the tool call id, so asking again (after a restart) finds the
same proposal. A reviewer's edit reaches the tool: the SDK refuses to change the arguments of
an approved call, so the wrapper `tool()` puts on the tool substitutes the approved payload
when the call runs. A rejection, a change request, a timeout or a cancel is a rejection in
the run state, with the reviewer's reason as the message the model sees. The wrapped tool
never runs for a call whose proposal the humans have not approved, whatever the run state says.

Needs the `[openai-agents]` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agents import Agent, FunctionTool, Runner, RunState
from agents.items import ToolApprovalItem
from agents.tool_context import ToolContext

from nihil_obstat.client import AsyncClient
from nihil_obstat.models import Proposal


def _field(item: ToolApprovalItem, name: str) -> str:
    raw: Any = item.raw_item  # a pydantic model of the Responses API, or its dict form
    value = raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)
    return str(value or "")


def _call_id(item: ToolApprovalItem) -> str:
    return _field(item, "call_id")


def _arguments(item: ToolApprovalItem) -> str:
    return _field(item, "arguments")


def _message(proposal: Proposal) -> str:
    reason = proposal.reason or proposal.resolution or "no reason given"
    if proposal.status == "changes_requested":
        return f"A human reviewer asked for changes before this call: {reason}"
    if proposal.status == "cancelled":
        return "The approval request was cancelled; do not perform this call."
    if proposal.resolution == "timeout":
        return "No human approved this call in time; do not perform it."
    return f"A human reviewer rejected this call: {reason}"


@dataclass
class AgentApprovals:
    client: AsyncClient
    checkpoint: str
    run_id: str
    fields: dict[str, Any] = field(default_factory=dict)  # summary, priority, confidence, ...
    _approved: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    # --- the tools -------------------------------------------------------------------------

    def tool(self, tool: FunctionTool) -> FunctionTool:
        """Mark `tool` as needing approval and make it run with the approved arguments."""
        tool.needs_approval = True
        invoke = tool.on_invoke_tool

        async def with_approved_arguments(ctx: ToolContext[Any], arguments: str) -> Any:
            approved = self._approved.get(ctx.tool_call_id)
            if approved is None:
                # Approved in the run state by something other than `apply` (another
                # AgentApprovals, `always_approve`, a hand-edited state): the server decides.
                proposal = await self._submit(ctx.tool_name, ctx.tool_call_id, arguments)
                if not proposal.approved:
                    return f"Not run: no human approved this call ({proposal.status})."
                approved = proposal.approved_payload or {}
            return await invoke(ctx, json.dumps(approved))

        tool.on_invoke_tool = with_approved_arguments
        return tool

    # --- the run ---------------------------------------------------------------------------

    async def _submit(self, tool_name: str, call_id: str, arguments: str) -> Proposal:
        payload = json.loads(arguments or "{}")
        return await self.client.submit(
            self.checkpoint,
            tool_name.replace("_", " ").capitalize(),
            payload,
            action=f"openai-agents:{tool_name}:{call_id}",
            run_id=self.run_id,
            **self.fields,
        )

    async def proposal_for(self, item: ToolApprovalItem) -> Proposal:
        return await self._submit(item.tool_name or "", _call_id(item), _arguments(item))

    async def pause(self, result: Any) -> str:
        """Submit one proposal per interruption of `result`; return the serialized run state
        to keep until the decisions arrive."""
        state = result.to_state()
        for item in state.get_interruptions():
            await self.proposal_for(item)
        return str(state.to_string())

    async def apply(self, state: RunState[Any, Any], timeout: float | None = 0) -> int:
        """Approve or reject, in `state`, every interruption whose proposal is decided
        (waiting up to `timeout` seconds for each; None: until decided). Returns how many
        are still pending."""
        pending = 0
        for item in state.get_interruptions():
            proposal = await self.proposal_for(item)
            if proposal.status == "pending":
                proposal = await self.client.wait(proposal.id, timeout)
            if proposal.status == "pending":
                pending += 1
            elif proposal.approved:
                self._approved[_call_id(item)] = proposal.approved_payload or {}
                state.approve(item)
            else:
                state.reject(item, rejection_message=_message(proposal))
        return pending

    async def resume(
        self,
        agent: Agent[Any],
        state_string: str,
        *,
        timeout: float | None = None,
        **run_options: Any,
    ) -> Any:
        """Restore the run, apply the decisions (waiting up to `timeout` for each), and
        continue it. Returns the `RunResult`, or None when some decision is still pending."""
        state = await RunState.from_string(agent, state_string)
        if await self.apply(state, timeout):
            return None
        return await Runner.run(agent, state, **run_options)
