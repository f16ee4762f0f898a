"""The Django admin as a review queue: visibility, the read-only proposal page, decisions through
the services, bulk actions, checkpoint groups, the read-only audit/outbox admins, API keys."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.admin import helpers
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from hitl.checkpoint_forms import USER_FIELDS
from hitl.grants import users_with
from hitl.keys import api_key_authenticate
from hitl.models import ApiKey, ServiceAccount
from notifications.models import OutboxEvent
from proposals import services
from proposals.models import Checkpoint, Proposal, Status
from proposals.permissions import (
    MANAGE,
    REVIEW,
    REVIEW_ESCALATED,
    SUBMIT,
    access_for,
    groups_with,
    visible_proposals_q,
)
from tests.factories import GroupFactory, UserFactory, make_service_account, submit

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/proposals/proposal/"


def change_url(proposal: Proposal) -> str:
    return f"{CHANGELIST}{proposal.pk}/change/"


def review_url(proposal: Proposal) -> str:
    return f"{CHANGELIST}{proposal.pk}/review/"


def make_staff(user: Any, *perms: str) -> Any:
    """Staff with model-level permissions ('app.codename'); object access stays guardian's."""
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def login(user: Any) -> Client:
    client = Client()
    # From the database: UserFactory sets the password on the instance only, and a session
    # hashed from that in-memory password would not survive the next request.
    client.force_login(type(user).objects.get(pk=user.pk))
    return client


def reviewer_client(user: Any) -> Client:
    return login(make_staff(user, "proposals.view_proposal"))


def titles(response: Any) -> list[str]:
    assert response.status_code == 200, response.status_code
    return [p.title for p in response.context["cl"].result_list]


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def action_names(response: Any) -> set[str]:
    form = response.context["action_form"]
    return set() if form is None else {name for name, _ in form.fields["action"].choices}


# --- the queue -----------------------------------------------------------------------------


def test_changelist_ordered_by_sla_deadline_with_filters(world: Any) -> None:
    cp = world.checkpoint
    submit(world.submitter, cp, title="low", priority="low")
    submit(world.submitter, cp, title="critical", priority="critical", external_id="ext-7")
    medium = submit(world.submitter, cp, title="medium", priority="medium")
    submit(world.submitter, cp, title="high", priority="high", region="North")
    client = reviewer_client(world.reviewer)

    assert titles(client.get(CHANGELIST)) == ["critical", "high", "medium", "low"]
    assert titles(client.get(CHANGELIST, {"priority__exact": "high"})) == ["high"]
    assert titles(client.get(CHANGELIST, {"region": "North"})) == ["high"]
    assert titles(client.get(CHANGELIST, {"checkpoint__id__exact": cp.pk})) == [
        "critical",
        "high",
        "medium",
        "low",
    ]
    assert titles(client.get(CHANGELIST, {"q": "ext-7"})) == ["critical"]

    # Open work by default; decided proposals one filter away.
    services.vote_cast(
        proposal_id=medium.pk, reviewer=world.reviewer2, decision="reject", revision=1, comment="no"
    )
    assert "medium" not in titles(client.get(CHANGELIST))
    assert titles(client.get(CHANGELIST, {"status": "rejected"})) == ["medium"]
    assert titles(client.get(CHANGELIST, {"status": "all"})) == [
        "critical",
        "high",
        "medium",
        "low",
    ]


def test_changelist_has_no_n_plus_one(world: Any) -> None:
    client = reviewer_client(world.reviewer)
    submit(world.submitter, world.checkpoint, title="first")
    client.get(CHANGELIST)  # warm caches (content types, sessions)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(CHANGELIST).status_code == 200
        return len(queries)

    few = count()
    for n in range(6):
        proposal = submit(world.submitter, world.checkpoint, title=f"more {n}")
        services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer2)
    assert count() == few


def test_staff_without_model_permission_cannot_enter(world: Any) -> None:
    submit(world.submitter, world.checkpoint)
    client = login(make_staff(world.reviewer))  # guardian grants, but no view_proposal
    assert client.get(CHANGELIST).status_code == 403


