"""Managers manage in the admin: the demo `manager` ("manages every checkpoint") and a manager
of one checkpoint can do everything the admin offers on their checkpoints with
`manage_checkpoint` alone, no Django model permission needed; grants go to users or groups;
an agent (service account, submit grant, API key) is connected in one place.

Driven through the admin pages with Django's test client, as the demo manager would click.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEvent
from hitl.keys import api_key_authenticate
from hitl.models import ServiceAccount
from proposals.models import Checkpoint, Proposal
from proposals.permissions import MANAGE, REVIEW, SUBMIT, access_for
from tests.factories import make_service_account, token_for
from tests.hitl.test_admin import checkpoint_form, login, make_staff

pytestmark = pytest.mark.django_db

User = get_user_model()
CHECKPOINTS = "/admin/proposals/checkpoint/"


def change_url(checkpoint: Checkpoint) -> str:
    return f"{CHECKPOINTS}{checkpoint.pk}/change/"


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def demo(tmp_path: Path) -> Client:
    """The seeded demo, logged in as its manager."""
    call_command(
        "seed_demo", "--json", "--credentials-file", str(tmp_path / "c.txt"), stdout=StringIO()
    )
    return login(User.objects.get(username="manager"))


def test_demo_manager_adds_a_checkpoint(demo: Client) -> None:
    assert demo.get(f"{CHECKPOINTS}add/").status_code == 200
    template = Checkpoint.objects.get(slug="inspection-schedule")
    inspectors = Group.objects.get(name="inspectors")
    response = demo.post(
        f"{CHECKPOINTS}add/",
        checkpoint_form(
            template,
            slug="product-recalls",
            name="Product recalls",
            approver_groups=[inspectors.pk],
            escalation_groups=[],
            manager_groups=[],
            submitter_groups=[],
            approver_users=[],
            escalation_users=[],
            manager_users=[],
            submitter_users=[User.objects.get(username="demo-agent").pk],
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Checkpoint.objects.get(slug="product-recalls")
    assert access_for(User.objects.get(username="ingrid")).has(REVIEW, created.pk)
    assert access_for(User.objects.get(username="demo-agent")).has(SUBMIT, created.pk)


def test_demo_manager_edits_and_grants_review_and_submit_to_single_users(demo: Client) -> None:
    checkpoint = Checkpoint.objects.get(slug="data-purchase")
    page = demo.get(change_url(checkpoint))
    assert page.status_code == 200
    assert page.context["has_change_permission"] is True  # not the read-only page
    assert "Connect an agent" in page.content.decode()

    bianca = User.objects.get(username="bianca")
    ivan = User.objects.get(username="ivan")  # an inspector, not a buyer
    crawler = make_service_account("crawler")  # no grant anywhere yet
    response = demo.post(
        change_url(checkpoint),
        checkpoint_form(
            checkpoint,
            name="Data purchase (EU)",
            approver_users=[ivan.pk],
            submitter_users=[crawler.pk],
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    checkpoint.refresh_from_db()
    assert checkpoint.name == "Data purchase (EU)"
    assert access_for(ivan).has(REVIEW, checkpoint.pk)
    assert access_for(bianca).has(REVIEW, checkpoint.pk)  # her group's grant is untouched
    assert access_for(crawler).has(SUBMIT, checkpoint.pk)
    event = AuditEvent.objects.filter(verb="checkpoint.grants_changed").latest("seq")
    assert event.actor_label == "manager"

    # The user grant is a real one: the account submits through the API.
    token = token_for(crawler)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    submitted = api.post(
        "/api/v1/proposals/",
        {"checkpoint": checkpoint.slug, "title": "Buy 10 leads", "payload": {"cost": 5}},
        format="json",
    )
    assert submitted.status_code == 201, submitted.json()

    # Clearing the selection removes the grant again.
    demo.post(change_url(checkpoint), checkpoint_form(checkpoint, approver_users=[]))
    assert not access_for(ivan).has(REVIEW, checkpoint.pk)


def test_demo_manager_runs_the_emergency_bypass(demo: Client) -> None:
    checkpoint = Checkpoint.objects.get(slug="policy-change")
    selected = {"action": "start_bypass", helpers.ACTION_CHECKBOX_NAME: [checkpoint.pk]}
    changelist = demo.get(CHECKPOINTS)
    assert "start_bypass" in changelist.content.decode()  # the actions are offered
    demo.post(
        CHECKPOINTS,
        {
            **selected,
            "apply": "yes",
            "until_0": "2999-01-01",
            "until_1": "00:00:00",
            "reason": "regulator outage",
        },
    )
    checkpoint.refresh_from_db()
    assert checkpoint.bypass_reason == "regulator outage"
    demo.post(CHECKPOINTS, {"action": "end_bypass", helpers.ACTION_CHECKBOX_NAME: [checkpoint.pk]})
    checkpoint.refresh_from_db()
    assert checkpoint.bypass_until is None


def test_demo_manager_connects_an_agent_in_one_place(demo: Client) -> None:
    checkpoint = Checkpoint.objects.get(slug="inspection-schedule")
    url = f"{CHECKPOINTS}{checkpoint.pk}/agent/"
    assert demo.get(url).status_code == 200
    response = demo.post(
        url,
        {"username": "site-planner", "description": "Plans visits", "key_name": "prod"},
        follow=True,
    )
    assert response.status_code == 200
    shown = " ".join(messages_of(response))
    token = shown.split('<code class="hitl-token">', 1)[1].split("</code>", 1)[0]
    api_key = api_key_authenticate(token)
    assert api_key is not None and api_key.user.username == "site-planner"
    assert ServiceAccount.objects.filter(user__username="site-planner").exists()
    assert "signs its callback_url webhooks" in shown
    access = access_for(api_key.user)
    assert access.ids(SUBMIT) == {checkpoint.pk}  # this checkpoint only

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    submitted = api.post(
        "/api/v1/proposals/",
        {"checkpoint": checkpoint.slug, "title": "Inspect the mill", "payload": {"site": "mill"}},
        format="json",
    )
    assert submitted.status_code == 201, submitted.json()
    assert Proposal.objects.filter(submitted_by=api_key.user).count() == 1


def test_manager_of_one_checkpoint_needs_no_model_permission(world: Any) -> None:
    """manage_checkpoint on one checkpoint, staff, and nothing else."""
    mona = login(make_staff(world.manager))
    listed = mona.get(CHECKPOINTS)
    assert listed.status_code == 200
    assert [c.pk for c in listed.context["cl"].result_list] == [world.checkpoint.pk]
    response = mona.post(
        change_url(world.checkpoint), checkpoint_form(world.checkpoint, name="Renamed")
    )
    assert response.status_code == 302
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.name == "Renamed"
    assert access_for(world.manager).has(MANAGE, world.checkpoint.pk)  # kept her own grant
    assert mona.get(f"{CHECKPOINTS}add/").status_code == 403  # adding is the global role's
    other_agent = f"{CHECKPOINTS}{world.other_checkpoint.pk}/agent/"
    assert mona.post(other_agent, {"username": "x", "key_name": "k"}).status_code in (302, 404)
    assert not User.objects.filter(username="x").exists()


def test_a_reviewer_sees_the_checkpoint_read_only(world: Any) -> None:
    rita = login(make_staff(world.reviewer))
    page = rita.get(change_url(world.checkpoint))
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    refused = rita.post(change_url(world.checkpoint), checkpoint_form(world.checkpoint, name="N"))
    assert refused.status_code == 403
    agent = rita.post(
        f"{CHECKPOINTS}{world.checkpoint.pk}/agent/", {"username": "y", "key_name": "k"}
    )
    assert agent.status_code == 403
