"""The public services against a real database: routing at submission, the vote rules,
edit-then-approve, quorums, the requests-changes loop, cancel, revoke, claims, and the promise
that audit rows live and die with the change they record."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import Group
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from notifications.models import OutboxEvent
from proposals import services
from proposals.errors import (
    AlreadyVoted,
    ApplicationError,
    ClaimedByOther,
    Conflict,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    StaleRevision,
    Unprocessable,
)
from proposals.models import Proposal, Revision, RevisionKind, Vote
from proposals.permissions import REVIEW, SUBMIT
from tests.factories import UserFactory, submit

pytestmark = pytest.mark.django_db


# --- helpers -----------------------------------------------------------------------------------


def set_policy(world: Any, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(world.checkpoint, name, value)
    world.checkpoint.save()


def more_reviewers(n: int, prefix: str = "rev") -> list[Any]:
    group = Group.objects.get(name="approvers")
    users = [UserFactory(username=f"{prefix}{i}") for i in range(n)]
    for user in users:
        user.groups.add(group)
    return users


def vote(
    proposal: Proposal | Any,
    reviewer: Any,
    decision: str = "approve",
    *,
    revision: int | None = None,
    comment: str | None = None,
    **extra: Any,
) -> Proposal:
    pk = proposal.pk if isinstance(proposal, Proposal) else proposal
    if revision is None:
        revision = Proposal.objects.get(pk=pk).revision
    if comment is None:
        comment = "" if decision == "approve" else f"{decision} because"
    result, _ = services.vote_cast(
        proposal_id=pk,
        reviewer=reviewer,
        decision=decision,
        revision=revision,
        comment=comment,
        **extra,
    )
    return result


def verbs(proposal: Proposal) -> list[str]:
    return list(
        AuditEvent.objects.filter(proposal_id=proposal.pk)
        .order_by("seq")
        .values_list("verb", flat=True)
    )


def last_event(proposal: Proposal, verb: str) -> AuditEvent:
    event = AuditEvent.objects.filter(proposal_id=proposal.pk, verb=verb).order_by("-seq").first()
    assert event is not None, f"no {verb} event"
    return event


def fresh(proposal: Proposal) -> Proposal:
    proposal.refresh_from_db()
    return proposal


def sha(payload: Any) -> str:
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


def counts() -> dict[str, int]:
    return {
        "proposals": Proposal.objects.count(),
        "revisions": Revision.objects.count(),
        "votes": Vote.objects.count(),
        "audit": AuditEvent.objects.count(),
        "outbox": OutboxEvent.objects.count(),
    }


# --- submit and routing ------------------------------------------------------------------------


def test_submit_creates_a_pending_proposal_with_its_first_revision(world: Any) -> None:
    payload = {"frequency": 4, "sites": ["north", "south"]}
    proposal = submit(world.submitter, world.checkpoint, payload=payload, priority="high")
    proposal = fresh(proposal)
    assert (proposal.status, proposal.resolution, proposal.revision) == ("pending", "", 1)
    assert proposal.approved_payload is None and proposal.decided_at is None
    assert proposal.submitted_by == world.submitter
    assert proposal.due_at == proposal.created_at + timedelta(seconds=86400)
    assert proposal.sla_due_at == proposal.created_at + timedelta(seconds=14400)

    (revision,) = proposal.revisions.all()
    assert (revision.number, revision.kind, revision.author) == (
        1,
        RevisionKind.SUBMITTED,
        world.submitter,
    )
    assert revision.payload == payload
    assert revision.payload_hash == sha(payload)
    assert revision.patch == []

    assert verbs(proposal) == ["proposal.submitted"]
    event = last_event(proposal, "proposal.submitted")
    assert event.actor_id == world.submitter.pk
    assert event.data["routing"] == "review"
    assert event.data["payload_hash"] == sha(payload)
    assert list(OutboxEvent.objects.filter(proposal=proposal).values_list("topic", flat=True)) == [
        "proposal.submitted"
    ]


ROUTING_TABLE: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    # (case, checkpoint policy, submission, status, resolution)
    ("no thresholds: review", {}, {"confidence": 0.99}, "pending", ""),
    (
        "auto-approve by confidence",
        {"auto_approve_at": 0.8},
        {"confidence": 0.85},
        "approved",
        "policy",
    ),
    ("below auto-approve: review", {"auto_approve_at": 0.8}, {"confidence": 0.79}, "pending", ""),
    ("no confidence: review", {"auto_approve_at": 0.5}, {"confidence": None}, "pending", ""),
    (
        "no confidence at threshold 0: policy",
        {"auto_approve_at": 0.0},
        {"confidence": None},
        "approved",
        "policy",
    ),
    (
        "auto-reject by confidence",
        {"auto_reject_below": 0.3, "auto_approve_at": 0.9},
        {"confidence": 0.1},
        "rejected",
        "policy",
    ),
    (
        "review_when forces review at high confidence",
        {"auto_approve_at": 0.5, "review_when": [{"path": "cost", "op": "gt", "value": 100}]},
        {"confidence": 0.99, "payload": {"cost": 500}},
        "pending",
        "",
    ),
    (
        "review_when not matching: auto-approve",
        {"auto_approve_at": 0.5, "review_when": [{"path": "cost", "op": "gt", "value": 100}]},
        {"confidence": 0.99, "payload": {"cost": 5}},
        "approved",
        "policy",
    ),
    (
        "disabled checkpoint approves",
        {"enabled": False},
        {"confidence": 0.01},
        "approved",
        "policy",
    ),
    (
        "sample_rate 1 spot-checks every policy approval",
        {"auto_approve_at": 0.5, "sample_rate": 1.0},
        {"confidence": 0.99},
        "pending",
        "",
    ),
]


@pytest.mark.parametrize(
    ("policy", "fields", "status", "resolution"),
    [pytest.param(p, f, s, r, id=case) for case, p, f, s, r in ROUTING_TABLE],
)
def test_submit_routes(
    world: Any, policy: dict[str, Any], fields: dict[str, Any], status: str, resolution: str
) -> None:
    set_policy(world, **policy)
    fields = {"payload": {"cost": 1}, **fields}
    proposal = fresh(submit(world.submitter, world.checkpoint, **fields))
    assert (proposal.status, proposal.resolution) == (status, resolution)
    submitted = last_event(proposal, "proposal.submitted")
    assert submitted.data["routing"] == {"pending": "review", "approved": "approve"}.get(
        status, "reject"
    )
    if status == "pending":
        assert verbs(proposal) == ["proposal.submitted"]
        assert proposal.decided_at is None
        return
    assert verbs(proposal) == ["proposal.submitted", f"proposal.{status}"]
    decided = last_event(proposal, f"proposal.{status}")
    assert decided.actor_id is None and decided.actor_label == "system"
    assert decided.data["resolution"] == resolution
    assert decided.reason  # the routing reason is recorded
    assert proposal.decided_at is not None
    if status == "approved":
        assert proposal.approved_payload == fields["payload"]
    else:
        assert proposal.approved_payload is None


def test_submit_during_a_bypass_approves_with_resolution_bypass(world: Any) -> None:
    set_policy(
        world,
        bypass_until=timezone.now() + timedelta(hours=1),
        bypass_reason="incident 42",
        review_when=[{"path": "cost", "op": "gt", "value": 0}],
    )
    proposal = fresh(submit(world.submitter, world.checkpoint, payload={"cost": 10**6}))
    assert (proposal.status, proposal.resolution) == ("approved", "bypass")
    assert proposal.approved_payload == {"cost": 10**6}
    assert last_event(proposal, "proposal.approved").data["resolution"] == "bypass"


def test_an_expired_bypass_no_longer_applies(world: Any) -> None:
    set_policy(world, bypass_until=timezone.now() - timedelta(seconds=1), bypass_reason="over")
    proposal = fresh(submit(world.submitter, world.checkpoint))
    assert (proposal.status, proposal.resolution) == ("pending", "")


def test_bypass_ends_at_bypass_until(world: Any) -> None:
    until = timezone.now() + timedelta(minutes=10)
    set_policy(world, bypass_until=until, bypass_reason="incident")
    with time_machine.travel(until - timedelta(seconds=1), tick=False):
        inside = submit(world.submitter, world.checkpoint)
    with time_machine.travel(until + timedelta(seconds=1), tick=False):
        after = submit(world.submitter, world.checkpoint)
    assert fresh(inside).resolution == "bypass"
    assert fresh(after).status == "pending"


def test_policy_approval_takes_the_most_confident_option(world: Any) -> None:
    set_policy(world, auto_approve_at=0.5)
    options = [
        {"key": "cheap", "label": "Cheap", "payload": {"cost": 1}, "confidence": 0.6},
        {"key": "fast", "label": "Fast", "payload": {"cost": 9}, "confidence": 0.9},
    ]
    proposal = fresh(submit(world.submitter, world.checkpoint, options=options, confidence=0.95))
    assert proposal.status == "approved"
    assert (proposal.selected_option, proposal.approved_payload) == ("fast", {"cost": 9})


def test_submit_without_the_submit_permission_is_refused(world: Any) -> None:
    before = counts()
    for user in (world.reviewer, world.manager, world.outsider):
        with pytest.raises(PermissionDenied):
            submit(user, world.checkpoint)
    with pytest.raises(PermissionDenied):
        submit(world.submitter, world.other_checkpoint)
    assert counts() == before


def test_submit_refuses_duplicate_option_keys(world: Any) -> None:
    before = counts()
    options = [{"key": "a", "payload": {}}, {"key": "a", "payload": {"x": 1}}]
    with pytest.raises(Unprocessable):
        submit(world.submitter, world.checkpoint, options=options)
    assert counts() == before


# --- quorum snapshot -------------------------------------------------------------------------


@pytest.fixture
def three_eligible(world: Any) -> Any:
    """rita and raj through the group, `dora` directly; plus people who must NOT count."""
    dora = UserFactory(username="dora")
    assign_perm(REVIEW, dora, world.checkpoint)
    assign_perm(REVIEW, world.reviewer, world.checkpoint)  # group + direct: still one person
    gone = UserFactory(username="gone", is_active=False)
    gone.groups.add(Group.objects.get(name="approvers"))
    UserFactory(username="root", is_superuser=True)  # superusers count only when granted
    return world


@pytest.mark.parametrize(
    ("rule", "count", "required"),
    [("any", 1, 1), ("all", 1, 3), ("majority", 1, 2), ("count", 2, 2), ("count", 5, 5)],
)
def test_submit_snapshots_eligible_reviewers_and_quorum(
    three_eligible: Any, rule: str, count: int, required: int
) -> None:
    world = three_eligible
    set_policy(world, quorum_rule=rule, quorum_count=count)
    proposal = fresh(submit(world.submitter, world.checkpoint))
    assert (proposal.eligible_reviewers, proposal.quorum_required) == (3, required)
    # A snapshot: reviewers added later change nothing for this proposal.
    more_reviewers(3, prefix="late")
    assert (fresh(proposal).eligible_reviewers, proposal.quorum_required) == (3, required)
    assert fresh(submit(world.submitter, world.checkpoint)).eligible_reviewers == 6


def test_a_submitting_reviewer_is_not_counted_as_eligible(world: Any) -> None:
    assign_perm(SUBMIT, world.reviewer, world.checkpoint)
    set_policy(world, quorum_rule="all")
    proposal = fresh(submit(world.reviewer, world.checkpoint))
    assert (proposal.eligible_reviewers, proposal.quorum_required) == (1, 1)


# --- vote rules --------------------------------------------------------------------------------


def test_the_submitter_cannot_vote_even_when_it_is_a_reviewer(world: Any) -> None:
    assign_perm(SUBMIT, world.reviewer, world.checkpoint)
    proposal = submit(world.reviewer, world.checkpoint)
    before = counts()
    for decision in ("approve", "reject", "request_changes"):
        with pytest.raises(PermissionDenied, match="submitter"):
            vote(proposal, world.reviewer, decision)
    with pytest.raises(PermissionDenied):
        vote(submit(world.submitter, world.checkpoint), world.submitter)
    assert counts()["votes"] == before["votes"] == 0
    assert fresh(proposal).status == "pending"


@pytest.mark.parametrize(
    ("who", "error"),
    [
        ("other_reviewer", NotFound),  # reviews another checkpoint: cannot even see this one
        ("outsider", NotFound),
        ("manager", PermissionDenied),  # may see it, but manage is not review
    ],
)
def test_non_eligible_users_cannot_vote(world: Any, who: str, error: type[Exception]) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    before = counts()
    with pytest.raises(error):
        vote(proposal, getattr(world, who))
    assert counts() == before


@pytest.mark.parametrize("stale", [0, 2, 7])
def test_a_vote_for_another_revision_is_stale(world: Any, stale: int) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(StaleRevision) as excinfo:
        vote(proposal, world.reviewer, revision=stale)
    assert excinfo.value.status_code == 409
    assert excinfo.value.code == "stale_revision"
    assert excinfo.value.details == {"revision": 1}
    assert fresh(proposal).status == "pending"
    assert not Vote.objects.filter(proposal=proposal).exists()


def test_one_vote_per_reviewer_and_revision(world: Any) -> None:
    set_policy(world, quorum_rule="count", quorum_count=2)
    proposal = submit(world.submitter, world.checkpoint)
    vote(proposal, world.reviewer)
    before = counts()
    for decision in ("approve", "reject", "request_changes"):
        with pytest.raises(AlreadyVoted) as excinfo:
            vote(proposal, world.reviewer, decision)
        assert excinfo.value.status_code == 409
    assert counts() == before
    assert fresh(proposal).status == "pending"


def test_votes_on_a_decided_proposal_are_refused(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    vote(proposal, world.reviewer)
    with pytest.raises(InvalidTransition):
        vote(proposal, world.reviewer2, "reject", revision=1)
    assert fresh(proposal).status == "approved"


def test_late_votes_are_refused_once_the_deadline_passed(world: Any) -> None:
    set_policy(world, timeout_seconds=600)
    proposal = fresh(submit(world.submitter, world.checkpoint))
    late = proposal.due_at + timedelta(seconds=1)
    with time_machine.travel(late, tick=False), pytest.raises(Conflict) as excinfo:
        vote(proposal, world.reviewer)
    assert excinfo.value.status_code == 409
    assert fresh(proposal).status == "pending"
    assert not Vote.objects.filter(proposal=proposal).exists()


@pytest.mark.parametrize("decision", ["reject", "request_changes"])
@pytest.mark.parametrize("comment", ["", "   \n"])
def test_a_reason_is_required_to_reject_or_request_changes(
    world: Any, decision: str, comment: str
) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(Unprocessable) as excinfo:
        vote(proposal, world.reviewer, decision, comment=comment)
    assert excinfo.value.status_code == 422
    assert excinfo.value.details == {"comment": "required"}
    assert not Vote.objects.filter(proposal=proposal).exists()
    assert verbs(proposal) == ["proposal.submitted"]


def test_approve_needs_no_reason_by_default(world: Any) -> None:
    assert vote(submit(world.submitter, world.checkpoint), world.reviewer, comment="").status == (
        "approved"
    )


def test_require_reason_on_is_configurable(world: Any) -> None:
    set_policy(world, require_reason_on=["approve"])
    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(Unprocessable):
        vote(proposal, world.reviewer, "approve", comment="")
    assert vote(proposal, world.reviewer, "reject", comment="").status == "rejected"


OPTIONS = [
    {"key": "a", "label": "Plan A", "payload": {"plan": "A", "cost": 10}, "confidence": 0.7},
    {"key": "b", "label": "Plan B", "payload": {"plan": "B", "cost": 20}, "confidence": 0.6},
]


@pytest.mark.parametrize(
    ("decision", "extra"),
    [
        pytest.param("approve", {}, id="approve without an option"),
        pytest.param("approve", {"selected_option": "zzz"}, id="approve with an unknown option"),
        pytest.param(
            "approve",
            {"selected_option": "a", "adjustments": {"cost": 1}},
            id="edit a proposal with options",
        ),
        pytest.param("reject", {"selected_option": "a"}, id="reject selecting an option"),
        pytest.param(
            "request_changes", {"selected_option": "b"}, id="request changes selecting an option"
        ),
    ],
)
def test_option_rules(world: Any, decision: str, extra: dict[str, Any]) -> None:
    proposal = submit(world.submitter, world.checkpoint, options=OPTIONS)
    with pytest.raises(Unprocessable):
        vote(proposal, world.reviewer, decision, **extra)
    assert fresh(proposal).status == "pending"
    assert not Vote.objects.filter(proposal=proposal).exists()


def test_approving_an_option_approves_its_payload(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"plan": "?"}, options=OPTIONS)
    proposal = vote(proposal, world.reviewer, selected_option="b")
    proposal = fresh(proposal)
    assert (proposal.status, proposal.resolution) == ("approved", "reviewers")
    assert proposal.selected_option == "b"
    assert proposal.approved_payload == {"plan": "B", "cost": 20}
    assert Vote.objects.get(proposal=proposal).selected_option == "b"


def test_selecting_an_option_on_a_proposal_without_options(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(Unprocessable):
        vote(proposal, world.reviewer, selected_option="a")


def test_count_quorum_with_options_counts_approvals_per_option(world: Any) -> None:
    set_policy(world, quorum_rule="count", quorum_count=2)
    (third,) = more_reviewers(1)
    proposal = submit(world.submitter, world.checkpoint, options=OPTIONS)
    vote(proposal, world.reviewer, selected_option="a")
    vote(proposal, world.reviewer2, selected_option="b")
    assert fresh(proposal).status == "pending"  # one each: no option has two
    vote(proposal, third, selected_option="b")
    proposal = fresh(proposal)
    assert proposal.status == "approved"
    assert (proposal.selected_option, proposal.approved_payload) == ("b", OPTIONS[1]["payload"])


# --- edit-then-approve -------------------------------------------------------------------------


def test_approve_with_an_rfc6902_patch(world: Any) -> None:
    payload = {"frequency": 4, "sites": ["north", "south"]}
    proposal = submit(world.submitter, world.checkpoint, payload=payload)
    patch = [
        {"op": "replace", "path": "/frequency", "value": 2},
        {"op": "add", "path": "/sites/-", "value": "east"},
    ]
    proposal = fresh(vote(proposal, world.reviewer, patch=patch, comment="fewer, but east too"))
    edited = {"frequency": 2, "sites": ["north", "south", "east"]}
    assert (proposal.status, proposal.resolution, proposal.revision) == ("approved", "reviewers", 2)
    assert proposal.payload == edited
    assert proposal.approved_payload == edited

    first, second = proposal.revisions.order_by("number")
    assert (first.kind, first.payload, first.author) == ("submitted", payload, world.submitter)
    assert (second.number, second.kind, second.author) == (2, RevisionKind.EDITED, world.reviewer)
    assert second.payload == edited
    assert second.payload_hash == sha(edited)
    assert second.reason == "fewer, but east too"
    assert {(op["op"], op["path"]) for op in second.patch} == {
        ("replace", "/frequency"),
        ("add", "/sites/2"),
    }
    (ballot,) = Vote.objects.filter(proposal=proposal)
    assert (ballot.revision, ballot.reviewer, ballot.decision) == (2, world.reviewer, "approve")
    assert verbs(proposal) == [
        "proposal.submitted",
        "proposal.edited",
        "proposal.vote_cast",
        "proposal.approved",
    ]
    edit_event = last_event(proposal, "proposal.edited")
    assert edit_event.actor_id == world.reviewer.pk
    assert edit_event.data["patch"] == second.patch
    assert edit_event.reason == "fewer, but east too"
    assert edit_event.revision == 2


def test_approve_with_adjustments_is_a_merge_patch(world: Any) -> None:
    payload = {"frequency": 4, "notes": "draft", "limits": {"max": 10, "min": 1}, "keep": True}
    proposal = submit(world.submitter, world.checkpoint, payload=payload)
    proposal = fresh(
        vote(
            proposal,
            world.reviewer,
            adjustments={"frequency": 2, "notes": None, "limits": {"max": 5}, "new": [1]},
        )
    )
    edited = {"frequency": 2, "limits": {"max": 5, "min": 1}, "keep": True, "new": [1]}
    assert proposal.approved_payload == edited == proposal.payload
    revision = proposal.revisions.get(number=2)
    assert (revision.kind, revision.author) == (RevisionKind.EDITED, world.reviewer)
    assert {"op": "remove", "path": "/notes"} in revision.patch
    assert {"op": "replace", "path": "/limits/max", "value": 5} in revision.patch
    # Applying the recorded diff to the old payload gives the new one.
    import jsonpatch

    assert jsonpatch.apply_patch(payload, revision.patch) == edited


def test_an_edit_resets_the_other_approvers_votes(world: Any) -> None:
    set_policy(world, quorum_rule="count", quorum_count=2)
    proposal = submit(world.submitter, world.checkpoint, payload={"frequency": 4})
    vote(proposal, world.reviewer2)  # raj approves revision 1
    assert fresh(proposal).status == "pending"

    proposal = fresh(vote(proposal, world.reviewer, adjustments={"frequency": 2}))
    # Raj approved content that no longer exists: only rita's approve (revision 2) counts.
    assert (proposal.status, proposal.revision) == ("pending", 2)
    assert set(Vote.objects.filter(proposal=proposal).values_list("reviewer_id", "revision")) == {
        (world.reviewer2.pk, 1),
        (world.reviewer.pk, 2),
    }
    with pytest.raises(StaleRevision):
        vote(proposal, world.reviewer2, revision=1)

    proposal = fresh(vote(proposal, world.reviewer2, revision=2))
    assert (proposal.status, proposal.resolution) == ("approved", "reviewers")
    assert proposal.approved_payload == {"frequency": 2}


def test_without_veto_an_old_rejection_does_not_follow_the_edit(world: Any) -> None:
    # A count-2 quorum without veto: raj's reject was for revision 1 and stops counting.
    set_policy(world, quorum_rule="count", quorum_count=2, veto=False)
    (third,) = more_reviewers(1)
    proposal = submit(world.submitter, world.checkpoint, payload={"n": 1})
    vote(proposal, world.reviewer2, "reject")
    vote(proposal, world.reviewer, adjustments={"n": 2})
    assert fresh(proposal).status == "pending"
    assert fresh(vote(proposal, third)).status == "approved"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"patch": [{"op": "remove", "path": "/absent"}]}, id="remove a missing key"),
        pytest.param({"patch": [{"op": "replace", "path": "/x/y", "value": 1}]}, id="bad path"),
        pytest.param({"patch": [{"op": "test", "path": "/x", "value": 2}]}, id="failed test op"),
        pytest.param({"patch": [{"op": "jump", "path": "/x"}]}, id="unknown op"),
        pytest.param({"patch": [{"op": "add", "path": "/y"}]}, id="add without value"),
        pytest.param({"patch": [{"op": "replace", "path": "x", "value": 1}]}, id="no slash"),
        pytest.param({"patch": [{"op": "replace", "path": "", "value": [1]}]}, id="not an object"),
        pytest.param({"patch": [{"op": "replace", "path": "/x", "value": 1}]}, id="no change"),
        pytest.param({"patch": []}, id="empty patch"),
        pytest.param({"adjustments": {"x": 1}}, id="adjustments with no change"),
        pytest.param({"adjustments": {"absent": None}}, id="deleting a missing key"),
        pytest.param(
            {"patch": [{"op": "replace", "path": "/x", "value": 2}], "adjustments": {"x": 3}},
            id="patch and adjustments",
        ),
    ],
)
def test_edits_that_do_not_apply_are_unprocessable(world: Any, edit: dict[str, Any]) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"x": 1})
    before = counts()
    with pytest.raises(Unprocessable) as excinfo:
        vote(proposal, world.reviewer, **edit)
    assert excinfo.value.status_code == 422
    assert counts() == before
    proposal = fresh(proposal)
    assert (proposal.status, proposal.revision, proposal.payload) == ("pending", 1, {"x": 1})


@pytest.mark.parametrize("decision", ["reject", "request_changes"])
def test_only_an_approve_may_edit(world: Any, decision: str) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"x": 1})
    with pytest.raises(Unprocessable):
        vote(proposal, world.reviewer, decision, adjustments={"x": 2})
    assert fresh(proposal).revision == 1


# --- quorum rules through the service ----------------------------------------------------------

QUORUM_FLOWS: list[tuple[str, dict[str, Any], int, list[str], list[str]]] = [
    # (case, policy, eligible reviewers, decisions in order, status after each)
    ("any: one approve", {"quorum_rule": "any"}, 2, ["approve"], ["approved"]),
    ("any, veto: one reject", {"quorum_rule": "any"}, 2, ["reject"], ["rejected"]),
    (
        "any, no veto: reject then approve",
        {"quorum_rule": "any", "veto": False},
        2,
        ["reject", "approve"],
        ["pending", "approved"],
    ),
    (
        "any, no veto: everyone rejects",
        {"quorum_rule": "any", "veto": False},
        2,
        ["reject", "reject"],
        ["pending", "rejected"],
    ),
    (
        "all of three",
        {"quorum_rule": "all"},
        3,
        ["approve", "approve", "approve"],
        ["pending", "pending", "approved"],
    ),
    (
        "all, veto: the last one rejects",
        {"quorum_rule": "all"},
        3,
        ["approve", "approve", "reject"],
        ["pending", "pending", "rejected"],
    ),
    (
        "all, no veto: one reject makes it impossible",
        {"quorum_rule": "all", "veto": False},
        3,
        ["approve", "reject"],
        ["pending", "rejected"],
    ),
    (
        "majority of four needs three",
        {"quorum_rule": "majority"},
        4,
        ["approve", "approve", "approve"],
        ["pending", "pending", "approved"],
    ),
    (
        "majority of three needs two",
        {"quorum_rule": "majority"},
        3,
        ["approve", "approve"],
        ["pending", "approved"],
    ),
    (
        "majority, no veto: survives one reject",
        {"quorum_rule": "majority", "veto": False},
        4,
        ["reject", "approve", "approve", "approve"],
        ["pending", "pending", "pending", "approved"],
    ),
    (
        "majority of four, no veto: two rejects end it",
        {"quorum_rule": "majority", "veto": False},
        4,
        ["approve", "reject", "reject"],
        ["pending", "pending", "rejected"],
    ),
    (
        "count 2, veto",
        {"quorum_rule": "count", "quorum_count": 2},
        3,
        ["approve", "reject"],
        ["pending", "rejected"],
    ),
    (
        "count 2",
        {"quorum_rule": "count", "quorum_count": 2},
        3,
        ["approve", "approve"],
        ["pending", "approved"],
    ),
    (
        "count 2, no veto: a reject is outvoted",
        {"quorum_rule": "count", "quorum_count": 2, "veto": False},
        3,
        ["reject", "approve", "approve"],
        ["pending", "pending", "approved"],
    ),
    (
        "count 2, no veto: two rejects of three end it",
        {"quorum_rule": "count", "quorum_count": 2, "veto": False},
        3,
        ["reject", "reject"],
        ["pending", "rejected"],
    ),
    (
        "request_changes ends the round even with an approve in",
        {"quorum_rule": "count", "quorum_count": 2},
        3,
        ["approve", "request_changes"],
        ["pending", "changes_requested"],
    ),
    (
        "request_changes without veto",
        {"quorum_rule": "count", "quorum_count": 2, "veto": False},
        3,
        ["request_changes"],
        ["changes_requested"],
    ),
]


@pytest.mark.parametrize(
    ("policy", "eligible", "decisions", "statuses"),
    [pytest.param(p, e, d, s, id=case) for case, p, e, d, s in QUORUM_FLOWS],
)
def test_quorum_flows(
    world: Any, policy: dict[str, Any], eligible: int, decisions: list[str], statuses: list[str]
) -> None:
    set_policy(world, **policy)
    reviewers = [world.reviewer, world.reviewer2, *more_reviewers(eligible - 2)]
    proposal = fresh(submit(world.submitter, world.checkpoint))
    assert proposal.eligible_reviewers == eligible
    seen = []
    for reviewer, decision in zip(reviewers, decisions, strict=False):
        seen.append(vote(proposal, reviewer, decision).status)
    assert seen == statuses
    proposal = fresh(proposal)
    final = statuses[-1]
    assert proposal.status == final
    assert proposal.resolution == ("reviewers" if final in ("approved", "rejected") else "")
    decided_verbs = [v for v in verbs(proposal) if v != "proposal.vote_cast"]
    assert decided_verbs == ["proposal.submitted"] + (
        [] if final == "pending" else [f"proposal.{final}"]
    )
    assert verbs(proposal).count("proposal.vote_cast") == len(decisions)


# --- requests-changes loop ---------------------------------------------------------------------


def test_request_changes_then_revise(world: Any) -> None:
    set_policy(world, quorum_rule="count", quorum_count=2)
    proposal = submit(world.submitter, world.checkpoint, payload={"rate": 5, "cap": 1})
    vote(proposal, world.reviewer2)  # raj approves revision 1
    proposal = vote(proposal, world.reviewer, "request_changes", comment="rate too high")
    assert fresh(proposal).status == "changes_requested"
    assert last_event(proposal, "proposal.changes_requested").reason == "rate too high"
    with pytest.raises(InvalidTransition):
        vote(proposal, world.reviewer2, "approve", revision=1)

    later = timezone.now() + timedelta(hours=1)
    with time_machine.travel(later, tick=False):
        proposal = services.proposal_revise(
            proposal_id=proposal.pk,
            actor=world.submitter,
            payload={"rate": 3, "cap": 1},
            summary="lower rate",
            comment="as asked",
        )
    proposal = fresh(proposal)
    assert (proposal.status, proposal.resolution, proposal.revision) == ("pending", "", 2)
    assert proposal.payload == {"rate": 3, "cap": 1}
    assert proposal.summary == "lower rate"
    assert proposal.due_at == later + timedelta(seconds=86400)  # a fresh timeout
    revision = proposal.revisions.get(number=2)
    assert (revision.kind, revision.author) == (RevisionKind.RESUBMITTED, world.submitter)
    assert revision.patch == [{"op": "replace", "path": "/rate", "value": 3}]
    assert revision.reason == "as asked"
    assert revision.payload_hash == sha({"rate": 3, "cap": 1})
    revised = last_event(proposal, "proposal.revised")
    assert revised.actor_id == world.submitter.pk
    assert revised.data["patch"] == revision.patch
    assert revised.data["to"] == "pending"

    # Raj's approve was for revision 1: the new round starts from zero.
    proposal = vote(proposal, world.reviewer)
    assert fresh(proposal).status == "pending"
    assert fresh(vote(proposal, world.reviewer2)).status == "approved"
    assert fresh(proposal).approved_payload == {"rate": 3, "cap": 1}


@pytest.mark.parametrize(("who", "error"), [("reviewer", PermissionDenied), ("outsider", NotFound)])
def test_only_the_submitter_revises(world: Any, who: str, error: type[Exception]) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    vote(proposal, world.reviewer, "request_changes")
    before = counts()
    with pytest.raises(error):
        services.proposal_revise(proposal_id=proposal.pk, actor=getattr(world, who), payload={})
    assert counts() == before
    assert fresh(proposal).status == "changes_requested"


@pytest.mark.parametrize("status", ["pending", "approved", "cancelled"])
def test_revise_outside_changes_requested_is_an_invalid_transition(world: Any, status: str) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    if status == "approved":
        vote(proposal, world.reviewer)
    elif status == "cancelled":
        services.proposal_cancel(proposal_id=proposal.pk, actor=world.submitter)
    with pytest.raises(InvalidTransition):
        services.proposal_revise(proposal_id=proposal.pk, actor=world.submitter, payload={"x": 2})
    proposal = fresh(proposal)
    assert (proposal.status, proposal.revision) == (status, 1)


@pytest.mark.parametrize("max_revisions", [0, 1, 2])
def test_max_revisions_then_the_next_request_rejects(world: Any, max_revisions: int) -> None:
    set_policy(world, max_revisions=max_revisions)
    proposal = submit(world.submitter, world.checkpoint, payload={"n": 0})
    for round_ in range(max_revisions):
        assert fresh(vote(proposal, world.reviewer, "request_changes")).status == (
            "changes_requested"
        )
        services.proposal_revise(
            proposal_id=proposal.pk, actor=world.submitter, payload={"n": round_ + 1}
        )
        assert fresh(proposal).revision == round_ + 2
    proposal = fresh(vote(proposal, world.reviewer, "request_changes", comment="still wrong"))
    assert (proposal.status, proposal.resolution) == ("rejected", "reviewers")
    assert proposal.revisions.filter(kind=RevisionKind.RESUBMITTED).count() == max_revisions
    rejected = last_event(proposal, "proposal.rejected")
    assert rejected.data["max_revisions_reached"] is True
    assert rejected.reason == "still wrong"
    assert "proposal.changes_requested" not in verbs(proposal)[-2:]


# --- cancel --------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["submitter", "manager"])
@pytest.mark.parametrize("start", ["pending", "changes_requested"])
def test_cancel_by_submitter_or_manager(world: Any, who: str, start: str) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    if start == "changes_requested":
        vote(proposal, world.reviewer, "request_changes")
    actor = getattr(world, who)
    services.proposal_cancel(proposal_id=proposal.pk, actor=actor, reason="not needed")
    proposal = fresh(proposal)
    assert (proposal.status, proposal.resolution) == ("cancelled", "cancelled")
    assert proposal.decided_at is not None
    event = last_event(proposal, "proposal.cancelled")
    assert (event.actor_id, event.reason) == (actor.pk, "not needed")


@pytest.mark.parametrize(
    ("who", "error"),
    [("reviewer", PermissionDenied), ("other_reviewer", NotFound), ("outsider", NotFound)],
)
def test_cancel_by_others_is_refused(world: Any, who: str, error: type[Exception]) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    before = counts()
    with pytest.raises(error):
        services.proposal_cancel(proposal_id=proposal.pk, actor=getattr(world, who))
    assert counts() == before
    assert fresh(proposal).status == "pending"


def test_cancel_a_decided_proposal_is_an_invalid_transition(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    vote(proposal, world.reviewer)
    with pytest.raises(InvalidTransition):
        services.proposal_cancel(proposal_id=proposal.pk, actor=world.submitter)
    assert fresh(proposal).status == "approved"


# --- revoke --------------------------------------------------------------------------------------


def approved_by_rita(world: Any) -> Proposal:
    proposal = submit(world.submitter, world.checkpoint, payload={"go": True})
    return fresh(vote(proposal, world.reviewer))


@pytest.mark.parametrize("who", ["reviewer", "manager"])
def test_revoke_inside_the_window(world: Any, who: str) -> None:
    proposal = approved_by_rita(world)
    actor = getattr(world, who)
    with time_machine.travel(proposal.decided_at + timedelta(seconds=299), tick=False):
        services.proposal_revoke(proposal_id=proposal.pk, actor=actor, reason="wrong vendor")
        revoked_at = timezone.now()
    proposal = fresh(proposal)
    assert (proposal.status, proposal.resolution) == ("rejected", "revoked")
    assert proposal.decided_at == revoked_at
    event = last_event(proposal, "proposal.revoked")
    assert (event.actor_id, event.reason) == (actor.pk, "wrong vendor")
    assert event.data["from"] == "approved" and event.data["to"] == "rejected"


def test_revoke_at_the_last_instant_of_the_window(world: Any) -> None:
    set_policy(world, revocation_window_seconds=60)
    proposal = approved_by_rita(world)
    with time_machine.travel(proposal.decided_at + timedelta(seconds=60), tick=False):
        services.proposal_revoke(proposal_id=proposal.pk, actor=world.reviewer, reason="oops")
    assert fresh(proposal).resolution == "revoked"


@pytest.mark.parametrize(("window", "late_by"), [(300, 1), (60, 1), (300, 3600)])
def test_revoke_outside_the_window_is_a_conflict(world: Any, window: int, late_by: int) -> None:
    set_policy(world, revocation_window_seconds=window)
    proposal = approved_by_rita(world)
    before = counts()
    when = proposal.decided_at + timedelta(seconds=window + late_by)
    with time_machine.travel(when, tick=False), pytest.raises(Conflict) as excinfo:
        services.proposal_revoke(proposal_id=proposal.pk, actor=world.manager, reason="late")
    assert excinfo.value.status_code == 409
    assert excinfo.value.code == "conflict"
    assert excinfo.value.details == {"window_seconds": window}
    assert counts() == before
    assert fresh(proposal).status == "approved"


def test_revoke_a_policy_approval_by_a_manager(world: Any) -> None:
    set_policy(world, auto_approve_at=0.5)
    proposal = fresh(submit(world.submitter, world.checkpoint, confidence=0.9))
    assert proposal.resolution == "policy"
    services.proposal_revoke(proposal_id=proposal.pk, actor=world.manager, reason="audit")
    assert fresh(proposal).resolution == "revoked"


@pytest.mark.parametrize(
    ("who", "error"),
    [
        ("reviewer2", PermissionDenied),  # a reviewer who did not approve it
        ("submitter", PermissionDenied),
        ("outsider", NotFound),
        ("other_reviewer", NotFound),
    ],
)
def test_revoke_by_a_non_approver_is_refused(world: Any, who: str, error: type[Exception]) -> None:
    proposal = approved_by_rita(world)
    before = counts()
    with pytest.raises(error):
        services.proposal_revoke(proposal_id=proposal.pk, actor=getattr(world, who), reason="x")
    assert counts() == before
    assert fresh(proposal).status == "approved"


def test_a_reviewer_who_rejected_cannot_revoke(world: Any) -> None:
    set_policy(world, quorum_rule="any", veto=False)
    proposal = submit(world.submitter, world.checkpoint)
    vote(proposal, world.reviewer2, "reject")
    vote(proposal, world.reviewer)
    with pytest.raises(PermissionDenied):
        services.proposal_revoke(proposal_id=proposal.pk, actor=world.reviewer2, reason="no")


def test_revoke_needs_a_reason(world: Any) -> None:
    proposal = approved_by_rita(world)
    with pytest.raises(Unprocessable):
        services.proposal_revoke(proposal_id=proposal.pk, actor=world.reviewer, reason="  ")
    assert fresh(proposal).status == "approved"


@pytest.mark.parametrize("status", ["pending", "rejected", "cancelled"])
def test_revoke_only_applies_to_approvals(world: Any, status: str) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    if status == "rejected":
        vote(proposal, world.reviewer, "reject")
    elif status == "cancelled":
        services.proposal_cancel(proposal_id=proposal.pk, actor=world.submitter)
    with pytest.raises(InvalidTransition):
        services.proposal_revoke(proposal_id=proposal.pk, actor=world.manager, reason="x")
    assert fresh(proposal).status == status


# --- claims --------------------------------------------------------------------------------------


def test_claim_lease_and_expiry(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    proposal = fresh(proposal)
    lease = timedelta(seconds=settings.HITL_CLAIM_SECONDS)
    assert proposal.claimed_by == world.reviewer
    assert proposal.claimed_until == start + lease
    assert last_event(proposal, "proposal.claimed").actor_id == world.reviewer.pk

    just_before = start + lease - timedelta(seconds=1)
    with time_machine.travel(just_before, tick=False), pytest.raises(ClaimedByOther) as excinfo:
        services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer2)
    assert excinfo.value.status_code == 409 and excinfo.value.code == "claimed"
    assert fresh(proposal).claimed_by == world.reviewer

    # The holder may extend its own lease.
    with time_machine.travel(start + timedelta(seconds=60), tick=False):
        services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    assert fresh(proposal).claimed_until == start + timedelta(seconds=60) + lease

    with time_machine.travel(start + timedelta(seconds=61) + lease, tick=False):
        services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer2)
    assert fresh(proposal).claimed_by == world.reviewer2
    assert verbs(proposal).count("proposal.claimed") == 3


@pytest.mark.parametrize("who", ["reviewer", "manager"])
def test_release_by_holder_or_manager(world: Any, who: str) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    services.proposal_release(proposal_id=proposal.pk, actor=getattr(world, who))
    proposal = fresh(proposal)
    assert proposal.claimed_by is None and proposal.claimed_until is None
    assert last_event(proposal, "proposal.released").actor_id == getattr(world, who).pk
    # Free again: the other reviewer can take it at once.
    services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer2)
    assert fresh(proposal).claimed_by == world.reviewer2


def test_release_by_another_reviewer_is_refused(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    with pytest.raises(PermissionDenied):
        services.proposal_release(proposal_id=proposal.pk, actor=world.reviewer2)
    assert fresh(proposal).claimed_by == world.reviewer


def test_releasing_what_is_not_held_is_a_noop(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    before = counts()
    services.proposal_release(proposal_id=proposal.pk, actor=world.reviewer)
    assert counts() == before


@pytest.mark.parametrize(
    ("who", "error"),
    [
        ("manager", PermissionDenied),
        ("submitter", PermissionDenied),
        ("outsider", NotFound),
        ("other_reviewer", NotFound),
    ],
)
def test_only_eligible_reviewers_claim(world: Any, who: str, error: type[Exception]) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(error):
        services.proposal_claim(proposal_id=proposal.pk, actor=getattr(world, who))
    assert fresh(proposal).claimed_by is None


def test_claiming_a_decided_proposal_is_refused(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer2)
    vote(proposal, world.reviewer)
    assert fresh(proposal).claimed_by is None  # the decision ended the lease
    with pytest.raises(InvalidTransition):
        services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer2)


# --- audit rows live and die with the change -----------------------------------------------------


class Boom(Exception):
    pass


def _prepare(world: Any, case: str) -> tuple[Proposal | None, Any]:
    """Bring a proposal to the state the case needs; return it and the service call."""
    if case == "submit":
        return None, lambda: submit(world.submitter, world.checkpoint)
    if case == "submit auto-approved":
        set_policy(world, auto_approve_at=0.5)
        return None, lambda: submit(world.submitter, world.checkpoint, confidence=0.9)
    proposal = submit(world.submitter, world.checkpoint, payload={"x": 1})
    pk = proposal.pk
    if case == "vote with edit":
        return proposal, lambda: vote(pk, world.reviewer, adjustments={"x": 2})
    if case == "request changes":
        return proposal, lambda: vote(pk, world.reviewer, "request_changes")
    if case == "revise":
        vote(proposal, world.reviewer, "request_changes")
        return proposal, lambda: services.proposal_revise(
            proposal_id=pk, actor=world.submitter, payload={"x": 3}
        )
    if case == "cancel":
        return proposal, lambda: services.proposal_cancel(proposal_id=pk, actor=world.submitter)
    if case == "revoke":
        vote(proposal, world.reviewer)
        return proposal, lambda: services.proposal_revoke(
            proposal_id=pk, actor=world.reviewer, reason="no"
        )
    if case == "claim":
        return proposal, lambda: services.proposal_claim(proposal_id=pk, actor=world.reviewer)
    if case == "release":
        services.proposal_claim(proposal_id=pk, actor=world.reviewer)
        return proposal, lambda: services.proposal_release(proposal_id=pk, actor=world.reviewer)
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "fail_at"),
    [
        ("submit", "proposal.submitted"),
        ("submit auto-approved", "proposal.approved"),
        ("vote with edit", "proposal.approved"),
        ("request changes", "proposal.changes_requested"),
        ("revise", "proposal.revised"),
        ("cancel", "proposal.cancelled"),
        ("revoke", "proposal.revoked"),
        ("claim", "proposal.claimed"),
        ("release", "proposal.released"),
    ],
)
def test_a_failing_service_leaves_no_audit_row(
    world: Any, monkeypatch: pytest.MonkeyPatch, case: str, fail_at: str
) -> None:
    proposal, call = _prepare(world, case)
    state = None if proposal is None else {**Proposal.objects.filter(pk=proposal.pk).values()[0]}
    before = counts()
    real = services.audit_record
    written: list[str] = []

    def record_then_fail(**kwargs: Any) -> Any:
        event = real(**kwargs)  # the row exists inside the transaction...
        written.append(kwargs["verb"])
        if kwargs["verb"] == fail_at:
            raise Boom
        return event

    monkeypatch.setattr(services, "audit_record", record_then_fail)
    with pytest.raises(Boom):
        call()
    assert written[-1] == fail_at
    # ...and is gone with everything else the service did.
    assert counts() == before
    if proposal is not None:
        assert {**Proposal.objects.filter(pk=proposal.pk).values()[0]} == state

    monkeypatch.setattr(services, "audit_record", real)
    call()  # the control: the same call, not sabotaged, writes its rows
    after = counts()
    assert after["audit"] >= before["audit"] + len(written)
    assert after["outbox"] > before["outbox"]


def test_application_errors_are_typed() -> None:
    # The API maps these codes to statuses; a refactor must not collapse them.
    assert [
        (e.code, e.status_code)
        for e in (
            NotFound("x"),
            PermissionDenied("x"),
            Conflict("x"),
            InvalidTransition("x"),
            StaleRevision("x"),
            AlreadyVoted("x"),
            ClaimedByOther("x"),
            Unprocessable("x"),
        )
    ] == [
        ("not_found", 404),
        ("permission_denied", 403),
        ("conflict", 409),
        ("invalid_transition", 409),
        ("stale_revision", 409),
        ("already_voted", 409),
        ("claimed", 409),
        ("unprocessable", 422),
    ]
    assert issubclass(StaleRevision, Conflict) and issubclass(Conflict, ApplicationError)
