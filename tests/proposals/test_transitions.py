"""The state machine: every (status, action) pair against TRANSITIONS, through the one
transition function, plus the database backstops (CheckConstraints) and row history."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.db import IntegrityError, transaction

from audit.models import AuditEvent
from notifications.models import OutboxEvent
from proposals import services
from proposals.errors import InvalidTransition, NotFound
from proposals.models import (
    OPEN_STATUSES,
    TRANSITIONS,
    Action,
    Proposal,
    Resolution,
    Revision,
    Status,
    Vote,
)
from tests.factories import submit

pytestmark = pytest.mark.django_db

RESOLUTION_FOR = {
    Action.APPROVE: Resolution.REVIEWERS,
    Action.REJECT: Resolution.REVIEWERS,
    Action.REQUEST_CHANGES: "",
    Action.REVISE: "",
    Action.CANCEL: Resolution.CANCELLED,
    Action.REVOKE: Resolution.REVOKED,
}
VERBS = {
    Action.APPROVE: "proposal.approved",
    Action.REJECT: "proposal.rejected",
    Action.REQUEST_CHANGES: "proposal.changes_requested",
    Action.REVISE: "proposal.revised",
    Action.CANCEL: "proposal.cancelled",
    Action.REVOKE: "proposal.revoked",
}
EXPECTED_TABLE = {
    ("pending", "approve"): "approved",
    ("pending", "reject"): "rejected",
    ("pending", "request_changes"): "changes_requested",
    ("pending", "cancel"): "cancelled",
    ("changes_requested", "revise"): "pending",
    ("changes_requested", "reject"): "rejected",
    ("changes_requested", "cancel"): "cancelled",
    ("approved", "revoke"): "rejected",
}
ALL_PAIRS = list(itertools.product(Status.values, Action.values))


def proposal_in(world: Any, status: str) -> Proposal:
    """A proposal brought to `status` through the real services, as production would."""
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 10, "vendor": "acme"})
    vote = {
        Status.CHANGES_REQUESTED: "request_changes",
        Status.APPROVED: "approve",
        Status.REJECTED: "reject",
    }.get(status)
    if vote is not None:
        services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=world.reviewer,
            decision=vote,
            revision=1,
            comment="because",
        )
    elif status == Status.CANCELLED:
        services.proposal_cancel(proposal_id=proposal.pk, actor=world.submitter, reason="withdrawn")
    proposal.refresh_from_db()
    assert proposal.status == status
    return proposal


def snapshot(proposal: Proposal) -> dict[str, Any]:
    proposal.refresh_from_db()
    return {
        name: getattr(proposal, name)
        for name in (
            "status",
            "resolution",
            "decided_at",
            "approved_payload",
            "updated_at",
            "revision",
            "payload",
        )
    }


def last_seq() -> int:
    last = AuditEvent.objects.order_by("-seq").first()
    return last.seq if last else 0


def test_the_table_is_the_documented_state_machine() -> None:
    actual = {
        (status, action): target
        for status, actions in TRANSITIONS.items()
        for action, target in actions.items()
    }
    assert actual == EXPECTED_TABLE
    assert set(TRANSITIONS) == set(Status.values)
    assert set(OPEN_STATUSES) == {Status.PENDING, Status.CHANGES_REQUESTED}
    # Rejected and cancelled are dead ends; approved leaves only through revocation.
    assert TRANSITIONS[Status.REJECTED] == {} and TRANSITIONS[Status.CANCELLED] == {}
    assert set(services.ACTION_VERBS) == set(Action.values)


@pytest.mark.parametrize(("status", "action"), ALL_PAIRS)
def test_transition_pair(world: Any, status: str, action: str) -> None:
    proposal = proposal_in(world, status)
    target = EXPECTED_TABLE.get((status, action))
    before = snapshot(proposal)
    seq = last_seq()
    outbox_before = set(OutboxEvent.objects.values_list("pk", flat=True))
    history_before = proposal.history.count()

    if target is None:
        with transaction.atomic():
            locked = services.lock_proposal(proposal.pk)
            with pytest.raises(InvalidTransition) as excinfo:
                services.transition(
                    locked,
                    action,
                    actor=world.manager,
                    resolution=RESOLUTION_FOR[action] or Resolution.REVIEWERS,
                    reason="walk",
                )
            # Refused before touching anything, even inside the still-open transaction.
            assert locked.status == status
            assert AuditEvent.objects.filter(seq__gt=seq).count() == 0
            assert OutboxEvent.objects.exclude(pk__in=outbox_before).count() == 0
        assert excinfo.value.status_code == 409
        assert excinfo.value.code == "invalid_transition"
        assert excinfo.value.details == {"status": status, "action": action}
        assert snapshot(proposal) == before
        assert AuditEvent.objects.filter(seq__gt=seq).count() == 0
        assert OutboxEvent.objects.exclude(pk__in=outbox_before).count() == 0
        assert proposal.history.count() == history_before
        return

    with transaction.atomic():
        locked = services.lock_proposal(proposal.pk)
        result = services.transition(
            locked, action, actor=world.manager, resolution=RESOLUTION_FOR[action], reason="walk"
        )
    assert result is locked
    after = snapshot(proposal)
    assert after["status"] == target
    assert after["updated_at"] > before["updated_at"]
    if target in OPEN_STATUSES:
        assert after["resolution"] == ""
        assert after["decided_at"] == before["decided_at"]
    else:
        assert after["resolution"] == RESOLUTION_FOR[action]
        assert after["decided_at"] is not None
        assert after["decided_at"] != before["decided_at"]
    if target == Status.APPROVED:
        assert after["approved_payload"] == after["payload"] == {"cost": 10, "vendor": "acme"}

    (event,) = AuditEvent.objects.filter(seq__gt=seq)
    assert event.verb == VERBS[action]
    assert event.proposal_id == proposal.pk
    assert event.checkpoint_id == world.checkpoint.pk
    assert event.actor_id == world.manager.pk
    assert event.actor_label == world.manager.username
    assert event.reason == "walk"
    assert event.revision == after["revision"]
    assert event.data == {"from": status, "to": target, "resolution": after["resolution"]}

    (outbox,) = OutboxEvent.objects.exclude(pk__in=outbox_before)
    assert outbox.topic == VERBS[action]
    assert outbox.proposal_id == proposal.pk
    assert outbox.payload["type"] == VERBS[action]
    assert outbox.payload["proposal_id"] == str(proposal.pk)
    assert outbox.payload["status"] == target
    assert outbox.payload["resolution"] == after["resolution"]
    assert outbox.payload["reason"] == "walk"

    assert proposal.history.count() == history_before + 1
    latest = proposal.history.first()
    assert latest.status == target
    assert latest.history_type == "~"
    assert latest.history_user_id == world.manager.pk


def test_transition_refuses_an_unlocked_proposal(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    seq = last_seq()
    with transaction.atomic():
        unlocked = Proposal.objects.select_for_update().get(pk=proposal.pk)
        with pytest.raises(RuntimeError, match="lock_proposal"):
            services.transition(
                unlocked, Action.APPROVE, actor=world.reviewer, resolution=Resolution.REVIEWERS
            )
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    assert AuditEvent.objects.filter(seq__gt=seq).count() == 0


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("00000000-0000-0000-0000-000000000000", id="unknown uuid"),
        pytest.param(None, id="none"),
        # Services are also called from commands, tasks and email links with ids that never
        # went through the API's UUID check: a malformed id must be a 404, not a crash.
        pytest.param("not-a-uuid", id="malformed"),
    ],
)
def test_lock_proposal_unknown_ids_are_not_found(world: Any, bad_id: Any) -> None:
    with pytest.raises(NotFound), transaction.atomic():
        services.lock_proposal(bad_id)


def test_terminal_transition_needs_a_resolution(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    seq = last_seq()
    with pytest.raises(ValueError, match="resolution"), transaction.atomic():
        locked = services.lock_proposal(proposal.pk)
        services.transition(locked, Action.REJECT, actor=world.reviewer)
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.PENDING, "")
    assert AuditEvent.objects.filter(seq__gt=seq).count() == 0


def test_open_target_ignores_a_resolution(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with transaction.atomic():
        locked = services.lock_proposal(proposal.pk)
        services.transition(
            locked, Action.REQUEST_CHANGES, actor=world.reviewer, resolution=Resolution.REVIEWERS
        )
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.CHANGES_REQUESTED, "")


def test_transition_saves_extra_changes_and_clears_the_claim(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"a": 1})
    services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    with transaction.atomic():
        locked = services.lock_proposal(proposal.pk)
        services.transition(
            locked,
            Action.APPROVE,
            actor=world.reviewer,
            resolution=Resolution.REVIEWERS,
            approved_payload={"a": 2},
            selected_option="cheap",
            data={"extra": "yes"},
        )
    proposal.refresh_from_db()
    assert proposal.approved_payload == {"a": 2}
    assert proposal.payload == {"a": 1}
    assert proposal.selected_option == "cheap"
    assert proposal.claimed_by is None and proposal.claimed_until is None
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.data["extra"] == "yes"


# --- database backstops ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"status": "bogus"}, id="unknown status"),
        pytest.param({"status": "bogus", "resolution": "policy"}, id="unknown status, resolved"),
        pytest.param({"status": Status.APPROVED}, id="terminal without resolution"),
        pytest.param({"resolution": Resolution.POLICY}, id="open with a resolution"),
        pytest.param({"resolution": "because"}, id="unknown resolution"),
        pytest.param({"confidence": 1.5}, id="confidence out of range"),
    ],
)
def test_check_constraints_reject_invalid_rows(world: Any, changes: dict[str, Any]) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(IntegrityError), transaction.atomic():
        Proposal.objects.filter(pk=proposal.pk).update(**changes)
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.PENDING, "")


def test_check_constraint_accepts_a_consistent_row(world: Any) -> None:
    # The control for the test above: the same path with valid values goes through.
    proposal = submit(world.submitter, world.checkpoint)
    with transaction.atomic():
        Proposal.objects.filter(pk=proposal.pk).update(
            status=Status.REJECTED, resolution=Resolution.TIMEOUT
        )
    proposal.refresh_from_db()
    assert proposal.status == Status.REJECTED


def test_one_vote_per_reviewer_and_revision_is_a_database_constraint(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    vote = Vote(
        proposal=proposal,
        revision=1,
        reviewer=world.reviewer,
        decision="request_changes",
        created_at=proposal.created_at,
    )
    vote.save()
    with pytest.raises(IntegrityError), transaction.atomic():
        Vote.objects.create(
            proposal=proposal,
            revision=1,
            reviewer=world.reviewer,
            decision="approve",
            created_at=proposal.created_at,
        )


# --- row history -------------------------------------------------------------------------------


def test_history_rows_follow_the_proposal(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"n": 1})
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="request_changes",
        revision=1,
        comment="n too small",
    )
    services.proposal_revise(proposal_id=proposal.pk, actor=world.submitter, payload={"n": 2})
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer2,
        decision="approve",
        revision=2,
        adjustments={"n": 3},
    )
    rows = list(proposal.history.order_by("history_date", "history_id"))
    assert [(r.history_type, r.status, r.revision) for r in rows] == [
        ("+", "pending", 1),
        ("~", "changes_requested", 1),
        ("~", "pending", 2),
        ("~", "pending", 3),  # the reviewer's edit
        ("~", "approved", 3),
    ]
    assert [r.history_user_id for r in rows] == [
        world.submitter.pk,
        world.reviewer.pk,
        world.submitter.pk,
        world.reviewer2.pk,
        world.reviewer2.pk,
    ]
    assert rows[-1].approved_payload == {"n": 3}
    assert Revision.history.filter(proposal_id=proposal.pk).count() == 3
    assert Vote.history.filter(proposal_id=proposal.pk).count() == 2
