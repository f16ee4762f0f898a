"""`nihil_obstat.Client` against a live server, a scripted reviewer deciding through the API:
submit / wait / revise / cancel, lost responses, restarted callers, the decorator."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from nihil_obstat import (
    AsyncClient,
    Cancelled,
    ChangesRequested,
    Client,
    Rejected,
    RetryPolicy,
    require_approval,
)

from proposals.models import Proposal as ProposalRow
from tests.clients.conftest import Desk, in_thread, run_python

pytestmark = pytest.mark.django_db  # reads only; the world is committed (see conftest)

ORDER = {"cost": 250, "businesses": 40}
EDIT = [{"op": "replace", "path": "/cost", "value": 120}]


@pytest.fixture
def run_id(request: pytest.FixtureRequest) -> str:
    """Each test's own run: its proposals never share an Idempotency-Key with another's."""
    return str(request.node.name)


def client_for(desk: Desk, **options: Any) -> Client:
    return Client(desk.url, desk.agent_token, **options)


def decide_soon(work: Any, delay: float = 0.5) -> Any:
    def later() -> None:
        time.sleep(delay)
        work()

    return in_thread(later)


def test_submit_wait_and_an_edited_approval(desk: Desk, run_id: str) -> None:
    client = client_for(desk, poll_seconds=2)
    proposal = client.submit(
        "data-purchase", "Buy leads", ORDER, summary="40 bakeries", run_id=run_id
    )
    assert proposal.status == "pending" and proposal.payload == ORDER
    reviewer = decide_soon(lambda: desk.approve(proposal.id, EDIT, comment="120 is enough"))
    decided = client.decision(proposal.id, timeout=60)
    reviewer.join(30)
    assert decided.approved and decided.resolution == "reviewers"
    assert decided.approved_payload == {"cost": 120, "businesses": 40}
    assert decided.edited and decided.edit_patch == EDIT
    assert [(c.reviewer, c.comment) for c in decided.comments] == [
        ("bruno", "120 is enough"),
        ("bianca", "fine by me"),
    ]
    assert decided.revision == 2
    verbs = [event.verb for event in client.events(proposal.id)]
    assert verbs[0] == "proposal.submitted" and "proposal.approved" in verbs


def test_a_change_request_is_answered_with_a_revision(desk: Desk, run_id: str) -> None:
    client = client_for(desk)
    proposal = client.submit("data-purchase", "Buy leads", ORDER, run_id=run_id)
    desk.bruno.vote(proposal.id, "request_changes", "only bakeries in Lyon")
    with pytest.raises(ChangesRequested) as info:
        client.decision(proposal.id, timeout=10)
    assert info.value.feedback == "only bakeries in Lyon"
    revised = info.value.revise({"cost": 150, "businesses": 12}, comment="Lyon only")
    assert revised.status == "pending" and revised.revision == 2
    desk.approve(proposal.id)
    assert client.decision(proposal.id, timeout=10).approved_payload == {
        "cost": 150,
        "businesses": 12,
    }


def test_cancel(desk: Desk, run_id: str) -> None:
    client = client_for(desk)
    proposal = client.submit("data-purchase", "Buy leads", ORDER, run_id=run_id)
    assert client.cancel(proposal.id, "budget frozen").status == "cancelled"
    with pytest.raises(Cancelled):
        client.decision(proposal.id, timeout=1)


def test_a_rejection_carries_the_reviewer_s_reason(desk: Desk, run_id: str) -> None:
    client = client_for(desk)
    proposal = client.submit("data-purchase", "Buy leads", ORDER, run_id=run_id)
    desk.bruno.vote(proposal.id, "reject", "we have these leads already")
    with pytest.raises(Rejected) as info:
        client.decision(proposal.id, timeout=10)
    assert info.value.reason == "we have these leads already"


class LoseFirstResponse(httpx.HTTPTransport):
    """The request reaches the server and is done; the answer is lost on the way back."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = super().handle_request(request)
        if len(self.sent) == 1:
            response.read()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_a_retry_after_a_lost_response_makes_no_second_proposal(desk: Desk, run_id: str) -> None:
    transport = LoseFirstResponse()
    client = Client(desk.url, desk.agent_token, transport=transport, retry=RetryPolicy(base=0.05))
    payload = {"cost": 250, "businesses": 41}
    proposal = client.submit("data-purchase", "Buy leads", payload)
    posts = [r for r in transport.sent if r.method == "POST"]
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert [
        str(pk) for pk in ProposalRow.objects.filter(payload=payload).values_list("id", flat=True)
    ] == [proposal.id]


