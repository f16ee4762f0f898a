"""Timers racing people and each other, with real threads and real PostgreSQL transactions.

Each thread commits on its own connection (as production's workers and web processes do) and
closes it when it ends; workers start behind a `threading.Barrier`. Run with `-s` to see the
figures: race outcomes, sweeper split and wall time.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db.models import Count
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_verify
from notifications.models import OutboxEvent
from proposals import services, sweeps
from proposals.errors import InvalidTransition
from proposals.models import (
    OPEN_STATUSES,
    Decision,
    Proposal,
    Resolution,
    Revision,
    RevisionKind,
    Status,
    Vote,
)
from proposals.permissions import access_for
from tests.concurrency import run_in_threads
from tests.factories import submit

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TERMINAL_VERBS = ("proposal.approved", "proposal.rejected")


def phase(name: str) -> sweeps.Phase:
    return next(p for p in sweeps.PHASES if p.name == name)


def sleep_until(when: datetime) -> None:
    delay = (when - timezone.now()).total_seconds()
    if delay > 0:
        time.sleep(delay)


# --- 1. a timeout racing a vote ------------------------------------------------------------

RUNS = 200
LEAD = timedelta(milliseconds=40)  # due_at, counted from the moment both threads are ready
# The vote is sent at due_at plus a uniform offset in this range (ms). A vote needs a few ms
# to reach its lock, so the range leans early: both outcomes stay common on a busy machine,
# and the runs near the boundary are real races.
OFFSET_MS = (-30.0, 12.0)


def test_a_timeout_racing_a_vote_has_exactly_one_winner(world: Any) -> None:
    """Per run: due_at is set a few ms ahead; one thread sweeps the timeout phase as soon as it
    is due (and again, as the next beat would, while a voter's lock makes it skip the row); the
    other casts an approve vote a random few ms before or after due_at. Whatever the
    interleaving, exactly one terminal transition happens and it matches what the voter saw."""
    proposals = [submit(world.submitter, world.checkpoint, title=f"race {i}") for i in range(RUNS)]
    access = access_for(world.reviewer)  # read up front so the vote starts with its lock
    rng = random.Random(20260101)
    offsets = [timedelta(milliseconds=rng.uniform(*OFFSET_MS)) for _ in range(RUNS)]
    due: list[datetime] = [timezone.now()]
    vote_outcome: dict[int, str] = {}
    refused_seeing: Counter[str] = Counter()
    sweeps_acted: dict[int, int] = {}
    skipped_runs = 0
    timeout_phase = phase("timeout")

    def sweeper(barrier: threading.Barrier) -> None:
        nonlocal skipped_runs
        for i, proposal in enumerate(proposals):
            due[0] = timezone.now() + LEAD
            Proposal.objects.filter(pk=proposal.pk).update(due_at=due[0])
            barrier.wait(timeout=30)
            sleep_until(due[0])
            acted = sweeps.run_phase(timeout_phase)
            give_up = time.monotonic() + 10
            skipped_runs += Proposal.objects.filter(
                pk=proposal.pk, status__in=OPEN_STATUSES
            ).exists()
            while Proposal.objects.filter(pk=proposal.pk, status__in=OPEN_STATUSES).exists():
                # SKIP LOCKED passed over the row the voter holds: sweep again, as the next beat
                # would, until the vote commits or (refused as late) rolls back.
                assert time.monotonic() < give_up, f"run {i}: nobody decided the proposal"
                time.sleep(0.002)
                acted += sweeps.run_phase(timeout_phase)
            sweeps_acted[i] = acted
            barrier.wait(timeout=30)

    def voter(barrier: threading.Barrier) -> None:
        for i, proposal in enumerate(proposals):
            barrier.wait(timeout=30)
            sleep_until(due[0] + offsets[i])
            try:
                services.vote_cast(
                    proposal_id=proposal.pk,
                    reviewer=world.reviewer,
                    decision=Decision.APPROVE,
                    revision=1,
                    access=access,
                )
                vote_outcome[i] = "won"
            except InvalidTransition as exc:
                assert exc.status_code == 409
                vote_outcome[i] = "refused"
                refused_seeing[exc.details["status"]] += 1
            barrier.wait(timeout=30)

    started = time.perf_counter()
    run_in_threads(2, lambda index, barrier: (sweeper, voter)[index](barrier), timeout=180)
    elapsed = time.perf_counter() - started

    ids = [p.pk for p in proposals]
    terminal = dict(
        AuditEvent.objects.filter(proposal_id__in=ids, verb__in=TERMINAL_VERBS)
        .values_list("proposal_id")
        .annotate(n=Count("id"))
        .values_list("proposal_id", "n")
    )
    outcomes: Counter[str] = Counter()
    for i, proposal in enumerate(proposals):
        proposal.refresh_from_db()
        assert terminal.get(proposal.pk) == 1, (
            f"run {i}: {terminal.get(proposal.pk)} terminal events"
        )
        votes = Vote.objects.filter(proposal=proposal).count()
        if vote_outcome[i] == "won":
            assert (proposal.status, proposal.resolution) == (Status.APPROVED, Resolution.REVIEWERS)
            assert sweeps_acted[i] == 0
            assert votes == 1
            outcomes["approved by the reviewer"] += 1
        else:
            assert (proposal.status, proposal.resolution) == (Status.REJECTED, Resolution.TIMEOUT)
            assert sweeps_acted[i] == 1
            assert votes == 0  # the refused vote left nothing behind
            assert proposal.decided_at >= proposal.due_at
            outcomes["rejected by the timeout"] += 1

    print(
        f"\ntimeout vs vote, {RUNS} runs in {elapsed:.1f}s: {dict(outcomes)}; refused votes saw "
        f"{dict(refused_seeing)}; first sweep skipped the voter's locked row in {skipped_runs} runs"
    )
    assert sum(outcomes.values()) == RUNS
    assert outcomes["approved by the reviewer"] > 0
    assert outcomes["rejected by the timeout"] > 0


# --- 2. two sweepers over 10,000 due proposals ---------------------------------------------

BULK = 10_000


def _bulk_due_proposals(world: Any, count: int) -> None:
    """Setup only: rows as proposal_submit would leave them (revision 1, deadlines, quorum
    snapshot), written in bulk because 10,000 submits would dominate the test's time."""
    now = timezone.now()
    checkpoint = world.checkpoint
    rows = []
    for i in range(count):
        payload = {"i": i}
        rows.append(
            Proposal(
                id=uuid.uuid4(),
                checkpoint=checkpoint,
                title=f"bulk {i}",
                payload=payload,
                priority="medium",
                submitted_by=world.submitter,
                status=Status.PENDING,
                revision=1,
                eligible_reviewers=2,
                quorum_required=1,
                due_at=now - timedelta(hours=1) + timedelta(microseconds=i),
                sla_due_at=now + timedelta(days=1),
                created_at=now - timedelta(hours=2),
                updated_at=now - timedelta(hours=2),
            )
        )
    Proposal.objects.bulk_create(rows, batch_size=1000)
    Revision.objects.bulk_create(
        [
            Revision(
                proposal=p,
                number=1,
                kind=RevisionKind.SUBMITTED,
                payload=p.payload,
                payload_hash=services.payload_hash(p.payload),
                author=world.submitter,
                created_at=p.created_at,
            )
            for p in rows
        ],
        batch_size=1000,
    )


def test_two_sweepers_process_10000_due_proposals_once_each(world: Any) -> None:
    assert world.checkpoint.timeout_action == "reject"
    _bulk_due_proposals(world, BULK)
    timeout_phase = phase("timeout")
    timings: list[float] = [0.0, 0.0]

    def work(index: int, barrier: threading.Barrier) -> int:
        barrier.wait(timeout=30)
        started = time.perf_counter()
        done = sweeps.run_phase(timeout_phase)
        timings[index] = time.perf_counter() - started
        return done

    started = time.perf_counter()
    counts = run_in_threads(2, work, timeout=300)
    wall = time.perf_counter() - started

    print(
        f"\ntwo sweepers over {BULK} due proposals: {counts[0]} + {counts[1]} in {wall:.1f}s wall "
        f"({BULK / wall:.0f}/s; per sweeper {timings[0]:.1f}s, {timings[1]:.1f}s)"
    )
    assert sum(counts) == BULK
    assert min(counts) > 0, "SKIP LOCKED should let both sweepers take chunks"
    rows = Proposal.objects.filter(checkpoint=world.checkpoint)
    assert rows.count() == BULK
    assert rows.filter(status=Status.REJECTED, resolution=Resolution.TIMEOUT).count() == BULK
    rejected = AuditEvent.objects.filter(verb="proposal.rejected")
    assert rejected.count() == BULK
    assert rejected.values("proposal_id").distinct().count() == BULK
    assert OutboxEvent.objects.filter(topic="proposal.rejected").count() == BULK
    assert Proposal.history.filter(status=Status.REJECTED).count() == BULK
    checked, broken = audit_verify()  # concurrent appends kept one unbroken chain
    assert (checked, broken) == (AuditEvent.objects.count(), None)
    assert sweeps.run_phase(timeout_phase) == 0


# --- 3. every other timer once, with two run_all() at once ---------------------------------

TIMER_PROPOSALS = 200
CLAIMED = 50


def test_reminders_escalations_sla_and_claims_fire_once_under_concurrent_sweeps(
    world: Any,
) -> None:
    checkpoint = world.checkpoint
    checkpoint.timeout_seconds = 2 * 86400
    checkpoint.remind_after_seconds = 3600
    checkpoint.escalate_after_seconds = 7200
    checkpoint.save()
    start = timezone.now()
    proposals = [
        submit(world.submitter, checkpoint, title=f"timers {i}") for i in range(TIMER_PROPOSALS)
    ]
    for proposal in proposals[:CLAIMED]:
        services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    ids = [p.pk for p in proposals]
    expected = {"reminder": TIMER_PROPOSALS, "escalation": TIMER_PROPOSALS}
    expected |= {"sla": TIMER_PROPOSALS, "claims": CLAIMED, "timeout": 0, "bypass_expired": 0}

    def work(index: int, barrier: threading.Barrier) -> dict[str, int]:
        barrier.wait(timeout=30)
        return sweeps.run_all().counts

    # Past the reminder, the escalation, the claims and the medium SLA; before the timeout.
    with time_machine.travel(start + timedelta(seconds=90_000), tick=True):
        started = time.perf_counter()
        reports = run_in_threads(2, work)
        wall = time.perf_counter() - started
        assert sweeps.run_all().total == 0  # a third sweep finds nothing left

    total = Counter(reports[0]) + Counter(reports[1])
    print(f"\ntwo concurrent run_all() over {TIMER_PROPOSALS} proposals: {reports} ({wall:.1f}s)")
    assert {name: total.get(name, 0) for name in expected} == expected
    per_verb = {
        verb: dict(
            AuditEvent.objects.filter(proposal_id__in=ids, verb=verb)
            .values_list("proposal_id")
            .annotate(n=Count("id"))
            .values_list("proposal_id", "n")
        )
        for verb in ("proposal.reminder", "proposal.escalated", "proposal.sla_breached")
    }
    for verb, by_proposal in per_verb.items():
        assert set(by_proposal) == set(ids), verb
        assert set(by_proposal.values()) == {1}, verb
        assert OutboxEvent.objects.filter(proposal_id__in=ids, topic=verb).count() == len(ids)
    released = AuditEvent.objects.filter(verb="proposal.released", data__expired=True)
    assert released.count() == CLAIMED
    assert released.values("proposal_id").distinct().count() == CLAIMED
    rows = Proposal.objects.filter(pk__in=ids)
    assert rows.filter(status=Status.PENDING, claimed_by__isnull=True).count() == len(ids)
    assert not rows.filter(reminded_at__isnull=True).exists()
    assert not rows.filter(escalated_at__isnull=True).exists()
    assert not rows.filter(sla_breached_at__isnull=True).exists()
