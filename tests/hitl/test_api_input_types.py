"""Every field of every request body takes its JSON type and no other: `"confidence": true`
is not 1.0, `"title": 123` is not "123", a label value 5 is not "5". Table-driven over every
field of every input serializer and every JSON type that field does not accept."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework import serializers

from hitl.api import serializers as s
from hitl.api.fields import InputSerializer, StrictCharField, StrictListField, non_strict_fields
from proposals import services
from proposals.models import Proposal, Vote
from tests.factories import submit

pytestmark = pytest.mark.django_db

API = "/api/v1"

# One sample per JSON type; a wrong-type sample must be refused whatever its content, so each
# is a value DRF's coercing fields would have turned into something valid.
SAMPLES: dict[str, Any] = {
    "string": "1",
    "integer": 1,
    "float": 1.0,
    "bool": True,
    "null": None,
    "array": ["1"],
    "object": {"a": "1"},
}
NUMBER = {"integer", "float"}
STRING = {"string"}

# Per input serializer, {field: the JSON types it accepts}. A field missing here fails
# test_the_table_covers_every_field, so a new field gets its row.
SUBMIT_BASE: dict[str, Any] = {
    "checkpoint": "inspection-schedule",
    "title": "Inspect",
    "payload": {"frequency": 4},
    "options": [{"key": "a", "label": "A", "payload": {"frequency": 4}, "confidence": 0.5}],
    "labels": {"sector": "leather"},
}
SUBMIT_TYPES = {
    "checkpoint": STRING,
    "title": STRING,
    "summary": STRING,
    "payload": {"object"},
    "options": {"array"},
    "context": {"object"},
    "confidence": NUMBER | {"null"},
    "priority": STRING,
    "impact": NUMBER | STRING | {"null"},
    "region": STRING,
    "labels": {"object"},
    "external_id": STRING,
    "callback_url": STRING,
}
OPTION_TYPES = {
    "key": STRING,
    "label": STRING,
    "payload": {"object"},
    "confidence": NUMBER | {"null"},
}
VOTE_BASE = {"decision": "approve", "revision": 1}
VOTE_TYPES = {
    "decision": STRING,
    "revision": {"integer"},
    "comment": STRING,
    "selected_option": STRING,
    "patch": {"array", "null"},
    "adjustments": {"object", "null"},
}
REVISE_BASE = {"payload": {"frequency": 2}}
REVISE_TYPES = {"payload": {"object"}, "summary": STRING, "comment": STRING}
REASON_BASE = {"reason": "because"}
REASON_TYPES = {"reason": STRING}
WEBHOOK_BASE = {"name": "hook", "url": "https://example.com/hook"}
WEBHOOK_TYPES = {
    "name": STRING,
    "url": STRING,
    "events": {"array"},
    "checkpoint": STRING | {"null"},
}
BULK_TYPES = {"proposals": {"array"}}

TABLE: dict[type[serializers.Serializer], dict[str, set[str]]] = {
    s.ProposalInputSerializer: SUBMIT_TYPES,
    s.OptionSerializer: OPTION_TYPES,
    s.VoteInputSerializer: VOTE_TYPES,
    s.ReviseInputSerializer: REVISE_TYPES,
    s.ReasonInputSerializer: REASON_TYPES,
    s.WebhookEndpointInputSerializer: WEBHOOK_TYPES,
    s.BulkInputSerializer: BULK_TYPES,
}


def _cases(types: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [
        (field, kind)
        for field, accepted in types.items()
        for kind in SAMPLES
        if kind not in accepted
    ]


def _with_option(field: str, value: Any) -> dict[str, Any]:
    return {**SUBMIT_BASE, "options": [{**SUBMIT_BASE["options"][0], field: value}]}


# Nested values: an option's fields, a label's value, a list's items.
NESTED: list[tuple[str, str, dict[str, Any]]] = [
    *(
        (f"options[].{f}={k}", "options", _with_option(f, SAMPLES[k]))
        for f, k in _cases(OPTION_TYPES)
    ),
    *(
        (f"labels.value={k}", "labels", {**SUBMIT_BASE, "labels": {"sector": SAMPLES[k]}})
        for k in SAMPLES
        if k != "string"
    ),
]


def _error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "invalid", error
    return dict(error)


def test_the_table_covers_every_field():
    for serializer, types in TABLE.items():
        assert set(serializer().fields) == set(types), serializer.__name__
    input_serializers = {c for c in _subclasses(InputSerializer) if c.__module__ == s.__name__}
    assert input_serializers == set(TABLE)


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


@pytest.mark.parametrize("serializer", list(TABLE), ids=lambda c: c.__name__)
def test_every_input_field_is_strict(serializer):
    assert non_strict_fields(serializer()) == []


def test_a_coercing_field_cannot_be_declared_on_an_input_serializer():
    with pytest.raises(TypeError, match="title"):

        class Sloppy(InputSerializer):
            title = serializers.CharField()

    with pytest.raises(TypeError, match=r"tags \(ListField\)"):

        class SloppyList(InputSerializer):
            tags = serializers.ListField(child=StrictCharField())

    with pytest.raises(TypeError, match=r"tags\[\] \(IntegerField\)"):

        class SloppyChild(InputSerializer):
            tags = StrictListField(child=serializers.IntegerField())

    class Fine(InputSerializer):
        title = StrictCharField()


@pytest.mark.parametrize(
    ("base", "serializer"),
    [
        (SUBMIT_BASE, s.ProposalInputSerializer),
        (VOTE_BASE, s.VoteInputSerializer),
        (REVISE_BASE, s.ReviseInputSerializer),
        (REASON_BASE, s.ReasonInputSerializer),
        (WEBHOOK_BASE, s.WebhookEndpointInputSerializer),
    ],
)
def test_the_base_bodies_are_valid(base, serializer):
    """So every 400 below is the wrong type's doing."""
    body = serializer(data=base)
    assert body.is_valid(), body.errors


