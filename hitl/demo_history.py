"""A few weeks of decided demo history, so every chart of the dashboard says something.

Every proposal goes through the real services (submit, votes, edits, timeouts), so revisions,
votes, audit events and outbox rows are all there. Afterwards the domain rows' timestamps are
moved into the past in one documented bulk path (`_backdate`, QuerySet.update: history rows
and audit events keep the real time the seed ran: the audit trail is append-only and never
lies about when something was written).

Deterministic (a seeded random generator) and idempotent: proposals are found by their
`external_id` prefix, and a second run adds nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from audit.services import audit_batch
from proposals import services
from proposals.errors import ApplicationError
from proposals.models import Checkpoint, Proposal, Revision, Status, Vote
from proposals.permissions import Access, access_for

# Not under seed_demo's "demo-" prefix: its counts and checks are about the example proposals.
PREFIX = "history-"


@dataclass(frozen=True)
class Plan:
    checkpoint: str
    reviewers: tuple[str, ...]
    per_day: int
    votes_needed: int


PLANS = (
    Plan("inspection-schedule", ("ingrid", "ivan"), 8, 1),
    Plan("policy-change", ("alma", "arto", "asha"), 2, 2),
    Plan("data-purchase", ("bruno", "bianca"), 3, 2),
)
SITES = ("Riverside tannery", "Northgate landfill", "Old mill weir", "Harbour depot", "Quarry 7")


def _users(names: tuple[str, ...]) -> list[Any]:
    found = {u.username: u for u in get_user_model().objects.filter(username__in=names)}
    return [found[n] for n in names if n in found]


def _approval_chance(confidence: float) -> float:
    """Humans agree more with a confident model; from 0.8 up they always do."""
    if confidence >= 0.8:
        return 1.0
    return 0.35 + confidence * 0.6


def _payload(plan: Plan, rng: random.Random) -> dict[str, Any]:
    if plan.checkpoint == "data-purchase":
        return {"vendor": rng.choice(("LeadCo", "DataNow")), "cost": rng.randint(120, 900)}
    if plan.checkpoint == "policy-change":
        return {"rule": f"capital buffer {rng.randint(1, 9)}", "change_bp": rng.randint(-50, 50)}
    return {"site": rng.choice(SITES), "visits_per_year": rng.choice((2, 4, 6, 12))}


def generate(*, agent: Any, days: int | None = None, seed: int = 7) -> int:
    """Create `days` (default: settings.HITL_DEMO_HISTORY_DAYS; 0 = none) of decided history
    for the demo checkpoints; the number of proposals created."""
    days = settings.HITL_DEMO_HISTORY_DAYS if days is None else days
    if not days or Proposal.objects.filter(external_id__startswith=PREFIX).exists():
        return 0
    rng = random.Random(seed)
    checkpoints = {
        c.slug: c for c in Checkpoint.objects.filter(slug__in=[p.checkpoint for p in PLANS])
    }
    now = timezone.now()
    created = 0
    rights = _Rights()
    # One transaction (seed_demo's) and its audit events appended together at the end, and each
    # user's rights read once: the services still decide every step; what they no longer do is
    # re-read the same grants and the chain's head a few hundred times over.
    with transaction.atomic(), audit_batch():
        for plan in PLANS:
            checkpoint = checkpoints.get(plan.checkpoint)
            reviewers = _users(plan.reviewers)
            if checkpoint is None or len(reviewers) < plan.votes_needed:
                continue
            for day in range(days, 0, -1):
                for n in range(plan.per_day + rng.randint(-2, 2)):
                    created += _one(plan, checkpoint, reviewers, agent, rng, now, day, n, rights)
    return created


class _Rights:
    """access_for(user), read once per user: nothing changes the grants while history is made."""

    def __init__(self) -> None:
        self._known: dict[Any, Access] = {}

    def __call__(self, user: Any) -> Access:
        if user.pk not in self._known:
            self._known[user.pk] = access_for(user)
        return self._known[user.pk]


def _one(
    plan: Plan,
    checkpoint: Checkpoint,
    reviewers: list[Any],
    agent: Any,
    rng: random.Random,
    now: Any,
    day: int,
    n: int,
    rights: _Rights,
) -> int:
    confidence = round(min(1.0, max(0.05, rng.betavariate(5, 2))), 2)
    priority = rng.choices(("critical", "high", "medium", "low"), (1, 3, 8, 3))[0]
    payload = _payload(plan, rng)
    proposal = services.proposal_submit(
        submitter=agent,
        checkpoint=checkpoint,
        data=services.ProposalInput(
            title=f"{plan.checkpoint.replace('-', ' ').capitalize()} #{day}-{n}",
            payload=payload,
            confidence=confidence,
            priority=priority,
            external_id=f"{PREFIX}{plan.checkpoint}-{day}-{n}",
            context={"explanation": "Generated demo history."},
        ),
        access=rights(agent),
    )
    created_at = now - timedelta(days=day, minutes=rng.randint(0, 1300))
    if proposal.status != Status.PENDING:  # decided by policy at submission
        _backdate(proposal, created_at, created_at)
        return 1
    # Review time: mostly minutes to hours; some past the SLA.
    delay = timedelta(minutes=rng.choice((4, 9, 20, 45, 90, 180, 400, 1500, 3000)))
    decided_at = created_at + delay
    if decided_at >= now:
        _backdate(proposal, created_at, None)
        return 1
    try:
        if rng.random() < 0.04:  # nobody got to it: the timeout decides
            with transaction.atomic():
                locked = services.lock_proposal(proposal.pk)
                services.proposal_expire(locked, (locked.due_at or now) + timedelta(seconds=1))
        else:
            _review(plan, proposal, reviewers, rng, confidence, rights)
    except ApplicationError:
        pass  # a rule of the checkpoint refused it: the proposal stays as the services left it
    _backdate(proposal, created_at, decided_at, escalated=rng.random() < 0.05)
    return 1


def _review(
    plan: Plan,
    proposal: Proposal,
    reviewers: list[Any],
    rng: random.Random,
    confidence: float,
    rights: _Rights,
) -> None:
    approve = rng.random() < _approval_chance(confidence)
    voters = rng.sample(reviewers, plan.votes_needed)
    revision = proposal.revision
    for index, reviewer in enumerate(voters):
        if not approve:
            services.vote_cast(
                proposal_id=proposal.pk,
                reviewer=reviewer,
                decision="reject",
                revision=revision,
                comment=rng.choice(("Not justified by the data.", "Wrong target.", "Too costly.")),
                access=rights(reviewer),
            )
            return
        edit = index == 0 and confidence < 0.8 and rng.random() < 0.2 and not proposal.options
        numbers = [k for k, v in proposal.payload.items() if isinstance(v, int)]
        adjustments = {numbers[0]: proposal.payload[numbers[0]] + 1} if edit and numbers else None
        updated, _ = services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=reviewer,
            decision="approve",
            revision=revision,
            comment="Adjusted." if adjustments else "",
            adjustments=adjustments,
            access=rights(reviewer),
        )
        revision = updated.revision


def _backdate(
    proposal: Proposal, created_at: Any, decided_at: Any, escalated: bool = False
) -> None:
    """The documented bulk path: move one generated proposal's rows into the past."""
    checkpoint = proposal.checkpoint
    sla = (checkpoint.sla_seconds or {}).get(proposal.priority, 86400)
    fresh = Proposal.objects.get(pk=proposal.pk)
    changes: dict[str, Any] = {
        "created_at": created_at,
        "updated_at": decided_at or created_at,
        "sla_due_at": created_at + timedelta(seconds=int(sla)),
        "due_at": created_at + timedelta(seconds=checkpoint.timeout_seconds)
        if checkpoint.timeout_seconds
        else None,
        "remind_at": None,
        "escalate_at": None,
    }
    if fresh.decided_at is not None:
        changes["decided_at"] = decided_at or created_at
    if escalated:
        changes["escalated_at"] = created_at + timedelta(minutes=30)
    Proposal.objects.filter(pk=proposal.pk).update(**changes)
    Revision.objects.filter(proposal=proposal).update(created_at=created_at)
    voted_at = decided_at or created_at
    Vote.objects.filter(proposal=proposal).update(
        created_at=voted_at, review_seconds=(voted_at - created_at).total_seconds()
    )