AGENT_STEP = """
import sys
from nihil_obstat import Client
proposal = Client().submit("data-purchase", "Buy leads", {"cost": 250, "businesses": 42},
                           run_id=sys.argv[1])
print(proposal.id, proposal.status)
"""


def test_a_restarted_caller_with_the_same_arguments_finds_its_proposal(
    desk: Desk, run_id: str
) -> None:
    first = run_python(["-c", AGENT_STEP, "run-1"], desk.env())
    assert first.returncode == 0, first.stderr
    desk.bruno.vote(first.stdout.split()[0], "approve", "one of two")
    again = run_python(["-c", AGENT_STEP, "run-1"], desk.env())  # the step, after a crash
    other_run = run_python(["-c", AGENT_STEP, "run-2"], desk.env())
    assert again.stdout.split()[0] == first.stdout.split()[0]
    assert again.stdout.split()[1] == "pending"  # what is true now, not the first answer
    assert other_run.stdout.split()[0] != first.stdout.split()[0]
    assert ProposalRow.objects.filter(payload={"cost": 250, "businesses": 42}).count() == 2


def test_the_decorator_runs_the_function_with_the_edited_arguments(desk: Desk, run_id: str) -> None:
    calls: list[tuple[int, int]] = []

    @require_approval(
        client_for(desk), checkpoint="data-purchase", title="Buy leads", run_id=run_id
    )
    def buy_leads(cost: int, businesses: int) -> str:
        calls.append((cost, businesses))
        return f"bought {businesses} leads for {cost}"

    known = desk.bruno.pending()

    def reviewer() -> None:
        desk.approve(desk.bruno.next_pending(known), EDIT)

    thread = in_thread(reviewer)
    assert buy_leads(250, businesses=40) == "bought 40 leads for 120"
    thread.join(30)
    assert calls == [(120, 40)]


@pytest.mark.parametrize(
    ("decision", "raised"), [("reject", Rejected), ("request_changes", ChangesRequested)]
)
def test_the_decorator_raises_and_never_calls_on(
    desk: Desk, run_id: str, decision: str, raised: type[Exception]
) -> None:
    calls: list[Any] = []

    @require_approval(client_for(desk), checkpoint="data-purchase", run_id=run_id)
    def buy_leads(cost: int, businesses: int) -> None:
        calls.append(cost)

    known = desk.bruno.pending()
    thread = in_thread(lambda: desk.bruno.vote(desk.bruno.next_pending(known), decision, "no"))
    with pytest.raises(raised, match="no"):
        buy_leads(250, 40)
    thread.join(30)
    assert calls == []


def test_async_client_and_decorator(desk: Desk, run_id: str) -> None:
    known = desk.bruno.pending()

    async def scenario() -> tuple[list[Any], str]:
        async with AsyncClient(desk.url, desk.agent_token, poll_seconds=2) as client:
            bought: list[Any] = []

            @require_approval(client, checkpoint="data-purchase", title="Buy leads", run_id=run_id)
            async def buy_leads(cost: int, businesses: int) -> str:
                bought.append(cost)
                return "ok"

            thread = in_thread(lambda: desk.approve(desk.bruno.next_pending(known), EDIT))
            result = await buy_leads(250, 40)
            thread.join(30)
            many = await client.submit_many(
                [
                    {"checkpoint": "data-purchase", "title": "A", "payload": ORDER},
                    {"checkpoint": "nowhere", "title": "B", "payload": ORDER},
                ]
            )
            assert many[0].status == "pending"  # type: ignore[union-attr]
            assert getattr(many[1], "status", None) == 400
            return bought, result

    bought, result = asyncio.run(scenario())
    assert bought == [120] and result == "ok"


def test_submit_sends_payload_schema_from_a_pydantic_model(desk: Desk, run_id: str) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Order(pydantic.BaseModel):
        cost: int
        businesses: int

    client = client_for(desk)
    proposal = client.submit("data-purchase", "Buy leads", ORDER, model=Order, run_id=run_id)
    desk.approve(proposal.id, EDIT)
    assert client.get(proposal.id).approved_as(Order) == Order(cost=120, businesses=40)
    stored = ProposalRow.objects.get(pk=proposal.id)
    schema = getattr(stored, "payload_schema", None)
    if schema is not None:  # once the server keeps proposal-level schemas
        assert schema == json.loads(json.dumps(Order.model_json_schema()))
