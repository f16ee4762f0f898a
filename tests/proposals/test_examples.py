"""The three examples from the issue, end to end through the REST API with bearer keys, each
building its own checkpoint (no seed data)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from proposals.permissions import MANAGE
from tests.factories import (
    CheckpointFactory,
    GroupFactory,
    UserFactory,
    grant_review,
    make_service_account,
)

pytestmark = pytest.mark.django_db

API = "/api/v1"


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message", "details"}}."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def reviewers(checkpoint: Any, group_name: str, *usernames: str) -> list[Any]:
    group = GroupFactory(name=group_name)
    grant_review(group, checkpoint)
    users = [UserFactory(username=name) for name in usernames]
    for user in users:
        user.groups.add(group)
    return users


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def post(client: APIClient, path: str, data: dict[str, Any] | None = None) -> Any:
    return client.post(f"{API}{path}", data or {}, format="json")


# --- 1. Environmental agency -------------------------------------------------------------------


def test_environmental_agency_edits_an_inspection_schedule(client_for: Any) -> None:
    checkpoint = CheckpointFactory(
        slug="inspection-schedule", name="Inspection schedule", quorum_rule="any"
    )
    (lena,) = reviewers(checkpoint, "inspection-leads", "lena")
    mark = UserFactory(username="mark")
    assign_perm(MANAGE, mark, checkpoint)
    planner = make_service_account("schedule-planner", checkpoint)
    agent, lead, manager = client_for(planner), client_for(lena), client_for(mark)

    schedule = {
        "facilities": [
            {"id": "F-001", "name": "Riverside tannery", "risk": "high"},
            {"id": "F-017", "name": "North quarry", "risk": "low"},
        ],
        "inspection_frequency_per_year": 4,
        "starts_on": "2025-04-01",
    }
    created = ok(
        post(
            agent,
            "/proposals/",
            {
                "checkpoint": "inspection-schedule",
                "title": "Q2 inspection schedule, Region1",
                "payload": schedule,
                "region": "Region1",
                "confidence": 0.72,
                "context": {"explanation": "Complaints doubled since January."},
            },
        ),
        201,
    )
    assert (created["status"], created["revision"], created["region"]) == ("pending", 1, "Region1")
    pid = created["id"]
    # Noise the filter must leave out: another region, and a Region1 item no longer pending.
    ok(
        post(
            agent,
            "/proposals/",
            {
                "checkpoint": checkpoint.slug,
                "title": "R2",
                "payload": {"x": 1},
                "region": "Region2",
            },
        ),
        201,
    )
    withdrawn = ok(
        post(
            agent,
            "/proposals/",
            {
                "checkpoint": checkpoint.slug,
                "title": "old",
                "payload": {"x": 2},
                "region": "Region1",
            },
        ),
        201,
    )
    ok(post(agent, f"/proposals/{withdrawn['id']}/cancel/", {"reason": "superseded"}))

    for client in (lead, manager):
        listing = ok(client.get(f"{API}/proposals/?status=pending&region=Region1"))
        assert [p["id"] for p in listing["results"]] == [pid]

    detail = ok(lead.get(f"{API}/proposals/{pid}/"))
    assert detail["payload"] == schedule
    assert [r["number"] for r in detail["revisions"]] == [1]
    assert detail["permissions"]["vote"] is True
    assert ok(manager.get(f"{API}/proposals/{pid}/"))["permissions"]["vote"] is False

    comment = "Twice a year is enough: the quarry is low risk."
    voted = ok(
        post(
            lead,
            f"/proposals/{pid}/votes/",
            {
                "decision": "approve",
                "revision": 1,
                "adjustments": {"inspection_frequency_per_year": 2},
                "comment": comment,
            },
        ),
        201,
    )
    edited_schedule = {**schedule, "inspection_frequency_per_year": 2}
    assert (voted["status"], voted["resolution"], voted["revision"]) == (
        "approved",
        "reviewers",
        2,
    )
    assert voted["approved_payload"] == edited_schedule
    assert voted["vote"]["reviewer"] == "lena" and voted["vote"]["comment"] == comment
    edit_revision = voted["revisions"][1]
    assert (edit_revision["kind"], edit_revision["author"]) == ("edited", "lena")

    # The agent gets the edited schedule back.
    seen_by_agent = ok(agent.get(f"{API}/proposals/{pid}/wait/?timeout=0"))
    assert seen_by_agent["status"] == "approved"
    assert seen_by_agent["approved_payload"] == edited_schedule
    assert seen_by_agent["revisions"][0]["payload"] == schedule  # the original is kept

    # The trail: who, when, the diff and the comment.
    events = ok(manager.get(f"{API}/proposals/{pid}/events/"))["results"]
    assert [e["verb"] for e in events] == [
        "proposal.submitted",
        "proposal.edited",
        "proposal.vote_cast",
        "proposal.approved",
    ]
    submitted, edited, cast, approved = events
    assert submitted["actor"] == "schedule-planner"
    assert edited["actor"] == "lena"
    assert edited["data"]["patch"] == [
        {"op": "replace", "path": "/inspection_frequency_per_year", "value": 2}
    ]
    assert edited["reason"] == comment
    assert edited["revision"] == 2
    assert cast["actor"] == "lena" and cast["reason"] == comment
    assert cast["data"]["decision"] == "approve"
    assert approved["actor"] == "lena"
    assert (
        when(submitted["created_at"]) <= when(edited["created_at"]) <= when(approved["created_at"])
    )
    decided = when(voted["decided_at"])
    assert decided <= when(approved["created_at"]) < decided + timedelta(seconds=5)
    # Hash-chained, in order.
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(e["hash"] and len(e["hash"]) == 64 for e in events)

    late = post(manager, f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 2})
    error(late, 403, "permission_denied")  # managing is not reviewing
    again = post(lead, f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 2})
    error(again, 409, "invalid_transition")


# --- 2. Financial regulator --------------------------------------------------------------------


def test_financial_regulator_two_analysts_approve_the_revised_policy(client_for: Any) -> None:
    checkpoint = CheckpointFactory(
        slug="policy-change", name="Policy change", quorum_rule="count", quorum_count=2, veto=True
    )
    ana, ben, cleo = reviewers(checkpoint, "analysts", "ana", "ben", "cleo")
    drafter = make_service_account("policy-drafter", checkpoint)
    agent = client_for(drafter)
    a, b, c = client_for(ana), client_for(ben), client_for(cleo)

    draft = {"rule": "capital-buffer", "ratio": 0.12, "effective": "2025-07-01"}
    created = ok(
        post(
            agent,
            "/proposals/",
            {
                "checkpoint": "policy-change",
                "title": "Raise the capital buffer",
                "payload": draft,
                "confidence": 0.81,
                "priority": "high",
            },
        ),
        201,
    )
    pid = created["id"]
    assert (created["status"], created["quorum_required"], created["eligible_reviewers"]) == (
        "pending",
        2,
        3,
    )

    feedback = "A 12% jump in one step is too abrupt; phase it in from 10%."
    asked = ok(
        post(
            a,
            f"/proposals/{pid}/votes/",
            {"decision": "request_changes", "revision": 1, "comment": feedback},
        ),
        201,
    )
    assert asked["status"] == "changes_requested"

    # The agent sees the feedback, and may revise.
    seen = ok(agent.get(f"{API}/proposals/{pid}/"))
    assert seen["status"] == "changes_requested"
    assert [(v["reviewer"], v["decision"], v["comment"]) for v in seen["votes"]] == [
        ("ana", "request_changes", feedback)
    ]
    assert seen["permissions"]["revise"] is True
    # Nobody votes while the submitter works on it.
    error(
        post(b, f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 1}),
        409,
        "invalid_transition",
    )
    # Only the submitter revises.
    error(post(b, f"/proposals/{pid}/revisions/", {"payload": draft}), 403, "permission_denied")

    revised = {**draft, "ratio": 0.10, "phase_in": {"2026-01-01": 0.12}}
    second = ok(
        post(
            agent,
            f"/proposals/{pid}/revisions/",
            {"payload": revised, "summary": "Phased in", "comment": "10% now, 12% next year"},
        ),
        201,
    )
    assert (second["status"], second["revision"], second["payload"]) == ("pending", 2, revised)
    r2 = second["revisions"][1]
    assert (r2["number"], r2["kind"], r2["author"], r2["reason"]) == (
        2,
        "resubmitted",
        "policy-drafter",
        "10% now, 12% next year",
    )
    assert {"op": "replace", "path": "/ratio", "value": 0.10} in r2["patch"]

    stale = post(b, f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 1})
    assert error(stale, 409, "stale_revision")["details"] == {"revision": 2}

    one = ok(post(a, f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 2}), 201)
    assert one["status"] == "pending"
    assert one["quorum"]["approvals"] == 1 and one["quorum"]["required"] == 2
    two = ok(
        post(
            b, f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 2, "comment": "ok"}
        ),
        201,
    )
    assert (two["status"], two["resolution"]) == ("approved", "reviewers")
    assert two["approved_payload"] == revised
    approvals = {(v["reviewer"], v["revision"]) for v in two["votes"] if v["decision"] == "approve"}
    assert approvals == {("ana", 2), ("ben", 2)}

    error(
        post(c, f"/proposals/{pid}/votes/", {"decision": "reject", "revision": 2, "comment": "no"}),
        409,
        "invalid_transition",
    )
    verbs = [e["verb"] for e in ok(a.get(f"{API}/proposals/{pid}/events/"))["results"]]
    assert verbs == [
        "proposal.submitted",
        "proposal.vote_cast",
        "proposal.changes_requested",
        "proposal.revised",
        "proposal.vote_cast",
        "proposal.vote_cast",
        "proposal.approved",
    ]

    # With veto, a single analyst's reject ends another proposal at once.
    other = ok(
        post(agent, "/proposals/", {"checkpoint": "policy-change", "title": "t", "payload": draft}),
        201,
    )
    ok(post(a, f"/proposals/{other['id']}/votes/", {"decision": "approve", "revision": 1}), 201)
    vetoed = ok(
        post(
            c,
            f"/proposals/{other['id']}/votes/",
            {"decision": "reject", "revision": 1, "comment": "Conflicts with Basel III."},
        ),
        201,
    )
    assert (vetoed["status"], vetoed["resolution"]) == ("rejected", "reviewers")


# --- 3. Lead generation ------------------------------------------------------------------------


def test_lead_generation_buys_small_lists_and_asks_two_humans_for_big_ones(
    client_for: Any,
) -> None:
    checkpoint = CheckpointFactory(
        slug="data-purchase",
        name="Data purchase",
        review_when=[
            {"path": "cost", "op": "gt", "value": 100},
            {"path": "businesses", "op": "gt", "value": 1000},
        ],
        auto_approve_at=0.0,
        quorum_rule="count",
        quorum_count=2,
        timeout_seconds=86400,
        timeout_action="reject",
    )
    pat, quinn = reviewers(checkpoint, "buyers", "pat", "quinn")
    buyer = make_service_account("lead-buyer", checkpoint)
    agent = client_for(buyer)

    policy = ok(agent.get(f"{API}/checkpoints/data-purchase/"))
    assert (policy["quorum_rule"], policy["quorum_count"], policy["timeout_action"]) == (
        "count",
        2,
        "reject",
    )

    def buy(cost: int, businesses: int) -> dict[str, Any]:
        return ok(
            post(
                agent,
                "/proposals/",
                {
                    "checkpoint": "data-purchase",
                    "title": f"Buy {businesses} leads for ${cost}",
                    "payload": {"vendor": "LeadCo", "cost": cost, "businesses": businesses},
                    "confidence": 0.6,
                    "impact": str(cost),
                },
            ),
            201,
        )

    small = buy(50, 300)
    assert (small["status"], small["resolution"]) == ("approved", "policy")
    assert small["approved_payload"] == {"vendor": "LeadCo", "cost": 50, "businesses": 300}
    assert small["decided_at"] is not None
    assert small["votes"] == []

    at_limit = buy(100, 1000)  # "gt": exactly at the limits needs nobody
    assert (at_limit["status"], at_limit["resolution"]) == ("approved", "policy")

    many = buy(10, 5000)
    assert (many["status"], many["resolution"]) == ("pending", "")

    big = buy(250, 800)
    pid = big["id"]
    assert (big["status"], big["resolution"], big["approved_payload"]) == ("pending", "", None)
    assert big["quorum_required"] == 2
    assert when(big["due_at"]) - when(big["created_at"]) == timedelta(seconds=86400)

    own = post(agent, f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 1})
    error(own, 403, "permission_denied")

    first = ok(
        post(client_for(pat), f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 1}),
        201,
    )
    assert first["status"] == "pending"
    second = ok(
        post(client_for(quinn), f"/proposals/{pid}/votes/", {"decision": "approve", "revision": 1}),
        201,
    )
    assert (second["status"], second["resolution"]) == ("approved", "reviewers")
    assert second["approved_payload"] == {"vendor": "LeadCo", "cost": 250, "businesses": 800}
    assert sorted(v["reviewer"] for v in second["votes"]) == ["pat", "quinn"]

    queue = ok(client_for(pat).get(f"{API}/proposals/?status=pending&checkpoint=data-purchase"))
    assert [p["id"] for p in queue["results"]] == [many["id"]]