@pytest.mark.parametrize(
    ("kind", "value"),
    [("integer", 5), ("float", 0.25), ("string", "12.5"), ("null", None)],
)
def test_impact_takes_numbers_and_decimal_strings(kind, value):
    body = s.ProposalInputSerializer(data={**SUBMIT_BASE, "impact": value})
    assert body.is_valid(), body.errors


# --- through the API ----------------------------------------------------------------------


@pytest.mark.parametrize(("field", "kind"), _cases(SUBMIT_TYPES))
def test_submit_refuses_coerced_json_types(world, client_for, field, kind):
    agent = client_for(world.submitter)
    response = agent.post(f"{API}/proposals/", {**SUBMIT_BASE, field: SAMPLES[kind]}, format="json")
    assert field in _error(response)["details"]
    assert Proposal.objects.count() == 0


@pytest.mark.parametrize(("label", "field", "body"), NESTED, ids=[n[0] for n in NESTED])
def test_submit_refuses_coerced_json_types_in_nested_values(world, client_for, label, field, body):
    agent = client_for(world.submitter)
    response = agent.post(f"{API}/proposals/", body, format="json")
    assert field.split("[")[0].split(".")[0] in _error(response)["details"]
    assert Proposal.objects.count() == 0


def test_confidence_true_is_not_stored_as_one(world, client_for):
    """The report: `true` became 1.0 and passed any auto-approve threshold."""
    agent = client_for(world.submitter)
    response = agent.post(f"{API}/proposals/", {**SUBMIT_BASE, "confidence": True}, format="json")
    assert "confidence" in _error(response)["details"]
    response = agent.post(f"{API}/proposals/", {**SUBMIT_BASE, "title": 123}, format="json")
    assert "title" in _error(response)["details"]
    response = agent.post(
        f"{API}/proposals/", {**SUBMIT_BASE, "labels": {"sector": 5}}, format="json"
    )
    assert "labels" in _error(response)["details"]
    assert Proposal.objects.count() == 0


