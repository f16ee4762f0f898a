"""A LangGraph agent whose "buy leads" call waits for humans, across restarts: run it (it
pauses and exits), approve or edit "Buy leads" in the queue, run it again (it buys, once)."""

import os
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from nihil_obstat import Client
from nihil_obstat.langgraph import approval, pending_proposals, resume

client = Client()  # NIHIL_OBSTAT_URL, NIHIL_OBSTAT_TOKEN


class State(TypedDict, total=False):
    result: str


def buy_leads(state: State, config: RunnableConfig) -> State:
    order: dict[str, Any] = {"cost": 250, "businesses": 40}  # stand-in for the model's choice
    decision = approval(client, config, "data-purchase", "Buy leads", order, node="buy_leads")
    if not decision["approved"]:
        return {"result": f"not bought ({decision['status']}): {decision['reason']}"}
    order = decision["approved_payload"] or {}  # what the humans approved, edits included
    print(f"TOOL buy_leads cost={order['cost']} businesses={order['businesses']}", flush=True)
    return {"result": f"bought {order['businesses']} leads for {order['cost']}"}


graph = StateGraph(State).add_node(buy_leads).add_edge(START, "buy_leads")
thread: RunnableConfig = {"configurable": {"thread_id": os.environ.get("THREAD_ID", "leads-1")}}
with SqliteSaver.from_conn_string(os.environ.get("AGENT_DB", "agent-state.sqlite")) as saver:
    agent = graph.compile(checkpointer=saver)
    done = agent.get_state(thread).values.get("result")  # finished before: never buy twice
    if not done:
        paused = pending_proposals(agent, thread)
        done = (resume(agent, client, thread) if paused else agent.invoke({}, thread)).get("result")
    print(done or f"paused on {list(pending_proposals(agent, thread).values())}; decide, rerun")
