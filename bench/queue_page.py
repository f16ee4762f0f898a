"""Server time of the reviewer's desk (`/queue/`) at a large open queue, in-process.

    DATABASE_URL=postgres://…/empty_db REDIS_URL=… SECRET_KEY=… \
    DJANGO_SETTINGS_MODULE=config.settings.production ALLOWED_HOSTS=testserver \
    NIHIL_SKIP_BOOTSTRAP=1 \
    python -m bench.queue_page [PENDING]      # default 100000

Migrates the (empty) database, seeds PENDING pending proposals with bench/product.py's bulk
path, then renders `/queue/` through the whole middleware stack (Django's test client, no
network) for the bench reviewer, who reviews them all, and the bench manager (their "all"),
and prints per page: queries, wall and process-CPU milliseconds (median and min of 15 after
a warm-up). CPU is the figure that carries between runs on a loaded machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from bench import product  # noqa: E402

PAGES = [
    ("bench-reviewer", "/queue/"),
    ("bench-manager", "/queue/?scope=all"),
    ("bench-reviewer", "/queue/?priority=medium&q=seeded"),
]


def measure(username: str, path: str, times: int = 15) -> dict[str, float]:
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    response = client.get(path, secure=True)
    assert response.status_code == 200, response.status_code
    statements: list[str] = []

    def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        client.get(path, secure=True)
    walls, cpus = [], []
    for _ in range(times):
        wall, cpu = time.perf_counter(), time.process_time()
        client.get(path, secure=True)
        cpus.append((time.process_time() - cpu) * 1000)
        walls.append((time.perf_counter() - wall) * 1000)
    rows = response.content.count(b"<tr data-proposal=")
    return {
        "rows": rows,
        "queries": len(statements),
        "wall_ms_median": statistics.median(walls),
        "wall_ms_min": min(walls),
        "cpu_ms_median": statistics.median(cpus),
        "cpu_ms_min": min(cpus),
    }


def main() -> None:
    pending = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    call_command("migrate", verbosity=0)
    product.setup()
    product.seed("queue", pending)
    print(f"/queue/ with {pending} pending proposals, load average {os.getloadavg()}")
    for username, path in PAGES:
        m = measure(username, path)
        print(
            f"{username:15s} {path:38s} rows {m['rows']:3d}  queries {m['queries']}  "
            f"wall {m['wall_ms_median']:.1f} ms (min {m['wall_ms_min']:.1f})  "
            f"CPU {m['cpu_ms_median']:.1f} ms (min {m['cpu_ms_min']:.1f})"
        )


if __name__ == "__main__":
    main()