@pytest.mark.parametrize(("field", "kind"), _cases(SUBMIT_TYPES))
def test_bulk_items_refuse_coerced_json_types(world, client_for, field, kind):
    agent = client_for(world.submitter)
    body = {"proposals": [SUBMIT_BASE, {**SUBMIT_BASE, field: SAMPLES[kind]}]}
    response = agent.post(f"{API}/proposals/bulk/", body, format="json")
    assert response.status_code == 200, response.content[:300]
    good, bad = response.json()["results"]
    assert good["status"] == 201
    assert bad["status"] == 400 and field in bad["error"]["details"], bad
    assert Proposal.objects.count() == 1


@pytest.mark.parametrize(("field", "kind"), _cases(BULK_TYPES))
def test_bulk_body_refuses_coerced_json_types(world, client_for, field, kind):
    agent = client_for(world.submitter)
    response = agent.post(f"{API}/proposals/bulk/", {field: SAMPLES[kind]}, format="json")
    assert field in _error(response)["details"]


@pytest.fixture
def pending(world):
    return submit(world.submitter, world.checkpoint, title="Inspect", payload={"frequency": 4})


@pytest.mark.parametrize(("field", "kind"), _cases(VOTE_TYPES))
def test_votes_refuse_coerced_json_types(world, client_for, pending, field, kind):
    reviewer = client_for(world.reviewer)
    body = {**VOTE_BASE, field: SAMPLES[kind]}
    response = reviewer.post(f"{API}/proposals/{pending.pk}/votes/", body, format="json")
    assert field in _error(response)["details"]
    assert Vote.objects.count() == 0


def test_vote_revision_true_is_not_revision_one(world, client_for, pending):
    reviewer = client_for(world.reviewer)
    body = {**VOTE_BASE, "revision": True}
    response = reviewer.post(f"{API}/proposals/{pending.pk}/votes/", body, format="json")
    assert "revision" in _error(response)["details"]
    body = {**VOTE_BASE, "patch": ["not an operation"]}
    response = reviewer.post(f"{API}/proposals/{pending.pk}/votes/", body, format="json")
    assert "patch" in _error(response)["details"]


@pytest.mark.parametrize(("field", "kind"), _cases(REVISE_TYPES))
def test_revisions_refuse_coerced_json_types(world, client_for, pending, field, kind):
    services.vote_cast(
        proposal_id=pending.pk,
        reviewer=world.reviewer,
        decision="request_changes",
        revision=1,
        comment="why",
    )
    agent = client_for(world.submitter)
    body = {**REVISE_BASE, field: SAMPLES[kind]}
    response = agent.post(f"{API}/proposals/{pending.pk}/revisions/", body, format="json")
    assert field in _error(response)["details"]
    pending.refresh_from_db()
    assert pending.revision == 1


@pytest.mark.parametrize("action", ["cancel", "revoke"])
@pytest.mark.parametrize(("field", "kind"), _cases(REASON_TYPES))
def test_cancel_and_revoke_refuse_coerced_json_types(
    world, client_for, pending, action, field, kind
):
    manager = client_for(world.manager)
    body = {**REASON_BASE, field: SAMPLES[kind]}
    response = manager.post(f"{API}/proposals/{pending.pk}/{action}/", body, format="json")
    assert field in _error(response)["details"]
    pending.refresh_from_db()
    assert pending.status == "pending"


@pytest.mark.parametrize(("field", "kind"), [*_cases(WEBHOOK_TYPES), ("events[]", "integer")])
def test_webhooks_refuse_coerced_json_types(world, client_for, field, kind):
    manager = client_for(world.manager)
    body = {**WEBHOOK_BASE, "checkpoint": world.checkpoint.slug}
    if field == "events[]":
        field, body["events"] = "events", [SAMPLES[kind]]
    else:
        body[field] = SAMPLES[kind]
    response = manager.post(f"{API}/webhooks/", body, format="json")
    assert field in _error(response)["details"]
