"""The load generator: a process of its own, so its CPU is never charged to the server.

Reads one JSON spec on stdin, warms up, then prints `ready` and waits for a line on stdin (the
orchestrator samples the server's CPU between the two), runs the measured requests, prints
`done`, waits for another line (second CPU sample) and prints the result as one JSON line.

Spec: {"base_urls": [...], "concurrency": 8, "requests": [{"method", "path", "body"?,
"headers"?}], "count": n | "duration": s, "warmup": n, "headers": {...}, "timeout": s}.
With "count", request i is requests[i % len(requests)] (distinct votes: one request per
proposal); with "duration", the list is cycled until the time is up. Connections are spread
round-robin over base_urls, as a load balancer in front of several web processes would.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx
import psutil


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `fraction` of them at or
    below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


async def _run(spec: dict[str, Any], count: int | None, duration: float | None) -> dict[str, Any]:
    concurrency = int(spec.get("concurrency", 8))
    requests: list[dict[str, Any]] = spec["requests"]
    base_urls: list[str] = spec["base_urls"]
    common_headers: dict[str, str] = spec.get("headers", {})
    timeout = float(spec.get("timeout", 120))
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    error_samples: list[str] = []
    next_index = 0
    deadline = time.monotonic() + duration if duration is not None else None
    expected = set(spec.get("expect_status", [200, 201]))

    clients = [
        httpx.AsyncClient(
            base_url=url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        for url in base_urls
    ]

    async def worker(number: int) -> None:
        nonlocal next_index, errors
        client = clients[number % len(clients)]
        while True:
            if count is not None:
                if next_index >= count:
                    return
                index = next_index
                next_index += 1
            else:
                assert deadline is not None
                if time.monotonic() >= deadline:
                    return
                index = next_index
                next_index += 1
            item = requests[index % len(requests)]
            headers = {**common_headers, **item.get("headers", {})}
            body = item.get("body")
            content = json.dumps(body).encode() if body is not None else None
            if content is not None:
                headers.setdefault("content-type", "application/json")
            started = time.perf_counter()
            try:
                response = await client.request(
                    item["method"], item["path"], content=content, headers=headers
                )
                await response.aread()
                code = response.status_code
            except httpx.HTTPError as exc:
                code = 0
                if len(error_samples) < 5:
                    error_samples.append(f"{item['method']} {item['path']}: {exc!r}")
            latencies.append(time.perf_counter() - started)
            statuses[str(code)] = statuses.get(str(code), 0) + 1
            if code not in expected:
                errors += 1
                if code and len(error_samples) < 5:
                    error_samples.append(
                        f"{item['method']} {item['path']} -> {code}: {response.text[:300]}"
                    )

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "error_samples": error_samples,
        "statuses": statuses,
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else None,
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(max(latencies) if latencies else None),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    loop_policy = None
    try:
        import uvloop

        loop_policy = uvloop.EventLoopPolicy()
    except ImportError:  # plain asyncio works too, only slower
        pass
    if loop_policy is not None:
        asyncio.set_event_loop_policy(loop_policy)
    warmup = int(spec.get("warmup", 0))
    warm: dict[str, Any] = {"errors": 0, "error_samples": []}
    if warmup:
        warm = asyncio.run(_run(spec, warmup, None))
        if spec.get("consume"):  # one-shot requests (votes): the measured run takes the rest
            spec = {**spec, "requests": spec["requests"][warmup:]}
    me = psutil.Process()
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_before = me.cpu_times()
    result = asyncio.run(_run(spec, spec.get("count"), spec.get("duration")))
    cpu_after = me.cpu_times()
    print("done", flush=True)
    sys.stdin.readline()
    # A request that failed while warming up is a failure all the same.
    result["errors"] += warm["errors"]
    result["error_samples"] = (warm["error_samples"] + result["error_samples"])[:5]
    result["warmup_requests"] = warmup
    result["loadgen_cpu_s"] = (cpu_after.user + cpu_after.system) - (
        cpu_before.user + cpu_before.system
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
