"""The client's own logic: keys, retries with backoff, the wait loop, decoding, exceptions,
the decorator, webhook verification. Runs without Django (see test_environment)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any

import httpx
import pytest
from conftest import BASE, FakeAPI
from nihil_obstat import (
    AsyncClient,
    Cancelled,
    ChangesRequested,
    Client,
    Rejected,
    RetryPolicy,
    TimedOut,
    WaitTimeout,
    idempotency_key,
    outcome,
    require_approval,
)
from nihil_obstat.models import Proposal


def make_client(transport: httpx.BaseTransport, **options: Any) -> Client:
    return Client(BASE, "nok_test", transport=transport, **options)


def test_environment_has_no_django() -> None:
    assert importlib.util.find_spec("django") is None


def test_key_is_deterministic_and_ignores_dict_order() -> None:
    a = idempotency_key("cp", "buy", {"cost": 1, "n": [1, 2]}, "run-1")
    b = idempotency_key("cp", "buy", {"n": [1, 2], "cost": 1}, "run-1")
    assert a == b and a.startswith("no1-") and len(a) <= 200


@pytest.mark.parametrize(
    "other",
    [
        ("cp2", "buy", {"cost": 1}, None),
        ("cp", "sell", {"cost": 1}, None),
        ("cp", "buy", {"cost": 2}, None),
        ("cp", "buy", {"cost": 1}, "run-2"),
    ],
)
def test_key_changes_with_each_of_its_inputs(other: tuple[Any, ...]) -> None:
    assert idempotency_key("cp", "buy", {"cost": 1}, None) != idempotency_key(*other)


def test_submit_sends_the_derived_key(api: FakeAPI, transport: httpx.MockTransport) -> None:
    proposal = make_client(transport).submit("cp", "Buy", {"cost": 5}, run_id="r1")
    (request,) = api.requests
    assert request.headers["idempotency-key"] == idempotency_key("cp", "Buy", {"cost": 5}, "r1")
    assert request.headers["authorization"] == "Bearer nok_test"
    assert request.url.path == "/api/v1/proposals/"
    assert proposal.status == "pending"


def test_a_lost_response_is_retried_with_the_same_key_and_makes_one_proposal(
    api: FakeAPI, transport: httpx.MockTransport, slept: list[float]
) -> None:
    lost: list[bool] = []

    def lose_first_response(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and not lost:
            lost.append(True)
            api.faults.clear()
            api.handle(request)  # the server did the work...
            raise httpx.ReadError("connection reset", request=request)  # ...the answer died
        return None

    api.faults.append(lose_first_response)
    proposal = make_client(transport).submit("cp", "Buy", {"cost": 5})
    posts = [r for r in api.requests if r.method == "POST"]
    assert len(posts) == 3  # the fault's own call, the handled first try, the retry
    assert len({r.headers["idempotency-key"] for r in posts}) == 1
    assert list(api.proposals) == [proposal.id]
    assert len(slept) == 1


def test_5xx_and_connection_errors_back_off_with_jitter_then_succeed(
    api: FakeAPI, transport: httpx.MockTransport, slept: list[float]
) -> None:
    script: list[Any] = [httpx.ConnectError("refused"), 503, 502]

    def outage(request: httpx.Request) -> httpx.Response | None:
        if not script:
            return None
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step, text="down")

    api.faults.append(outage)
    policy = RetryPolicy(attempts=6, base=0.5, cap=15)
    make_client(transport, retry=policy).submit("cp", "Buy", {"cost": 5})
    assert len(slept) == 3
    for attempt, delay in enumerate(slept):
        assert 0 <= delay <= 0.5 * 2**attempt


def test_retries_stop_after_the_policy_s_attempts(
    api: FakeAPI, transport: httpx.MockTransport, slept: list[float]
) -> None:
    api.faults.append(lambda request: httpx.Response(500, text="boom"))
    with pytest.raises(Exception, match="500"):
        make_client(transport, retry=RetryPolicy(attempts=3)).get("x")
    assert len(api.requests) == 3 and len(slept) == 2


def test_a_revision_is_not_resent_after_it_may_have_reached_the_server(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    client = make_client(transport)
    proposal = client.submit("cp", "Buy", {"cost": 5})
    api.decide(proposal.id, "request_changes", "too much")

    def read_error(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/revisions/"):
            raise httpx.ReadError("reset", request=request)
        return None

    api.faults.append(read_error)
    with pytest.raises(httpx.ReadError):
        client.revise(proposal.id, {"cost": 4})
    assert sum(r.url.path.endswith("/revisions/") for r in api.requests) == 1


def test_wait_long_polls_in_short_requests_until_decided(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    client = make_client(transport, poll_seconds=5)
    proposal = client.submit("cp", "Buy", {"cost": 5})
    polls: list[dict[str, Any]] = []

    def decide_on_third_poll(data: dict[str, Any]) -> None:
        polls.append(data)
        if len(polls) == 3:
            api.decide(proposal.id, "approve", "ok", edit={"cost": 4})

    api.on_wait = decide_on_third_poll
    decided = client.wait(proposal.id)
    waits = [r for r in api.requests if r.url.path.endswith("/wait/")]
    assert len(waits) == 3
    assert all(float(r.url.params["timeout"]) <= 5 for r in waits)
    assert decided.approved and decided.approved_payload == {"cost": 4}
    assert decided.edited and decided.edit_patch == [{"op": "replace", "path": "/cost", "value": 4}]
    assert [c.comment for c in decided.comments] == ["ok"]


def test_wait_returns_the_pending_proposal_at_its_deadline(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    client = make_client(transport)
    proposal = client.submit("cp", "Buy", {"cost": 5})
    assert client.wait(proposal.id, timeout=0).status == "pending"
    with pytest.raises(WaitTimeout) as info:
        client.decision(proposal.id, timeout=0)
    assert info.value.proposal.id == proposal.id


def _decided(status: str, resolution: str = "reviewers", comment: str = "") -> Proposal:
    decision = {"rejected": "reject", "changes_requested": "request_changes"}.get(status, "approve")
    return Proposal.from_api(
        {
            "id": "p1",
            "status": status,
            "resolution": resolution,
            "payload": {},
            "votes": [{"reviewer": "rita", "decision": decision, "revision": 1, "comment": comment}]
            if comment
            else [],
        }
    )


def test_outcomes_become_exceptions_with_their_reasons() -> None:
    with pytest.raises(Rejected) as rejected:
        outcome(_decided("rejected", comment="too risky"))
    assert rejected.value.reason == "too risky"
    with pytest.raises(TimedOut) as timed_out:
        outcome(_decided("rejected", "timeout"))
    assert timed_out.value.resolution == "timeout"
    with pytest.raises(Cancelled):
        outcome(_decided("cancelled", "cancelled"))
    with pytest.raises(ChangesRequested) as changes:
        outcome(_decided("changes_requested", comment="fewer leads"))
    assert changes.value.feedback == "fewer leads"
    assert outcome(_decided("approved")).approved


def test_change_request_revise_answers_through_the_client(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    client = make_client(transport)
    proposal = client.submit("cp", "Buy", {"cost": 5})
    api.decide(proposal.id, "request_changes", "fewer")
    with pytest.raises(ChangesRequested) as info:
        client.decision(proposal.id)
    revised = info.value.revise({"cost": 2}, comment="done")
    assert revised.status == "pending" and revised.payload == {"cost": 2}


def test_decorator_calls_the_function_with_the_edited_arguments(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    client = make_client(transport)
    calls: list[tuple[int, str]] = []
    api.on_wait = lambda data: api.decide(data["id"], "approve", edit={"cost": 3})

    @require_approval(client, checkpoint="cp")
    def buy(cost: int, vendor: str = "acme") -> str:
        calls.append((cost, vendor))
        return f"bought for {cost}"

    assert buy(10) == "bought for 3"
    assert calls == [(3, "acme")]
    body = json.loads(api.requests[0].content)
    assert body["payload"] == {"cost": 10, "vendor": "acme"} and body["title"] == "Buy"


def test_decorator_raises_on_reject_and_never_calls(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    api.on_wait = lambda data: api.decide(data["id"], "reject", "no")
    called: list[int] = []

    @require_approval(make_client(transport), checkpoint="cp")
    def buy(cost: int) -> None:
        called.append(cost)

    with pytest.raises(Rejected, match="no"):
        buy(1)
    assert called == []


def test_async_decorator_with_a_pydantic_argument(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Order(pydantic.BaseModel):
        cost: int
        businesses: int

    received: list[Any] = []
    api.on_wait = lambda data: api.decide(
        data["id"], "approve", edit={"order": {"cost": 2, "businesses": 40}}
    )

    async def scenario() -> None:
        client = AsyncClient(BASE, "nok", transport=httpx.MockTransport(api.handle))

        @require_approval(client, checkpoint="cp", title="Buy leads")
        async def buy(order: Order) -> int:
            received.append(order)
            return order.cost

        assert await buy(Order(cost=250, businesses=40)) == 2
        await client.aclose()

    asyncio.run(scenario())
    assert received == [Order(cost=2, businesses=40)]


def test_a_pydantic_model_sends_its_schema_and_parses_the_answer(
    api: FakeAPI, transport: httpx.MockTransport
) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Order(pydantic.BaseModel):
        cost: int

    client = make_client(transport)
    proposal = client.submit("cp", "Buy", {"cost": 5}, model=Order)
    assert json.loads(api.requests[0].content)["payload_schema"] == Order.model_json_schema()
    api.decide(proposal.id, "approve", edit={"cost": 4})
    assert client.get(proposal.id).approved_as(Order) == Order(cost=4)


def test_verify_webhook_accepts_the_signed_body_and_refuses_a_tampered_one() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    from datetime import UTC, datetime

    from nihil_obstat import WebhookVerificationError, verify_webhook

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = json.dumps({"type": "proposal.approved", "data": {"proposal_id": "p1"}})
    now = datetime.now(tz=UTC)
    signature = standardwebhooks.Webhook(secret).sign("msg_1", now, body)
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": signature,
    }
    assert verify_webhook(headers, body.encode(), secret)["data"]["proposal_id"] == "p1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body.replace("p1", "p2"), secret)


def test_base_url_and_token_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NIHIL_OBSTAT_URL", "http://h:1/")
    monkeypatch.setenv("NIHIL_OBSTAT_TOKEN", "nok_env")
    client = Client()
    assert client.base_url == "http://h:1/api/v1" and client.token == "nok_env"  # noqa: S105
