"""Websocket fan-out: SOCKETS reviewer sockets on /ws/queue/ of one web process, then queued
submits at RATE per second for SECONDS; every socket should hear of every submit.

`python -m bench.wsfanout` reads a JSON spec on stdin ({"ws_url", "http_url", "socket_token",
"submit_token", "checkpoint", "sockets", "rate", "seconds", "drain_seconds"}) and prints one
JSON line: sockets connected, messages expected / received / lost, latency p50/p99 from commit
to socket, submit errors.

Latency is measured from the event's `version` (the outbox row's created_at, stamped inside the
committing transaction: at most that transaction's length before the commit) to the moment the
socket read the message; both clocks are this machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import websockets

from bench.load import percentile


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    sockets: int = spec["sockets"]
    received: list[dict[str, float]] = [{} for _ in range(sockets)]
    joined: list[float | None] = [None] * sockets  # when each socket heard its hello
    connect_errors: list[str] = []
    hello = asyncio.Event()
    connected = 0

    async def listen(number: int, ready: asyncio.Event) -> None:
        nonlocal connected
        url = f"{spec['ws_url']}/ws/queue/?token={spec['socket_token']}"
        try:
            async with websockets.connect(url, open_timeout=60, max_queue=None) as ws:
                first = json.loads(await ws.recv())
                if first.get("type") != "hello":
                    raise RuntimeError(f"first message {first!r}")
                connected += 1
                joined[number] = time.monotonic()
                if connected == sockets:
                    hello.set()
                ready.set()
                async for raw in ws:
                    now = time.time()
                    message = json.loads(raw)
                    proposal = message.get("proposal")
                    if proposal and message.get("type") == "proposal.submitted":
                        version = datetime.fromisoformat(message["version"]).timestamp()
                        received[number].setdefault(proposal, now - version)
        except (OSError, websockets.WebSocketException, RuntimeError, TimeoutError) as exc:
            if len(connect_errors) < 5:
                connect_errors.append(repr(exc))
            ready.set()

    phase_started = time.monotonic()
    timings: dict[str, float] = {}
    tasks = []
    # Connect in small waves: a burst of 500 handshakes at once measures the accept queue.
    for number in range(sockets):
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(listen(number, ready)))
        if number % 25 == 24:
            await asyncio.sleep(0.05)
    with contextlib.suppress(TimeoutError):  # who did not connect is counted below
        await asyncio.wait_for(hello.wait(), timeout=120)

    timings["connect_s"] = time.monotonic() - phase_started
    phase_started = time.monotonic()
    # Only sockets that were listening before the first submit can be expected to hear all
    # of them; one that joined later is counted as late, not as losing messages.
    listening = [n for n in range(sockets) if joined[n] is not None]
    submitted: list[str] = []
    submit_errors: list[str] = []
    interval = 1.0 / spec["rate"]
    total = int(spec["rate"] * spec["seconds"])
    headers = {
        "Authorization": f"Bearer {spec['submit_token']}",
        "X-Forwarded-Proto": "https",
    }
    async with httpx.AsyncClient(base_url=spec["http_url"], timeout=60, headers=headers) as client:

        async def submit(number: int) -> None:
            try:
                response = await client.post(
                    "/api/v1/proposals/",
                    json={
                        "checkpoint": spec["checkpoint"],
                        "title": f"fan-out {number}",
                        "payload": {"cost": 1},
                    },
                )
                if response.status_code == 201:
                    submitted.append(response.json()["id"])
                elif len(submit_errors) < 5:
                    submit_errors.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                submit_errors.append(repr(exc))

        start = time.monotonic()
        pending = []
        for number in range(total):
            # Paced open-loop: the rate holds whatever the server's latency.
            delay = start + number * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(submit(number)))
        await asyncio.gather(*pending)

    timings["submit_s"] = time.monotonic() - phase_started
    phase_started = time.monotonic()
    expected_ids = set(submitted)
    deadline = time.monotonic() + spec["drain_seconds"]
    while time.monotonic() < deadline:
        if all(expected_ids <= set(received[n]) for n in listening):
            break
        await asyncio.sleep(0.2)
    timings["drain_s"] = time.monotonic() - phase_started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    latencies = [seen[pid] for seen in received[:sockets] for pid in expected_ids if pid in seen]
    expected = len(expected_ids) * sockets
    got = len(latencies)
    return {
        "sockets": sockets,
        "connected": len(listening),
        "connected_late": connected - len(listening),
        "failed_to_connect": sockets - connected,
        "submitted": len(submitted),
        "submits_planned": total,
        "expected_messages": expected,
        "received_messages": got,
        "lost_messages": expected - got,
        "p50_ms": None if not latencies else percentile(latencies, 0.5) * 1000,  # type: ignore[operator]
        "p99_ms": None if not latencies else percentile(latencies, 0.99) * 1000,  # type: ignore[operator]
        "max_ms": None if not latencies else max(latencies) * 1000,
        **timings,
        "errors": len(submit_errors) + (sockets - connected),
        "note": "lost = messages not received within drain_s after the last submit, by the "
        "sockets listening before the first submit",
        "error_samples": (submit_errors + connect_errors)[:5],
    }


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(_run(spec))), flush=True)


if __name__ == "__main__":
    main()
