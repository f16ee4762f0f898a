"""The baseline's views: bearer auth by sha256, then the least a write or a page must do."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import connection, connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from bench.baseline.chain import append_many

PAGE_SIZE = 50


def _user_id(request: HttpRequest) -> int | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id FROM base_key WHERE key_hash = %s AND revoked_at IS NULL",
            [hashlib.sha256(token.encode()).hexdigest()],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def _unauthorized() -> JsonResponse:
    return JsonResponse({"error": {"code": "not_authenticated"}}, status=401)


def _bad(message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": "invalid", "message": message}}, status=400)


def _item_row(owner: int, data: Any, now: datetime) -> tuple[Any, ...] | None:
    if not isinstance(data, dict) or not isinstance(data.get("title"), str):
        return None
    payload = data.get("payload", {})
    if not isinstance(payload, dict):
        return None
    return (
        uuid.uuid4(),
        owner,
        data["title"],
        json.dumps(payload),
        "pending",
        now + timedelta(days=1),
        now + timedelta(days=1),
        now,
        now,
    )


INSERT_ITEM = (
    "INSERT INTO base_item (id, owner_id, title, payload, status, sla_due_at, due_at,"
    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def items(request: HttpRequest) -> HttpResponse:
    owner = _user_id(request)
    if owner is None:
        return _unauthorized()
    if request.method == "GET":
        return _page(request)
    if request.method != "POST":
        return HttpResponse(status=405)
    try:
        data = json.loads(request.body)
    except ValueError:
        return _bad("not JSON")
    now = datetime.now(UTC)
    row = _item_row(owner, data, now)
    if row is None:
        return _bad("title and payload required")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(INSERT_ITEM, row)
        append_many(cursor, [(owner, "item.submitted", str(row[0]), {"title": row[2]})])
    return JsonResponse(
        {"id": str(row[0]), "status": "pending", "created_at": now.isoformat()}, status=201
    )


def bulk(request: HttpRequest) -> HttpResponse:
    owner = _user_id(request)
    if owner is None:
        return _unauthorized()
    if request.method != "POST":
        return HttpResponse(status=405)
    try:
        data = json.loads(request.body)
    except ValueError:
        return _bad("not JSON")
    now = datetime.now(UTC)
    rows = [_item_row(owner, item, now) for item in data.get("proposals", [])]
    if not rows or any(row is None for row in rows):
        return _bad("proposals: a list of items with title and payload")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(INSERT_ITEM, rows)
        append_many(
            cursor,
            [(owner, "item.submitted", str(row[0]), {"title": row[2]}) for row in rows if row],
        )
    return JsonResponse(
        {
            "results": [
                {"index": n, "status": 201, "id": str(row[0])} for n, row in enumerate(rows) if row
            ]
        }
    )


def decide(request: HttpRequest, item_id: uuid.UUID) -> HttpResponse:
    actor = _user_id(request)
    if actor is None:
        return _unauthorized()
    if request.method != "POST":
        return HttpResponse(status=405)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE base_item SET status = 'approved', updated_at = now()"
            " WHERE id = %s AND status = 'pending' RETURNING id",
            [item_id],
        )
        if cursor.fetchone() is None:
            return JsonResponse({"error": {"code": "conflict"}}, status=409)
        append_many(cursor, [(actor, "item.approved", str(item_id), {"decision": "approve"})])
    return JsonResponse({"id": str(item_id), "status": "approved"}, status=201)


# What `own_sql` runs: the files bench/cli.py writes after counting the product's statements.
OWN_SQL_DIR = os.environ.get("BENCH_OWN_SQL_DIR", "")
_own_sql: dict[str, str] = {}


def own_sql(request: HttpRequest, page: str) -> HttpResponse:
    """The product's own SQL for a list page (the reviewer's page `page`, as the product sent
    it), run on the product's database with its rows turned into JSON by PostgreSQL, and
    that text answered as it is: the SQL and the framework's floor, with no Python per row.
    The floor "the queue list <= 2x its own SQL" measures the product's list against."""
    if _user_id(request) is None:
        return _unauthorized()
    sql = _own_sql.get(page)
    if sql is None:
        text = (Path(OWN_SQL_DIR) / f"{page}.sql").read_text()
        # The product's statement as it sent it (literals in place), captured by the bench
        # itself: no outside input reaches this text.
        sql = _own_sql[page] = (
            "SELECT coalesce(json_agg(page), '[]')::text FROM (" + text + ") AS page"  # noqa: S608
        )
    with connections["product"].cursor() as cursor:
        cursor.execute(sql)  # no parameters, so psycopg reads no placeholders in it
        (rows,) = cursor.fetchone()
    return HttpResponse('{"results": ' + rows + ', "next": null}', content_type="application/json")


def _page(request: HttpRequest) -> HttpResponse:
    after = request.GET.get("after")
    sql = (
        "SELECT id, title, status, payload, sla_due_at, created_at FROM base_item"
        " WHERE status = 'pending'"
    )
    params: list[Any] = []
    if after:
        moment, _, last_id = after.partition("|")
        sql += " AND (sla_due_at, id) > (%s, %s)"
        params += [datetime.fromisoformat(moment), uuid.UUID(last_id)]
    sql += " ORDER BY sla_due_at, id LIMIT %s"
    params.append(PAGE_SIZE + 1)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    page = rows[:PAGE_SIZE]
    results = [
        {
            "id": str(r[0]),
            "title": r[1],
            "status": r[2],
            "payload": r[3],
            "sla_due_at": r[4].isoformat(),
            "created_at": r[5].isoformat(),
        }
        for r in page
    ]
    more = len(rows) > PAGE_SIZE
    cursor_value = f"{page[-1][4].isoformat()}|{page[-1][0]}" if more else None
    return JsonResponse({"results": results, "next": cursor_value})
