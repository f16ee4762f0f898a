"""Live updates never drop silently: a burst bigger than the old per-process capacity reaches
every socket of a real uvicorn; a socket whose backlog overflows is counted, logged and
replayed; a client that reconnects catches up from its `seq`, and only with what it may see.

Real Redis (a database of each test's own, so the live stream and the pub/sub channels are
nobody else's), real ASGI server or application, broadcasts from the relay as in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from prometheus_client import REGISTRY

from notifications import live, relay, tasks
from tests.factories import submit, token_for
from tests.notifications.test_websockets import connect, next_json, run, socket
from tests.processes import private_redis_db, start_server, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

OLD_CAPACITY = 100  # channels_redis core layer: one list per process, 100 messages


@pytest.fixture(autouse=True)
def _relay_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "enqueue", lambda task, *args: True)  # no kicks: we relay


def layer_on(url: str, backlog: int) -> dict[str, Any]:
    config = json.loads(json.dumps(django_settings.CHANNEL_LAYERS["default"]))
    config["CONFIG"]["hosts"][0]["address"] = url
    config["CONFIG"]["backlog"] = backlog
    return {"default": config}


@pytest.fixture
def live_redis(settings: Any) -> Iterator[str]:
    """This process's channel layer and live stream on a Redis database of the test's own."""
    with private_redis_db() as url:
        settings.CHANNEL_LAYERS = layer_on(url, backlog=10)
        yield url


def submit_many(world: Any, count: int, prefix: str) -> list[str]:
    return [
        str(submit(world.submitter, world.checkpoint, title=f"{prefix} {n}").pk)
        for n in range(count)
    ]


async def read_until(
    ws: Any, wanted: set[str], timeout: float, until_type: str | None = None
) -> list[dict[str, Any]]:
    """Messages from a `websockets` client until every wanted proposal was announced (and a
    message of `until_type` came, if given), or `timeout`."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {m.get("proposal") for m in got}
        if wanted <= seen and (until_type is None or any(m["type"] == until_type for m in got)):
            break
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        got.append(json.loads(raw))
    return got


def seq_key(seq: str) -> tuple[int, int]:
    millis, number = seq.split("-")
    return int(millis), int(number)


def test_a_burst_bigger_than_the_old_capacity_reaches_every_socket_of_a_real_server(
    world: Any, live_redis: str, tmp_path: Path
) -> None:
    server, base = start_server(tmp_path, subprocess_env(live_redis))
    sockets, burst = 40, OLD_CAPACITY + 50
    token = token_for(world.reviewer)
    pids = submit_many(world, burst, "burst")  # written now, announced together below
    try:

        async def scenario() -> list[list[dict[str, Any]]]:
            url = base.replace("http://", "ws://") + f"/ws/queue/?token={token}"
            clients = [
                await websockets.connect(url, open_timeout=60, max_queue=None)
                for _ in range(sockets)
            ]
            try:
                for ws in clients:
                    assert json.loads(await ws.recv())["type"] == "hello"
                # One relay pass: `burst` events to one group, all at once.
                await asyncio.to_thread(relay.relay_all)
                return list(
                    await asyncio.gather(
                        *(read_until(ws, set(pids), timeout=120) for ws in clients)
                    )
                )
            finally:
                for ws in clients:
                    await ws.close()

        received = asyncio.run(scenario())
    finally:
        server.stop()
    for messages in received:
        heard = [m for m in messages if m.get("proposal") in pids]
        assert {m["proposal"] for m in heard} == set(pids), f"{len(heard)} of {burst}"
        seqs = [seq_key(m["seq"]) for m in heard]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one group, in order
    assert "fell" not in server.output()  # nothing needed replaying at this size


