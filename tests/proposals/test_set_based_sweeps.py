"""The set-based sweep writes exactly what the per-row services write.

Every case is built twice ("twins": same checkpoint, payload, votes and claims, at the same
frozen instant). One twin goes through the timer's service row by row (`proposal_expire`, …,
which save, emit and audit each change as `transition` does); then the sweep takes the other
twin in chunks (one UPDATE, one INSERT per table, one audit INSERT per chunk). The twins'
rows must then be equal field by field: the proposal, its history rows, its outbox rows and
its audit events (all but ids and chain positions), and every chain must still verify.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import transaction
from django.db.models import Count, Model
from django.test import override_settings
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from audit.services import audit_verify
from notifications.models import OutboxEvent
from proposals import services, sweeps
from proposals.models import Checkpoint, Decision, Proposal, Status
from proposals.permissions import REVIEW, REVIEW_ESCALATED, SUBMIT
from tests.concurrency import run_in_threads
from tests.factories import CheckpointFactory, GroupFactory, UserFactory, submit

pytestmark = pytest.mark.django_db

OPTIONS = [
    {"key": "a", "label": "A", "payload": {"v": "a"}, "confidence": 0.4},
    {"key": "b", "label": "B", "payload": {"v": "b"}, "confidence": 0.9},
]

SERVICES: dict[str, Callable[[Proposal, Any], bool]] = {
    "timeout": services.proposal_expire,
    "escalation": services.proposal_escalate,
    "reminder": services.proposal_remind,
    "sla": services.proposal_flag_sla_breach,
    "claims": services.proposal_release_expired_claim,
}


def phase(name: str) -> sweeps.Phase:
    return next(p for p in sweeps.PHASES if p.name == name)


def _row(instance: Model, *, skip: tuple[str, ...]) -> dict[str, Any]:
    return {
        field.attname: getattr(instance, field.attname)
        for field in instance._meta.concrete_fields
        if field.attname not in skip
    }


def _without_ids(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("proposal_id", "vote_id")}


def written(proposal_id: Any) -> dict[str, Any]:
    """Everything a sweep writes about one proposal, without what differs between twins by
    construction (their ids, the audit chain and position each event landed at)."""
    proposal = Proposal.objects.get(pk=proposal_id)
    history = Proposal.history.filter(id=proposal_id).order_by("history_date", "history_id")  # type: ignore[attr-defined]
    # Events of one frozen instant have no order but their topic (ids are random uuids).
    outbox = OutboxEvent.objects.filter(proposal_id=proposal_id).order_by("created_at", "topic")
    audit = AuditEvent.objects.filter(proposal_id=proposal_id).order_by("seq")
    return {
        "proposal": _row(proposal, skip=("id",)),
        "history": [_row(h, skip=("history_id", "id")) for h in history],
        "outbox": [
            {
                **_row(event, skip=("id", "proposal_id", "dispatched_at", "payload")),
                "payload": _without_ids(event.payload),
            }
            for event in outbox
        ],
        "audit": [
            {
                **_row(
                    event,
                    skip=("id", "seq", "chain", "chain_seq", "prev_hash", "hash", "proposal_id"),
                ),
                "data": _without_ids(event.data),
            }
            for event in audit
        ],
    }


def per_row(name: str, proposal_ids: list[Any], now: datetime) -> int:
    """The reference: the timer's service, one locked row at a time."""
    acted = 0
    for proposal_id in proposal_ids:
        with transaction.atomic():
            acted += SERVICES[name](services.lock_proposal(proposal_id), now)
    return acted


def vote(proposal: Proposal, reviewer: Any, decision: str, **kw: Any) -> Proposal:
    kw.setdefault("comment", "" if decision == Decision.APPROVE else "because")
    updated, _ = services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=reviewer,
        decision=decision,
        revision=proposal.revision,
        **kw,
    )
    return updated


class Cases:
    """One of each situation a sweep meets, built on demand (once per twin)."""

    def __init__(self, world: Any) -> None:
        self.world = world
        reviewers = GroupFactory(name="twin-reviewers")
        world.reviewer.groups.add(reviewers)
        world.reviewer2.groups.add(reviewers)
        # a third reviewer: one reject leaves a count-2 round open (it could still pass)
        UserFactory(username="rory").groups.add(reviewers)
        escalation = GroupFactory(name="twin-escalation")
        escalation.user_set.add(UserFactory(username="esme"))
        self.reject = self._checkpoint("twin-reject", "reject", reviewers, escalation)
        self.approve = self._checkpoint("twin-approve", "approve", reviewers, escalation)
        self.options = self._checkpoint(
            "twin-options",
            "approve",
            reviewers,
            escalation,
            quorum_rule="count",
            quorum_count=2,
            veto=False,
        )

    def _checkpoint(
        self, slug: str, timeout_action: str, reviewers: Any, escalation: Any, **fields: Any
    ) -> Checkpoint:
        checkpoint = CheckpointFactory(
            slug=slug,
            timeout_seconds=3 * 3600,
            timeout_action=timeout_action,
            remind_after_seconds=600,
            escalate_after_seconds=1200,
            **fields,
        )
        assign_perm(SUBMIT, self.world.submitter, checkpoint)
        assign_perm(REVIEW, reviewers, checkpoint)
        assign_perm(REVIEW_ESCALATED, escalation, checkpoint)
        return checkpoint

    def build(self, n: int) -> list[Any]:
        """The ids of one twin's proposals; case k is the same in every twin."""
        w = self.world
        out = []
        for i in range(n):
            kind = i % 7
            title = f"case {i}"
            if kind == 0:  # rejected by the clock
                p = submit(w.submitter, self.reject, title=title, payload={"i": i})
            elif kind == 1:  # approved by the clock, payload as submitted, a claim cleared
                p = submit(w.submitter, self.approve, title=title, payload={"i": i, "n": 1.5})
                services.proposal_claim(proposal_id=p.pk, actor=w.reviewer)
            elif kind == 2:  # changes requested: rejected whatever the checkpoint says
                p = submit(w.submitter, self.approve, title=title, payload={"i": i})
                p = vote(p, w.reviewer, Decision.REQUEST_CHANGES)
            elif kind == 3:  # the option a reviewer chose
                p = submit(w.submitter, self.options, title=title, options=OPTIONS)
                vote(p, w.reviewer, Decision.APPROVE, selected_option="a")
            elif kind == 4:  # options nobody chose: rejected
                p = submit(w.submitter, self.options, title=title, options=OPTIONS)
            elif kind == 5:  # a reviewer rejected: rejected
                p = submit(w.submitter, self.options, title=title, options=OPTIONS)
                vote(p, w.reviewer, Decision.REJECT)
            else:  # a critical one, claimed: its SLA passes first
                p = submit(w.submitter, self.reject, title=title, priority="critical")
                services.proposal_claim(proposal_id=p.pk, actor=w.reviewer2)
            out.append(p.pk)
        return out


