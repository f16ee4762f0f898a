"""Timers, driven by time travel: timeouts, reminders, escalations, SLA breaches, expired
claims, bypasses and the development auto-approve, each through `proposals.sweeps`.

Every timer must act once: a second sweep over the same instant finds nothing to do, and the
audit trail and the outbox hold exactly one record per effect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from audit.services import ANCHOR_VERB, audit_verify, chain_of
from notifications.models import OutboxEvent
from proposals import services, sweeps
from proposals.errors import InvalidTransition, NotFound, Unprocessable
from proposals.models import Checkpoint, Decision, Proposal, Resolution, Status
from proposals.permissions import REVIEW_ESCALATED, access_for
from tests.factories import GroupFactory, UserFactory, submit

pytestmark = pytest.mark.django_db

BASE_DIR = Path(settings.BASE_DIR)


# --- helpers -------------------------------------------------------------------------------


def phase(name: str) -> sweeps.Phase:
    return next(p for p in sweeps.PHASES if p.name == name)


def travel(when: datetime) -> Any:
    return time_machine.travel(when, tick=False)


def verbs(proposal: Proposal) -> list[str]:
    return list(
        AuditEvent.objects.filter(proposal=proposal).order_by("seq").values_list("verb", flat=True)
    )


def topics(proposal: Proposal) -> list[str]:
    return list(
        OutboxEvent.objects.filter(proposal=proposal)
        .order_by("created_at", "id")
        .values_list("topic", flat=True)
    )


def configure(checkpoint: Checkpoint, **fields: Any) -> Checkpoint:
    for name, value in fields.items():
        setattr(checkpoint, name, value)
    checkpoint.save()
    return checkpoint


def vote(world: Any, proposal: Proposal, decision: str = Decision.APPROVE, **kw: Any) -> Proposal:
    kw.setdefault("comment", "" if decision == Decision.APPROVE else "because")
    updated, _ = services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=kw.pop("reviewer", world.reviewer),
        decision=decision,
        revision=kw.pop("revision", proposal.revision),
        **kw,
    )
    return updated


# --- timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "timeout_action", "status", "verb"),
    [
        (Status.PENDING, "reject", Status.REJECTED, "proposal.rejected"),
        (Status.PENDING, "approve", Status.APPROVED, "proposal.approved"),
        (Status.CHANGES_REQUESTED, "reject", Status.REJECTED, "proposal.rejected"),
        # Content a reviewer asked to change is never approved by the clock.
        (Status.CHANGES_REQUESTED, "approve", Status.REJECTED, "proposal.rejected"),
    ],
)
def test_the_timeout_applies_the_checkpoint_timeout_action(
    world: Any, start: str, timeout_action: str, status: str, verb: str
) -> None:
    configure(world.checkpoint, timeout_seconds=600, timeout_action=timeout_action)
    proposal = submit(world.submitter, world.checkpoint, payload={"pump": 4})
    if start == Status.CHANGES_REQUESTED:
        proposal = vote(world, proposal, Decision.REQUEST_CHANGES)
    assert proposal.status == start
    assert proposal.due_at is not None

    with travel(proposal.due_at - timedelta(seconds=1)):
        assert sweeps.run_phase(phase("timeout")) == 0
    proposal.refresh_from_db()
    assert proposal.status == start

    with travel(proposal.due_at + timedelta(seconds=1)):
        assert sweeps.run_phase(phase("timeout")) == 1
        assert sweeps.run_phase(phase("timeout")) == 0  # a second sweep finds nothing

    proposal.refresh_from_db()
    assert proposal.status == status
    assert proposal.resolution == Resolution.TIMEOUT
    assert proposal.decided_at == proposal.due_at + timedelta(seconds=1)
    if status == Status.APPROVED:
        assert proposal.approved_payload == {"pump": 4}
    terminal = AuditEvent.objects.get(proposal=proposal, verb=verb)
    assert terminal.actor_id is None
    assert terminal.actor_label == "system"
    assert {k: terminal.data[k] for k in ("from", "to", "resolution")} == {
        "from": start,
        "to": status,
        "resolution": "timeout",
    }
    assert terminal.reason == "no decision within 600 s"
    assert verbs(proposal).count(verb) == 1
    assert topics(proposal).count(verb) == 1
    outbox = OutboxEvent.objects.get(proposal=proposal, topic=verb)
    assert outbox.payload["status"] == status
    assert outbox.payload["resolution"] == "timeout"


def test_timeout_after_request_changes_rejects_even_when_timeout_action_is_approve(
    world: Any,
) -> None:
    """Issue 7 item 9: from changes_requested the clock rejects, whatever the checkpoint's
    timeout_action; the audit says why."""
    configure(world.checkpoint, timeout_seconds=600, timeout_action="approve")
    proposal = vote(
        world, submit(world.submitter, world.checkpoint, payload={"pump": 4}), "request_changes"
    )
    assert proposal.due_at is not None
    with travel(proposal.due_at + timedelta(seconds=1)):
        assert sweeps.run_all().counts["timeout"] == 1
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.REJECTED, Resolution.TIMEOUT)
    assert proposal.approved_payload is None
    rejected = AuditEvent.objects.get(proposal=proposal, verb="proposal.rejected")
    assert rejected.data["timeout"] == "changes were requested and none came in time"


OPTIONS = [
    {"key": "a", "label": "A", "payload": {"v": "a"}, "confidence": 0.4},
    {"key": "b", "label": "B", "payload": {"v": "b"}, "confidence": 0.9},
]


def test_timeout_never_approves_an_option_no_reviewer_picked(world: Any) -> None:
    """Issue 7 item 8: with timeout_action approve and nobody's choice, the AI's most
    confident option used to be approved at the deadline."""
    configure(world.checkpoint, timeout_seconds=60, timeout_action="approve")
    proposal = submit(world.submitter, world.checkpoint, options=OPTIONS)
    with travel(proposal.due_at + timedelta(seconds=1)):
        assert sweeps.run_all().counts["timeout"] == 1
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.REJECTED, Resolution.TIMEOUT)
    assert (proposal.selected_option, proposal.approved_payload) == ("", None)


def test_timeout_approves_the_option_a_reviewer_chose_not_the_most_confident(world: Any) -> None:
    configure(
        world.checkpoint,
        timeout_seconds=60,
        timeout_action="approve",
        quorum_rule="count",
        quorum_count=2,
    )
    proposal = submit(world.submitter, world.checkpoint, options=OPTIONS)
    proposal = vote(world, proposal, selected_option="a")
    assert proposal.status == Status.PENDING
    with travel(proposal.due_at + timedelta(seconds=1)):
        assert sweeps.run_all().counts["timeout"] == 1
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.APPROVED, Resolution.TIMEOUT)
    assert (proposal.selected_option, proposal.approved_payload) == ("a", {"v": "a"})


def test_a_checkpoint_without_timeout_never_times_out(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=None)
    proposal = submit(world.submitter, world.checkpoint)
    assert proposal.due_at is None
    with travel(timezone.now() + timedelta(days=365)):
        assert sweeps.run_all().counts["timeout"] == 0
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


@pytest.mark.parametrize("late_by", [timedelta(0), timedelta(microseconds=1), timedelta(hours=1)])
def test_a_late_vote_is_refused_before_any_sweep(world: Any, late_by: timedelta) -> None:
    configure(world.checkpoint, timeout_seconds=60)
    proposal = submit(world.submitter, world.checkpoint)
    with travel(proposal.due_at + late_by), pytest.raises(InvalidTransition) as excinfo:
        vote(world, proposal)
    assert excinfo.value.status_code == 409
    assert excinfo.value.details["status"] == Status.PENDING
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING  # nothing decided until the sweep runs
    assert "proposal.vote_cast" not in verbs(proposal)
    with travel(proposal.due_at + late_by + timedelta(seconds=1)):
        assert sweeps.run_phase(phase("timeout")) == 1
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.REJECTED, Resolution.TIMEOUT)


def test_a_vote_just_before_the_deadline_counts(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=60)
    proposal = submit(world.submitter, world.checkpoint)
    with travel(proposal.due_at - timedelta(microseconds=1)):
        proposal = vote(world, proposal)
    assert (proposal.status, proposal.resolution) == (Status.APPROVED, Resolution.REVIEWERS)
    with travel(proposal.due_at + timedelta(seconds=1)):
        assert sweeps.run_all().counts["timeout"] == 0
    assert verbs(proposal).count("proposal.approved") == 1
    assert "proposal.rejected" not in verbs(proposal)


def test_a_late_vote_is_409_through_the_api(world: Any, client_for: Any) -> None:
    configure(world.checkpoint, timeout_seconds=60)
    proposal = submit(world.submitter, world.checkpoint)
    client = client_for(world.reviewer)
    with travel(proposal.due_at + timedelta(seconds=5)):
        response = client.post(
            f"/api/v1/proposals/{proposal.pk}/votes/",
            {"decision": "approve", "revision": 1},
            format="json",
        )
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "invalid_transition"


def test_a_late_revision_is_refused(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=600)
    proposal = vote(world, submit(world.submitter, world.checkpoint), Decision.REQUEST_CHANGES)
    with travel(proposal.due_at + timedelta(seconds=1)), pytest.raises(InvalidTransition):
        services.proposal_revise(proposal_id=proposal.pk, actor=world.submitter, payload={"x": 2})
    proposal.refresh_from_db()
    assert (proposal.status, proposal.revision) == (Status.CHANGES_REQUESTED, 1)


# --- reminders, escalations, SLA, claims ---------------------------------------------------


def test_the_reminder_fires_once(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=3600, remind_after_seconds=600)
    proposal = submit(world.submitter, world.checkpoint)
    assert proposal.remind_at == proposal.created_at + timedelta(seconds=600)

    with travel(proposal.remind_at - timedelta(seconds=1)):
        assert sweeps.run_all().counts["reminder"] == 0
    when = proposal.remind_at + timedelta(seconds=1)
    with travel(when):
        assert sweeps.run_all().counts["reminder"] == 1
        assert sweeps.run_all().counts["reminder"] == 0
    with travel(when + timedelta(minutes=10)):
        assert sweeps.run_all().counts["reminder"] == 0

    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    assert proposal.reminded_at == when
    assert verbs(proposal).count("proposal.reminder") == 1
    assert topics(proposal).count("proposal.reminder") == 1
    event = AuditEvent.objects.get(proposal=proposal, verb="proposal.reminder")
    assert event.data == {"due_at": proposal.due_at.isoformat()}


def test_a_decided_proposal_gets_no_reminder(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=3600, remind_after_seconds=600)
    proposal = vote(world, submit(world.submitter, world.checkpoint))
    with travel(proposal.remind_at + timedelta(seconds=1)):
        assert sweeps.run_all().total == 0
    assert "proposal.reminder" not in verbs(proposal)


def test_escalation_lets_the_escalation_group_review_once(world: Any, client_for: Any) -> None:
    configure(world.checkpoint, timeout_seconds=7200, escalate_after_seconds=1800)
    escalation = GroupFactory(name="escalation")
    assign_perm(REVIEW_ESCALATED, escalation, world.checkpoint)
    eve = UserFactory(username="eve")
    eve.groups.add(escalation)
    proposal = submit(world.submitter, world.checkpoint)
    assert proposal.escalate_at == proposal.created_at + timedelta(seconds=1800)
    client = client_for(eve)

    def listed() -> list[str]:
        response = client.get("/api/v1/proposals/", {"reviewable_by_me": "true"})
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    # Before the sweep marks it, even a due escalation grants nothing: permissions read
    # escalated_at, not escalate_at.
    with travel(proposal.escalate_at + timedelta(seconds=1)):
        assert not access_for(eve).may_view(proposal)
        assert client.get(f"/api/v1/proposals/{proposal.pk}/").status_code == 404
        assert listed() == []
        with pytest.raises(NotFound):
            vote(world, proposal, reviewer=eve)

        report = sweeps.run_all()
        assert report.counts["escalation"] == 1
        assert sweeps.run_all().counts["escalation"] == 0

        proposal.refresh_from_db()
        assert proposal.escalated_at == proposal.escalate_at + timedelta(seconds=1)
        assert access_for(eve).may_review(proposal)
        assert client.get(f"/api/v1/proposals/{proposal.pk}/").status_code == 200
        assert listed() == [str(proposal.pk)]
        proposal = vote(world, proposal, reviewer=eve)

    assert (proposal.status, proposal.resolution) == (Status.APPROVED, Resolution.REVIEWERS)
    assert verbs(proposal).count("proposal.escalated") == 1
    assert topics(proposal).count("proposal.escalated") == 1
    approved = AuditEvent.objects.get(proposal=proposal, verb="proposal.approved")
    assert approved.actor == eve


def test_escalation_grants_nothing_on_other_checkpoints(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=7200, escalate_after_seconds=60)
    escalation = GroupFactory(name="escalation-elsewhere")
    assign_perm(REVIEW_ESCALATED, escalation, world.other_checkpoint)
    eve = UserFactory(username="eve2")
    eve.groups.add(escalation)
    proposal = submit(world.submitter, world.checkpoint)
    with travel(proposal.escalate_at + timedelta(seconds=1)):
        assert sweeps.run_all().counts["escalation"] == 1
    proposal.refresh_from_db()
    assert not access_for(eve).may_view(proposal)


def test_an_sla_breach_is_flagged_once(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=None)
    proposal = submit(world.submitter, world.checkpoint, priority="critical")
    assert proposal.sla_due_at == proposal.created_at + timedelta(seconds=3600)
    decided = submit(world.submitter, world.checkpoint, priority="critical")
    vote(world, decided)

    with travel(proposal.sla_due_at - timedelta(seconds=1)):
        assert sweeps.run_all().counts["sla"] == 0
    when = proposal.sla_due_at + timedelta(seconds=1)
    with travel(when):
        assert sweeps.run_all().counts["sla"] == 1
        assert sweeps.run_all().counts["sla"] == 0

    proposal.refresh_from_db()
    assert proposal.sla_breached_at == when
    assert proposal.status == Status.PENDING  # an alert, not a decision
    assert verbs(proposal).count("proposal.sla_breached") == 1
    assert topics(proposal).count("proposal.sla_breached") == 1
    event = AuditEvent.objects.get(proposal=proposal, verb="proposal.sla_breached")
    assert event.data == {"sla_due_at": proposal.sla_due_at.isoformat(), "priority": "critical"}
    assert "proposal.sla_breached" not in verbs(decided)


def test_expired_claims_are_released_once(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    proposal = services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    assert proposal.claimed_until is not None

    with travel(proposal.claimed_until - timedelta(seconds=1)):
        assert sweeps.run_all().counts["claims"] == 0
    with travel(proposal.claimed_until + timedelta(seconds=1)):
        assert sweeps.run_all().counts["claims"] == 1
        assert sweeps.run_all().counts["claims"] == 0

    proposal.refresh_from_db()
    assert (proposal.claimed_by, proposal.claimed_until) == (None, None)
    assert verbs(proposal).count("proposal.released") == 1
    released = AuditEvent.objects.get(proposal=proposal, verb="proposal.released")
    assert released.data == {"expired": True, "holder": world.reviewer.pk}
    assert released.actor_label == "system"


@pytest.mark.parametrize(
    ("remind", "escalate"),
    [(600, 600), (600, 900), (900, 3600)],
    ids=["at-due", "after-due", "long-after"],
)
def test_a_timer_at_or_after_the_timeout_never_fires(
    world: Any, remind: int, escalate: int
) -> None:
    configure(
        world.checkpoint,
        timeout_seconds=600,
        remind_after_seconds=remind,
        escalate_after_seconds=escalate,
    )
    proposal = submit(world.submitter, world.checkpoint)
    assert (proposal.remind_at, proposal.escalate_at) == (None, None)
    with travel(proposal.created_at + timedelta(seconds=max(remind, escalate) + 1)):
        counts = sweeps.run_all().counts
    assert (counts["timeout"], counts["reminder"], counts["escalation"]) == (1, 0, 0)
    assert "proposal.reminder" not in verbs(proposal)
    assert "proposal.escalated" not in verbs(proposal)


def test_a_proposal_both_overdue_and_due_a_reminder_only_times_out(world: Any) -> None:
    configure(
        world.checkpoint, timeout_seconds=600, remind_after_seconds=100, escalate_after_seconds=200
    )
    proposal = submit(world.submitter, world.checkpoint, priority="critical")
    with travel(proposal.created_at + timedelta(hours=2)):  # past the critical SLA too
        counts = sweeps.run_all().counts
    assert counts == {
        "timeout": 1,
        "escalation": 0,
        "reminder": 0,
        "sla": 0,
        "claims": 0,
        "bypass_expired": 0,
    }
    assert verbs(proposal) == ["proposal.submitted", "proposal.rejected"]


def test_revise_resets_the_timeout_and_the_reminder(world: Any) -> None:
    configure(
        world.checkpoint,
        timeout_seconds=3600,
        remind_after_seconds=600,
        escalate_after_seconds=1200,
    )
    proposal = submit(world.submitter, world.checkpoint)
    t0 = proposal.created_at
    first_due, first_escalate = proposal.due_at, proposal.escalate_at

    with travel(t0 + timedelta(seconds=700)):
        assert sweeps.run_all().counts["reminder"] == 1
        proposal = vote(world, proposal, Decision.REQUEST_CHANGES)
    with travel(t0 + timedelta(seconds=1000)):
        proposal = services.proposal_revise(
            proposal_id=proposal.pk, actor=world.submitter, payload={"x": 2}
        )
    proposal.refresh_from_db()
    revised_at = t0 + timedelta(seconds=1000)
    assert proposal.status == Status.PENDING
    assert proposal.due_at == revised_at + timedelta(seconds=3600)
    assert proposal.remind_at == revised_at + timedelta(seconds=600)
    assert proposal.reminded_at is None
    assert proposal.escalate_at == first_escalate  # escalation keeps the original clock

    with travel(first_due + timedelta(seconds=1)):  # the old deadline no longer applies
        counts = sweeps.run_all().counts
        proposal = vote(world, proposal, revision=2, reviewer=world.reviewer2, comment="ok")
    assert (counts["timeout"], counts["reminder"], counts["escalation"]) == (0, 1, 1)
    assert (proposal.status, proposal.resolution) == (Status.APPROVED, Resolution.REVIEWERS)
    assert verbs(proposal).count("proposal.reminder") == 2  # one per round


def test_a_revised_proposal_times_out_at_its_new_deadline(world: Any) -> None:
    configure(world.checkpoint, timeout_seconds=3600)
    proposal = vote(world, submit(world.submitter, world.checkpoint), Decision.REQUEST_CHANGES)
    revised_at = proposal.created_at + timedelta(seconds=1800)
    with travel(revised_at):
        services.proposal_revise(proposal_id=proposal.pk, actor=world.submitter, payload={"x": 3})
    new_due = revised_at + timedelta(seconds=3600)
    with travel(new_due - timedelta(seconds=1)):
        assert sweeps.run_all().counts["timeout"] == 0
    with travel(new_due):
        assert sweeps.run_all().counts["timeout"] == 1
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.REJECTED, Resolution.TIMEOUT)
    assert AuditEvent.objects.get(proposal=proposal, verb="proposal.rejected").revision == 2


# --- bypass --------------------------------------------------------------------------------


def test_bypass_approves_new_proposals_until_it_expires(world: Any) -> None:
    start = timezone.now()
    until = start + timedelta(hours=1)
    already_pending = submit(world.submitter, world.checkpoint)
    checkpoint = services.checkpoint_bypass_start(
        checkpoint_id=world.checkpoint.pk, actor=world.manager, until=until, reason="incident 42"
    )
    assert (checkpoint.bypass_until, checkpoint.bypass_reason) == (until, "incident 42")
    world.checkpoint.refresh_from_db()
    started = AuditEvent.objects.get(verb="checkpoint.bypassed", checkpoint=world.checkpoint)
    assert started.actor == world.manager
    assert started.reason == "incident 42"
    assert started.data["active"] is True
    assert OutboxEvent.objects.filter(topic="checkpoint.bypassed").count() == 1

    with travel(until - timedelta(seconds=1)):
        bypassed = submit(world.submitter, world.checkpoint)
        assert sweeps.run_all().counts["bypass_expired"] == 0
    assert (bypassed.status, bypassed.resolution) == (Status.APPROVED, Resolution.BYPASS)
    approval = AuditEvent.objects.get(proposal=bypassed, verb="proposal.approved")
    assert approval.data["resolution"] == "bypass"
    assert approval.reason == "emergency bypass active"
    already_pending.refresh_from_db()
    assert already_pending.status == Status.PENDING  # a bypass only routes new submissions

    with travel(until + timedelta(seconds=1)):
        reviewed = submit(world.submitter, world.checkpoint)
        assert reviewed.status == Status.PENDING  # the bypass ended at bypass_until by itself
        assert sweeps.run_all().counts["bypass_expired"] == 1
        assert sweeps.run_all().counts["bypass_expired"] == 0
        assert sweeps.expire_bypasses() == 0

    world.checkpoint.refresh_from_db()
    assert (world.checkpoint.bypass_until, world.checkpoint.bypass_reason) == (None, "")
    ended = AuditEvent.objects.filter(verb="checkpoint.bypass_ended")
    assert ended.count() == 1
    assert ended[0].data["expired"] is True
    assert ended[0].data["was_until"] == until.isoformat()
    assert ended[0].actor_label == "system"
    assert OutboxEvent.objects.filter(topic="checkpoint.bypassed").count() == 2


def test_a_bypass_ended_by_hand_is_not_recorded_again_by_the_sweep(world: Any) -> None:
    until = timezone.now() + timedelta(minutes=30)
    services.checkpoint_bypass_start(
        checkpoint_id=world.checkpoint.pk, actor=world.manager, until=until, reason="incident"
    )
    assert services.checkpoint_bypass_end(
        checkpoint_id=world.checkpoint.pk, actor=world.manager, reason="fixed"
    )
    assert not services.checkpoint_bypass_end(checkpoint_id=world.checkpoint.pk, actor=None)
    world.checkpoint.refresh_from_db()
    with travel(until + timedelta(seconds=1)):
        assert sweeps.expire_bypasses() == 0
    assert AuditEvent.objects.filter(verb="checkpoint.bypass_ended").count() == 1
    assert submit(world.submitter, world.checkpoint).status == Status.PENDING


@pytest.mark.parametrize(
    ("reason", "until"), [("", timedelta(hours=1)), ("x", timedelta(0)), ("x", -timedelta(1))]
)
def test_a_bypass_needs_a_reason_and_a_future_end(
    world: Any, reason: str, until: timedelta
) -> None:
    with pytest.raises(Unprocessable):
        services.checkpoint_bypass_start(
            checkpoint_id=world.checkpoint.pk,
            actor=world.manager,
            until=timezone.now() + until,
            reason=reason,
        )
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.bypass_until is None
    assert not AuditEvent.objects.filter(verb="checkpoint.bypassed").exists()


# --- development auto-approve --------------------------------------------------------------


@override_settings(DEBUG=True, HITL_DEV_AUTO_APPROVE_SECONDS=5)
def test_dev_auto_approve_approves_after_the_delay(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    changes = vote(world, submit(world.submitter, world.checkpoint), Decision.REQUEST_CHANGES)
    with travel(proposal.created_at + timedelta(seconds=4)):
        assert sweeps.run_all().counts["dev_auto_approve"] == 0
    with travel(proposal.created_at + timedelta(seconds=6)):
        assert sweeps.run_all().counts["dev_auto_approve"] == 1
        assert sweeps.run_all().counts["dev_auto_approve"] == 0
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.APPROVED, Resolution.DEV_AUTO_APPROVE)
    event = AuditEvent.objects.get(proposal=proposal, verb="proposal.approved")
    assert event.data["development_auto_approve"] is True
    assert "not a human decision" in event.reason
    changes.refresh_from_db()
    assert changes.status == Status.CHANGES_REQUESTED  # only pending review items


def test_dev_auto_approve_is_off_by_default(world: Any) -> None:
    assert settings.HITL_DEV_AUTO_APPROVE_SECONDS == 0
    proposal = submit(world.submitter, world.checkpoint)
    with travel(proposal.created_at + timedelta(hours=1)):
        counts = sweeps.run_all().counts
    assert "dev_auto_approve" not in counts
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


def _import_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        "PATH": os.environ.get("PATH", ""),
        "SECRET_KEY": "k" * 40,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/unused",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", "import config.settings.base"],
        cwd=BASE_DIR,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("debug", [{"DEBUG": "false"}, {}], ids=["debug-false", "debug-unset"])
def test_settings_refuse_dev_auto_approve_without_debug(debug: dict[str, str]) -> None:
    result = _import_settings(HITL_DEV_AUTO_APPROVE_SECONDS="5", **debug)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "HITL_DEV_AUTO_APPROVE_SECONDS" in result.stderr


def test_settings_accept_dev_auto_approve_with_debug() -> None:
    result = _import_settings(HITL_DEV_AUTO_APPROVE_SECONDS="5", DEBUG="true")
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db(transaction=True)
def test_a_sweep_anchors_every_audit_chain_it_appended_to(world: Any) -> None:
    """The beat's sweep is the periodic anchoring of the audit chains (audit.services): what
    it appended is named in chain 0 at once, so cutting it from its chain's end is caught."""
    configure(world.checkpoint, timeout_seconds=600, timeout_action="reject")
    # A chunk appends to the chain of its first row; keep chain 0's proposals out of the sweep
    # (withdrawn) so the chunk's events land off chain 0 whatever the random ids hash to.
    proposals: list[Proposal] = []
    while len(proposals) < 12:
        proposal = submit(world.submitter, world.checkpoint, title=f"p{len(proposals)}")
        if chain_of(proposal.pk) == 0:
            services.proposal_cancel(proposal_id=proposal.pk, actor=world.submitter)
        else:
            proposals.append(proposal)
    due = max(p.due_at for p in proposals if p.due_at is not None)

    with travel(due + timedelta(seconds=1)):
        assert sweeps.run_all().counts["timeout"] == len(proposals)
        sweeps.run_all()  # nothing moved: no second anchor

    anchors = list(AuditEvent.objects.filter(verb=ANCHOR_VERB))
    assert len(anchors) == 1 and anchors[0].chain == 0
    heads = {head["chain"]: head["chain_seq"] for head in anchors[0].data["heads"]}
    expired = AuditEvent.objects.filter(verb="proposal.rejected").exclude(chain=0)
    assert expired.exists()
    for event in expired:
        assert heads[event.chain] >= event.chain_seq
    assert audit_verify()[1] is None
