"""The baseline's audit append: the product's protocol at its plainest. Serialize on an
advisory lock, read the head, hash the canonical event with the previous hash, INSERT."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
LOCK_CLASS = 7301  # the product's audit lock class; another database, so no contention


def append_many(
    cursor: Any, events: list[tuple[int | None, str, str | None, dict[str, Any]]]
) -> None:
    """Append (actor_id, verb, item_id, data) events in order. `cursor` is a DB-API cursor
    (Django's or psycopg's) inside the transaction that makes the change."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [LOCK_CLASS])
    cursor.execute("SELECT seq, hash FROM base_audit ORDER BY seq DESC LIMIT 1")
    head = cursor.fetchone()
    seq, prev_hash = (head[0], head[1]) if head else (0, GENESIS)
    rows = []
    now = datetime.now(UTC)
    for actor_id, verb, item_id, data in events:
        seq += 1
        body = {
            "seq": seq,
            "created_at": now.isoformat(),
            "actor_id": actor_id,
            "verb": verb,
            "item_id": item_id,
            "data": data,
        }
        text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(text + prev_hash.encode()).hexdigest()
        rows.append((seq, now, actor_id, verb, item_id, json.dumps(data), prev_hash, digest))
        prev_hash = digest
    sql = (
        "INSERT INTO base_audit (seq, created_at, actor_id, verb, item_id, data, prev_hash, hash)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    )
    if len(rows) == 1:
        cursor.execute(sql, rows[0])
    else:
        cursor.executemany(sql, rows)