def test_non_eligible_reviewer_neither_lists_nor_opens(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, title="not for olga")
    mine = submit(world.submitter, world.checkpoint, title="also not")
    olga = reviewer_client(world.other_reviewer)

    assert titles(olga.get(CHANGELIST, {"status": "all"})) == []
    response = olga.get(change_url(proposal))
    assert response.status_code in (302, 404)
    if response.status_code == 302:
        assert response["Location"] == "/admin/"
    assert olga.get(f"{CHANGELIST}{proposal.pk}/history/").status_code == 404
    response = olga.post(review_url(mine), {"decision": "approve", "revision": 1})
    assert response.status_code == 404
    mine.refresh_from_db()
    assert mine.status == Status.PENDING
    # A manager of the checkpoint sees it.
    mona = login(make_staff(world.manager, "proposals.view_proposal"))
    assert set(titles(mona.get(CHANGELIST))) == {"not for olga", "also not"}


# --- the proposal page ---------------------------------------------------------------------


def test_change_page_shows_payload_revisions_votes_quorum_and_events(world: Any) -> None:
    cp = world.checkpoint
    cp.quorum_rule, cp.quorum_count = "count", 2
    cp.save()
    proposal = submit(
        world.submitter,
        cp,
        title="inspect",
        payload={"frequency": 4, "note": "<script>alert(1)</script>"},
        options=[],
        context={"why": "the model said so"},
    )
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="approve",
        revision=1,
        adjustments={"frequency": 2},
        comment="twice is enough",
    )
    raj = reviewer_client(world.reviewer2)
    response = raj.get(change_url(proposal))
    assert response.status_code == 200
    html = response.content.decode()
    # payload and context as escaped, pretty JSON
    assert "&quot;frequency&quot;: 2" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" not in html
    assert "the model said so" in html
    # the reviewer's edit: revision 2 with its RFC 6902 diff
    assert "/frequency" in html and "replace" in html
    assert "edited" in html
    # the vote, and quorum progress on the current revision
    assert "twice is enough" in html
    assert "1/2 approvals" in html
    # the audit events
    for verb in ("proposal.submitted", "proposal.edited", "proposal.vote_cast"):
        assert verb in html
    # the review form is bound to the revision shown
    assert 'name="revision" value="2"' in html
    assert "null</textarea>" not in html
    # nothing is editable: no status input, no save button
    assert 'name="status"' not in html
    assert 'name="_save"' not in html


def test_approve_from_change_page_goes_through_the_service(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"frequency": 4})
    rita = reviewer_client(world.reviewer)
    response = rita.post(
        review_url(proposal), {"decision": "approve", "revision": 1, "comment": "ok"}, follow=True
    )
    assert response.status_code == 200
    assert any("approved" in m for m in messages_of(response))
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED
    assert proposal.resolution == "reviewers"
    event = AuditEvent.objects.get(proposal=proposal, verb="proposal.approved")
    assert event.actor == world.reviewer
    assert event.reason == "ok"


def test_edit_then_approve_with_adjustments(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"frequency": 4, "site": "A"})
    rita = reviewer_client(world.reviewer)
    rita.post(
        review_url(proposal),
        {"decision": "approve", "revision": 1, "adjustments": '{"frequency": 2}'},
    )
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED
    assert proposal.revision == 2
    assert proposal.approved_payload == {"frequency": 2, "site": "A"}
    assert proposal.revisions.get(number=2).patch == [
        {"op": "replace", "path": "/frequency", "value": 2}
    ]


def test_approve_picks_one_of_the_options(world: Any) -> None:
    options = [
        {"key": "a", "label": "Weekly", "payload": {"frequency": 7}, "confidence": 0.4},
        {"key": "b", "label": "Daily", "payload": {"frequency": 1}, "confidence": 0.6},
    ]
    proposal = submit(world.submitter, world.checkpoint, options=options)
    rita = reviewer_client(world.reviewer)
    page = rita.get(change_url(proposal)).content.decode()
    assert '<option value="a">Weekly</option>' in page
    assert 'name="adjustments"' not in page  # proposals with options are not edited
    response = rita.post(review_url(proposal), {"decision": "approve", "revision": 1}, follow=True)
    assert any("choosing one of its options" in m for m in messages_of(response))
    rita.post(review_url(proposal), {"decision": "approve", "revision": 1, "selected_option": "a"})
    proposal.refresh_from_db()
    assert (proposal.status, proposal.selected_option) == (Status.APPROVED, "a")
    assert proposal.approved_payload == {"frequency": 7}


