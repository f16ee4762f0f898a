"""The baseline's tables (plain SQL, no migrations) and the bench-only bulk seeding of them.

`python -m bench.baseline.schema` creates the tables in DATABASE_URL's database.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import psycopg

SCHEMA = """
CREATE TABLE base_user (id bigserial PRIMARY KEY, username text NOT NULL UNIQUE);
CREATE TABLE base_key (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES base_user (id),
    key_hash char(64) NOT NULL UNIQUE,
    revoked_at timestamptz
);
CREATE TABLE base_item (
    id uuid PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES base_user (id),
    title text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL,
    sla_due_at timestamptz NOT NULL,
    due_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
-- The same shape as the product's open-queue and open-due partial indexes.
CREATE INDEX base_item_open_queue ON base_item (sla_due_at, id) WHERE status = 'pending';
CREATE INDEX base_item_open_due ON base_item (due_at) WHERE status = 'pending';
CREATE TABLE base_audit (
    seq bigint PRIMARY KEY,
    created_at timestamptz NOT NULL,
    actor_id bigint,
    verb text NOT NULL,
    item_id uuid,
    data jsonb NOT NULL,
    prev_hash char(64) NOT NULL,
    hash char(64) NOT NULL UNIQUE
);
"""


def create(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def add_user_with_key(dsn: str, username: str) -> str:
    """A user and a bearer token for it (only its sha256 is stored); returns the token."""
    token = secrets.token_urlsafe(32)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO base_user (username) VALUES (%s) RETURNING id", [username]
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO base_key (user_id, key_hash) VALUES (%s, %s)",
            [row[0], hashlib.sha256(token.encode()).hexdigest()],
        )
    return token


def seed_items(
    dsn: str, count: int, *, due_in_past: bool, owner: str, far: bool = False
) -> list[str]:
    """Bench-only bulk path: `count` pending rows in one INSERT ... SELECT (no audit rows;
    only what the measured paths then do is audited). Queue rows sit an hour out by
    deadline; `far` ones (to decide or to sweep) behind them, so they never shift a page."""
    due = "now() - interval '1 hour'" if due_in_past else "now() + interval '2 days'"
    sla = "interval '30 days'" if far else "interval '1 hour'"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"""
            INSERT INTO base_item (id, owner_id, title, payload, status, sla_due_at, due_at,
                                   created_at, updated_at)
            SELECT gen_random_uuid(), u.id, 'seeded ' || g, '{{"cost": 1}}'::jsonb, 'pending',
                   now() + {sla} + g * interval '1 millisecond', {due}, now(), now()
            FROM generate_series(1, %s) AS g, base_user AS u WHERE u.username = %s
            RETURNING id
            """,  # noqa: S608 (`due` and `sla` are constants above)
            [count, owner],
        ).fetchall()
        conn.execute("ANALYZE base_item")
    return [str(row[0]) for row in rows]


def cursor_at(dsn: str, offset: int) -> str | None:
    """The baseline list's `after` value that starts `offset` rows in."""
    if offset <= 0:
        return None
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT sla_due_at, id FROM base_item WHERE status = 'pending'"
            " ORDER BY sla_due_at, id OFFSET %s LIMIT 1",
            [offset - 1],
        ).fetchone()
    return None if row is None else f"{row[0].isoformat()}|{row[1]}"


if __name__ == "__main__":
    create(os.environ["DATABASE_URL"])
