"""LangGraph: a node pauses on a human decision and the graph resumes with it, across
process restarts (the graph's checkpointer holds the pause; the server holds the proposal).

In a node:

    def buy(state, config):
        decision = approval(client, config, "data-purchase", "Buy leads",
                            {"cost": state["cost"]}, node="buy")
        if decision["approved"]:
            return {"result": purchase(**decision["approved_payload"])}
        return {"result": f"not bought: {decision['reason']}"}

`approval` submits (its `Idempotency-Key` is derived from the thread id, the node and the
payload, so the re-execution of the node on resume finds the same proposal), then
`interrupt()`s with the proposal id. Later, in this process or another one, `resume()`
waits for (or, from a webhook, just reads) the decision and continues the graph with
`Command(resume=decision)`. A rejection or a change request arrives as data to route on.

Needs the `[langgraph]` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from langgraph.types import Command, interrupt

from nihil_obstat.client import Client
from nihil_obstat.models import Proposal

MARKER = "nihil_obstat_proposal"


class Decision(TypedDict):
    """What `approval()` returns inside the node once a human decided."""

    proposal_id: str
    status: str  # approved | rejected | changes_requested | cancelled
    resolution: str
    approved: bool
    approved_payload: dict[str, Any] | None
    selected_option: str
    reason: str  # the deciding reviewer's comment
    edited: bool
    patch: list[dict[str, Any]]  # RFC 6902 diff of the reviewers' edits
    revision: int


def decision_of(proposal: Proposal) -> Decision:
    return Decision(
        proposal_id=proposal.id,
        status=proposal.status,
        resolution=proposal.resolution,
        approved=proposal.approved,
        approved_payload=proposal.approved_payload,
        selected_option=proposal.selected_option,
        reason=proposal.reason,
        edited=proposal.edited,
        patch=proposal.edit_patch,
        revision=proposal.revision,
    )


def approval(
    client: Client,
    config: Mapping[str, Any],
    checkpoint: str,
    title: str,
    payload: Mapping[str, Any],
    *,
    node: str,
    **fields: Any,
) -> Decision:
    """Submit once per (thread, node, payload) and pause the graph until `resume()`."""
    thread_id = str(config["configurable"]["thread_id"])
    proposal = client.submit(
        checkpoint, title, payload, action=f"langgraph:{node}", run_id=thread_id, **fields
    )
    if proposal.decided:  # the checkpoint's policy decided at once: no pause needed
        return decision_of(proposal)
    answer: Decision = interrupt({MARKER: proposal.id, "checkpoint": checkpoint, "title": title})
    return answer


def pending_proposals(graph: Any, config: Mapping[str, Any]) -> dict[str, str]:
    """interrupt id -> proposal id, for the thread's pauses made by `approval`."""
    snapshot = graph.get_state(config)
    return {
        pause.id: pause.value[MARKER]
        for pause in snapshot.interrupts
        if isinstance(pause.value, dict) and MARKER in pause.value
    }


def resume(
    graph: Any, client: Client, config: Mapping[str, Any], *, timeout: float | None = None
) -> Any:
    """Wait (at most `timeout` seconds; None: as long as it takes) for the decisions the
    thread is paused on, then continue it with `Command(resume=...)`. Returns the graph's
    result, or None when a decision is still pending at the deadline (call again later, or
    from the webhook of the decision)."""
    pending = pending_proposals(graph, config)
    if not pending:
        return None
    answers: dict[str, Decision] = {}
    for interrupt_id, proposal_id in pending.items():
        proposal = client.wait(proposal_id, timeout)
        if proposal.status == "pending":
            return None
        answers[interrupt_id] = decision_of(proposal)
    if len(answers) == 1:
        return graph.invoke(Command(resume=next(iter(answers.values()))), config)
    return graph.invoke(Command(resume=answers), config)
