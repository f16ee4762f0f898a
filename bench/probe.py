"""SQL statements per request, counted in-process: `python -m bench.probe` with either
project's settings reads a JSON list of requests on stdin and prints, per name, how many
statements (SELECT / INSERT / UPDATE / other) the request sent through the whole stack
(middleware, views, services, on-commit hooks) and the statements themselves.

PostgreSQL's pg_stat_statements would count from outside, but it needs a server restart to
load; the shared server is not ours to restart. Django's query capture sees every statement
of the request's connection, which is the same number for a request that runs in one thread.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any


def requests_sql(
    client: Any, method: str, path: str, body: Any, token: str, optional: bool = False
) -> list[str] | None:
    """The statements the request sent; None for an `optional` path that is not there (404)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.generic(
            method,
            path,
            json.dumps(body) if body is not None else "",
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
            HTTP_X_FORWARDED_PROTO="https",  # as the load balancer says it
            HTTP_HOST="127.0.0.1",
        )
    if optional and response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise SystemExit(
            f"probe {method} {path}: {response.status_code} {response.content[:300]!r}"
        )
    return sent(query["sql"] for query in captured.captured_queries)


def sent(logged: Iterable[str]) -> list[str]:
    """The statements as sent. Django logs a transaction's BEGIN and COMMIT as entries of
    their own; the product's backend (config/postgresql) sends BEGIN in front of the first
    statement and a submit's COMMIT after its last, in the same query, which the log shows as
    they were sent: such a BEGIN or COMMIT entry went out with its neighbour, not alone."""
    statements = list(logged)
    kept: list[str] = []
    for n, sql in enumerate(statements):
        following = statements[n + 1] if n + 1 < len(statements) else ""
        if sql == "BEGIN" and following.startswith("BEGIN; "):
            continue
        if sql == "COMMIT" and kept and kept[-1].endswith("; COMMIT"):
            continue
        kept.append(sql)
    return kept


def classify(statements: list[str]) -> dict[str, int]:
    counts = {"total": len(statements), "select": 0, "insert": 0, "update": 0, "other": 0}
    for sql in statements:
        verb = sql.lstrip().split(None, 1)[0].lower() if sql.strip() else ""
        counts[verb if verb in ("select", "insert", "update") else "other"] += 1
    return counts


def probe(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Each request once. Requests named `warm` go first, uncounted: first-call caches are
    not what a busy server pays."""
    from django.test import Client

    client = Client()
    result: dict[str, Any] = {}
    for item in requests:
        statements = requests_sql(
            client,
            item["method"],
            item["path"],
            item.get("body"),
            item["token"],
            optional=item.get("optional", False),
        )
        if statements is None:
            result[item["name"]] = {"absent": True}
        elif item["name"] != "warm":
            result[item["name"]] = {**classify(statements), "statements": statements}
    return result


if __name__ == "__main__":
    import django

    django.setup()
    print(json.dumps(probe(json.loads(sys.stdin.read())), default=str))