def assert_twins_equal(first: list[Any], second: list[Any]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        left, right = written(a), written(b)
        for key in left:
            assert left[key] == right[key], key


# Every timer, at one instant after another: claims (30 min), reminders (10 min), escalations
# (20 min), the critical SLA (1 h), and at last the timeout (3 h).
STEPS = [
    (timedelta(minutes=31), ("claims", "reminder", "escalation")),
    (timedelta(minutes=61), ("sla",)),
    (timedelta(hours=3, seconds=1), ("timeout",)),
]


def test_every_phase_writes_what_the_per_row_services_write(world: Any) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        cases = Cases(world)
        reference = cases.build(14)
        swept = cases.build(14)
    for offset, names in STEPS:
        with time_machine.travel(start + offset, tick=False):
            now = timezone.now()
            for name in names:
                expected = per_row(name, reference, now)
                # chunks of 3: a chunk mixes cases, and the sweep needs several
                assert sweeps.run_phase(phase(name), chunk_size=3) == expected > 0, name
                assert sweeps.run_phase(phase(name)) == 0, name
    assert_twins_equal(reference, swept)
    statuses = Counter(Proposal.objects.filter(pk__in=swept).values_list("status", flat=True))
    assert statuses == {Status.REJECTED: 10, Status.APPROVED: 4}
    assert audit_verify()[1] is None


@override_settings(DEBUG=True, HITL_DEV_AUTO_APPROVE_SECONDS=5)
def test_dev_auto_approve_writes_what_the_per_row_service_writes(world: Any) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        reference = [submit(world.submitter, world.checkpoint, title="dev").pk for _ in range(3)]
        swept = [submit(world.submitter, world.checkpoint, title="dev").pk for _ in range(3)]
    with time_machine.travel(start + timedelta(seconds=6), tick=False):
        now = timezone.now()
        for proposal_id in reference:
            with transaction.atomic():
                locked = services.lock_proposal(proposal_id)
                assert services.proposal_dev_auto_approve(locked, now, 5)
        assert sweeps.run_phase(sweeps.DEV_AUTO_APPROVE_PHASE, chunk_size=2) == 3
    assert_twins_equal(reference, swept)


def test_a_swept_chunk_writes_in_a_handful_of_statements(
    world: Any, django_assert_max_num_queries: Any
) -> None:
    """Set-based: the statements of a chunk do not grow with its rows (lock, the chunk's
    checkpoints, update, history, outbox, audit lock, head, sequence, savepoints; the audit
    events go in by COPY, which Django does not count)."""
    world.checkpoint.timeout_seconds = 60
    world.checkpoint.save()
    ids = [submit(world.submitter, world.checkpoint, title=f"s{i}").pk for i in range(40)]
    due = Proposal.objects.get(pk=ids[-1]).due_at
    with (
        time_machine.travel(due + timedelta(seconds=1), tick=False),
        django_assert_max_num_queries(14),
    ):
        assert sweeps.run_phase(phase("timeout"), chunk_size=100) == 40
    assert OutboxEvent.objects.filter(topic="proposal.rejected").count() == 40
    assert AuditEvent.objects.filter(verb="proposal.rejected").count() == 40


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweepers_write_what_the_per_row_services_write(world: Any) -> None:
    """Two sweepers in threads (their own connections and transactions), small chunks so they
    interleave many times: every proposal is taken by exactly one of them, and what they
    wrote is what the services write row by row."""
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        cases = Cases(world)
        reference = cases.build(70)
        swept = cases.build(70)
    for offset, names in STEPS:
        # Frozen for both threads (time_machine patches the clock process-wide).
        with time_machine.travel(start + offset, tick=False):
            now = timezone.now()
            for name in names:
                expected = per_row(name, reference, now)
                assert expected > 0

                def work(index: int, barrier: threading.Barrier, name: str = name) -> int:
                    barrier.wait(timeout=30)
                    return sweeps.run_phase(phase(name), chunk_size=4)

                counts = run_in_threads(2, work, timeout=300)
                assert sum(counts) == expected, (name, counts)
                if name == "timeout":
                    assert min(counts) > 0, "both sweepers should have taken chunks"
    assert_twins_equal(reference, swept)
    once = (
        AuditEvent.objects.filter(proposal_id__in=swept)
        .values("proposal_id", "verb")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    assert not once.exists()  # no event twice
    checked, broken = audit_verify()
    assert (checked, broken) == (AuditEvent.objects.count(), None)