def test_adjustments_must_be_a_json_object(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"frequency": 4})
    rita = reviewer_client(world.reviewer)
    for bad in ("{frequency: 2", "[1, 2]"):
        response = rita.post(
            review_url(proposal),
            {"decision": "approve", "revision": 1, "adjustments": bad},
            follow=True,
        )
        assert any(m.startswith("adjustments: Adjustments must be") for m in messages_of(response))
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


def test_reject_without_reason_shows_error_and_changes_nothing(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    events_before = AuditEvent.objects.count()
    rita = reviewer_client(world.reviewer)
    response = rita.post(review_url(proposal), {"decision": "reject", "revision": 1}, follow=True)
    assert response.status_code == 200
    assert any("A reason is required to reject" in m for m in messages_of(response))
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    assert not proposal.votes.exists()
    assert AuditEvent.objects.count() == events_before


def test_stale_revision_is_refused_with_a_message(world: Any) -> None:
    cp = world.checkpoint
    cp.quorum_rule, cp.quorum_count = "count", 2
    cp.save()
    proposal = submit(world.submitter, cp, payload={"frequency": 4})
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="approve",
        revision=1,
        adjustments={"frequency": 3},
    )
    raj = reviewer_client(world.reviewer2)
    response = raj.post(review_url(proposal), {"decision": "approve", "revision": 1}, follow=True)
    assert any("current revision is 2" in m for m in messages_of(response))
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


