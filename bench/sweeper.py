"""One sweeper process. `python -m bench.sweeper product [SEED]` runs the product's timeout phase
(proposals.sweeps, the same code beat runs) until no due row is left
(after seeding SEED due rows, when given); `python -m bench.sweeper
raw-update` / `raw-audit` do the same job on the baseline's table in plain psycopg: a chunked
`UPDATE`, or the product's per-row protocol at its plainest (claim a chunk with SKIP LOCKED,
then per row an UPDATE and one audit row chained under the advisory lock).

Protocol with the orchestrator: prints `ready` once imported and connected, waits for a line
on stdin (so several sweepers start together), works, prints one JSON line: rows done, wall
seconds, own CPU seconds, and the CPU seconds of the PostgreSQL backend that served it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import psutil

CHUNK = 100  # the product's proposals.sweeps.CHUNK_SIZE


def product(seed: int) -> int:
    import django

    django.setup()
    from django.db import connection

    from proposals import sweeps

    if seed:
        # The bench-only bulk path (bench.product): due rows, before the clock starts.
        from bench.product import seed as seed_rows

        seed_rows("sweep", seed)

    phase = next(p for p in sweeps.PHASES if p.name == "timeout")
    connection.ensure_connection()
    _ready(connection.connection.info.backend_pid)
    done = 0
    while True:
        acted = sweeps.run_phase(phase)
        done += acted
        if acted == 0:
            return done


def raw(with_audit: bool) -> int:
    import psycopg

    from bench.baseline.chain import append_many

    conn = psycopg.connect(os.environ["DATABASE_URL"])
    _ready(conn.info.backend_pid)
    done = 0
    while True:
        with conn.transaction(), conn.cursor() as cursor:
            if not with_audit:
                cursor.execute(
                    """
                    WITH due AS (
                        SELECT id FROM base_item WHERE status = 'pending' AND due_at <= now()
                        ORDER BY due_at LIMIT %s FOR NO KEY UPDATE SKIP LOCKED
                    )
                    UPDATE base_item SET status = 'expired', updated_at = now()
                    FROM due WHERE base_item.id = due.id
                    """,
                    [CHUNK],
                )
                count = cursor.rowcount
            else:
                cursor.execute(
                    "SELECT id FROM base_item WHERE status = 'pending' AND due_at <= now()"
                    " ORDER BY due_at LIMIT %s FOR NO KEY UPDATE SKIP LOCKED",
                    [CHUNK],
                )
                ids = [row[0] for row in cursor.fetchall()]
                for item_id in ids:
                    cursor.execute(
                        "UPDATE base_item SET status = 'expired', updated_at = now() WHERE id = %s",
                        [item_id],
                    )
                    append_many(cursor, [(None, "item.expired", str(item_id), {"action": "x"})])
                count = len(ids)
        done += count
        if count == 0:
            conn.close()
            return done


_clock: dict[str, float] = {}
_backend: list[psutil.Process] = []  # the PostgreSQL backend serving this sweeper, if local


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _ready(backend_pid: int) -> None:
    """Say ready, wait for go; the clocks start now, so set-up (imports, connecting) is not
    counted. The CPU of the PostgreSQL backend serving this sweeper is clocked too when the
    server runs on this machine (the bench's does); elsewhere it reads as 0."""
    try:
        backend = psutil.Process(backend_pid)
        if "postgres" in backend.name():
            _backend.append(backend)
    except psutil.Error:
        pass
    print("ready", flush=True)
    sys.stdin.readline()
    _clock["wall"] = time.perf_counter()
    _clock["cpu"] = _cpu(psutil.Process())
    _clock["pg_cpu"] = sum(_cpu(backend) for backend in _backend)


def main() -> None:
    kind = sys.argv[1]
    runners: dict[str, Any] = {
        "product": lambda: product(int(sys.argv[2]) if len(sys.argv) > 2 else 0),
        "raw-update": lambda: raw(False),
        "raw-audit": lambda: raw(True),
    }
    done = runners[kind]()
    wall = time.perf_counter() - _clock["wall"]
    cpu = _cpu(psutil.Process()) - _clock["cpu"]
    pg_cpu = sum(_cpu(backend) for backend in _backend) - _clock["pg_cpu"]
    print(json.dumps({"done": done, "wall_s": wall, "cpu_s": cpu, "pg_cpu_s": pg_cpu}), flush=True)


if __name__ == "__main__":
    main()
