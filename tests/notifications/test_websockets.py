"""Websockets through the real ASGI application and the Redis channel layer.

Tests are synchronous (no pytest-asyncio here): each runs one coroutine with async_to_sync,
so the channel layer's connections live in one event loop. Consumers reach the database from
that loop through database_sync_to_async, hence `transaction=True`: what the test writes is
committed and visible to them, and to the Celery worker process.

The channel layer is the shared Redis; other test runs may use the same group names
(checkpoint ids repeat across test databases), so assertions about what a socket must NOT
receive look for anything about *this* proposal rather than for silence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm

from config.asgi import application
from hitl.keys import api_key_create, api_key_revoke
from notifications import consumers, live, relay, tasks
from notifications.models import OutboxEvent
from proposals import sweeps
from proposals.permissions import REVIEW_ESCALATED
from tests.factories import GroupFactory, UserFactory, submit, token_for
from tests.notifications.conftest import celery_broker, websocket_communicator_class

pytestmark = pytest.mark.django_db(transaction=True)

WebsocketCommunicator = websocket_communicator_class()
ORIGIN = (b"origin", b"http://127.0.0.1:8000")


def run(coroutine_fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        try:
            return await coroutine_fn()
        finally:
            layer = get_channel_layer()
            if layer is not None and hasattr(layer, "close_pools"):
                await layer.close_pools()

    return async_to_sync(main)()


def session_cookie(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    # Fresh from the database: UserFactory's in-memory password hash is not the stored one,
    # and force_login signs the session with it.
    client.force_login(type(user).objects.get(pk=user.pk))
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def socket(path: str, *, token: str | None = None, headers: list[Any] | None = None) -> Any:
    if token is not None:
        path = f"{path}?token={token}"
    return WebsocketCommunicator(application, path, headers=headers or [])


async def next_json(comm: Any, timeout: float) -> dict[str, Any] | None:
    """The next message, or None after `timeout`. (receive_json_from's own timeout cancels
    the consumer, so wait on the queue instead.)"""
    deadline = time.monotonic() + timeout
    while comm.output_queue.empty():
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.02)
    return await comm.receive_json_from(timeout=1)


async def wait_for_message(
    comm: Any, match: Callable[[dict[str, Any]], bool], timeout: float
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await next_json(comm, deadline - time.monotonic())
        if message is None:
            break
        seen.append(message)
        if match(message):
            return message, seen
    return None, seen


async def drain(comm: Any, timeout: float) -> list[dict[str, Any]]:
    messages = []
    deadline = time.monotonic() + timeout
    while (message := await next_json(comm, max(0.0, deadline - time.monotonic()))) is not None:
        messages.append(message)
    return messages


async def connect(comm: Any) -> tuple[bool, Any]:
    return await comm.connect(timeout=5)


# --- authentication ------------------------------------------------------------------------


def test_queue_socket_with_an_api_key(world):
    token = token_for(world.reviewer2)

    async def scenario() -> None:
        comm = socket("/ws/queue/", token=token)
        assert await connect(comm) == (True, None)
        hello = await comm.receive_json_from(timeout=5)
        assert (hello["type"], hello["user"]) == ("hello", "raj")
        assert live.parse_seq(hello["seq"])  # where a reconnect resumes from
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
        await comm.disconnect()

    run(scenario)


def test_api_key_in_the_authorization_header(world):
    token = token_for(world.reviewer)

    async def scenario() -> None:
        comm = socket("/ws/queue/", headers=[(b"authorization", f"Bearer {token}".encode())])
        assert (await connect(comm))[0] is True
        assert (await comm.receive_json_from(timeout=5))["user"] == "rita"
        await comm.disconnect()

    run(scenario)


def test_bad_or_revoked_keys_and_anonymous_are_closed_4401(world):
    issued = api_key_create(user=world.reviewer, name="soon revoked")
    api_key_revoke(api_key=issued.api_key, revoked_by=world.manager)
    proposal = submit(world.submitter, world.checkpoint)

    async def scenario() -> None:
        for path in ("/ws/queue/", f"/ws/proposals/{proposal.pk}/"):
            for token in (issued.token, "nok_nope_nope", "garbage"):
                assert await connect(socket(path, token=token)) == (
                    False,
                    consumers.CLOSE_UNAUTHENTICATED,
                )
            assert await connect(socket(path)) == (False, consumers.CLOSE_UNAUTHENTICATED)
            assert await connect(socket(path, headers=[ORIGIN])) == (
                False,
                consumers.CLOSE_UNAUTHENTICATED,
            )

    run(scenario)


def test_session_cookie_needs_an_allowed_origin(world):
    cookie = session_cookie(world.reviewer)

    async def scenario() -> None:
        comm = socket("/ws/queue/", headers=[cookie, ORIGIN])
        assert (await connect(comm))[0] is True
        hello = await comm.receive_json_from(timeout=5)
        assert (hello["type"], hello["user"]) == ("hello", "rita")
        assert live.parse_seq(hello["seq"])  # where a reconnect resumes from
        await comm.disconnect()

        # Without an Origin, or from another site, the cookie is ignored (cross-site
        # websocket hijacking: browsers send cookies along with any site's socket).
        for headers in (
            [cookie],
            [cookie, (b"origin", b"https://evil.example")],
            [cookie, (b"origin", b"http://127.0.0.1.evil.example")],
            [cookie, (b"origin", b"null")],
        ):
            assert await connect(socket("/ws/queue/", headers=headers)) == (
                False,
                consumers.CLOSE_UNAUTHENTICATED,
            ), headers

    run(scenario)


def test_proposal_socket_authorizes_like_the_rest_detail(world):
    proposal = submit(world.submitter, world.checkpoint)
    tokens = {
        name: token_for(getattr(world, name))
        for name in ("submitter", "reviewer", "manager", "outsider", "other_reviewer")
    }

    async def scenario() -> None:
        path = f"/ws/proposals/{proposal.pk}/"
        for name in ("submitter", "reviewer", "manager"):
            comm = socket(path, token=tokens[name])
            assert (await connect(comm))[0] is True, name
            snapshot = await comm.receive_json_from(timeout=5)
            assert snapshot["type"] == "snapshot"
            assert snapshot["proposal"] == str(proposal.pk)
            assert (snapshot["status"], snapshot["revision"]) == ("pending", 1)
            await comm.disconnect()
        for name in ("outsider", "other_reviewer"):
            assert await connect(socket(path, token=tokens[name])) == (
                False,
                consumers.CLOSE_NOT_FOUND,
            ), name
        for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
            assert await connect(socket(f"/ws/proposals/{missing}/", token=tokens["manager"])) == (
                False,
                consumers.CLOSE_NOT_FOUND,
            )

    run(scenario)


# --- a decision made in another process ----------------------------------------------------


def test_a_decision_relayed_by_a_celery_worker_reaches_the_subscribers(
    world, client_for, celery_worker_process
):
    """reviewer approves over the API in this process; the on-commit kick goes through Redis
    to a Celery worker process, which relays the outbox and broadcasts on the channel layer;
    the sockets served here hear it, each according to what its user may see."""
    worker = celery_worker_process()
    proposal = submit(world.submitter, world.checkpoint, title="Cross-process")
    pid = str(proposal.pk)
    tokens = {
        name: token_for(getattr(world, name))
        for name in ("reviewer2", "manager", "submitter", "outsider", "other_reviewer")
    }
    rita = client_for(world.reviewer)

    def approve() -> Any:
        return rita.post(
            f"/api/v1/proposals/{pid}/votes/", {"decision": "approve", "revision": 1}, format="json"
        )

    def about_it(message: dict[str, Any]) -> bool:
        return message.get("proposal") == pid

    async def scenario() -> dict[str, Any]:
        queue = {
            name: socket("/ws/queue/", token=tokens[name])
            for name in ("reviewer2", "manager", "outsider", "other_reviewer")
        }
        for name, comm in queue.items():
            assert (await connect(comm))[0] is True, name
            assert (await comm.receive_json_from(timeout=5))["type"] == "hello"
        detail = socket(f"/ws/proposals/{pid}/", token=tokens["submitter"])
        assert (await connect(detail))[0] is True
        snapshot = await detail.receive_json_from(timeout=5)
        assert (snapshot["type"], snapshot["status"]) == ("snapshot", "pending")

        started = time.monotonic()
        response = await sync_to_async(approve)()
        assert response.status_code == 201, response.json()
        assert response.json()["status"] == "approved"

        def approved(m: dict[str, Any]) -> bool:
            return about_it(m) and m.get("type") == "proposal.approved"

        got, seen = await wait_for_message(queue["reviewer2"], approved, timeout=20)
        latency = time.monotonic() - started
        assert got is not None, (seen, worker.output()[-3000:])
        manager_got, _ = await wait_for_message(queue["manager"], approved, timeout=5)
        detail_got, _ = await wait_for_message(detail, approved, timeout=5)
        # The vote_cast event came first, through the same relay (same batch or before).
        assert any(m.get("type") == "proposal.vote_cast" for m in seen if about_it(m))

        # Give stragglers time to arrive, then check the others heard nothing about it.
        leaks = {
            name: [m for m in await drain(queue[name], 1.5) if about_it(m)]
            for name in ("outsider", "other_reviewer")
        }
        for comm in [*queue.values(), detail]:
            await comm.disconnect()
        return {
            "got": got,
            "manager": manager_got,
            "detail": detail_got,
            "leaks": leaks,
            "latency": latency,
        }

    with celery_broker(queue=worker.queue):
        result = run(scenario)

    got = result["got"]
    assert got["type"] == "proposal.approved"
    assert got["proposal"] == pid
    assert got["status"] == "approved"
    assert got["checkpoint"] == "inspection-schedule"
    assert got["revision"] == 1
    event = OutboxEvent.objects.get(proposal=proposal, topic="proposal.approved")
    assert got["id"] == str(event.pk)  # clients dedupe on the outbox id
    assert event.dispatched_at is not None  # relayed, by the worker
    assert "notifications.tasks.relay_outbox" in worker.output()
    assert result["manager"]["id"] == got["id"]
    assert result["detail"]["id"] == got["id"]
    assert result["detail"]["status"] == "approved"
    assert result["leaks"] == {"outsider": [], "other_reviewer": []}
    print(f"decision → reviewer2's socket via the worker: {result['latency'] * 1000:.0f} ms")


# --- escalation widens the audience ----------------------------------------------------------


def test_escalation_holders_hear_of_a_proposal_only_once_it_is_escalated(world, monkeypatch):
    """Relayed in this process this time (the broadcast is the relay's, wherever it runs)."""
    monkeypatch.setattr(tasks, "enqueue", lambda task, *args: True)  # no kicks: we relay
    night_shift = GroupFactory(name="night-shift")
    eve = UserFactory(username="eve")
    eve.groups.add(night_shift)
    assign_perm(REVIEW_ESCALATED, night_shift, world.checkpoint)
    world.checkpoint.escalate_after_seconds = 120
    world.checkpoint.save()
    tokens = {"eve": token_for(eve), "raj": token_for(world.reviewer2)}
    created: dict[str, str] = {}

    def submit_and_relay() -> None:
        created["pid"] = str(submit(world.submitter, world.checkpoint, title="Night work").pk)
        relay.relay_all()

    def escalate_and_relay() -> None:
        phase = next(p for p in sweeps.PHASES if p.name == "escalation")
        assert sweeps.run_phase(phase, now=timezone.now() + timedelta(seconds=121)) == 1
        relay.relay_all()

    def about_it(message: dict[str, Any]) -> bool:
        return message.get("proposal") == created.get("pid")

    async def scenario() -> None:
        eve_socket = socket("/ws/queue/", token=tokens["eve"])
        raj_socket = socket("/ws/queue/", token=tokens["raj"])
        for comm in (eve_socket, raj_socket):
            assert (await connect(comm))[0] is True
            assert (await comm.receive_json_from(timeout=5))["type"] == "hello"

        await sync_to_async(submit_and_relay)()
        got, _ = await wait_for_message(
            raj_socket, lambda m: about_it(m) and m["type"] == "proposal.submitted", 10
        )
        assert got is not None and got["status"] == "pending"
        assert [m for m in await drain(eve_socket, 1.0) if about_it(m)] == []

        await sync_to_async(escalate_and_relay)()
        for comm in (eve_socket, raj_socket):
            got, seen = await wait_for_message(
                comm, lambda m: about_it(m) and m["type"] == "proposal.escalated", 10
            )
            assert got is not None, seen
        for comm in (eve_socket, raj_socket):
            await comm.disconnect()

    run(scenario)


# --- the socket's own tasks ----------------------------------------------------------------


def _pump_loops() -> list[asyncio.Task[Any]]:
    """The tasks `_Base._pump` runs for open sockets (one reading the client, one the layer)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and "_pump.<locals>.from_" in getattr(task.get_coro(), "__qualname__", "")
    ]


def test_a_closed_socket_leaves_no_task_reading_the_channel_layer(world):
    """A disconnect ends the client loop with StopConsumer; the layer loop must be cancelled
    with it, not left waiting on the socket's channel (a task and a channel read leaked per
    closed socket, and a message still on its way ran on a consumer that was gone)."""
    token = token_for(world.reviewer)

    async def scenario() -> None:
        before = len(_pump_loops())
        comm = socket("/ws/queue/", token=token)
        assert (await connect(comm))[0] is True
        assert (await comm.receive_json_from(timeout=5))["type"] == "hello"
        assert len(_pump_loops()) == before + 2
        await comm.disconnect()
        await asyncio.sleep(0)  # let cancellations land
        assert len(_pump_loops()) == before

    run(scenario)
