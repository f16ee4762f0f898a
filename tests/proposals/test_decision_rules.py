"""Issue 7 (items 3, 7, 8 and "one rule per question") against the real database: the
electorate is exactly the set of people who may vote, options cannot split a round into a
pending that never ends, a tiny patch cannot build a huge payload, and every screen shows
the permissions the services enforce."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import Permission
from guardian.shortcuts import assign_perm

from proposals import services, sweeps
from proposals.errors import NotFound, PayloadLimitExceeded, PermissionDenied
from proposals.models import Proposal, Resolution, Revision, Status, Vote
from proposals.permissions import (
    REVIEW,
    REVIEW_ESCALATED,
    access_for,
    allowed_actions,
    electorate,
)
from tests.factories import GroupFactory, UserFactory, submit

pytestmark = pytest.mark.django_db

OPTIONS = [
    {"key": "a", "label": "A", "payload": {"v": "a"}, "confidence": 0.9},
    {"key": "b", "label": "B", "payload": {"v": "b"}, "confidence": 0.4},
]


def configure(checkpoint: Any, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(checkpoint, name, value)
    checkpoint.save()


def vote(proposal: Proposal, reviewer: Any, decision: str = "approve", **extra: Any) -> Proposal:
    current = Proposal.objects.get(pk=proposal.pk).revision
    extra.setdefault("comment", "" if decision == "approve" else "because")
    result, _ = services.vote_cast(
        proposal_id=proposal.pk, reviewer=reviewer, decision=decision, revision=current, **extra
    )
    return result


def global_perm(codename: str) -> Permission:
    return Permission.objects.get(codename=codename, content_type__app_label="proposals")


# --- item 7: the electorate ------------------------------------------------------------------


def test_all_quorum_counts_reviewers_with_a_global_permission(world: Any) -> None:
    """Two of three approvers approved an `all` proposal: the third held review through a
    model-level grant, which the count ignored while the vote check honoured it."""
    configure(world.checkpoint, quorum_rule="all")
    gabe = UserFactory(username="gabe")
    gabe.user_permissions.add(global_perm(REVIEW))
    reviewers_everywhere = GroupFactory(name="reviewers-everywhere")
    reviewers_everywhere.permissions.add(global_perm(REVIEW))
    gina = UserFactory(username="gina")
    gina.groups.add(reviewers_everywhere)

    proposal = submit(world.submitter, world.checkpoint)
    assert (proposal.eligible_reviewers, proposal.quorum_required) == (4, 4)
    for reviewer in (world.reviewer, world.reviewer2, gabe):
        assert vote(proposal, reviewer).status == Status.PENDING
    assert vote(proposal, gina).status == Status.APPROVED


def test_a_superuser_without_a_review_grant_neither_votes_nor_counts(world: Any) -> None:
    """The other half of the same defect: superusers could vote everywhere yet were never
    counted. Now they vote (and count) only where granted, like anyone else."""
    configure(world.checkpoint, quorum_rule="all")
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    proposal = submit(world.submitter, world.checkpoint)
    assert proposal.eligible_reviewers == 2
    assert not access_for(root).may_review(proposal)
    assert access_for(root).may_manage(proposal)  # still sees and manages everything
    with pytest.raises(PermissionDenied):
        vote(proposal, root)

    assign_perm(REVIEW, root, world.checkpoint)
    granted = submit(world.submitter, world.checkpoint)
    assert granted.eligible_reviewers == 3
    assert access_for(root).may_review(granted)


@pytest.mark.parametrize("escalated", [False, True])
def test_the_electorate_is_exactly_who_may_vote_for_every_kind_of_grant(
    world: Any, escalated: bool
) -> None:
    """One rule, two directions: for every way a grant can be held, the electorate counted
    at submission (and escalation) equals the set of users the vote check lets through."""
    cp = world.checkpoint
    people: dict[str, Any] = {}

    def person(name: str, **fields: Any) -> Any:
        people[name] = UserFactory(username=name, **fields)
        return people[name]

    assign_perm(REVIEW, person("direct"), cp)
    group = GroupFactory(name="direct-group")
    assign_perm(REVIEW, group, cp)
    person("via-group").groups.add(group)
    person("global-user").user_permissions.add(global_perm(REVIEW))
    global_group = GroupFactory(name="global-group")
    global_group.permissions.add(global_perm(REVIEW))
    person("via-global-group").groups.add(global_group)
    assign_perm(REVIEW_ESCALATED, person("escalation-direct"), cp)
    person("escalation-global").user_permissions.add(global_perm(REVIEW_ESCALATED))
    person("superuser", is_superuser=True)
    assign_perm(REVIEW, person("granted-superuser", is_superuser=True), cp)
    assign_perm(REVIEW, person("inactive", is_active=False), cp)
    assign_perm(REVIEW, person("elsewhere"), world.other_checkpoint)
    person("manager-only").user_permissions.add(global_perm("manage_checkpoint"))
    assign_perm(REVIEW, world.submitter, cp)  # a reviewing submitter never votes on its own

    proposal = submit(world.submitter, cp)
    if escalated:
        proposal.escalated_at = proposal.created_at
        proposal.save(update_fields=["escalated_at"])
    everyone = [
        *people.values(),
        world.reviewer,
        world.reviewer2,
        world.submitter,
        world.manager,
        world.outsider,
        world.other_reviewer,
    ]
    may_vote = {u.username for u in everyone if access_for(u).may_review(proposal)}
    counted = set(
        electorate(cp, submitter_id=world.submitter.pk, escalated=escalated).values_list(
            "username", flat=True
        )
    )
    assert counted == may_vote
    expected = {"direct", "via-group", "global-user", "via-global-group", "granted-superuser"}
    expected |= {"rita", "raj"}
    if escalated:
        expected |= {"escalation-direct", "escalation-global"}
    assert counted == expected


def test_escalation_widens_the_electorate_but_not_the_required_approvals(world: Any) -> None:
    configure(world.checkpoint, quorum_rule="all", timeout_seconds=7200, escalate_after_seconds=60)
    escalation = GroupFactory(name="escalation")
    assign_perm(REVIEW_ESCALATED, escalation, world.checkpoint)
    eve = UserFactory(username="eve")
    eve.groups.add(escalation)
    proposal = submit(world.submitter, world.checkpoint)
    assert (proposal.eligible_reviewers, proposal.quorum_required) == (2, 2)
    assert proposal.escalate_at is not None
    with time_machine.travel(proposal.escalate_at + timedelta(seconds=1), tick=False):
        assert sweeps.run_all().counts["escalation"] == 1
        proposal.refresh_from_db()
        assert (proposal.eligible_reviewers, proposal.quorum_required) == (3, 2)
        assert vote(proposal, eve).status == Status.PENDING
        assert vote(proposal, world.reviewer).status == Status.APPROVED


# --- item 8: options ---------------------------------------------------------------------------


def test_reviewers_splitting_over_options_end_the_round_instead_of_pending_forever(
    world: Any,
) -> None:
    """With `all` and two reviewers picking different options, the proposal stayed pending
    with everyone voted (a re-vote is 409 already voted) until the timeout."""
    configure(world.checkpoint, quorum_rule="all", veto=True)
    proposal = submit(world.submitter, world.checkpoint, options=OPTIONS)
    assert vote(proposal, world.reviewer, selected_option="a").status == Status.PENDING
    decided = vote(proposal, world.reviewer2, selected_option="b")
    assert (decided.status, decided.resolution) == (Status.REJECTED, Resolution.REVIEWERS)
    assert (decided.selected_option, decided.approved_payload) == ("", None)


def test_options_still_reachable_stay_pending_and_the_chosen_option_wins(world: Any) -> None:
    third = UserFactory(username="tess")
    third.groups.add(world.reviewer.groups.get())
    configure(world.checkpoint, quorum_rule="majority")
    proposal = submit(world.submitter, world.checkpoint, options=OPTIONS)
    assert proposal.quorum_required == 2
    assert vote(proposal, world.reviewer, selected_option="b").status == Status.PENDING
    assert vote(proposal, world.reviewer2, selected_option="a").status == Status.PENDING
    decided = vote(proposal, third, selected_option="b")
    assert (decided.status, decided.selected_option, decided.approved_payload) == (
        Status.APPROVED,
        "b",
        {"v": "b"},
    )


# --- item 3: a tiny vote cannot build a huge payload ------------------------------------------


def doubling_patch(count: int) -> list[dict[str, Any]]:
    """Each `copy` of /a into itself doubles it: 20 of them in under 1 KB of request body
    built 28 MB."""
    return [{"op": "copy", "from": "/a", "path": f"/a/k{i}"} for i in range(count)]


def test_a_patch_of_copies_is_refused_before_the_payload_grows_past_the_submit_limit(
    world: Any,
) -> None:
    payload = {"a": {"blob": "x" * 4000}}
    proposal = submit(world.submitter, world.checkpoint, payload=payload)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    # Doublings needed to pass the limit from ~4 KB: the refusal names that very operation,
    # so nothing bigger than the limit was ever built.
    needed = next(i for i in range(64) if 4000 * 2 ** (i + 1) > limit)
    with pytest.raises(PayloadLimitExceeded) as refused:
        vote(proposal, world.reviewer, patch=doubling_patch(20))
    assert refused.value.status_code == 422
    assert refused.value.details["operation"] == needed
    assert refused.value.details["max_bytes"] == limit
    proposal.refresh_from_db()
    assert (proposal.revision, proposal.payload, proposal.status) == (1, payload, Status.PENDING)
    assert not Vote.objects.filter(proposal=proposal).exists()
    assert Revision.objects.filter(proposal=proposal).count() == 1


def test_a_patch_cannot_nest_the_payload_past_the_submit_depth(world: Any) -> None:
    chain: Any = 1
    for _ in range(30):
        chain = {"n": chain}
    proposal = submit(world.submitter, world.checkpoint, payload={"a": chain})  # depth 31
    # Each copy of /a into itself nests it one level deeper: the first reaches 32 (allowed),
    # the second would reach 33.
    with pytest.raises(PayloadLimitExceeded) as refused:
        vote(proposal, world.reviewer, patch=doubling_patch(2))
    assert (refused.value.details["operation"], refused.value.details["depth"]) == (1, 33)
    assert refused.value.details["max_depth"] == 32
    assert Proposal.objects.get(pk=proposal.pk).revision == 1


def test_a_patch_with_too_many_operations_is_refused(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"n": 0})
    patch = [{"op": "replace", "path": "/n", "value": i} for i in range(101)]
    with pytest.raises(PayloadLimitExceeded) as refused:
        vote(proposal, world.reviewer, patch=patch)
    assert refused.value.details == {
        "field": "patch",
        "operations": 101,
        "max_operations": 100,
    }


def test_adjustments_cannot_push_the_payload_past_the_submit_depth(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"n": 0})
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(PayloadLimitExceeded):
        vote(proposal, world.reviewer, adjustments={"deep": deep})


def test_the_api_answers_a_payload_bomb_with_the_documented_422(
    world: Any, client_for: Any
) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"a": {"blob": "x" * 4000}})
    response = client_for(world.reviewer).post(
        f"/api/v1/proposals/{proposal.pk}/votes/",
        {"decision": "approve", "revision": 1, "patch": doubling_patch(20)},
        format="json",
    )
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "payload_limit_exceeded"


# --- one rule per question: every screen shows what the services enforce ----------------------


def test_can_vote_shown_by_the_api_respects_the_deadline(world: Any, client_for: Any) -> None:
    """The serializer's `permissions.vote` ignored the deadline the service enforces."""
    configure(world.checkpoint, timeout_seconds=600)
    proposal = submit(world.submitter, world.checkpoint)
    client = client_for(world.reviewer)
    assert client.get(f"/api/v1/proposals/{proposal.pk}/").json()["permissions"]["vote"]
    assert proposal.due_at is not None
    with time_machine.travel(proposal.due_at + timedelta(seconds=1), tick=False):
        shown = client.get(f"/api/v1/proposals/{proposal.pk}/").json()["permissions"]
        assert shown["vote"] is False
        with pytest.raises(Exception, match="deadline"):
            vote(proposal, world.reviewer)