def test_submitter_cannot_approve_its_own_proposal(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    approvers = world.reviewer.groups.get(name="approvers")
    world.submitter.groups.add(approvers)  # even as a reviewer of the checkpoint
    agent = reviewer_client(world.submitter)
    page = agent.get(change_url(proposal))
    assert page.status_code == 200
    assert "the submitter cannot vote on it" in page.content.decode()
    response = agent.post(review_url(proposal), {"decision": "approve", "revision": 1}, follow=True)
    assert "The submitter cannot vote on its own proposal." in messages_of(response)
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    assert not proposal.votes.exists()


def test_review_url_refuses_get(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    rita = reviewer_client(world.reviewer)
    assert rita.get(review_url(proposal), {"decision": "approve", "revision": 1}).status_code == 403
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


def test_status_is_not_editable(world: Any, admin_client: Client) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    page = admin_client.get(change_url(proposal))
    assert page.status_code == 200
    assert 'name="status"' not in page.content.decode()
    response = admin_client.post(change_url(proposal), {"status": "approved", "title": "hijacked"})
    assert response.status_code == 403
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    assert proposal.title == "A proposal"
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.post(f"{CHANGELIST}{proposal.pk}/delete/").status_code == 403


def test_manager_cancels_from_the_page(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    mona = login(make_staff(world.manager, "proposals.view_proposal"))
    response = mona.post(
        f"{CHANGELIST}{proposal.pk}/manage/", {"action": "cancel", "reason": "dup"}, follow=True
    )
    assert response.status_code == 200
    proposal.refresh_from_db()
    assert proposal.status == Status.CANCELLED
    assert AuditEvent.objects.get(proposal=proposal, verb="proposal.cancelled").actor == (
        world.manager
    )


def test_revoke_is_offered_only_to_an_approver_of_the_approved_revision(world: Any) -> None:
    """The page offered revoke to anyone who had approved any revision of the proposal; the
    service refused all but approvers of the approved one. Both ask allowed_actions now."""
    world.checkpoint.quorum_rule, world.checkpoint.quorum_count = "count", 2
    world.checkpoint.save()
    tess = UserFactory(username="tess")
    tess.groups.add(world.reviewer.groups.get(name="approvers"))
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 1})
    services.vote_cast(
        proposal_id=proposal.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    services.vote_cast(  # a new revision: rita's approve of revision 1 stops counting
        proposal_id=proposal.pk,
        reviewer=world.reviewer2,
        decision="approve",
        revision=1,
        adjustments={"cost": 2},
    )
    decided, _ = services.vote_cast(
        proposal_id=proposal.pk, reviewer=tess, decision="approve", revision=2
    )
    assert decided.status == Status.APPROVED

    rita_page = reviewer_client(world.reviewer).get(change_url(proposal))
    assert rita_page.context["can_revoke"] is False
    raj_page = reviewer_client(world.reviewer2).get(change_url(proposal))
    assert raj_page.context["can_revoke"] is True
    refused = reviewer_client(world.reviewer).post(
        f"{CHANGELIST}{proposal.pk}/manage/", {"action": "revoke", "reason": "no"}, follow=True
    )
    assert "Only a manager or an approver can revoke." in messages_of(refused)


def test_review_form_is_gone_once_the_deadline_has_passed(world: Any) -> None:
    world.checkpoint.timeout_seconds = 600
    world.checkpoint.save()
    proposal = submit(world.submitter, world.checkpoint)
    rita = reviewer_client(world.reviewer)
    assert rita.get(change_url(proposal)).context["review_form"] is not None
    assert proposal.due_at is not None
    with time_machine.travel(proposal.due_at + timedelta(seconds=1), tick=False):
        assert rita.get(change_url(proposal)).context["review_form"] is None


# --- bulk actions --------------------------------------------------------------------------


def bulk(client: Client, action: str, proposals: list[Proposal], **extra: Any) -> Any:
    data: dict[str, Any] = {
        "action": action,
        helpers.ACTION_CHECKBOX_NAME: [str(p.pk) for p in proposals],
        **extra,
    }
    return client.post(f"{CHANGELIST}?status=all", data, follow=True)


def confirm(client: Client, action: str, proposals: list[Proposal], reason: str) -> Any:
    data: dict[str, Any] = {
        "action": action,
        helpers.ACTION_CHECKBOX_NAME: [str(p.pk) for p in proposals],
        "apply": "yes",
        "reason": reason,
        **{f"revision_{p.pk}": str(p.revision) for p in proposals},
    }
    return client.post(f"{CHANGELIST}?status=all", data, follow=True)


def test_bulk_reject_asks_for_a_reason_then_rejects_each(world: Any) -> None:
    proposals = [submit(world.submitter, world.checkpoint, title=f"p{n}") for n in range(3)]
    decided = submit(world.submitter, world.checkpoint, title="decided")
    services.vote_cast(
        proposal_id=decided.pk, reviewer=world.reviewer2, decision="approve", revision=1
    )
    other_agent = make_service_account("agent-other", world.other_checkpoint)
    hidden = submit(other_agent, world.other_checkpoint, title="olgas-only")
    rita = reviewer_client(world.reviewer)

    page = bulk(rita, "reject_selected", [*proposals, decided, hidden], index="0")
    assert page.status_code == 200
    assert page.templates[0].name == "admin/proposals/proposal/bulk_decision.html"
    html = page.content.decode()
    assert "p0" in html and "decided" in html and "olgas-only" not in html

    missing = confirm(rita, "reject_selected", [*proposals, decided], reason="")
    assert missing.status_code == 200
    assert "This field is required." in missing.content.decode()
    assert Proposal.objects.filter(status=Status.REJECTED).count() == 0

    done = confirm(rita, "reject_selected", [*proposals, decided, hidden], reason="not now")
    assert done.status_code == 200
    for p in proposals:
        p.refresh_from_db()
        assert p.status == Status.REJECTED
        event = AuditEvent.objects.get(proposal=p, verb="proposal.rejected")
        assert event.actor == world.reviewer and event.reason == "not now"
    hidden.refresh_from_db()
    assert hidden.status == Status.PENDING
    msgs = messages_of(done)
    assert sum("now rejected" in m for m in msgs) == 3
    assert any(m.startswith("“decided”") and "votes are closed" in m for m in msgs)


def test_bulk_approve_needs_no_reason_and_binds_the_shown_revision(world: Any) -> None:
    first = submit(world.submitter, world.checkpoint, title="first")
    second = submit(world.submitter, world.checkpoint, title="second")
    rita = reviewer_client(world.reviewer)
    done = confirm(rita, "approve_selected", [first, second], reason="")
    assert sum("now approved" in m for m in messages_of(done)) == 2
    assert set(Proposal.objects.values_list("status", flat=True)) == {Status.APPROVED}

    stale = submit(world.submitter, world.checkpoint, title="stale")
    stale.revision = 7  # what an out-of-date confirmation page would have shown
    done = confirm(rita, "approve_selected", [stale], reason="")
    assert any("current revision is 1" in m for m in messages_of(done))
    stale.refresh_from_db()
    assert stale.status == Status.PENDING


def test_cancel_and_revoke_actions_are_for_managers(world: Any) -> None:
    open_one = submit(world.submitter, world.checkpoint, title="open")
    approved = submit(world.submitter, world.checkpoint, title="approved")
    services.vote_cast(
        proposal_id=approved.pk, reviewer=world.reviewer, decision="approve", revision=1
    )

    rita = reviewer_client(world.reviewer)
    assert "cancel_selected" not in action_names(rita.get(CHANGELIST))
    assert "approve_selected" in action_names(rita.get(CHANGELIST))

    mona = login(make_staff(world.manager, "proposals.view_proposal"))
    names = action_names(mona.get(CHANGELIST))
    assert {"cancel_selected", "revoke_selected"} <= names
    assert "approve_selected" not in names  # managing is not reviewing

    confirm(mona, "cancel_selected", [open_one], reason="duplicate")
    open_one.refresh_from_db()
    assert open_one.status == Status.CANCELLED

    missing = confirm(mona, "revoke_selected", [approved], reason="")
    assert "This field is required." in missing.content.decode()
    confirm(mona, "revoke_selected", [approved], reason="wrong site")
    approved.refresh_from_db()
    assert (approved.status, approved.resolution) == (Status.REJECTED, "revoked")


# --- history -------------------------------------------------------------------------------


def test_history_views(world: Any, admin_client: Client) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    rita = reviewer_client(world.reviewer)
    assert rita.get(f"{CHANGELIST}{proposal.pk}/history/").status_code == 200
    assert admin_client.get(f"{CHANGELIST}{proposal.pk}/history/").status_code == 200
    cp_url = f"/admin/proposals/checkpoint/{world.checkpoint.pk}/history/"
    assert admin_client.get(cp_url).status_code == 200

    # Reverting to an old version would rewrite status outside the services: refused.
    services.vote_cast(
        proposal_id=proposal.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    old = proposal.history.earliest()
    revert_url = f"{CHANGELIST}{proposal.pk}/history/{old.history_id}/"
    assert admin_client.post(revert_url, {}).status_code == 403
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED


# --- checkpoints ---------------------------------------------------------------------------


def checkpoint_form(cp: Checkpoint, **overrides: Any) -> dict[str, Any]:
    """The change form as the page would post it, groups as they are unless overridden."""

    def groups(codename: str) -> list[int]:
        return [g.pk for g in groups_with(cp, codename)]

    data: dict[str, Any] = {
        "slug": cp.slug,
        "name": cp.name,
        "description": cp.description,
        "enabled": "on",
        "mode": cp.mode,
        "quorum_rule": cp.quorum_rule,
        "quorum_count": cp.quorum_count,
        "veto": "on",
        "auto_approve_at": "",
        "auto_reject_below": "",
        "review_when": json.dumps(cp.review_when),
        "sample_rate": cp.sample_rate,
        "timeout_seconds": cp.timeout_seconds,
        "timeout_action": cp.timeout_action,
        "escalate_after_seconds": "",
        "remind_after_seconds": "",
        "sla_seconds": json.dumps(cp.sla_seconds),
        "revocation_window_seconds": cp.revocation_window_seconds,
        "max_revisions": cp.max_revisions,
        "require_reason_on": json.dumps(cp.require_reason_on),
        "approver_groups": groups(REVIEW),
        "escalation_groups": groups(REVIEW_ESCALATED),
        "manager_groups": groups(MANAGE),
        "submitter_groups": groups(SUBMIT),
        # Direct user grants, as the page shows them selected (hitl.checkpoint_forms).
        **{name: [u.pk for u in users_with(cp, code)] for name, code in USER_FIELDS.items()},
    }
    data.update(overrides)
    return data


def test_checkpoint_admin_saves_groups_as_guardian_permissions(
    world: Any, admin_client: Client
) -> None:
    cp = world.checkpoint
    proposal = submit(world.submitter, cp)
    url = f"/admin/proposals/checkpoint/{cp.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    assert page.context["adminform"].form["approver_groups"].initial == [
        world.reviewer.groups.get(name="approvers")
    ]

    new_group = GroupFactory(name="night-shift")
    newcomer = UserFactory(username="nina")
    newcomer.groups.add(new_group)
    old_group = world.reviewer.groups.get(name="approvers")
    assert not access_for(newcomer).has(REVIEW, cp.pk)

    response = admin_client.post(
        url,
        checkpoint_form(
            cp, approver_groups=[new_group.pk], escalation_groups=[old_group.pk], quorum_count=2
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    cp.refresh_from_db()
    assert cp.quorum_count == 2
    access = access_for(newcomer)
    assert access.has(REVIEW, cp.pk)
    assert Proposal.objects.filter(visible_proposals_q(access)).get() == proposal
    rita = access_for(world.reviewer)
    assert not rita.has(REVIEW, cp.pk)
    assert rita.has(REVIEW_ESCALATED, cp.pk)
    assert cp.history.count() == 2  # simple-history recorded the admin edit


def test_checkpoint_admin_validates_policy(world: Any, admin_client: Client) -> None:
    cp = world.checkpoint
    url = f"/admin/proposals/checkpoint/{cp.pk}/change/"
    response = admin_client.post(
        url, checkpoint_form(cp, review_when=json.dumps([{"path": "cost", "op": "nope"}]))
    )
    assert response.status_code == 200
    assert "review_when" in response.context["adminform"].form.errors
    cp.refresh_from_db()
    assert cp.review_when == []


def test_checkpoint_editing_needs_manage_on_that_checkpoint(world: Any) -> None:
    mona = login(
        make_staff(world.manager, "proposals.view_checkpoint", "proposals.change_checkpoint")
    )
    own = f"/admin/proposals/checkpoint/{world.checkpoint.pk}/change/"
    assert mona.post(own, checkpoint_form(world.checkpoint, name="Renamed")).status_code == 302
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.name == "Renamed"
    # The other checkpoint is not even visible to her.
    other = f"/admin/proposals/checkpoint/{world.other_checkpoint.pk}/change/"
    assert mona.post(other, checkpoint_form(world.other_checkpoint, name="X")).status_code in (
        302,
        403,
    )
    world.other_checkpoint.refresh_from_db()
    assert world.other_checkpoint.name != "X"
    # A reviewer with view permission sees its checkpoint read-only, groups included.
    rita = login(make_staff(world.reviewer, "proposals.view_checkpoint"))
    page = rita.get(own)
    assert page.status_code == 200
    assert "approvers" in page.content.decode()
    assert rita.post(own, checkpoint_form(world.checkpoint, name="Nope")).status_code == 403


def test_bypass_goes_through_the_audited_service(world: Any, admin_client: Client) -> None:
    cp = world.checkpoint
    url = f"/admin/proposals/checkpoint/{cp.pk}/change/"
    # Not a plain field edit: posting bypass fields to the form changes nothing.
    admin_client.post(
        url,
        checkpoint_form(
            cp, bypass_until_0="2999-01-01", bypass_until_1="00:00:00", bypass_reason="sneaky"
        ),
    )
    cp.refresh_from_db()
    assert cp.bypass_until is None and cp.bypass_reason == ""

    base = "/admin/proposals/checkpoint/"
    selected = {"action": "start_bypass", helpers.ACTION_CHECKBOX_NAME: [cp.pk]}
    page = admin_client.post(base, {**selected, "index": "0"})
    assert page.status_code == 200
    assert page.templates[0].name == "admin/proposals/checkpoint/bypass.html"
    missing = admin_client.post(base, {**selected, "apply": "yes"})
    assert missing.status_code == 200
    cp.refresh_from_db()
    assert cp.bypass_until is None

    admin_client.post(
        base,
        {
            **selected,
            "apply": "yes",
            "until_0": "2999-01-01",
            "until_1": "00:00:00",
            "reason": "incident 42",
        },
    )
    cp.refresh_from_db()
    assert cp.bypass_until is not None and cp.bypass_reason == "incident 42"
    event = AuditEvent.objects.get(verb="checkpoint.bypassed", checkpoint=cp)
    assert event.reason == "incident 42" and event.actor_label == "admin"
    assert submit(world.submitter, cp).resolution == "bypass"

    admin_client.post(base, {"action": "end_bypass", helpers.ACTION_CHECKBOX_NAME: [cp.pk]})
    cp.refresh_from_db()
    assert cp.bypass_until is None
    assert AuditEvent.objects.filter(verb="checkpoint.bypass_ended", checkpoint=cp).exists()


# --- audit and outbox: read-only -----------------------------------------------------------


def test_audit_event_admin_is_read_only(world: Any, admin_client: Client) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    event = AuditEvent.objects.filter(proposal=proposal).first()
    assert event is not None
    base = "/admin/audit/auditevent/"
    listing = admin_client.get(base)
    assert listing.status_code == 200
    assert "proposal.submitted" in listing.content.decode()
    assert "delete_selected" not in action_names(listing)
    assert admin_client.get(f"{base}?verb=proposal.submitted").status_code == 200
    assert admin_client.get(f"{base}add/").status_code == 403
    assert admin_client.get(f"{base}{event.pk}/change/").status_code == 200
    assert admin_client.post(f"{base}{event.pk}/change/", {"reason": "x"}).status_code == 403
    assert admin_client.get(f"{base}{event.pk}/delete/").status_code == 403
    assert admin_client.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.reason == ""


def test_audit_events_follow_proposal_visibility(world: Any) -> None:
    submit(world.submitter, world.checkpoint, title="visible to rita only")
    olga = login(make_staff(world.other_reviewer, "audit.view_auditevent"))
    assert "visible to rita only" not in olga.get("/admin/audit/auditevent/").content.decode()
    rita = login(make_staff(world.reviewer, "audit.view_auditevent"))
    assert "visible to rita only" in rita.get("/admin/audit/auditevent/").content.decode()


def test_outbox_admin_is_read_only(world: Any, admin_client: Client) -> None:
    submit(world.submitter, world.checkpoint)
    event = OutboxEvent.objects.first()
    assert event is not None
    base = "/admin/notifications/outboxevent/"
    assert admin_client.get(base).status_code == 200
    assert admin_client.get(f"{base}add/").status_code == 403
    assert admin_client.get(f"{base}{event.pk}/change/").status_code == 200
    assert admin_client.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403


# --- service accounts and API keys ---------------------------------------------------------


def test_api_key_admin_shows_the_token_once_and_stores_only_the_hash(
    world: Any, admin_client: Client
) -> None:
    base = "/admin/hitl/apikey/"
    assert admin_client.get(f"{base}add/").status_code == 200
    response = admin_client.post(
        f"{base}add/",
        {"user": world.submitter.pk, "name": "ci", "expires_at_0": "", "expires_at_1": ""},
        follow=True,
    )
    assert response.status_code == 200
    [message] = [m for m in messages_of(response) if "shown only this once" in m]
    token = message.split('<code class="hitl-token">')[1].split("</code>")[0]
    assert token.startswith("nok_")
    api_key = ApiKey.objects.get(name="ci")
    secret = token.split("_", 2)[2]
    assert api_key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert token not in json.dumps(list(ApiKey.objects.values()), default=str)
    assert api_key_authenticate(token) == api_key
    assert AuditEvent.objects.filter(verb="api_key.created", actor__username="admin").exists()

    # Never again: not on the list, not on the key's page; key_hash is neither shown nor editable.
    assert token not in admin_client.get(base).content.decode()
    page = admin_client.get(f"{base}{api_key.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert token not in html and api_key.key_hash not in html and "key_hash" not in html
    post = admin_client.post(f"{base}{api_key.pk}/change/", {"key_hash": "0" * 64})
    assert post.status_code == 403
    api_key.refresh_from_db()
    assert api_key.key_hash == hashlib.sha256(secret.encode()).hexdigest()

    # Revoke through the action (api_key_revoke): the token stops working.
    admin_client.post(
        base, {"action": "revoke_selected", helpers.ACTION_CHECKBOX_NAME: [api_key.pk]}
    )
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert api_key_authenticate(token) is None


def test_api_key_admin_refuses_a_past_expiry(world: Any, admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/hitl/apikey/add/",
        {
            "user": world.submitter.pk,
            "name": "old",
            "expires_at_0": "2000-01-01",
            "expires_at_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert "The expiry must be in the future." in response.content.decode()
    assert not ApiKey.objects.filter(name="old").exists()


def test_service_account_admin_creates_a_key_only_user(admin_client: Client) -> None:
    base = "/admin/hitl/serviceaccount/"
    response = admin_client.post(
        f"{base}add/", {"username": "agent-new", "description": "nightly"}, follow=True
    )
    assert response.status_code == 200
    account = ServiceAccount.objects.select_related("user").get(user__username="agent-new")
    assert account.description == "nightly"
    assert not account.user.has_usable_password()
    again = admin_client.post(f"{base}add/", {"username": "agent-new"})
    assert again.status_code == 200
    assert "already exists" in again.content.decode()


# --- webhooks in the admin ---------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.0/8"])
def test_webhook_endpoint_add_shows_the_secret_once_and_stores_it_encrypted(admin_client):
    from notifications.models import WebhookEndpoint

    response = admin_client.post(
        "/admin/notifications/webhookendpoint/add/",
        {
            "name": "ops",
            "url": "http://127.0.0.1:9/hook",
            "events": ["proposal.approved"],
            "active": "on",
        },
        follow=True,
    )
    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.get(name="ops")
    shown = [str(m) for m in response.context["messages"] if "whsec_" in str(m)]
    assert len(shown) == 1 and endpoint.secret in shown[0]
    assert endpoint.secret not in endpoint.secret_encrypted
    assert endpoint.events == ["proposal.approved"]


@pytest.mark.django_db
def test_webhook_endpoint_admin_refuses_private_targets(admin_client):
    response = admin_client.post(
        "/admin/notifications/webhookendpoint/add/",
        {"name": "meta", "url": "http://169.254.169.254/latest", "active": "on"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "non-public address" in response.content.decode()


@pytest.mark.django_db
@override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.0/8"])
def test_delivery_admin_lists_attempts_and_redelivers(admin_client, world):
    from notifications import relay, webhooks
    from notifications.models import DeliveryStatus, WebhookDelivery

    webhooks.endpoint_create(name="gone", url="http://127.0.0.1:9/hook")
    submit(world.submitter, world.checkpoint)
    relay.relay_all()
    delivery = WebhookDelivery.objects.get()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED)
    assert admin_client.get("/admin/notifications/webhookdelivery/").status_code == 200
    page = admin_client.get(f"/admin/notifications/webhookdelivery/{delivery.pk}/change/")
    assert page.status_code == 200
    admin_client.post(
        "/admin/notifications/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [str(delivery.pk)]},
    )
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING


@pytest.mark.django_db
def test_service_account_secret_shown_at_creation_and_rotation(admin_client):
    response = admin_client.post(
        "/admin/hitl/serviceaccount/add/", {"username": "bot-7", "description": "x"}, follow=True
    )
    account = ServiceAccount.objects.get(user__username="bot-7")
    first = account.signing_secret
    assert any(first in str(m) for m in response.context["messages"])
    response = admin_client.post(
        "/admin/hitl/serviceaccount/",
        {"action": "rotate_signing_secret", "_selected_action": [str(account.pk)]},
        follow=True,
    )
    account.refresh_from_db()
    assert account.signing_secret != first
    assert any(account.signing_secret in str(m) for m in response.context["messages"])
    assert AuditEvent.objects.filter(verb="service_account.secret_rotated").count() == 1
