"""Timer sweeps: set-based, chunked, safe to run concurrently.

Each phase claims a chunk of due rows with `SELECT … FOR UPDATE SKIP LOCKED`, so two sweepers
(two beats, a beat and `manage.py hitl_sweep`, …) split the work instead of doing it twice, and
a row a reviewer is voting on right now is simply left for the next run. The chunk is then
planned by the phase's timer (proposals.services: it re-checks each row's condition under the
lock and applies the transition rules in memory) and written set-based: one UPDATE of the
rows, one INSERT of their history rows, one of their outbox rows, and their audit events in
one INSERT at the end (audit_batch): a handful of statements per chunk, not three per row.

A chunk is one transaction: rows locked up front, then processed; the lock of the audit chain
the chunk appends to is taken only after every row lock is held, at the very end (see
proposals.services and audit.services), so sweeps and voters cannot deadlock, and sweepers
hold a chain only for the moment its events are inserted and committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import audit_anchor, audit_batch
from proposals import services
from proposals.models import OPEN_STATUSES, Checkpoint, Proposal, Status

logger = logging.getLogger(__name__)

CHUNK_SIZE = 100
MAX_CHUNKS_PER_PHASE = 1000  # a bound, so one run always ends; the next run continues


@dataclass(frozen=True)
class Phase:
    name: str
    due: Callable[[datetime], Q]
    order_by: str
    plan: services.Plan


def _dev_auto_approve(proposals: list[Proposal], now: datetime) -> list[services.Change]:
    return services.dev_auto_approve_changes(proposals, now, settings.HITL_DEV_AUTO_APPROVE_SECONDS)


PHASES: tuple[Phase, ...] = (
    # Timeouts first: a proposal that is both overdue and due a reminder only times out.
    Phase(
        "timeout",
        lambda now: Q(status__in=OPEN_STATUSES, due_at__lte=now),
        "due_at",
        services.expire_changes,
    ),
    Phase(
        "escalation",
        lambda now: Q(status__in=OPEN_STATUSES, escalated_at__isnull=True, escalate_at__lte=now),
        "escalate_at",
        services.escalate_changes,
    ),
    Phase(
        "reminder",
        lambda now: Q(status__in=OPEN_STATUSES, reminded_at__isnull=True, remind_at__lte=now),
        "remind_at",
        services.remind_changes,
    ),
    Phase(
        "sla",
        lambda now: Q(status__in=OPEN_STATUSES, sla_breached_at__isnull=True, sla_due_at__lte=now),
        "sla_due_at",
        services.sla_breach_changes,
    ),
    Phase(
        "claims",
        lambda now: Q(claimed_until__lte=now),
        "claimed_until",
        services.release_expired_claim_changes,
    ),
)

DEV_AUTO_APPROVE_PHASE = Phase(
    "dev_auto_approve",
    lambda now: Q(status=Status.PENDING, created_at__lte=now - _dev_delta()),
    "created_at",
    _dev_auto_approve,
)


def _dev_delta() -> timedelta:
    return timedelta(seconds=settings.HITL_DEV_AUTO_APPROVE_SECONDS)


@dataclass
class SweepReport:
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def run_phase(phase: Phase, *, now: datetime | None = None, chunk_size: int = CHUNK_SIZE) -> int:
    done = 0
    for _ in range(MAX_CHUNKS_PER_PHASE):
        now_ = now or timezone.now()
        # audit_batch: the chunk's audit events go in as one INSERT at its end (positions
        # and links as if one by one), not two statements per row.
        with transaction.atomic(), audit_batch():
            rows = list(
                Proposal.objects.select_for_update(skip_locked=True, no_key=True)
                .filter(phase.due(now_))
                .order_by(phase.order_by)[:chunk_size]
            )
            # A chunk's rows share a few checkpoints: each read once, not joined to every row.
            checkpoints = Checkpoint.objects.in_bulk({p.checkpoint_id for p in rows})
            for proposal in rows:
                proposal.checkpoint = checkpoints[proposal.checkpoint_id]
                proposal._hitl_locked = True  # type: ignore[attr-defined]
            changes = phase.plan(rows, now_)
            services.write_changes(changes)
            acted = len(changes)
        done += acted
        if len(rows) < chunk_size or acted == 0:
            break
    return done


def expire_bypasses(now: datetime | None = None) -> int:
    """Bypasses end by themselves at bypass_until; this records that they did."""
    now = now or timezone.now()
    ended = 0
    for checkpoint_id in Checkpoint.objects.filter(bypass_until__lte=now).values_list(
        "pk", flat=True
    ):
        if services.checkpoint_bypass_end(
            checkpoint_id=checkpoint_id, actor=None, expired=True, now=now
        ):
            ended += 1
    return ended


def run_all(now: datetime | None = None) -> SweepReport:
    report = SweepReport()
    phases = list(PHASES)
    if settings.HITL_DEV_AUTO_APPROVE_SECONDS:
        phases.append(DEV_AUTO_APPROVE_PHASE)
    for phase in phases:
        report.counts[phase.name] = run_phase(phase, now=now)
    report.counts["bypass_expired"] = expire_bypasses(now)
    # The beat's periodic anchoring of every audit chain's head into chain 0 (audit.services):
    # what a sweep just appended is anchored at once, and the anchor is skipped when nothing
    # moved, so an idle system adds no events.
    audit_anchor()
    if report.total:
        logger.info("sweep: %s", report.counts)
    return report