def test_only_an_approver_of_the_approved_revision_may_revoke_everywhere(world: Any) -> None:
    """The admin let a reviewer revoke on the strength of an approve of an earlier revision;
    the service did not. Both now ask permissions.may_revoke."""
    configure(world.checkpoint, quorum_rule="count", quorum_count=2)
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 1})
    vote(proposal, world.reviewer)  # approves revision 1
    vote(proposal, world.reviewer2, adjustments={"cost": 2})  # revision 2, one approval
    decided = vote(proposal, world.reviewer)  # approves revision 2: approved
    assert decided.status == Status.APPROVED

    decided = Proposal.objects.select_related("checkpoint").get(pk=proposal.pk)
    votes = list(decided.votes.all())
    now = decided.decided_at
    assert now is not None
    assert allowed_actions(access_for(world.reviewer), decided, votes=votes, now=now).revoke
    assert allowed_actions(access_for(world.reviewer2), decided, votes=votes, now=now).revoke
    assert allowed_actions(access_for(world.manager), decided, votes=votes, now=now).revoke

    # raj's only approve was on revision 1 in this second proposal: no revoke for him.
    other = submit(world.submitter, world.checkpoint, payload={"cost": 1})
    vote(other, world.reviewer2)
    vote(other, world.reviewer, adjustments={"cost": 3})
    assert Proposal.objects.get(pk=other.pk).status == Status.PENDING
    third = UserFactory(username="tess")
    third.groups.add(world.reviewer.groups.get())
    approved = vote(other, third)
    assert approved.status == Status.APPROVED
    approved = Proposal.objects.select_related("checkpoint").get(pk=other.pk)
    other_votes = list(approved.votes.all())
    raj = access_for(world.reviewer2)
    assert approved.decided_at is not None
    assert not allowed_actions(raj, approved, votes=other_votes, now=approved.decided_at).revoke
    with pytest.raises(PermissionDenied):
        services.proposal_revoke(proposal_id=other.pk, actor=world.reviewer2, reason="oops")


def test_outsiders_learn_nothing_from_a_vote(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(NotFound):
        vote(proposal, world.outsider)
