"""Every endpoint for every role: who gets 2xx, who 403 (sees it, may not act), who 404 (may not
even know it exists), and 401 for the anonymous. A proposal's state only changes on a 2xx."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from proposals import services
from proposals.models import Proposal, Vote
from proposals.permissions import REVIEW_ESCALATED, SUBMIT
from tests.factories import UserFactory, make_service_account, submit

pytestmark = pytest.mark.django_db

ROLES = ["submitter", "reviewer", "reviewer2", "other_reviewer", "manager", "outsider", "anonymous"]
API = "/api/v1"


def user_of(world: Any, role: str) -> Any:
    return None if role == "anonymous" else getattr(world, role)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def assert_unauthenticated(response: Any) -> None:
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer"), response.headers


# --- states a proposal is put in before the request ----------------------------------------


def make_pending(world: Any) -> Proposal:
    return submit(world.submitter, world.checkpoint, title="Inspect", payload={"frequency": 4})


def make_changes_requested(world: Any) -> Proposal:
    proposal = make_pending(world)
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="request_changes",
        revision=1,
        comment="explain the frequency",
    )
    return proposal


def make_approved(world: Any) -> Proposal:
    proposal = make_pending(world)
    services.vote_cast(
        proposal_id=proposal.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    return proposal


def make_claimed(world: Any) -> Proposal:
    proposal = make_pending(world)
    services.proposal_claim(proposal_id=proposal.pk, actor=world.reviewer)
    return proposal


def snapshot(pk: Any) -> tuple[Any, ...]:
    p = Proposal.objects.get(pk=pk)
    return (
        p.status,
        p.resolution,
        p.revision,
        p.payload,
        p.claimed_by_id,
        Vote.objects.filter(proposal_id=pk).count(),
        AuditEvent.objects.filter(proposal_id=pk).count(),
    )


# --- the table -----------------------------------------------------------------------------

OK_READ = {"submitter": 200, "reviewer": 200, "reviewer2": 200, "manager": 200}
HIDDEN = {"other_reviewer": 404, "outsider": 404, "anonymous": 401}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    suffix: str  # appended to /proposals/{id}/
    setup: Callable[[Any], Proposal]
    expected: dict[str, int]
    body: dict[str, Any] | None = None
    # Checked after a 2xx: (proposal after, acting user) -> None
    effect: Callable[[Proposal, Any], None] | None = None
    codes: dict[int, str] = field(default_factory=dict)


def _voted(p: Proposal, user: Any) -> None:
    assert p.status == "approved"
    assert list(p.votes.values_list("reviewer_id", flat=True)) == [user.pk]


def _revised(p: Proposal, user: Any) -> None:
    assert (p.status, p.revision, p.payload) == ("pending", 2, {"frequency": 2})


def _cancelled(p: Proposal, user: Any) -> None:
    assert (p.status, p.resolution) == ("cancelled", "cancelled")


def _revoked(p: Proposal, user: Any) -> None:
    assert (p.status, p.resolution) == ("rejected", "revoked")


def _claimed(p: Proposal, user: Any) -> None:
    assert p.claimed_by_id == user.pk and p.claimed_until is not None


def _released(p: Proposal, user: Any) -> None:
    assert p.claimed_by_id is None and p.claimed_until is None


CASES = [
    Case("detail", "get", "", make_pending, {**OK_READ, **HIDDEN}),
    Case("wait", "get", "wait/?timeout=0", make_pending, {**OK_READ, **HIDDEN}),
    Case("events", "get", "events/", make_pending, {**OK_READ, **HIDDEN}),
    Case(
        "vote",
        "post",
        "votes/",
        make_pending,
        # The submitter never votes on its own proposal; a manager is not a reviewer.
        {"submitter": 403, "reviewer": 201, "reviewer2": 201, "manager": 403, **HIDDEN},
        body={"decision": "approve", "revision": 1, "comment": "ok"},
        effect=_voted,
    ),
    Case(
        "revise",
        "post",
        "revisions/",
        make_changes_requested,
        {"submitter": 201, "reviewer": 403, "reviewer2": 403, "manager": 403, **HIDDEN},
        body={"payload": {"frequency": 2}, "comment": "halved"},
        effect=_revised,
    ),
    Case(
        "cancel",
        "post",
        "cancel/",
        make_pending,
        {"submitter": 200, "reviewer": 403, "reviewer2": 403, "manager": 200, **HIDDEN},
        body={"reason": "not needed"},
        effect=_cancelled,
    ),
    Case(
        "revoke",
        "post",
        "revoke/",
        make_approved,
        # rita approved it and may revoke her approval; raj did not vote.
        {"submitter": 403, "reviewer": 200, "reviewer2": 403, "manager": 200, **HIDDEN},
        body={"reason": "wrong site"},
        effect=_revoked,
    ),
    Case(
        "claim",
        "post",
        "claim/",
        make_pending,
        {"submitter": 403, "reviewer": 200, "reviewer2": 200, "manager": 403, **HIDDEN},
        effect=_claimed,
    ),
    Case(
        "release",
        "delete",
        "claim/",
        make_claimed,  # held by rita
        {"submitter": 403, "reviewer": 200, "reviewer2": 403, "manager": 200, **HIDDEN},
        effect=_released,
    ),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_proposal_endpoint_matrix(world, client_for, case: Case, role: str):
    proposal = case.setup(world)
    before = snapshot(proposal.pk)
    user = user_of(world, role)
    client = client_for(user)
    url = f"{API}/proposals/{proposal.pk}/{case.suffix}"
    if case.method == "get":
        response = client.get(url)
    else:
        response = getattr(client, case.method)(url, case.body or {}, format="json")

    expected = case.expected[role]
    if expected == 401:
        assert_unauthenticated(response)
    elif expected == 404:
        body = assert_error(response, 404, "not_found")
        # No existence leak: the same answer as for an id that does not exist at all.
        assert str(proposal.pk) not in str(body)
        assert proposal.title not in str(body)
    elif expected == 403:
        assert_error(response, 403, "permission_denied")
    else:
        assert response.status_code == expected, (response.status_code, response.json())
        if case.name == "events":
            verbs = [e["verb"] for e in response.json()["results"]]
            assert verbs[0] == "proposal.submitted"
        else:
            assert response.json()["id"] == str(proposal.pk)

    after = Proposal.objects.get(pk=proposal.pk)
    if 200 <= expected < 300 and case.effect is not None:
        case.effect(after, user)
    else:
        assert snapshot(proposal.pk) == before, "a refused or read-only request changed state"


def test_unknown_proposal_is_404_like_an_invisible_one(world, client_for):
    """Outsiders cannot tell "exists but hidden" from "does not exist"."""
    proposal = make_pending(world)
    outsider = client_for(world.outsider)
    hidden = outsider.get(f"{API}/proposals/{proposal.pk}/")
    missing = outsider.get(f"{API}/proposals/00000000-0000-4000-8000-000000000000/")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


# --- checkpoints ---------------------------------------------------------------------------

CHECKPOINT_LIST = {
    "submitter": ["inspection-schedule"],
    "reviewer": ["inspection-schedule"],
    "reviewer2": ["inspection-schedule"],
    "other_reviewer": ["elsewhere"],
    "manager": ["inspection-schedule"],
    "outsider": [],
}


@pytest.mark.parametrize("role", ROLES)
def test_checkpoint_list(world, client_for, role):
    response = client_for(user_of(world, role)).get(f"{API}/checkpoints/")
    if role == "anonymous":
        assert_unauthenticated(response)
        return
    assert response.status_code == 200
    assert [c["slug"] for c in response.json()["results"]] == CHECKPOINT_LIST[role]


@pytest.mark.parametrize(
    ("role", "slug", "expected"),
    [
        ("submitter", "inspection-schedule", 200),
        ("reviewer", "inspection-schedule", 200),
        ("reviewer2", "inspection-schedule", 200),
        ("manager", "inspection-schedule", 200),
        ("other_reviewer", "inspection-schedule", 404),
        ("other_reviewer", "elsewhere", 200),
        ("outsider", "inspection-schedule", 404),
        ("outsider", "elsewhere", 404),
        ("submitter", "elsewhere", 404),
        ("manager", "no-such-checkpoint", 404),
        ("anonymous", "inspection-schedule", 401),
    ],
)
def test_checkpoint_detail(world, client_for, role, slug, expected):
    response = client_for(user_of(world, role)).get(f"{API}/checkpoints/{slug}/")
    if expected == 401:
        assert_unauthenticated(response)
    elif expected == 404:
        assert_error(response, 404, "not_found")
    else:
        assert response.status_code == 200
        assert response.json()["slug"] == slug


# --- submitting ----------------------------------------------------------------------------

SUBMIT_EXPECTED = {
    "submitter": 201,
    # They see the checkpoint but hold no submit permission on it.
    "reviewer": 403,
    "reviewer2": 403,
    "manager": 403,
    # They cannot see the checkpoint: to them it does not exist (a 400 on the field).
    "other_reviewer": 400,
    "outsider": 400,
    "anonymous": 401,
}
NEW = {"checkpoint": "inspection-schedule", "title": "Inspect", "payload": {"frequency": 4}}


@pytest.mark.parametrize("role", ROLES)
def test_submit(world, client_for, role):
    response = client_for(user_of(world, role)).post(f"{API}/proposals/", NEW, format="json")
    expected = SUBMIT_EXPECTED[role]
    if expected == 401:
        assert_unauthenticated(response)
    elif expected == 403:
        assert_error(response, 403, "permission_denied")
    elif expected == 400:
        body = assert_error(response, 400, "invalid")
        assert "checkpoint" in body["error"]["details"]
    else:
        assert response.status_code == 201
        assert response.json()["submitted_by"] == "agent-smith"
    assert Proposal.objects.count() == (1 if expected == 201 else 0)


@pytest.mark.parametrize("role", ROLES)
def test_bulk_submit(world, client_for, role):
    response = client_for(user_of(world, role)).post(
        f"{API}/proposals/bulk/", {"proposals": [NEW, {**NEW, "title": "Second"}]}, format="json"
    )
    expected = SUBMIT_EXPECTED[role]
    if expected == 401:
        assert_unauthenticated(response)
        assert Proposal.objects.count() == 0
        return
    assert response.status_code == 200, response.json()
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert [r["status"] for r in results] == [expected, expected]
    if expected == 201:
        assert [r["proposal"]["title"] for r in results] == ["Inspect", "Second"]
    else:
        codes = {403: "permission_denied", 400: "invalid"}
        assert [r["error"]["code"] for r in results] == [codes[expected]] * 2
    assert Proposal.objects.count() == (2 if expected == 201 else 0)


# --- lists: exactly what each role sees (no IDOR through the list) --------------------------


@pytest.fixture
def listing(world):
    """a: agent's, pending. b: agent's, cancelled. c: on the other checkpoint.
    d: submitted by rita (a human reviewer who may also submit here)."""
    assign_perm(SUBMIT, world.reviewer, world.checkpoint)
    other_agent = make_service_account("agent-other", world.other_checkpoint)
    a = submit(world.submitter, world.checkpoint, title="a", external_id="ext-a")
    b = submit(world.submitter, world.checkpoint, title="b", external_id="ext-b")
    services.proposal_cancel(proposal_id=b.pk, actor=world.submitter, reason="dup")
    c = submit(other_agent, world.other_checkpoint, title="c", external_id="ext-c")
    d = submit(world.reviewer, world.checkpoint, title="d", external_id="ext-d")
    return {"a": a, "b": b, "c": c, "d": d}


# role -> (plain list, reviewable=me, submitted=me), as proposal names.
LIST_EXPECTED = {
    "submitter": ("ab", "", "ab"),
    # rita never reviews her own d (separation of duties), but sees it as its submitter.
    "reviewer": ("abd", "ab", "d"),
    "reviewer2": ("abd", "abd", ""),
    "other_reviewer": ("c", "c", ""),
    "manager": ("abd", "", ""),
    "outsider": ("", "", ""),
}


def _ids(client: Any, query: str = "") -> set[str]:
    response = client.get(f"{API}/proposals/{query}")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["next"] is None
    ids = [p["id"] for p in body["results"]]
    assert len(ids) == len(set(ids)), "duplicates in a list"
    return set(ids)


@pytest.mark.parametrize("role", ROLES)
def test_list_visibility(world, client_for, listing, role):
    client = client_for(user_of(world, role))
    if role == "anonymous":
        for query in ("", "?reviewable=me", "?submitted=me"):
            assert_unauthenticated(client.get(f"{API}/proposals/{query}"))
        return

    def named(names: str) -> set[str]:
        return {str(listing[n].pk) for n in names}

    plain, reviewable, submitted = LIST_EXPECTED[role]
    assert _ids(client) == named(plain)
    assert _ids(client, "?reviewable=me") == named(reviewable)
    assert _ids(client, "?submitted=me") == named(submitted)
    # Filters narrow the visible set; they never widen it.
    assert _ids(client, "?checkpoint=inspection-schedule") == named(plain.replace("c", ""))
    assert _ids(client, "?status=pending") == named(plain.replace("b", ""))
    assert _ids(client, "?checkpoint=elsewhere&status=pending,cancelled") == named(
        "c" if "c" in plain else ""
    )


@pytest.mark.parametrize("role", ["other_reviewer", "outsider"])
def test_hidden_proposals_are_unreachable_by_id_and_by_filter(world, client_for, listing, role):
    client = client_for(user_of(world, role))
    for name in "abd":
        pk = listing[name].pk
        for suffix in ("", "wait/?timeout=0", "events/"):
            assert client.get(f"{API}/proposals/{pk}/{suffix}").status_code == 404
        # Guessing a filter value that matches the hidden row yields nothing either.
        assert _ids(client, f"?external_id={listing[name].external_id}") == set()
    assert _ids(client, "?checkpoint=inspection-schedule") == set()
    assert _ids(client, "?status=pending,cancelled&checkpoint=inspection-schedule") == set()


# --- managers and escalation ---------------------------------------------------------------


def test_manager_votes_only_when_also_a_reviewer(world, client_for):
    from django.contrib.auth.models import Group

    proposal = make_pending(world)
    manager = client_for(world.manager)
    url = f"{API}/proposals/{proposal.pk}/votes/"
    vote = {"decision": "approve", "revision": 1}
    assert_error(manager.post(url, vote, format="json"), 403, "permission_denied")
    assert manager.get(f"{API}/proposals/{proposal.pk}/").json()["permissions"] == {
        "vote": False,
        "revise": False,
        "cancel": True,
        "revoke": False,
        "claim": False,
        "manage": True,
    }

    world.manager.groups.add(Group.objects.get(name="approvers"))
    response = manager.post(url, vote, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "approved"
    assert response.json()["vote"]["reviewer"] == "mona"


def test_escalation_reviewer_sees_only_escalated_proposals(world, client_for):
    escalator = UserFactory(username="esme")
    assign_perm(REVIEW_ESCALATED, escalator, world.checkpoint)
    proposal = make_pending(world)
    other = make_pending(world)
    client = client_for(escalator)
    detail = f"{API}/proposals/{proposal.pk}/"
    vote = {"decision": "approve", "revision": 1}

    # Not escalated yet: invisible everywhere.
    assert _ids(client) == set()
    assert _ids(client, "?reviewable=me") == set()
    for suffix in ("", "wait/?timeout=0", "events/"):
        assert_error(client.get(detail + suffix), 404, "not_found")
    for suffix in ("votes/", "claim/", "cancel/", "revoke/"):
        assert_error(client.post(detail + suffix, vote, format="json"), 404, "not_found")
    assert Proposal.objects.get(pk=proposal.pk).status == "pending"

    Proposal.objects.filter(pk=proposal.pk).update(escalated_at=timezone.now())

    assert _ids(client) == {str(proposal.pk)}
    assert _ids(client, "?reviewable=me") == {str(proposal.pk)}
    assert client.get(detail).status_code == 200
    assert client.get(detail + "events/").status_code == 200
    # Still not a manager.
    assert_error(client.post(detail + "cancel/", {}, format="json"), 403, "permission_denied")
    assert client.post(detail + "claim/").status_code == 200
    response = client.post(detail + "votes/", vote, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "approved"
    # The unescalated sibling stays hidden.
    assert client.get(f"{API}/proposals/{other.pk}/").status_code == 404


def test_anonymous_gets_401_on_every_endpoint(world, client_for):
    proposal = make_pending(world)
    anon = client_for(None)
    base = f"{API}/proposals/{proposal.pk}/"
    calls = [
        ("get", f"{API}/checkpoints/"),
        ("get", f"{API}/checkpoints/inspection-schedule/"),
        ("get", f"{API}/proposals/"),
        ("post", f"{API}/proposals/"),
        ("post", f"{API}/proposals/bulk/"),
        ("get", base),
        ("get", base + "wait/?timeout=0"),
        ("post", base + "votes/"),
        ("post", base + "revisions/"),
        ("post", base + "cancel/"),
        ("post", base + "revoke/"),
        ("post", base + "claim/"),
        ("delete", base + "claim/"),
        ("get", base + "events/"),
        # Even for ids that do not exist: authentication comes first. (A path whose id is not
        # a UUID is no API route at all: a 404 for everyone, see test_api_contract.)
        ("post", f"{API}/proposals/00000000-0000-4000-8000-000000000000/cancel/"),
    ]
    before = snapshot(proposal.pk)
    for method, url in calls:
        kwargs = {"format": "json"} if method != "get" else {}
        response = getattr(anon, method)(url, **kwargs)
        assert response.status_code == 401, (method, url, response.status_code)
        assert_unauthenticated(response)
    assert snapshot(proposal.pk) == before
