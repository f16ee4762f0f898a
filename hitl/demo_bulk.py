"""`seed_demo --proposals N`: N demo proposals with decided history, written in bulk.

THE ONE PLACE HISTORY IS WRITTEN IN BULK. Everywhere else every change goes through
proposals.services (one transition function, an audit event and an outbox row per change);
calling those services 100,000 times takes an hour. Here the same rows the services would
write are built in memory and copied in (PostgreSQL COPY; bulk_create elsewhere), chunk by
chunk, one transaction per chunk:
- proposals in their final state, revision 1, votes;
- django-simple-history rows ("+" at submission, "~" at the decision) for each of them;
- outbox rows, already dispatched (nothing is sent for demo data);
- audit events, appended to one hash chain per chunk by audit.services.audit_append_rows
  (the chain lock, one head read, positions, links and hashes exactly as one by one, one
  INSERT per few thousand rows). So `audit_verify` stays clean, and other writers wait for
  that chain only for one chunk. Audit events carry the real time they were written (the
  trail never lies about when something was written); domain rows carry the generated past
  time of the decision, as demo_history's backdating does.

The routing decision comes from proposals.policy.route and the quorum from the checkpoint, so
the generated data is what the services would have decided. Deterministic (seeded) and
idempotent: proposals are numbered `bulk-<n>`, and a run tops up to N.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, connections, models, transaction
from django.db.models import Max
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_append_rows, jsonable
from notifications.models import OutboxEvent
from proposals import policy
from proposals.models import Checkpoint, Proposal, Resolution, Revision, RevisionKind, Status, Vote
from proposals.permissions import electorate_ids
from proposals.services import payload_hash

PREFIX = "bulk-"
CHUNK = 5000
PENDING_SHARE = 0.02  # left open so the reviewers' queues have work at every size


@dataclass(frozen=True)
class Plan:
    checkpoint: str
    reviewers: tuple[str, ...]
    weight: int


PLANS = (
    Plan("inspection-schedule", ("ingrid", "ivan"), 6),
    Plan("policy-change", ("alma", "arto", "asha"), 2),
    Plan("data-purchase", ("bruno", "bianca"), 3),
)
SITES = ("Riverside tannery", "Northgate landfill", "Old mill weir", "Harbour depot", "Quarry 7")
COMMENTS = ("Not justified by the data.", "Wrong target.", "Too costly.")


@dataclass
class _Ctx:
    checkpoint: Checkpoint
    reviewers: list[Any]
    eligible: int
    required: int


@dataclass
class _Chunk:
    """Rows of one chunk, in write order; `events` are (verb, actor, proposal row, revision,
    data, reason) for the audit chain, in the order they happened per proposal."""

    proposals: list[dict[str, Any]] = field(default_factory=list)
    revisions: list[dict[str, Any]] = field(default_factory=list)
    votes: list[dict[str, Any]] = field(default_factory=list)
    history: dict[type[models.Model], list[dict[str, Any]]] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, Any, dict[str, Any], int, dict[str, Any], str]] = field(
        default_factory=list
    )


def existing() -> int:
    return Proposal.objects.filter(external_id__startswith=PREFIX).count()


def _highest() -> int:
    """The highest number written so far (zero-padded, so the text order is the number's)."""
    last = (
        Proposal.objects.filter(external_id__startswith=PREFIX)
        .order_by("-external_id")
        .values_list("external_id", flat=True)
        .first()
    )
    return int(last[len(PREFIX) :]) if last else 0


@dataclass(frozen=True)
class _Job:
    agent: Any
    contexts: dict[str, _Ctx]
    plans: list[Plan]
    weights: list[int]
    now: datetime
    days: int
    seed: int


_JOB: _Job | None = None  # set before the workers fork; they inherit it


def _run_chunk(bounds: tuple[int, int]) -> int:
    """Build and write proposals [first, last) in one transaction; in a worker process too."""
    job = _JOB
    assert job is not None
    first, last = bounds
    chunk = _Chunk()
    for number in range(first, last):
        # Seeded per proposal: the same N gives the same data whatever the chunking.
        rng = random.Random(job.seed * 1_000_003 + number)
        plan = rng.choices(job.plans, job.weights)[0]
        _one(chunk, job.contexts[plan.checkpoint], job.agent, rng, job.now, job.days, number)
    with transaction.atomic():
        _write(chunk)
    return last - first


def default_workers() -> int:
    """Two processes where there are two cores and PostgreSQL takes concurrent writers (the
    audit hashing is most of the CPU, and chunks on different chains do not wait for each
    other); one on SQLite, which serializes writers anyway."""
    if connection.vendor != "postgresql":
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _close_for_fork() -> None:
    for wrapper in connections.all(initialized_only=True):
        wrapper.close()
        close_pool = getattr(wrapper, "close_pool", None)  # Django 5.1+, PostgreSQL with a pool
        if close_pool is not None:
            close_pool()


def generate(
    *,
    agent: Any,
    count: int,
    days: int = 30,
    seed: int = 11,
    chunk_size: int = CHUNK,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Top the bulk demo proposals up to number `count`; the number created. Needs the demo
    checkpoints and reviewers (seed_demo creates them first). Chunks commit one by one (with
    several workers, not in order: a run that fails leaves what it committed, and a re-run
    continues after the highest number written)."""
    global _JOB
    start = _highest()
    if start >= count:
        return 0
    contexts = _contexts(agent)
    if not contexts:
        return 0
    plans = [plan for plan in PLANS if plan.checkpoint in contexts]
    _JOB = _Job(agent, contexts, plans, [p.weight for p in plans], timezone.now(), days, seed)
    bounds = [(first, min(first + chunk_size, count)) for first in range(start, count, chunk_size)]
    workers = default_workers() if workers is None else max(1, workers)
    if connection.vendor != "postgresql":
        workers = 1
    created = 0
    try:
        if workers == 1 or len(bounds) == 1 or connection.in_atomic_block:
            results: Iterable[int] = map(_run_chunk, bounds)
            for done in results:
                created += done
                if on_progress is not None:
                    on_progress(done)
            _analyze()
            return created
        # Forked workers must not share the parent's sockets, nor its connection pool (psycopg
        # pool threads and connections do not survive a fork): both closed here, each worker
        # opens its own on first use.
        _close_for_fork()
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for done in pool.imap_unordered(_run_chunk, bounds):
                created += done
                if on_progress is not None:
                    on_progress(done)
        _analyze()
        return created
    finally:
        _JOB = None


def _analyze() -> None:
    """Fresh statistics for the tables just loaded: until autovacuum gets to them the planner
    thinks they are nearly empty, and the dashboard's and the queue's plans after a seed were
    2-3x slower than after an ANALYZE."""
    if connection.vendor != "postgresql":
        return
    tables = [model._meta.db_table for model in (Proposal, Revision, Vote, AuditEvent, OutboxEvent)]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE " + ", ".join(connection.ops.quote_name(t) for t in tables))


def _contexts(agent: Any) -> dict[str, _Ctx]:
    slugs = [plan.checkpoint for plan in PLANS]
    checkpoints = {c.slug: c for c in Checkpoint.objects.filter(slug__in=slugs)}
    users = {
        u.username: u
        for u in get_user_model().objects.filter(
            username__in=[name for plan in PLANS for name in plan.reviewers]
        )
    }
    found: dict[str, _Ctx] = {}
    for plan in PLANS:
        checkpoint = checkpoints.get(plan.checkpoint)
        reviewers = [users[name] for name in plan.reviewers if name in users]
        if checkpoint is None or len(reviewers) < 2:
            continue
        eligible = len(electorate_ids(checkpoint, submitter_id=agent.pk, escalated=False))
        required = policy.required_approvals(
            checkpoint.quorum_rule, checkpoint.quorum_count, eligible
        )
        if eligible < required or required > len(reviewers):
            continue
        found[plan.checkpoint] = _Ctx(checkpoint, reviewers, eligible, required)
    return found


def _payload(slug: str, rng: random.Random) -> dict[str, Any]:
    if slug == "data-purchase":
        return {
            "vendor": rng.choice(("LeadCo", "DataNow")),
            "cost": rng.randint(20, 900),
            "businesses": rng.choice((200, 600, 1500)),
        }
    if slug == "policy-change":
        return {"rule": f"capital buffer {rng.randint(1, 9)}", "change_bp": rng.randint(-50, 50)}
    return {"site": rng.choice(SITES), "visits_per_year": rng.choice((2, 4, 6, 12))}


def _historical(model: type[models.Model]) -> type[models.Model]:
    # Read once: every `Model.history` access builds a new manager class (slow in a loop).
    if model not in _HISTORICAL:
        _HISTORICAL[model] = model.history.model  # type: ignore[attr-defined]
    return _HISTORICAL[model]


_HISTORICAL: dict[type[models.Model], type[models.Model]] = {}


def _history(chunk: _Chunk, model: type[models.Model], row: dict[str, Any], **meta: Any) -> None:
    historical = _historical(model)
    entry = dict(row)
    entry.update(history_change_reason=None, **meta)
    chunk.history.setdefault(historical, []).append(entry)


def _emit(
    chunk: _Chunk,
    verb: str,
    actor: Any,
    row: dict[str, Any],
    at: datetime,
    data: dict[str, Any],
    reason: str = "",
    *,
    audit_data: dict[str, Any] | None = None,
) -> None:
    """The outbox row (dispatched) and the audit event, as proposals.services._record and
    transition write them."""
    payload = {
        "type": verb,
        "proposal_id": str(row["id"]),
        "checkpoint": row["_slug"],
        "status": row["_status_now"],
        "resolution": row["_resolution_now"],
        "revision": 1,
        **data,
    }
    chunk.outbox.append(
        {
            "id": uuid.UUID(int=row["_rng"].getrandbits(128), version=4),
            "topic": verb,
            "proposal_id": row["id"],
            "checkpoint_id": row["checkpoint_id"],
            "payload": payload,
            "created_at": at,
            "dispatched_at": at + timedelta(seconds=1),
        }
    )
    event_data = audit_data if audit_data is not None else data
    chunk.events.append((verb, actor, row, 1, event_data, reason))


def _one(
    chunk: _Chunk,
    ctx: _Ctx,
    agent: Any,
    rng: random.Random,
    now: datetime,
    days: int,
    number: int,
) -> None:
    checkpoint = ctx.checkpoint
    slug = checkpoint.slug
    confidence = round(min(1.0, max(0.05, rng.betavariate(5, 2))), 2)
    priority = rng.choices(("critical", "high", "medium", "low"), (1, 3, 8, 3))[0]
    payload = _payload(slug, rng)
    pending = rng.random() < PENDING_SHARE
    if pending:
        created_at = now - timedelta(minutes=rng.randint(1, 600))
    else:
        ago = timedelta(days=rng.randint(1, max(1, days)), minutes=rng.randint(0, 1300))
        created_at = now - ago
    proposal_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    due = policy.deadlines(
        start=created_at,
        priority=priority,
        timeout_seconds=checkpoint.timeout_seconds,
        sla_seconds=checkpoint.sla_seconds,
        remind_after_seconds=checkpoint.remind_after_seconds,
        escalate_after_seconds=checkpoint.escalate_after_seconds,
    )
    route = policy.route(
        proposal_id=str(proposal_id),
        payload=payload,
        confidence=confidence,
        enabled=checkpoint.enabled,
        bypass_active=False,
        auto_approve_at=checkpoint.auto_approve_at,
        auto_reject_below=checkpoint.auto_reject_below,
        review_when=checkpoint.review_when,
        sample_rate=checkpoint.sample_rate,
    )
    row: dict[str, Any] = {
        "id": proposal_id,
        "checkpoint_id": checkpoint.pk,
        "title": f"{slug.replace('-', ' ').capitalize()} #{number + 1}",
        "summary": "",
        "payload": payload,
        "options": [],
        "context": {"explanation": "Generated bulk demo history."},
        "confidence": confidence,
        "priority": priority,
        "impact": None,
        "region": rng.choice(("North", "South", "EU", "")),
        "labels": {},
        "payload_schema": None,
        "timeout_seconds": None,
        "external_id": f"{PREFIX}{number + 1:07d}",
        "callback_url": "",
        "submitted_by_id": agent.pk,
        "idempotency_key": None,
        "status": Status.PENDING,
        "resolution": "",
        "revision": 1,
        "approved_payload": None,
        "selected_option": "",
        "eligible_reviewers": ctx.eligible,
        "quorum_required": ctx.required,
        "claimed_by_id": None,
        "claimed_until": None,
        "due_at": due.due_at,
        "sla_due_at": due.sla_due_at,
        "remind_at": due.remind_at,
        "reminded_at": None,
        "escalate_at": due.escalate_at,
        "escalated_at": None,
        "sla_breached_at": None,
        "decided_at": None,
        "created_at": created_at,
        "updated_at": created_at,
        # Not columns: what _emit needs to know about the moment of each event.
        "_slug": slug,
        "_status_now": Status.PENDING,
        "_resolution_now": "",
        "_rng": rng,
    }
    revision = {
        "id": None,  # reserved at write time
        "proposal_id": proposal_id,
        "number": 1,
        "kind": RevisionKind.SUBMITTED,
        "payload": payload,
        "payload_hash": payload_hash(payload),
        "summary": "",
        "author_id": agent.pk,
        "patch": [],
        "reason": "",
        "created_at": created_at,
    }
    chunk.revisions.append(revision)
    _history(
        chunk,
        Proposal,
        _columns(row),
        history_date=created_at,
        history_type="+",
        history_user_id=agent.pk,
    )
    _emit(
        chunk,
        "proposal.submitted",
        agent,
        row,
        created_at,
        {
            "routing": route.outcome,
            "routing_reason": route.reason,
            "payload_hash": revision["payload_hash"],
        },
    )
    decider: Any = None
    reason = ""
    if route.outcome in ("approve", "reject"):
        decided_at = created_at
        status = Status.APPROVED if route.outcome == "approve" else Status.REJECTED
        resolution: str = route.resolution
        reason = route.reason
    elif pending:
        chunk.proposals.append(row)
        return
    else:
        delay = timedelta(minutes=rng.choice((4, 9, 20, 45, 90, 180, 400, 1500)))
        decided_at = min(created_at + delay, now - timedelta(minutes=1))
        approve = rng.random() < (1.0 if confidence >= 0.8 else 0.35 + confidence * 0.6)
        voters = rng.sample(ctx.reviewers, ctx.required if approve else 1)
        for index, reviewer in enumerate(voters):
            at = decided_at - timedelta(minutes=len(voters) - 1 - index)
            decision = "approve" if approve else "reject"
            comment = "" if approve else rng.choice(COMMENTS)
            vote = {
                "id": None,
                "proposal_id": proposal_id,
                "revision": 1,
                "reviewer_id": reviewer.pk,
                "decision": decision,
                "comment": comment,
                "selected_option": "",
                "created_at": at,
                "checkpoint_id": row["checkpoint_id"],
                "review_seconds": (at - created_at).total_seconds(),
            }
            chunk.votes.append(vote)
            _emit(
                chunk,
                "proposal.vote_cast",
                reviewer,
                row,
                at,
                {"decision": decision, "selected_option": "", "vote_id": vote},
                comment,
            )
            decider, reason = reviewer, comment
        status = Status.APPROVED if approve else Status.REJECTED
        resolution = Resolution.REVIEWERS
    row.update(
        status=status,
        resolution=resolution,
        decided_at=decided_at,
        updated_at=decided_at,
        approved_payload=payload if status == Status.APPROVED else None,
        remind_at=None,
        escalate_at=None,
        _status_now=status,
        _resolution_now=resolution,
    )
    _history(
        chunk,
        Proposal,
        _columns(row),
        history_date=decided_at,
        history_type="~",
        history_user_id=decider.pk if decider is not None else None,
    )
    verb = "proposal.approved" if status == Status.APPROVED else "proposal.rejected"
    _emit(
        chunk,
        verb,
        decider,
        row,
        decided_at,
        {"reason": reason},
        reason,
        audit_data={"from": Status.PENDING, "to": status, "resolution": resolution},
    )
    chunk.proposals.append(row)


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


# --- writing -------------------------------------------------------------------------------


def _reserve_ids(model: type[models.Model], n: int) -> list[int]:
    """Primary keys for rows that others point at (audit data names vote ids, history rows
    copy them), taken from the table's own sequence so concurrent inserts never collide."""
    if n == 0:
        return []
    table = model._meta.db_table
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [table, n],
            )
            return [int(r[0]) for r in cursor.fetchall()]
    # SQLite serializes writers: nobody else inserts until this transaction ends.
    top = model._default_manager.aggregate(top=Max("id"))["top"] or 0
    return list(range(top + 1, top + 1 + n))


_ENCODER = DjangoJSONEncoder()


def _copy(model: type[models.Model], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(_columns(rows[0]))
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create([model(**_columns(r)) for r in rows], batch_size=500)
        return
    fields = {f.attname: f for f in model._meta.concrete_fields}
    is_json = [isinstance(fields[c], models.JSONField) for c in columns]
    names = ", ".join(connection.ops.quote_name(fields[c].column) for c in columns)
    sql = f"COPY {connection.ops.quote_name(model._meta.db_table)} ({names}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:  # psycopg 3
        for row in rows:
            copy.write_row(
                [
                    (None if row[c] is None else _ENCODER.encode(row[c])) if js else row[c]
                    for c, js in zip(columns, is_json, strict=True)
                ]
            )


def _write(chunk: _Chunk) -> None:
    for row, pk in zip(chunk.revisions, _reserve_ids(Revision, len(chunk.revisions)), strict=True):
        row["id"] = pk
    for row, pk in zip(chunk.votes, _reserve_ids(Vote, len(chunk.votes)), strict=True):
        row["id"] = pk
    _copy(Proposal, chunk.proposals)
    _copy(Revision, chunk.revisions)
    _copy(Vote, chunk.votes)
    for historical, rows in chunk.history.items():
        _copy(historical, rows)
    for model, source in ((Revision, chunk.revisions), (Vote, chunk.votes)):
        historical = _historical(model)
        entries = [
            {
                **row,
                "history_date": row["created_at"],
                "history_type": "+",
                "history_change_reason": None,
                "history_user_id": row.get("author_id") or row.get("reviewer_id"),
            }
            for row in source
        ]
        _copy(historical, entries)
    for out in chunk.outbox:
        vote = out["payload"].get("vote_id")
        if isinstance(vote, dict):
            out["payload"]["vote_id"] = vote["id"]
    _copy(OutboxEvent, chunk.outbox)
    _append_audit(chunk)


def _append_audit(chunk: _Chunk) -> None:
    """The chunk's events onto one audit chain, through the one set-based append the audit
    app offers (audit_append_rows: chain lock, positions, links and hashes as one by one)."""
    now = timezone.now()
    audit_append_rows(
        [
            {
                "created_at": now,
                "actor_id": actor.pk if actor is not None else None,
                "actor_label": actor.get_username() if actor is not None else "system",
                "verb": verb,
                "proposal_id": row["id"],
                "checkpoint_id": row["checkpoint_id"],
                "revision": revision,
                "data": jsonable(_resolved(data)),
                "reason": reason,
            }
            for verb, actor, row, revision, data, reason in chunk.events
        ]
    )


def _resolved(data: dict[str, Any]) -> dict[str, Any]:
    vote = data.get("vote_id")
    return {**data, "vote_id": vote["id"]} if isinstance(vote, dict) else data
