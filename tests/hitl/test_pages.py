"""The web pages through Django's test client: who sees what on every page, that decisions
go through the services with their rules, that no GET changes anything, and the strict CSP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from audit.models import AuditEvent
from proposals.models import Proposal, Revision, RevisionKind, Status, Vote
from tests.factories import submit

pytestmark = pytest.mark.django_db


def browser_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


PAGES = ["/queue/", "/dashboard/", "/connect/"]


@pytest.mark.parametrize("path", [*PAGES, "/queue/{id}/", "/queue/{id}/edit/"])
def test_every_page_needs_a_login(world: Any, path: str) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    response = Client().get(path.format(id=proposal.pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_outsider_gets_404_on_the_proposal_and_its_actions(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, title="Secret plan")
    outsider = browser_for(world.outsider)
    for path in ("/queue/{}/", "/proposals/{}/", "/queue/{}/edit/"):
        assert outsider.get(path.format(proposal.pk)).status_code == 404
    for path in ("/queue/{}/decide/", "/queue/{}/claim/", "/queue/{}/edit/"):
        response = outsider.post(
            path.format(proposal.pk), {"decision": "approve", "revision": 1, "step": "confirm"}
        )
        assert response.status_code == 404
    response = outsider.get("/queue/")
    assert "Secret plan" not in response.content.decode()
    assert outsider.get("/queue/?scope=all").content.decode().count("Secret plan") == 0
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


def test_reviewer_sees_the_queue_with_its_columns(world: Any) -> None:
    submit(
        world.submitter,
        world.checkpoint,
        title="Inspect the weir",
        confidence=0.93,
        priority="high",
        impact="450",
    )
    body = browser_for(world.reviewer).get("/queue/").content.decode()
    assert "Inspect the weir" in body
    assert "conf-high" in body and "0.93" in body and "450" in body
    assert "0/1" in body  # quorum progress
    assert 'data-deadline="' in body  # live countdowns


def test_queue_rows_escape_what_agents_wrote_and_show_claims(world: Any) -> None:
    """The rows are built in Python (hitl.templatetags.review.queue_rows), not by the template
    language: everything an agent sent is escaped as the template did, claims name their
    holder, and the decide dialog's data attributes are all there."""
    from proposals import services

    world.checkpoint.require_reason_on = ["reject", "request_changes"]
    world.checkpoint.save()
    mine = submit(
        world.submitter,
        world.checkpoint,
        title='Fix <script>alert("x")</script> & more',
        summary="<b>bold</b> " + "long " * 40,
        options=[{"key": "a", "payload": {"x": 1}}, {"key": "b", "payload": {"x": 2}}],
    )
    theirs = submit(world.submitter, world.checkpoint, title="Claimed by raj")
    services.proposal_claim(proposal_id=mine.pk, actor=world.reviewer)
    services.proposal_claim(proposal_id=theirs.pk, actor=world.reviewer2)
    body = browser_for(world.reviewer).get("/queue/").content.decode()
    assert "<script>alert" not in body and "<b>bold" not in body
    assert "Fix &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in body
    row = body[body.index(f'data-proposal="{mine.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "&lt;b&gt;bold&lt;/b&gt; long" in row and "…</div>" in row  # truncated at 90
    assert 'data-reason-on="reject,request_changes"' in row
    assert 'data-has-options="1"' in row
    assert f'value="{mine.pk}@1"' in row
    assert '<span class="claim mine">rita</span>' in row
    assert '<span class="claim">raj</span>' in body
    empty = browser_for(world.other_reviewer).get("/queue/").content.decode()
    assert "Nothing is waiting for you." in empty


def test_queue_filters_and_search_are_in_the_url(world: Any) -> None:
    submit(world.submitter, world.checkpoint, title="Alpha weir", region="North")
    submit(world.submitter, world.checkpoint, title="Beta dam", region="South")
    reviewer = browser_for(world.reviewer)
    body = reviewer.get("/queue/?q=weir").content.decode()
    assert "Alpha weir" in body and "Beta dam" not in body
    body = reviewer.get("/queue/?region=South").content.decode()
    assert "Beta dam" in body and "Alpha weir" not in body
    body = reviewer.get("/queue/?partial=1&q=dam").content.decode()
    assert "Beta dam" in body and "<html" not in body


def test_manager_sees_all_open_work_with_a_switch(world: Any) -> None:
    submit(world.submitter, world.checkpoint, title="Managed item")
    manager = browser_for(world.manager)
    body = manager.get("/queue/").content.decode()
    assert "Managed item" in body  # a manager who reviews nothing defaults to "all"
    assert 'name="scope"' in body
    assert "Managed item" not in manager.get("/queue/?scope=mine").content.decode()


def test_the_proposal_page_shows_json_not_a_python_repr(world: Any) -> None:
    proposal = submit(
        world.submitter,
        world.checkpoint,
        payload={"cost": 450, "dry_run": False, "site": {"name": "Weir", "tags": ["a"]}},
        confidence=0.7,
        context={
            "explanation": "Readings rose three months in a row.",
            "feature_importances": {"readings": 0.6, "season": -0.2},
            "input_data": {"samples": 3},
        },
    )
    body = browser_for(world.reviewer).get(f"/queue/{proposal.pk}/").content.decode()
    assert "False" not in body and "&#x27;cost&#x27;" not in body and "'cost'" not in body
    assert "&quot;dry_run&quot;: false" in body  # the pretty JSON
    assert "Readings rose three months in a row." in body
    assert 'id="features-data"' in body and "readings" in body
    assert "<details" in body  # nested values folded


def test_decide_requires_a_reason_where_the_checkpoint_says_so(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    reviewer = browser_for(world.reviewer)
    response = reviewer.post(
        f"/queue/{proposal.pk}/decide/", {"decision": "reject", "revision": 1}, follow=True
    )
    assert "A reason is required to reject" in response.content.decode()
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    response = reviewer.post(
        f"/queue/{proposal.pk}/decide/",
        {"decision": "reject", "revision": 1, "comment": "wrong site"},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 200 and response.json()["ok"] is True
    proposal.refresh_from_db()
    assert proposal.status == Status.REJECTED


def test_decide_advances_to_the_next_item(world: Any) -> None:
    first = submit(world.submitter, world.checkpoint, title="First", priority="critical")
    second = submit(world.submitter, world.checkpoint, title="Second", priority="low")
    response = browser_for(world.reviewer).post(
        f"/queue/{first.pk}/decide/", {"decision": "approve", "revision": 1, "advance": "1"}
    )
    assert response.status_code == 302
    assert response["Location"] == f"/queue/{second.pk}/"


def test_a_stale_revision_is_refused_with_a_link_to_the_new_one(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 1})
    reviewer = browser_for(world.reviewer)
    # Another reviewer edits and approves with a quorum that needs two: revision 2 exists.
    world.checkpoint.quorum_rule = "count"
    world.checkpoint.quorum_count = 2
    world.checkpoint.save()
    Proposal.objects.filter(pk=proposal.pk).update(quorum_required=2)
    browser_for(world.reviewer2).post(
        f"/queue/{proposal.pk}/edit/",
        {"step": "confirm", "revision": 1, "edited": json.dumps({"cost": 2})},
    )
    proposal.refresh_from_db()
    assert proposal.revision == 2
    response = reviewer.post(
        f"/queue/{proposal.pk}/decide/",
        {"decision": "approve", "revision": 1},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 409
    assert response.json()["url"] == f"/queue/{proposal.pk}/?stale=1"
    page = reviewer.get(response.json()["url"]).content.decode()
    assert "the proposal changed" in page and "/cost" in page


def test_edit_and_approve_previews_the_diff_then_approves_the_edit(world: Any) -> None:
    proposal = submit(
        world.submitter, world.checkpoint, payload={"cost": 450, "urgent": True, "note": "x"}
    )
    reviewer = browser_for(world.reviewer)
    form = reviewer.get(f"/queue/{proposal.pk}/edit/").content.decode()
    assert 'type="number"' in form and 'type="checkbox"' in form
    preview = reviewer.post(
        f"/queue/{proposal.pk}/edit/",
        {"step": "preview", "revision": 1, "f-0": "90", "f-1": "on", "f-2": "x"},
    )
    body = preview.content.decode()
    assert "diff-changed" in body and "450" in body and "90" in body
    assert Revision.objects.filter(proposal=proposal).count() == 1  # nothing written yet
    done = reviewer.post(
        f"/queue/{proposal.pk}/edit/",
        {
            "step": "confirm",
            "revision": 1,
            "edited": json.dumps({"cost": 90, "urgent": True, "note": "x"}),
            "comment": "cheaper",
        },
    )
    assert done.status_code == 302
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED
    assert proposal.approved_payload == {"cost": 90, "urgent": True, "note": "x"}
    edited = Revision.objects.get(proposal=proposal, number=2)
    assert edited.kind == RevisionKind.EDITED and edited.author == world.reviewer


def test_edit_form_follows_a_json_schema_when_there_is_one(world: Any) -> None:
    from hitl import review_ui

    schema = {
        "type": "object",
        "required": ["cost"],
        "properties": {
            "cost": {"type": "integer", "minimum": 0, "maximum": 1000},
            "mode": {"type": "string", "enum": ["fast", "safe"]},
            "dry_run": {"type": "boolean"},
        },
    }
    fields = {f.key: f for f in review_ui.edit_fields({"cost": 5, "mode": "fast"}, schema)}
    assert fields["cost"].widget == "number" and fields["cost"].maximum == 1000
    assert fields["cost"].required and fields["cost"].step == "1"
    assert fields["mode"].widget == "select" and fields["mode"].choices == ["fast", "safe"]
    assert fields["dry_run"].widget == "checkbox"
    assert review_ui.schema_errors(schema, {"cost": 5000}) == [
        "/cost: 5000 is greater than the maximum of 1000"
    ]


def test_claim_and_release(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    reviewer = browser_for(world.reviewer)
    reviewer.post(f"/queue/{proposal.pk}/claim/")
    proposal.refresh_from_db()
    assert proposal.claimed_by == world.reviewer
    response = browser_for(world.reviewer2).post(
        f"/queue/{proposal.pk}/claim/", HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 409
    reviewer.post(f"/queue/{proposal.pk}/claim/", {"release": "1"})
    proposal.refresh_from_db()
    assert proposal.claimed_by is None


def test_bulk_decide_reports_each_item(world: Any) -> None:
    a = submit(world.submitter, world.checkpoint, title="A")
    b = submit(world.submitter, world.checkpoint, title="B")
    browser_for(world.reviewer2).post(
        f"/queue/{b.pk}/decide/", {"decision": "approve", "revision": 1}
    )
    response = browser_for(world.reviewer).post(
        "/queue/bulk/",
        {"decision": "approve", "comment": "fine", "items": [f"{a.pk}@1", f"{b.pk}@1"]},
        HTTP_HX_REQUEST="true",
    )
    body = response.content.decode()
    assert "<strong>1</strong> decided, <strong>1</strong> refused" in body
    assert 'data-status-code="409"' in body


def test_bulk_refuses_items_of_several_checkpoints(world: Any) -> None:
    from guardian.shortcuts import assign_perm

    from proposals.permissions import REVIEW, SUBMIT

    assign_perm(REVIEW, world.reviewer, world.other_checkpoint)
    assign_perm(SUBMIT, world.submitter, world.other_checkpoint)
    a = submit(world.submitter, world.checkpoint)
    b = submit(world.submitter, world.other_checkpoint)
    response = browser_for(world.reviewer).post(
        "/queue/bulk/", {"decision": "approve", "items": [f"{a.pk}@1", f"{b.pk}@1"]}
    )
    assert response.status_code == 422
    assert not Vote.objects.exists()


def test_no_get_changes_state(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    reviewer = browser_for(world.reviewer)
    before = AuditEvent.objects.count()
    for path in (
        "/queue/{}/decide/?decision=approve&revision=1",
        "/queue/{}/claim/",
        "/queue/bulk/?decision=approve&items={}@1",
    ):
        assert reviewer.get(path.format(proposal.pk)).status_code == 405
    reviewer.get(f"/queue/{proposal.pk}/edit/")
    reviewer.get("/dashboard/apply-threshold/?checkpoint=inspection-schedule&value=0.9")
    assert AuditEvent.objects.count() == before


def test_dashboard_is_for_managers(world: Any) -> None:
    assert browser_for(world.reviewer).get("/dashboard/").status_code == 403
    assert browser_for(world.outsider).get("/dashboard/").status_code == 403
    response = browser_for(world.manager).get("/dashboard/")
    assert response.status_code == 200
    assert 'id="volumes-chart"' in response.content.decode()


def test_apply_threshold_is_audited_and_for_managers_only(world: Any) -> None:
    reviewer = browser_for(world.reviewer)
    data = {"checkpoint": world.checkpoint.slug, "value": "0.9"}
    assert reviewer.post("/dashboard/apply-threshold/", data).status_code == 404
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.auto_approve_at is None
    browser_for(world.manager).post("/dashboard/apply-threshold/", data)
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.auto_approve_at == 0.9
    event = AuditEvent.objects.get(verb="checkpoint.threshold_changed")
    assert event.actor == world.manager and event.data == {
        "field": "auto_approve_at",
        "from": None,
        "to": 0.9,
    }


def test_connect_page_creates_a_key_for_managers_only(world: Any) -> None:
    reviewer = browser_for(world.reviewer)
    assert reviewer.get("/connect/").status_code == 200
    assert reviewer.post("/connect/", {"checkpoint": world.checkpoint.slug}).status_code == 404
    manager = browser_for(world.manager)
    body = manager.post("/connect/", {"checkpoint": world.checkpoint.slug, "name": "bot"})
    text = body.content.decode()
    assert 'id="new-key"' in text
    token = text.split('id="new-key" class="secret">')[1].split("<")[0]
    assert token.startswith("no_") or "_" in token
    assert f"Bearer {token}" in text and "nihil_obstat" in text and "mcpServers" in text
    from hitl.keys import api_key_authenticate
    from proposals.permissions import SUBMIT, access_for

    key = api_key_authenticate(token)
    assert key is not None
    assert access_for(key.user).has(SUBMIT, world.checkpoint.pk)


def test_metrics_summary_is_for_managers(world: Any, client_for: Any) -> None:
    assert client_for(None).get("/api/v1/metrics/summary/").status_code == 401
    assert client_for(world.reviewer).get("/api/v1/metrics/summary/").status_code == 403
    response = client_for(world.manager).get("/api/v1/metrics/summary/?period=24h")
    assert response.status_code == 200
    assert response.json()["checkpoints"] == [world.checkpoint.slug]
    assert client_for(world.manager).get("/api/v1/metrics/summary/?period=1y").status_code == 400
    assert (
        client_for(world.manager)
        .get(f"/api/v1/metrics/summary/?checkpoint={world.other_checkpoint.slug}")
        .status_code
        == 404
    )


def test_pages_send_a_strict_csp(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    reviewer = browser_for(world.reviewer)
    for path in ("/queue/", f"/queue/{proposal.pk}/", "/connect/"):
        policy = reviewer.get(path)["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    login = Client().get("/accounts/login/")
    assert "default-src 'self'" in login["Content-Security-Policy"]
    assert "<script>" not in login.content.decode()


def test_login_locks_out_after_repeated_failures(world: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(3):
        response = client.post(
            "/accounts/login/", {"username": world.reviewer.username, "password": "wrong"}
        )
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    # Even the right password is refused while locked.
    response = client.post(
        "/accounts/login/", {"username": world.reviewer.username, "password": "pw-for-tests-123"}
    )
    assert response.status_code == 429


def test_login_and_logout(world: Any) -> None:
    client = Client()
    response = client.post(
        "/accounts/login/", {"username": world.reviewer.username, "password": "pw-for-tests-123"}
    )
    assert response.status_code == 302 and response["Location"] == "/queue/"
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/queue/").status_code == 302


def test_cancel_and_revoke_from_the_page_follow_the_permission_rules(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    reviewer = browser_for(world.reviewer)
    assert "Cancel this proposal" not in reviewer.get(f"/queue/{proposal.pk}/").content.decode()
    reviewer.post(f"/queue/{proposal.pk}/withdraw/", {"action": "cancel", "reason": "no"})
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING  # a reviewer may not cancel
    manager = browser_for(world.manager)
    assert "Cancel this proposal" in manager.get(f"/queue/{proposal.pk}/").content.decode()
    manager.post(f"/queue/{proposal.pk}/withdraw/", {"action": "cancel", "reason": "dup"})
    proposal.refresh_from_db()
    assert proposal.status == Status.CANCELLED

    approved = submit(world.submitter, world.checkpoint)
    reviewer.post(f"/queue/{approved.pk}/decide/", {"decision": "approve", "revision": 1})
    page = reviewer.get(f"/queue/{approved.pk}/").content.decode()
    assert "Revoke: reject it after all" in page  # the approver, inside the window
    response = reviewer.post(
        f"/queue/{approved.pk}/withdraw/", {"action": "revoke", "reason": ""}, follow=True
    )
    assert "A reason is required to revoke" in response.content.decode()
    reviewer.post(f"/queue/{approved.pk}/withdraw/", {"action": "revoke", "reason": "wrong"})
    approved.refresh_from_db()
    assert approved.status == Status.REJECTED and approved.resolution == "revoked"


def test_edit_preview_keeps_the_reviewers_values_in_the_form(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 450, "urgent": True})
    preview = browser_for(world.reviewer).post(
        f"/queue/{proposal.pk}/edit/", {"step": "preview", "revision": 1, "f-0": "90"}
    )
    form = preview.content.decode().split('id="edit-form"')[1]
    assert 'value="90"' in form and 'value="450"' not in form
    assert 'name="f-1" checked' not in form  # unticked stays unticked


def test_browsers_find_the_icon_without_a_404(client: Any) -> None:
    """Chromium asks every site for /favicon.ico (a 404 in every page's console before)."""
    from django.contrib.staticfiles import finders
    from django.templatetags.static import static

    response = client.get("/favicon.ico")
    assert (response.status_code, response["Location"]) == (301, static("hitl/favicon.svg"))
    assert finders.find("hitl/favicon.svg")
    login = client.get("/accounts/login/")
    assert f'rel="icon" href="{static("hitl/favicon.svg")}"' in login.content.decode()
