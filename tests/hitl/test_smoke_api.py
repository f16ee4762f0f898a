from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_submit_vote_flow(world, client_for):
    agent = client_for(world.submitter)
    response = agent.post(
        "/api/v1/proposals/",
        {
            "checkpoint": "inspection-schedule",
            "title": "Inspect",
            "payload": {"frequency": 4},
            "region": "Region1",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    pid = body["id"]

    rita = client_for(world.reviewer)
    listing = rita.get("/api/v1/proposals/?status=pending&region=Region1").json()
    assert [p["id"] for p in listing["results"]] == [pid]

    vote = rita.post(
        f"/api/v1/proposals/{pid}/votes/",
        {
            "decision": "approve",
            "revision": 1,
            "adjustments": {"frequency": 2},
            "comment": "twice is enough",
        },
        format="json",
    )
    assert vote.status_code == 201, vote.json()
    assert vote.json()["status"] == "approved"
    assert vote.json()["approved_payload"] == {"frequency": 2}
    assert vote.json()["revision"] == 2

    own = agent.post(
        f"/api/v1/proposals/{pid}/votes/", {"decision": "approve", "revision": 2}, format="json"
    )
    assert own.status_code == 403
    events = rita.get(f"/api/v1/proposals/{pid}/events/").json()["results"]
    assert [e["verb"] for e in events] == [
        "proposal.submitted",
        "proposal.edited",
        "proposal.vote_cast",
        "proposal.approved",
    ]
