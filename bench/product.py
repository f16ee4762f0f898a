"""The product side of the bench, run as `python -m bench.product <command>` with the
product's settings (DJANGO_SETTINGS_MODULE, DATABASE_URL, REDIS_URL in the environment).

Commands print one JSON document on stdout:
- `prepare QUEUE_ROWS DEEP_OFFSET VOTES`: `setup`, `seed queue`, `cursor`, `seed vote` in one;
- `setup`: checkpoints, a service account, a reviewer and a manager with API keys;
- `seed KIND COUNT`: the bench-only bulk path (see `insert_proposals`);
- `cursor OFFSET`: the queue cursor that starts OFFSET rows in, as the API encodes it;
- `explain TOKEN OFFSET...`: EXPLAIN (ANALYZE, BUFFERS) of the queue page at those offsets,
  SQL captured from the real list view.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Group  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Field  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402
from guardian.shortcuts import assign_perm  # noqa: E402

from bench.probe import requests_sql  # noqa: E402
from hitl.keys import api_key_create, service_account_create  # noqa: E402
from proposals.models import Checkpoint, Proposal, Revision, RevisionKind, Status  # noqa: E402
from proposals.permissions import MANAGE, REVIEW, SUBMIT  # noqa: E402
from proposals.services import payload_hash  # noqa: E402

AUTO, REVIEWED, SWEEP = "bench-auto", "bench-review", "bench-sweep"
PAYLOAD = {"cost": 1, "rows": 10}

# Where seeded rows sit in the queue (ordered by sla_due_at): the queue rows first, from an
# hour out; rows to vote on and rows to sweep far behind them, so neither shifts the deep page.
QUEUE_SLA_START = timedelta(hours=1)
VOTE_SLA_START = timedelta(days=30)
SWEEP_SLA_START = timedelta(days=60)


def setup() -> dict[str, Any]:
    User = get_user_model()
    auto = Checkpoint.objects.create(slug=AUTO, name="Bench auto-approve", auto_approve_at=0.5)
    review = Checkpoint.objects.create(slug=REVIEWED, name="Bench review")
    sweep = Checkpoint.objects.create(slug=SWEEP, name="Bench sweep", timeout_seconds=60)
    agent = service_account_create(username="bench-agent")
    for checkpoint in (auto, review, sweep):
        assign_perm(SUBMIT, agent, checkpoint)
    reviewers = Group.objects.create(name="bench-reviewers")
    reviewer = User.objects.create_user(username="bench-reviewer", password=None)
    reviewer.groups.add(reviewers)
    manager = User.objects.create_user(username="bench-manager", password=None, is_staff=True)
    for checkpoint in (auto, review, sweep):
        assign_perm(REVIEW, reviewers, checkpoint)
        assign_perm(MANAGE, manager, checkpoint)
    return {
        "agent_token": api_key_create(user=agent, name="bench").token,
        "reviewer_token": api_key_create(user=reviewer, name="bench").token,
        "manager_token": api_key_create(user=manager, name="bench").token,
        "reviewer_id": reviewer.pk,
        "agent_id": agent.pk,
    }


def _sql_value(field: Field[Any, Any], value: Any) -> Any:
    return field.get_db_prep_save(value, connection)


def insert_proposals(slug: str, count: int, *, sla_start: timedelta, due_past: bool) -> list[str]:
    """Bench-only bulk path: `count` pending proposals with their first revision in two
    set-based statements (INSERT ... SELECT generate_series), minutes faster than submitting
    them. The rows are what a queued submit leaves (status, deadlines, electorate of one,
    revision 1); they carry no submit audit event, history row or outbox row, which only the
    measured paths need to write. Columns come from the model, so new fields with defaults
    need no change here."""
    checkpoint = Checkpoint.objects.get(slug=slug)
    agent = get_user_model().objects.get(username="bench-agent")
    now = timezone.now()
    template = Proposal(
        checkpoint=checkpoint,
        title="seeded",
        payload=PAYLOAD,
        submitted_by=agent,
        status=Status.PENDING,
        revision=1,
        eligible_reviewers=1,
        quorum_required=1,
        due_at=now - timedelta(minutes=5) if due_past else now + timedelta(days=90),
        sla_due_at=now,
        created_at=now,
        updated_at=now,
    )
    columns, expressions, params = [], [], []
    for field in Proposal._meta.concrete_fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.name == "id":
            expressions.append("gen_random_uuid()")
        elif field.name == "sla_due_at":
            # Distinct, increasing deadlines: a stable order for the keyset pages.
            expressions.append("%s::timestamptz + g * interval '1 millisecond'")
            params.append(now + sla_start)
        elif field.name == "title":
            expressions.append("'seeded ' || g")
        else:
            expressions.append("%s")
            params.append(_sql_value(field, getattr(template, field.attname)))
    rev_template = Revision(
        number=1,
        kind=RevisionKind.SUBMITTED,
        payload=PAYLOAD,
        payload_hash=payload_hash(PAYLOAD),
        author=agent,
        created_at=now,
    )
    rev_columns, rev_expressions, rev_params = [], [], []
    for field in Revision._meta.concrete_fields:
        if field.name == "id":
            continue
        rev_columns.append(connection.ops.quote_name(field.column))
        if field.name == "proposal":
            rev_expressions.append("new.id")
        else:
            rev_expressions.append("%s")
            rev_params.append(_sql_value(field, getattr(rev_template, field.attname)))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH new AS (
                INSERT INTO {Proposal._meta.db_table} ({", ".join(columns)})
                SELECT {", ".join(expressions)} FROM generate_series(1, %s) AS g
                RETURNING id
            ), revs AS (
                INSERT INTO {Revision._meta.db_table} ({", ".join(rev_columns)})
                SELECT {", ".join(rev_expressions)} FROM new
            )
            SELECT id FROM new
            """,  # noqa: S608 (identifiers from the models, values as parameters)
            [*params, count, *rev_params],
        )
        ids = [str(row[0]) for row in cursor.fetchall()]
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Proposal._meta.db_table}")
    return ids


