"""seed_demo: the example checkpoints, people and proposals, idempotent, and usable as seeded."""

from __future__ import annotations

import json
import stat
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from hitl.keys import api_key_authenticate
from hitl.management.commands.seed_demo import CHECKPOINTS, PROPOSALS, read_credentials
from hitl.models import ApiKey
from proposals import services
from proposals.errors import NotFound
from proposals.models import Checkpoint, Proposal
from proposals.permissions import access_for

pytestmark = pytest.mark.django_db

User = get_user_model()
SLUGS = {"inspection-schedule", "policy-change", "data-purchase", "demo-quick-timeout"}
PEOPLE = {"admin", "manager", "ingrid", "ivan", "alma", "arto", "asha", "bruno", "bianca"}


def seed(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = StringIO()
    call_command(
        "seed_demo", "--json", "--credentials-file", str(tmp_path / "creds.txt"), *extra, stdout=out
    )
    return json.loads(out.getvalue())


def user(username: str) -> Any:
    return User.objects.get(username=username)


def submit(slug: str, **fields: Any) -> Proposal:
    fields.setdefault("title", "From the test")
    return services.proposal_submit(
        submitter=user("demo-agent"),
        checkpoint=Checkpoint.objects.get(slug=slug),
        data=services.ProposalInput(**fields),
    )


def vote(proposal: Proposal, username: str, decision: str = "approve", **kw: Any) -> Proposal:
    kw.setdefault("comment", f"{username} says {decision}")
    updated, _ = services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=user(username),
        decision=decision,
        revision=proposal.revision,
        **kw,
    )
    return updated


@pytest.fixture(autouse=True)
def _no_demo_history(settings: Any) -> None:
    # The generated weeks of history have their own test (tests/hitl/test_dashboard.py);
    # these tests are about the example data, and fast without it.
    settings.HITL_DEMO_HISTORY_DAYS = 0


@pytest.fixture
def seeded(tmp_path: Path) -> dict[str, Any]:
    return seed(tmp_path)


def test_creates_checkpoints_with_the_example_policies(seeded):
    checkpoints = {c.slug: c for c in Checkpoint.objects.all()}
    assert set(checkpoints) == SLUGS

    inspection = checkpoints["inspection-schedule"]
    assert inspection.quorum_rule == "any"

    policy = checkpoints["policy-change"]
    assert (policy.quorum_rule, policy.quorum_count, policy.veto) == ("count", 2, True)

    purchase = checkpoints["data-purchase"]
    assert purchase.review_when == [
        {"path": "cost", "op": "gt", "value": 100},
        {"path": "businesses", "op": "gt", "value": 1000},
    ]
    assert purchase.auto_approve_at == 0.0
    assert (purchase.quorum_rule, purchase.quorum_count) == ("count", 2)
    assert (purchase.timeout_seconds, purchase.timeout_action) == (86400, "reject")

    assert checkpoints["demo-quick-timeout"].timeout_seconds == 120


def test_creates_people_with_the_right_access(seeded):
    assert PEOPLE | {"demo-agent"} <= set(User.objects.values_list("username", flat=True))
    assert user("admin").is_superuser

    manager = user("manager")
    assert manager.is_staff and not manager.is_superuser
    assert manager.has_perm("proposals.view_proposal")
    assert manager.has_perm("audit.view_auditevent")
    every = set(Checkpoint.objects.values_list("pk", flat=True))
    assert access_for(manager).ids("manage_checkpoint") == every

    members = {
        "inspectors": {"ingrid", "ivan"},
        "analysts": {"alma", "arto", "asha"},
        "buyers": {"bruno", "bianca"},
    }
    for group, usernames in members.items():
        assert set(User.objects.filter(groups__name=group).values_list("username", flat=True)) == (
            usernames
        )
    ingrid = user("ingrid")
    assert ingrid.is_staff and ingrid.has_perm("proposals.view_checkpoint")
    reviews = {
        Checkpoint.objects.get(pk=pk).slug for pk in access_for(ingrid).ids("review_checkpoint")
    }
    assert reviews == {"inspection-schedule", "demo-quick-timeout"}

    agent = access_for(user("demo-agent"))
    assert agent.ids("submit_to_checkpoint") == every
    assert not agent.ids("review_checkpoint")
    assert not user("demo-agent").has_usable_password()


def test_prints_a_working_agent_key_and_saves_the_passwords(seeded, tmp_path):
    api_key = api_key_authenticate(seeded["api_key"])
    assert api_key is not None and api_key.user.username == "demo-agent"

    logins = {login["username"]: login["password"] for login in seeded["logins"]}
    assert set(logins) == PEOPLE
    assert all(password and len(password) >= 16 for password in logins.values())
    assert len(set(logins.values())) == len(logins)  # random per user
    assert user("alma").check_password(logins["alma"])

    creds = tmp_path / "creds.txt"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert read_credentials(creds) == logins
    assert seeded["api_key"] not in creds.read_text()  # keys are never stored in clear