def test_a_reconnecting_client_catches_up_from_its_seq_with_only_what_it_may_see(
    world: Any, live_redis: str, tmp_path: Path
) -> None:
    server, base = start_server(tmp_path, subprocess_env(live_redis))
    reviewer, outsider = token_for(world.reviewer), token_for(world.outsider)
    ws_base = base.replace("http://", "ws://") + "/ws/queue/"
    try:

        async def hello(token: str) -> str:
            async with websockets.connect(f"{ws_base}?token={token}", open_timeout=60) as ws:
                first = json.loads(await ws.recv())
                assert first["type"] == "hello"
                return str(first["seq"])

        seq = asyncio.run(hello(reviewer))
        pids = submit_many(world, 3, "while away")
        relay.relay_all()

        async def back() -> tuple[list[Any], list[Any], list[Any]]:
            # ?after= on connect ...
            async with websockets.connect(f"{ws_base}?token={reviewer}&after={seq}") as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                caught_up = await read_until(ws, set(pids), timeout=30, until_type="resumed")
                # ... and a stream that no longer reaches back that far says so.
                await ws.send(json.dumps({"type": "resume", "after": "1-0"}))
                too_old = await read_until(ws, set(), timeout=30, until_type="resumed")
            # {"type": "resume"} on an open socket, by someone who may see none of it.
            async with websockets.connect(f"{ws_base}?token={outsider}") as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                await ws.send(json.dumps({"type": "resume", "after": seq}))
                foreign = await read_until(ws, set(), timeout=30, until_type="resumed")
            return caught_up, too_old, foreign

        caught_up, too_old, foreign = asyncio.run(back())
    finally:
        server.stop()
    announced = [m for m in caught_up if m["type"] == "proposal.submitted"]
    assert [m["proposal"] for m in announced] == pids
    assert all(seq_key(m["seq"]) > seq_key(seq) for m in announced)
    resumed = [m for m in caught_up if m["type"] == "resumed"]
    assert resumed and seq_key(resumed[0]["seq"]) >= seq_key(announced[-1]["seq"])
    assert too_old[0]["type"] == "resync"
    assert [m["type"] for m in foreign] == ["resumed"]  # nothing about the reviewers' queue


def test_a_socket_whose_backlog_overflows_is_counted_logged_and_replayed(
    world: Any, live_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    """backlog 10, 60 events arriving at once: the layer drops, counts and logs; the consumer
    replays them from the stream; the client gets each event (ids deduped), in order."""
    token = token_for(world.reviewer)
    pids = submit_many(world, 60, "overflow")
    dropped_before = REGISTRY.get_sample_value("nihil_live_messages_dropped_total") or 0.0
    caplog.set_level(logging.WARNING, logger="notifications.live")

    async def scenario() -> list[dict[str, Any]]:
        comm = socket("/ws/queue/", token=token)
        assert (await connect(comm))[0] is True
        assert (await comm.receive_json_from(timeout=5))["type"] == "hello"
        # Relay while this event loop is held: every message is waiting in the subscriber's
        # socket when the loop runs again, far more than the backlog holds.
        relaying = threading.Thread(target=relay.relay_all)
        relaying.start()
        relaying.join()
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if set(pids) <= {m.get("proposal") for m in got} and any(
                m["type"] == "resumed" for m in got
            ):
                break
            message = await next_json(comm, timeout=2)
            if message is not None:
                got.append(message)
        await comm.disconnect()
        return got

    got = run(scenario)
    announced = [m for m in got if m.get("proposal") in pids]
    assert [m["proposal"] for m in announced] == pids  # each once, in order
    assert any(m["type"] == "resumed" for m in got)
    dropped = (
        REGISTRY.get_sample_value("nihil_live_messages_dropped_total") or 0.0
    ) - dropped_before
    assert dropped >= len(pids) - 10
    assert any("fell" in r.getMessage() and "behind" in r.getMessage() for r in caplog.records)
    assert live.STREAM_KEY  # the replay came from the stream, not from the layer


def test_an_event_sent_to_several_groups_is_serialized_once(
    live_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay hands each event to three or four groups as one dict: the layer encodes it
    once and publishes the same bytes to each group."""
    layer = get_channel_layer()
    assert isinstance(layer, live.LiveChannelLayer)
    encoded: list[dict[str, Any]] = []
    serialize = live.LiveChannelLayer.serialize

    def counting(self: Any, message: dict[str, Any]) -> bytes:
        encoded.append(message)
        return serialize(self, message)

    monkeypatch.setattr(live.LiveChannelLayer, "serialize", counting)
    first: Any = {"type": "proposal.update", "id": "a"}
    second: Any = {"type": "proposal.update", "id": "b"}
    groups = ["checkpoint.1", "user.2", "proposal.a"]
    pairs = [(group, first) for group in groups] + [(group, second) for group in groups]
    assert live.broadcast(pairs)
    assert [m["id"] for m in encoded] == ["a", "b"]
