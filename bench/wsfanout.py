"""Websocket fan-out: SOCKETS reviewer sockets on /ws/queue/ of one web process, then queued
submits at RATE per second for SECONDS; every socket should hear of every submit.

`python -m bench.wsfanout` reads a JSON spec on stdin ({"ws_url", "http_url", "socket_token",
"submit_token", "checkpoint", "sockets", "rate", "seconds", "drain_seconds", optionally
"listeners"}) and prints one JSON line: sockets planned / connected, messages expected /
received / lost, latency p50/p99 from commit to socket, errors with samples, the load
generator's own CPU.

The sockets are spread over listener processes (`--listen`, one per CPU by default, at most one
per 100 sockets): one Python process reading 5,000 messages/s would measure itself, not the
server. This process only submits and tallies.

Latency is measured from the event's `version` (the outbox row's created_at, stamped inside the
committing transaction: at most that transaction's length before the commit) to the moment the
socket read the message (p50/p99), and from its `seq` (the relay's append to the live stream,
Redis's clock) to that moment (fanout_p50/p99: the web process's part); all clocks are this
machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import websockets

from bench.load import percentile

CONNECT_WAIT_S = 120  # for every planned socket to hear its hello


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- a listener process: `count` sockets ------------------------------------------------------


async def _listen(spec: dict[str, Any]) -> None:
    sockets: int = spec["count"]
    # proposal -> (commit -> socket, stream append -> socket), seconds
    received: list[dict[str, tuple[float, float]]] = [{} for _ in range(sockets)]
    joined: list[bool] = [False] * sockets
    errors: list[str] = []
    attempted = 0
    all_attempted = asyncio.Event()

    def settled() -> None:
        nonlocal attempted
        attempted += 1
        if attempted == sockets:
            all_attempted.set()

    async def listen(number: int) -> None:
        url = f"{spec['ws_url']}/ws/queue/?token={spec['socket_token']}"
        try:
            async with websockets.connect(url, open_timeout=60, max_queue=None) as ws:
                first = json.loads(await ws.recv())
                if first.get("type") != "hello":
                    raise RuntimeError(f"first message {first!r}")
                joined[number] = True
                settled()
                async for raw in ws:
                    now = time.time()
                    message = json.loads(raw)
                    proposal = message.get("proposal")
                    if proposal and message.get("type") == "proposal.submitted":
                        version = datetime.fromisoformat(message["version"]).timestamp()
                        appended = int(message["seq"].partition("-")[0]) / 1000
                        received[number].setdefault(proposal, (now - version, now - appended))
        except (OSError, websockets.WebSocketException, RuntimeError, TimeoutError) as exc:
            errors.append(repr(exc))
            if not joined[number]:
                settled()

    tasks = []
    # Connect in small waves: a burst of 500 handshakes at once measures the accept queue.
    for number in range(sockets):
        tasks.append(asyncio.create_task(listen(number)))
        if number % 25 == 24:
            await asyncio.sleep(0.05)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_attempted.wait(), timeout=CONNECT_WAIT_S)
    # Only sockets listening before the first submit can be expected to hear all of them.
    listening = [n for n in range(sockets) if joined[n]]
    print(json.dumps({"connected": len(listening)}), flush=True)

    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    order = json.loads(line)
    expected = set(order["expected"])
    deadline = time.monotonic() + order["drain_seconds"]
    while time.monotonic() < deadline:
        if all(expected <= received[n].keys() for n in listening):
            break
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(
        json.dumps(
            {
                "listening": len(listening),
                "connected_late": sum(joined) - len(listening),
                "latencies": [
                    received[n][pid] for n in listening for pid in expected & received[n].keys()
                ],
                "dropped_connections": len(errors) - (sockets - sum(joined)),
                "errors": errors[:5],
                "error_count": len(errors),
                "cpu_s": _cpu_seconds(),
            }
        ),
        flush=True,
    )


# --- the coordinator: listeners, submits, tally ------------------------------------------------


def _listeners(spec: dict[str, Any]) -> list[subprocess.Popen[str]]:
    sockets: int = spec["sockets"]
    count = spec.get("listeners") or max(1, min(os.cpu_count() or 1, math.ceil(sockets / 100)))
    procs = []
    for index in range(count):
        share = sockets // count + (1 if index < sockets % count else 0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.wsfanout", "--listen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({**spec, "count": share}) + "\n")
        proc.stdin.flush()
        procs.append(proc)
    return procs


async def _submit_all(spec: dict[str, Any]) -> tuple[list[str], list[str], int]:
    submitted: list[str] = []
    errors: list[str] = []
    failures = 0
    interval = 1.0 / spec["rate"]
    total = int(spec["rate"] * spec["seconds"])
    headers = {"Authorization": f"Bearer {spec['submit_token']}", "X-Forwarded-Proto": "https"}
    async with httpx.AsyncClient(base_url=spec["http_url"], timeout=60, headers=headers) as client:

        async def submit(number: int) -> None:
            nonlocal failures
            body = {
                "checkpoint": spec["checkpoint"],
                "title": f"fan-out {number}",
                "payload": {"cost": 1},
            }
            try:
                response = await client.post("/api/v1/proposals/", json=body)
            except httpx.HTTPError as exc:
                failures += 1
                errors.append(repr(exc))
                return
            if response.status_code == 201:
                submitted.append(response.json()["id"])
            else:
                failures += 1
                errors.append(f"submit {response.status_code}: {response.text[:200]}")

        start = time.monotonic()
        pending = []
        for number in range(total):
            # Paced open-loop: the rate holds whatever the server's latency.
            delay = start + number * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(submit(number)))
        await asyncio.gather(*pending)
    return submitted, errors, failures


def run(spec: dict[str, Any]) -> dict[str, Any]:
    sockets: int = spec["sockets"]
    timings: dict[str, float] = {}
    started = time.monotonic()
    procs = _listeners(spec)
    ready = [json.loads(proc.stdout.readline()) for proc in procs if proc.stdout]
    connected = sum(r["connected"] for r in ready)
    timings["connect_s"] = time.monotonic() - started

    started = time.monotonic()
    submitted, submit_errors, submit_failures = asyncio.run(_submit_all(spec))
    timings["submit_s"] = time.monotonic() - started

    started = time.monotonic()
    order = json.dumps({"expected": submitted, "drain_seconds": spec["drain_seconds"]}) + "\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(order)
        proc.stdin.flush()
    reports = []
    for proc in procs:
        assert proc.stdout is not None
        reports.append(json.loads(proc.stdout.readline()))
        proc.wait(30)
    timings["drain_s"] = time.monotonic() - started

    pairs = [pair for report in reports for pair in report["latencies"]]
    latencies = [commit for commit, _ in pairs]
    from_stream = [appended for _, appended in pairs]
    listening = sum(r["listening"] for r in reports)
    expected = len(submitted) * listening
    socket_errors = [sample for report in reports for sample in report["errors"]]
    failed = sockets - connected - sum(r["connected_late"] for r in reports)
    dropped = sum(r["dropped_connections"] for r in reports)
    total = int(spec["rate"] * spec["seconds"])
    return {
        "sockets": sockets,
        "connected": listening,
        "connected_late": sum(r["connected_late"] for r in reports),
        "failed_to_connect": failed,
        "dropped_connections": dropped,
        "listeners": len(procs),
        "submitted": len(submitted),
        "submits_planned": total,
        "expected_messages": expected,
        "received_messages": len(latencies),
        "lost_messages": expected - len(latencies),
        "p50_ms": None if not latencies else percentile(latencies, 0.5) * 1000,  # type: ignore[operator]
        "p99_ms": None if not latencies else percentile(latencies, 0.99) * 1000,  # type: ignore[operator]
        "max_ms": None if not latencies else max(latencies) * 1000,
        # From the relay's append to the live stream (the seq's clock): the fan-out alone,
        # without the submit's commit and the worker's relay before it.
        "fanout_p50_ms": None if not from_stream else percentile(from_stream, 0.5) * 1000,  # type: ignore[operator]
        "fanout_p99_ms": None if not from_stream else percentile(from_stream, 0.99) * 1000,  # type: ignore[operator]
        **timings,
        "loadgen_cpu_s": _cpu_seconds() + sum(r["cpu_s"] for r in reports),
        "errors": submit_failures + failed + dropped,
        "note": "lost = messages not received within drain_s after the last submit, by the "
        "sockets listening before the first submit",
        "error_samples": (submit_errors + socket_errors)[:5],
    }


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    if sys.argv[1:] == ["--listen"]:
        asyncio.run(_listen(spec))
    else:
        print(json.dumps(run(spec)), flush=True)


if __name__ == "__main__":
    main()