def seed(kind: str, count: int) -> dict[str, Any]:
    if kind == "queue":
        insert_proposals(REVIEWED, count, sla_start=QUEUE_SLA_START, due_past=False)
        return {"seeded": count}
    if kind == "vote":
        return {"ids": insert_proposals(REVIEWED, count, sla_start=VOTE_SLA_START, due_past=False)}
    if kind == "sweep":
        insert_proposals(SWEEP, count, sla_start=SWEEP_SLA_START, due_past=True)
        return {"seeded": count}
    raise SystemExit(f"unknown seed kind {kind!r}")


def _queue_queryset() -> Any:
    """The reviewer's queue as the list view builds it (`?status=pending`)."""
    from proposals.permissions import access_for
    from proposals.selectors import ProposalFilters, proposal_list

    reviewer = get_user_model().objects.get(username="bench-reviewer")
    return proposal_list(access_for(reviewer), ProposalFilters(status=[Status.PENDING]))


def cursor_at(offset: int) -> dict[str, Any]:
    from hitl.api.pagination import encode_cursor

    if offset <= 0:
        return {"cursor": None}
    row = _queue_queryset()[offset - 1]
    return {"cursor": encode_cursor(row)}


def explain(offsets: list[int], token: str) -> dict[str, Any]:
    """The list view's own SQL for each page, then EXPLAIN (ANALYZE, BUFFERS) of its page query
    (the one with LIMIT page_size + 1) on a warm cache."""
    client = Client()
    plans = {}
    for offset in offsets:
        cursor = cursor_at(offset)["cursor"]
        path = "/api/v1/proposals/?status=pending" + (f"&cursor={cursor}" if cursor else "")
        statements = requests_sql(client, "GET", path, None, token)
        page_sql = [sql for sql in statements if "LIMIT" in sql and "proposal" in sql.lower()]
        if not page_sql:
            plans[str(offset)] = {"statements": statements, "plan": None}
            continue
        with connection.cursor() as db:
            db.execute("EXPLAIN (ANALYZE, BUFFERS) " + page_sql[-1])  # warm the cache
            db.execute("EXPLAIN (ANALYZE, BUFFERS) " + page_sql[-1])
            plan = "\n".join(row[0] for row in db.fetchall())
        plans[str(offset)] = {
            "path": path,
            "statements": statements,
            "sql": page_sql[-1],
            "plan": plan,
        }
    return plans


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "prepare":
        # Everything the run needs up front, in one process (each costs a Django start-up).
        queue_rows, deep_offset, votes = (int(a) for a in args)
        out = setup()
        if queue_rows:
            seed("queue", queue_rows)
        out["deep_cursor"] = cursor_at(deep_offset)["cursor"] if queue_rows else None
        out["vote_ids"] = seed("vote", votes)["ids"] if votes else []
    elif command == "setup":
        out = setup()
    elif command == "seed":
        out = seed(args[0], int(args[1]))
    elif command == "cursor":
        out = cursor_at(int(args[0]))
    elif command == "explain":
        out = explain([int(a) for a in args[1:]], args[0])
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