def test_seeds_a_dozen_proposals_in_every_state(seeded):
    proposals = Proposal.objects.filter(external_id__startswith="demo-")
    assert proposals.count() == len(PROPOSALS) >= 12
    assert {p.checkpoint.slug for p in proposals} == SLUGS
    outcomes = {(p.status, p.resolution) for p in proposals}
    assert ("approved", "policy") in outcomes
    assert ("approved", "reviewers") in outcomes
    assert ("rejected", "reviewers") in outcomes
    assert ("changes_requested", "") in outcomes
    assert ("pending", "") in outcomes
    assert proposals.exclude(options=[]).filter(status="pending").exists()
    assert proposals.filter(votes__decision="request_changes").exists()
    quick = proposals.get(checkpoint__slug="demo-quick-timeout")
    assert quick.status == "pending"
    assert (quick.due_at - quick.created_at).total_seconds() == 120


def test_running_twice_duplicates_nothing(seeded, tmp_path):
    counts = (
        Checkpoint.objects.count(),
        User.objects.count(),
        Proposal.objects.count(),
        User.objects.get(username="manager").user_permissions.count(),
    )
    first_passwords = read_credentials(tmp_path / "creds.txt")

    again = seed(tmp_path)

    assert again["created"] == {"checkpoints": 0, "users": 0, "proposals": 0}
    assert counts == (
        Checkpoint.objects.count(),
        User.objects.count(),
        Proposal.objects.count(),
        User.objects.get(username="manager").user_permissions.count(),
    )
    # Passwords and the demo key are kept (and shown again from their files).
    assert {login["username"]: login["password"] for login in again["logins"]} == first_passwords
    assert again["api_key"] == seeded["api_key"]
    assert api_key_authenticate(again["api_key"]) is not None
    assert ApiKey.objects.filter(user__username="demo-agent", revoked_at__isnull=True).count() == 1


def test_demo_agent_key_is_kept_across_runs_and_rotates_on_request(seeded, tmp_path):
    """An agent configured with the printed key keeps working after the next `up`."""
    key_file = tmp_path / "demo-api-key"
    assert key_file.read_text().strip() == seeded["api_key"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    assert seed(tmp_path)["api_key"] == seeded["api_key"]

    rotated = seed(tmp_path, "--rotate-key")["api_key"]
    assert rotated != seeded["api_key"]
    assert api_key_authenticate(seeded["api_key"]) is None  # the old key is revoked
    assert api_key_authenticate(rotated) is not None
    assert key_file.read_text().strip() == rotated
    assert ApiKey.objects.filter(user__username="demo-agent", revoked_at__isnull=True).count() == 1


def test_a_kept_demo_key_that_no_longer_works_is_replaced(seeded, tmp_path):
    from hitl.keys import api_key_revoke

    api_key_revoke(api_key=ApiKey.objects.get(user__username="demo-agent"), revoked_by=None)
    again = seed(tmp_path)["api_key"]
    assert again != seeded["api_key"]
    assert api_key_authenticate(again) is not None
    assert (tmp_path / "demo-api-key").read_text().strip() == again


def test_reset_passwords(seeded, tmp_path):
    again = seed(tmp_path, "--reset-passwords")
    before = {login["username"]: login["password"] for login in seeded["logins"]}
    after = {login["username"]: login["password"] for login in again["logins"]}
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before)
    assert user("bruno").check_password(after["bruno"])


@override_settings(SETTINGS_MODULE="config.settings.production")
def test_refuses_production_settings_without_force(tmp_path):
    with pytest.raises(CommandError, match="--force"):
        seed(tmp_path)
    assert not Checkpoint.objects.exists()


def test_human_output_shows_logins_and_key(tmp_path):
    out = StringIO()
    call_command("seed_demo", "--credentials-file", str(tmp_path / "c.txt"), stdout=out)
    text = out.getvalue()
    assert "manager" in text and "nok_" in text and "4 checkpoints" in text


# --- the three example flows, on the seeded data -----------------------------------------------


def test_inspection_schedule_one_inspector_approves(seeded):
    proposal = submit("inspection-schedule", payload={"site": "Mill", "visits_per_year": 2})
    assert proposal.status == "pending"
    with pytest.raises(NotFound):  # analysts cannot even see inspections
        vote(proposal, "alma")
    assert vote(proposal, "ivan").status == "approved"


def test_policy_change_needs_two_analysts_and_one_can_veto(seeded):
    proposal = submit("policy-change", payload={"rule": "x", "to": 1})
    assert vote(proposal, "alma").status == "pending"
    decided = vote(proposal, "asha")
    assert (decided.status, decided.resolution) == ("approved", "reviewers")

    vetoed = submit("policy-change", payload={"rule": "y", "to": 2})
    vote(vetoed, "alma")
    assert vote(vetoed, "arto", "reject").status == "rejected"


def test_data_purchase_small_passes_by_policy_big_needs_two_buyers(seeded):
    small = submit("data-purchase", payload={"cost": 60, "businesses": 500}, confidence=0.4)
    assert (small.status, small.resolution) == ("approved", "policy")

    for payload in ({"cost": 101, "businesses": 10}, {"cost": 10, "businesses": 1001}):
        big = submit("data-purchase", payload=payload, confidence=0.99, impact=Decimal(1))
        assert big.status == "pending"
        assert (big.due_at - big.created_at).total_seconds() == 86400
        assert vote(big, "bruno").status == "pending"
        assert vote(big, "bianca").status == "approved"


def test_checkpoint_definitions_are_valid():
    for slug, fields in CHECKPOINTS.items():
        Checkpoint(slug=slug, **fields).full_clean()
