"""hitl_decide and export_feedback: ops decide through the services, and the human feedback
comes out as training data."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from proposals import services
from proposals.models import Proposal, Status
from tests.factories import submit

pytestmark = pytest.mark.django_db


def decide(*args: str) -> str:
    out = StringIO()
    call_command("hitl_decide", *args, stdout=out)
    return out.getvalue()


def test_decide_one_as_a_reviewer(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    output = decide(str(proposal.pk), "--decision", "approve", "--as", "rita", "--reason", "ok")
    assert "is now approved" in output
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED
    approval = AuditEvent.objects.get(proposal=proposal, verb="proposal.approved")
    assert approval.actor == world.reviewer


def test_dry_run_changes_nothing(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    events = AuditEvent.objects.count()
    output = decide(
        str(proposal.pk), "--decision", "reject", "--as", "rita", "--reason", "no", "--dry-run"
    )
    assert "would be rejected" in output and "dry run" in output
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    assert AuditEvent.objects.count() == events
    assert not proposal.votes.exists()


def test_separation_of_duties_and_eligibility_still_hold(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    for username in ("agent-smith", "olga", "otto"):
        with pytest.raises(CommandError, match="1 of 1 refused"):
            decide(str(proposal.pk), "--decision", "approve", "--as", username, "--reason", "x")
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


def test_many_at_once_reports_each(world: Any) -> None:
    pending = [submit(world.submitter, world.checkpoint) for _ in range(3)]
    done = submit(world.submitter, world.checkpoint)
    services.proposal_cancel(proposal_id=done.pk, actor=world.submitter, reason="")
    with pytest.raises(CommandError, match="1 of 4 refused"):
        decide(
            *[str(p.pk) for p in [*pending, done]],
            "--decision",
            "reject",
            "--as",
            "rita",
            "--reason",
            "batch clean-up",
        )
    assert Proposal.objects.filter(status=Status.REJECTED).count() == 3


def test_all_pending_of_a_checkpoint_and_cancel_as_manager(world: Any) -> None:
    for _ in range(2):
        submit(world.submitter, world.checkpoint)
    output = decide(
        "--checkpoint",
        world.checkpoint.slug,
        "--all-pending",
        "--decision",
        "cancel",
        "--as",
        "mona",
        "--reason",
        "incident 42",
    )
    assert "2 decided, 0 refused" in output
    assert Proposal.objects.filter(status=Status.CANCELLED).count() == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decision", "approve", "--as", "rita", "--reason", "x"], "Name proposal ids"),
        (["x", "--decision", "approve", "--as", "nobody", "--reason", "x"], "No user"),
        (["x", "--decision", "approve", "--as", "rita", "--reason", " "], "must not be empty"),
        (["--all-pending", "--decision", "approve", "--as", "rita", "--reason", "x"], "needs"),
        (["not-a-uuid", "--decision", "approve", "--as", "rita", "--reason", "x"], "refused"),
    ],
)
def test_decide_errors(world: Any, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        decide(*args)


def feedback(*args: str) -> list[dict[str, Any]]:
    out = StringIO()
    call_command("export_feedback", *args, stdout=out, stderr=StringIO())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_export_feedback_records_human_decisions_and_overrides(world: Any) -> None:
    accepted = submit(world.submitter, world.checkpoint, payload={"frequency": 4}, confidence=0.7)
    services.vote_cast(
        proposal_id=accepted.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    edited = submit(world.submitter, world.checkpoint, payload={"frequency": 4})
    services.vote_cast(
        proposal_id=edited.pk,
        reviewer=world.reviewer,
        decision="approve",
        revision=1,
        adjustments={"frequency": 2},
        comment="twice is enough",
    )
    rejected = submit(world.submitter, world.checkpoint)
    services.vote_cast(
        proposal_id=rejected.pk,
        reviewer=world.reviewer,
        decision="reject",
        revision=1,
        comment="wrong site",
    )
    submit(world.submitter, world.checkpoint)  # still pending: not exported

    records = {r["proposal_id"]: r for r in feedback()}
    assert set(records) == {str(accepted.pk), str(edited.pk), str(rejected.pk)}
    assert records[str(accepted.pk)]["override"] is False
    assert records[str(accepted.pk)]["confidence"] == 0.7
    edit = records[str(edited.pk)]
    assert edit["override"] is True
    assert edit["proposed_payload"] == {"frequency": 4}
    assert edit["approved_payload"] == {"frequency": 2}
    assert edit["human_patch"] == [{"op": "replace", "path": "/frequency", "value": 2}]
    assert edit["feedback"][0]["comment"] == "twice is enough"
    assert records[str(rejected.pk)]["outcome"] == "rejected"
    assert records[str(rejected.pk)]["override"] is True

    overrides = feedback("--only-overrides")
    assert {r["proposal_id"] for r in overrides} == {str(edited.pk), str(rejected.pk)}
    assert feedback("--checkpoint", "elsewhere") == []


def test_export_feedback_skips_policy_decisions(world: Any) -> None:
    world.checkpoint.auto_approve_at = 0.5
    world.checkpoint.save()
    submit(world.submitter, world.checkpoint, confidence=0.9)
    assert feedback() == []
