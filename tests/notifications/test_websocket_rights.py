"""Open websockets lose the rights their user loses: a grant removed, the user deactivated,
the API key revoked, the session logged out. Real ASGI application, real Redis channel layer
and cache; the changes are made the ordinary ways (ORM, guardian, the key service, logout),
and broadcasts come from the relay as in production.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import remove_perm

from hitl.keys import api_key_create, api_key_revoke
from notifications import consumers, relay, tasks
from proposals import services
from proposals.permissions import REVIEW
from tests.factories import make_service_account, submit, token_for
from tests.notifications.test_websockets import (
    ORIGIN,
    connect,
    drain,
    run,
    socket,
    wait_for_message,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _relay_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "enqueue", lambda task, *args: True)  # no kicks: we relay


async def closed_with(comm: Any, timeout: float = 10) -> int | None:
    """The close code the server sent, skipping any messages before it; None if it stays
    open for `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if comm.output_queue.empty():
            await asyncio.sleep(0.02)
            continue
        output = await comm.receive_output(timeout=1)
        if output["type"] == "websocket.close":
            return int(output.get("code", 1000))
    return None


async def hello(comm: Any) -> None:
    assert (await connect(comm))[0] is True
    first = await comm.receive_json_from(timeout=5)
    assert first["type"] in ("hello", "snapshot"), first


def submit_and_relay(world: Any, title: str) -> str:
    proposal = submit(world.submitter, world.checkpoint, title=title)
    relay.relay_all()
    return str(proposal.pk)


def submitted(pid: str) -> Any:
    return lambda m: m.get("proposal") == pid and m.get("type") == "proposal.submitted"


def test_open_queue_socket_stops_hearing_a_checkpoint_whose_grant_was_removed(world):
    tokens = {"rita": token_for(world.reviewer), "raj": token_for(world.reviewer2)}
    approvers = Group.objects.get(name="approvers")

    async def scenario() -> None:
        rita = socket("/ws/queue/", token=tokens["rita"])
        raj = socket("/ws/queue/", token=tokens["raj"])
        for comm in (rita, raj):
            await hello(comm)
        before = await sync_to_async(submit_and_relay)(world, "before")
        got, seen = await wait_for_message(rita, submitted(before), timeout=10)
        assert got is not None, seen

        await sync_to_async(world.reviewer.groups.remove)(approvers)
        after = await sync_to_async(submit_and_relay)(world, "after")

        got, seen = await wait_for_message(raj, submitted(after), timeout=10)
        assert got is not None, seen  # it was broadcast
        leaked = [m for m in await drain(rita, 1.5) if m.get("proposal") == after]
        assert leaked == [], "a reviewer whose grant was removed still hears the checkpoint"
        await rita.send_json_to({"type": "ping"})  # still signed in: the socket stays open
        assert await rita.receive_json_from(timeout=5) == {"type": "pong"}
        for comm in (rita, raj):
            await comm.disconnect()

    run(scenario)


def test_open_queue_socket_of_a_deactivated_user_is_closed(world):
    token = token_for(world.reviewer)

    def deactivate() -> None:
        world.reviewer.is_active = False
        world.reviewer.save()

    async def scenario() -> None:
        rita = socket("/ws/queue/", token=token)
        await hello(rita)
        await sync_to_async(deactivate)()
        pid = await sync_to_async(submit_and_relay)(world, "after deactivation")
        assert await closed_with(rita) == consumers.CLOSE_UNAUTHENTICATED
        assert pid not in str([m for m in await drain(rita, 0.2)])

    run(scenario)


def test_open_sockets_of_a_revoked_api_key_are_closed(world):
    issued = api_key_create(user=world.reviewer, name="to revoke")
    proposal = submit(world.submitter, world.checkpoint)

    async def scenario() -> None:
        queue = socket("/ws/queue/", token=issued.token)
        detail = socket(f"/ws/proposals/{proposal.pk}/", token=issued.token)
        for comm in (queue, detail):
            await hello(comm)
        await sync_to_async(api_key_revoke)(api_key=issued.api_key, revoked_by=world.manager)
        await queue.send_json_to({"type": "ping"})  # a keep-alive re-checks too
        assert await closed_with(queue) == consumers.CLOSE_UNAUTHENTICATED
        await sync_to_async(services.proposal_claim)(proposal_id=proposal.pk, actor=world.reviewer2)
        await sync_to_async(relay.relay_all)()
        assert await closed_with(detail) == consumers.CLOSE_UNAUTHENTICATED

    run(scenario)


def test_proposal_socket_closes_when_its_proposal_is_no_longer_visible(world):
    proposal = submit(world.submitter, world.checkpoint)
    tokens = {"rita": token_for(world.reviewer), "agent": token_for(world.submitter)}
    approvers = Group.objects.get(name="approvers")

    def withdraw_and_cancel() -> None:
        remove_perm(REVIEW, approvers, world.checkpoint)
        services.proposal_cancel(proposal_id=proposal.pk, actor=world.submitter, reason="moot")
        relay.relay_all()

    async def scenario() -> None:
        rita = socket(f"/ws/proposals/{proposal.pk}/", token=tokens["rita"])
        agent = socket(f"/ws/proposals/{proposal.pk}/", token=tokens["agent"])
        for comm in (rita, agent):
            await hello(comm)
        await sync_to_async(withdraw_and_cancel)()
        got, seen = await wait_for_message(
            agent, lambda m: m.get("type") == "proposal.cancelled", timeout=10
        )
        assert got is not None, seen  # the submitter still follows its proposal
        assert await closed_with(rita) == consumers.CLOSE_FORBIDDEN
        await agent.disconnect()

    run(scenario)


def test_open_session_socket_is_closed_after_logout(world):
    browser = Client()
    browser.force_login(type(world.reviewer).objects.get(pk=world.reviewer.pk))
    cookie = (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())

    async def scenario() -> None:
        rita = socket("/ws/queue/", headers=[cookie, ORIGIN])
        await hello(rita)
        await sync_to_async(browser.logout)()
        await rita.send_json_to({"type": "ping"})
        assert await closed_with(rita) == consumers.CLOSE_UNAUTHENTICATED

    run(scenario)


def test_open_socket_of_an_expired_api_key_is_closed(world):
    issued = api_key_create(
        user=world.reviewer, name="short", expires_at=timezone.now() + timedelta(seconds=3)
    )

    async def scenario() -> None:
        rita = socket("/ws/queue/", token=issued.token)
        await hello(rita)
        await rita.send_json_to({"type": "ping"})
        assert await rita.receive_json_from(timeout=5) == {"type": "pong"}
        await asyncio.sleep(3.5)  # no rights change: the expiry alone must close it
        await rita.send_json_to({"type": "ping"})
        assert await closed_with(rita) == consumers.CLOSE_UNAUTHENTICATED

    run(scenario)


def test_open_queue_socket_joins_a_checkpoint_granted_while_open(world):
    token = token_for(world.reviewer)
    other_approvers = Group.objects.get(name="other-approvers")

    def submit_elsewhere() -> str:
        submitter = make_service_account("agent-elsewhere", world.other_checkpoint)
        pid = str(submit(submitter, world.other_checkpoint, title="elsewhere").pk)
        relay.relay_all()
        return pid

    async def scenario() -> None:
        rita = socket("/ws/queue/", token=token)
        await hello(rita)
        await sync_to_async(world.reviewer.groups.add)(other_approvers)
        await rita.send_json_to({"type": "ping"})  # any message or ping re-checks
        assert await rita.receive_json_from(timeout=5) == {"type": "pong"}
        pid = await sync_to_async(submit_elsewhere)()
        got, seen = await wait_for_message(rita, submitted(pid), timeout=10)
        assert got is not None, seen
        await rita.disconnect()

    run(scenario)


# --- the handshake's shared reads (live.handshakes) vouch for nothing a change took away -------


def test_a_key_revoked_between_two_connects_is_refused_at_the_second(world):
    """The first socket's key lookup is shared with the sockets that follow it (one read for a
    reconnect storm), but not past a revocation."""
    issued = api_key_create(user=world.reviewer, name="revoked between connects")

    async def scenario() -> None:
        first = socket("/ws/queue/", token=issued.token)
        await hello(first)
        await sync_to_async(api_key_revoke)(api_key=issued.api_key, revoked_by=world.manager)
        second = socket("/ws/queue/", token=issued.token)
        assert await connect(second) == (False, consumers.CLOSE_UNAUTHENTICATED)
        await first.disconnect()

    run(scenario)


def test_a_socket_opened_after_a_grant_was_removed_does_not_join_its_checkpoint(world):
    """The first socket's access is shared with the sockets that follow it, but not past a
    change of grants: the second socket never hears the checkpoint."""
    tokens = {"rita": token_for(world.reviewer), "raj": token_for(world.reviewer2)}
    approvers = Group.objects.get(name="approvers")

    async def scenario() -> None:
        before = socket("/ws/queue/", token=tokens["rita"])
        await hello(before)
        await sync_to_async(world.reviewer.groups.remove)(approvers)
        after = socket("/ws/queue/", token=tokens["rita"])
        raj = socket("/ws/queue/", token=tokens["raj"])
        for comm in (after, raj):
            await hello(comm)
        pid = await sync_to_async(submit_and_relay)(world, "after the grant went")
        got, seen = await wait_for_message(
            raj, lambda m: m.get("proposal") == pid and m.get("type") == "proposal.submitted", 10
        )
        assert got is not None, seen  # it was broadcast
        leaked = [m for m in await drain(after, 1.5) if m.get("proposal") == pid]
        assert leaked == [], "a socket opened after the grant went still hears the checkpoint"
        for comm in (before, after, raj):
            await comm.disconnect()

    run(scenario)
