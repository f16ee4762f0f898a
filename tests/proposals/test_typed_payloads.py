"""DESIGN §6, typed payloads: a JSON Schema (2020-12) on the checkpoint or the proposal holds
for every payload that can be stored or approved (submitted, an option's, revised, edited by
a reviewer), and a proposal may shorten, never lengthen, its checkpoint's timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from proposals import services
from proposals.errors import InvalidInput, InvalidPayload, InvalidSchema
from proposals.models import Proposal, Revision, Status
from tests.factories import submit

pytestmark = pytest.mark.django_db

ORDER = {
    "type": "object",
    "properties": {
        "cost": {"type": "integer", "minimum": 0, "maximum": 1000},
        "vendor": {"type": "string"},
    },
    "required": ["cost", "vendor"],
}


def with_schema(world: Any, schema: Any = ORDER, **fields: Any) -> Any:
    world.checkpoint.payload_schema = schema
    for name, value in fields.items():
        setattr(world.checkpoint, name, value)
    world.checkpoint.save()
    return world.checkpoint


def test_a_submitted_payload_must_match_the_checkpoint_schema_with_every_error_listed(
    world: Any,
) -> None:
    with_schema(world)
    with pytest.raises(InvalidPayload) as refused:
        submit(world.submitter, world.checkpoint, payload={"cost": 5000, "extra": {"n": 1}})
    assert refused.value.status_code == 400
    assert refused.value.code == "invalid_payload"
    errors = refused.value.details["errors"]
    assert [(e["path"], e["keyword"]) for e in errors] == [("", "required"), ("/cost", "maximum")]
    assert not Proposal.objects.exists()
    assert submit(world.submitter, world.checkpoint, payload={"cost": 5, "vendor": "acme"})


def test_the_proposal_schema_wins_and_must_itself_be_valid(world: Any) -> None:
    with_schema(world)
    own = {"type": "object", "properties": {"pump": {"type": "integer"}}, "required": ["pump"]}
    proposal = submit(world.submitter, world.checkpoint, payload={"pump": 4}, payload_schema=own)
    assert proposal.payload_schema == own
    with pytest.raises(InvalidPayload):
        submit(world.submitter, world.checkpoint, payload={"pump": "four"}, payload_schema=own)
    with pytest.raises(InvalidSchema) as refused:
        submit(
            world.submitter,
            world.checkpoint,
            payload={"pump": 4},
            payload_schema={"type": "objekt"},
        )
    assert refused.value.code == "invalid_payload_schema"


def test_every_option_payload_must_match(world: Any) -> None:
    with_schema(world)
    options = [
        {"key": "a", "label": "A", "payload": {"cost": 1, "vendor": "x"}},
        {"key": "b", "label": "B", "payload": {"cost": -1, "vendor": "y"}},
    ]
    with pytest.raises(InvalidPayload) as refused:
        submit(
            world.submitter, world.checkpoint, payload={"cost": 1, "vendor": "x"}, options=options
        )
    assert refused.value.details["field"] == "options[1].payload"
    assert refused.value.details["errors"][0]["path"] == "/cost"


def test_a_reviewer_can_never_approve_a_payload_the_agent_could_not_accept(world: Any) -> None:
    with_schema(world)
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 5, "vendor": "acme"})
    for edit in (
        {"adjustments": {"cost": "cheap"}},
        {"patch": [{"op": "remove", "path": "/vendor"}]},
    ):
        with pytest.raises(InvalidPayload):
            services.vote_cast(
                proposal_id=proposal.pk,
                reviewer=world.reviewer,
                decision="approve",
                revision=1,
                **edit,
            )
    proposal.refresh_from_db()
    assert (proposal.status, proposal.revision) == (Status.PENDING, 1)
    assert not proposal.votes.exists()
    decided, _ = services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="approve",
        revision=1,
        adjustments={"cost": 7},
    )
    assert decided.approved_payload == {"cost": 7, "vendor": "acme"}


def test_a_revision_must_match(world: Any) -> None:
    with_schema(world)
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 5, "vendor": "acme"})
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="request_changes",
        revision=1,
        comment="cheaper",
    )
    with pytest.raises(InvalidPayload):
        services.proposal_revise(
            proposal_id=proposal.pk, actor=world.submitter, payload={"cost": 1}
        )
    assert Revision.objects.filter(proposal=proposal).count() == 1
    revised = services.proposal_revise(
        proposal_id=proposal.pk, actor=world.submitter, payload={"cost": 1, "vendor": "acme"}
    )
    assert revised.status == Status.PENDING


def test_the_admin_refuses_an_invalid_checkpoint_schema(world: Any) -> None:
    world.checkpoint.payload_schema = {"type": "objekt"}
    with pytest.raises(ValidationError) as refused:
        world.checkpoint.full_clean()
    assert "payload_schema" in refused.value.message_dict
    world.checkpoint.payload_schema = ORDER
    world.checkpoint.full_clean()


def test_a_ref_that_cannot_be_resolved_is_a_schema_error_not_a_500(world: Any) -> None:
    with pytest.raises(InvalidSchema):
        submit(
            world.submitter,
            world.checkpoint,
            payload={"a": 1},
            payload_schema={"$ref": "https://example.invalid/schema.json"},
        )


# --- the proposal's own timeout ---------------------------------------------------------------


def test_a_proposal_may_shorten_its_checkpoint_timeout_but_not_lengthen_it(world: Any) -> None:
    world.checkpoint.timeout_seconds = 3600
    world.checkpoint.save()
    with pytest.raises(InvalidInput) as refused:
        submit(world.submitter, world.checkpoint, timeout_seconds=3601)
    assert refused.value.status_code == 400
    assert "timeout_seconds" in refused.value.details
    short = submit(world.submitter, world.checkpoint, timeout_seconds=600)
    assert short.due_at == short.created_at + timedelta(seconds=600)
    default = submit(world.submitter, world.checkpoint)
    assert default.due_at == default.created_at + timedelta(seconds=3600)


def test_a_revision_gets_the_proposal_timeout_again(world: Any) -> None:
    world.checkpoint.timeout_seconds = 3600
    world.checkpoint.save()
    proposal = submit(world.submitter, world.checkpoint, timeout_seconds=600)
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="request_changes",
        revision=1,
        comment="again",
    )
    revised = services.proposal_revise(
        proposal_id=proposal.pk, actor=world.submitter, payload={"x": 2}
    )
    second = Revision.objects.get(proposal=proposal, number=2)
    assert revised.due_at == second.created_at + timedelta(seconds=600)


# --- the API -------------------------------------------------------------------------------------


def test_the_api_takes_and_shows_schema_and_timeout(world: Any, client_for: Any) -> None:
    with_schema(world, timeout_seconds=3600)
    client = client_for(world.submitter)
    body = {
        "checkpoint": world.checkpoint.slug,
        "title": "Buy",
        "payload": {"cost": "a lot"},
    }
    refused = client.post("/api/v1/proposals/", body, format="json")
    assert refused.status_code == 400, refused.content
    error = refused.json()["error"]
    assert error["code"] == "invalid_payload"
    assert [e["path"] for e in error["details"]["errors"]] == ["", "/cost"]

    too_long = client.post(
        "/api/v1/proposals/",
        {**body, "payload": {"cost": 1, "vendor": "v"}, "timeout_seconds": 7200},
        format="json",
    )
    assert too_long.status_code == 400, too_long.content

    own = {"type": "object", "required": ["pump"]}
    created = client.post(
        "/api/v1/proposals/",
        {**body, "payload": {"pump": 1}, "payload_schema": own, "timeout_seconds": 60},
        format="json",
    )
    assert created.status_code == 201, created.content
    shown = created.json()
    assert (shown["payload_schema"], shown["timeout_seconds"]) == (own, 60)
    checkpoint = client.get(f"/api/v1/checkpoints/{world.checkpoint.slug}/").json()
    assert checkpoint["payload_schema"] == ORDER
