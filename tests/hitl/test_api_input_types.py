"""Every field of every request body takes its JSON type and no other: `"confidence": true`
is not 1.0, `"title": 123` is not "123", a label value 5 is not "5". Table-driven over every
field of every input serializer and every JSON type that field does not accept."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework import serializers

from hitl.api import serializers as s
from hitl.api.fields import (
    AnyJSONField,
    InputSerializer,
    JSONObjectField,
    StrictCharField,
    StrictDecimalField,
    StrictDictField,
    StrictFloatField,
    StrictIntegerField,
    StrictListField,
    non_strict_fields,
)
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

# Per input serializer, {field: the JSON types it accepts}, written by hand and checked against
# the fields' classes; a field added later is tested from its class alone.
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


def _error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "invalid", error
    return dict(error)


def accepted_json_types(field: serializers.Field) -> set[str]:
    """What a strict field takes, read from its class (and allow_null)."""
    kinds: set[str]
    if isinstance(field, AnyJSONField):
        kinds = set(SAMPLES)
    elif isinstance(field, StrictDecimalField):
        kinds = NUMBER | STRING
    elif isinstance(field, StrictFloatField):
        kinds = set(NUMBER)
    elif isinstance(field, StrictIntegerField):
        kinds = {"integer"}
    elif isinstance(field, JSONObjectField | StrictDictField):
        kinds = {"object"}
    elif isinstance(field, StrictListField | serializers.ListSerializer):
        kinds = {"array"}
    elif isinstance(field, serializers.CharField | serializers.ChoiceField):
        kinds = set(STRING)
    else:
        raise AssertionError(f"no JSON type known for {type(field).__name__}")
    return kinds | ({"null"} if field.allow_null else set())


def test_the_table_agrees_with_the_fields():
    """The table is written by hand; every field not in it is still tested (from its class)."""
    for serializer, types in TABLE.items():
        fields = serializer().fields
        for name, accepted in types.items():
            assert accepted_json_types(fields[name]) == accepted, (serializer.__name__, name)
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


# --- every field, every other JSON type (the serializers, no HTTP: cheap) -------------------

BASES: dict[type[serializers.Serializer], dict[str, Any]] = {
    s.ProposalInputSerializer: SUBMIT_BASE,
    s.OptionSerializer: SUBMIT_BASE["options"][0],
    s.VoteInputSerializer: VOTE_BASE,
    s.ReviseInputSerializer: REVISE_BASE,
    s.ReasonInputSerializer: REASON_BASE,
    s.WebhookEndpointInputSerializer: WEBHOOK_BASE,
    s.BulkInputSerializer: {"proposals": [SUBMIT_BASE]},
}
EVERY_CASE = [
    pytest.param(serializer, name, kind, id=f"{serializer.__name__}.{name}={kind}")
    for serializer in TABLE
    for name, field in serializer().fields.items()
    for kind in SAMPLES
    if kind not in accepted_json_types(field)
]


@pytest.mark.parametrize(("serializer", "field", "kind"), EVERY_CASE)
def test_every_input_field_refuses_every_other_json_type(serializer, field, kind):
    body = serializer(data={**BASES[serializer], field: SAMPLES[kind]})
    assert not body.is_valid()
    assert field in body.errors, body.errors


@pytest.mark.parametrize("kind", [k for k in SAMPLES if k != "string"])
@pytest.mark.parametrize(
    ("serializer", "field"),
    [(s.ProposalInputSerializer, "labels"), (s.WebhookEndpointInputSerializer, "events")],
)
def test_collection_items_refuse_other_json_types(serializer, field, kind):
    value = {"sector": SAMPLES[kind]} if field == "labels" else [SAMPLES[kind]]
    body = serializer(data={**BASES[serializer], field: value})
    assert not body.is_valid()
    assert field in body.errors, body.errors


# --- through the API: the reported cases and one per endpoint -------------------------------


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("confidence", {**SUBMIT_BASE, "confidence": True}),  # the report: stored as 1.0
        ("title", {**SUBMIT_BASE, "title": 123}),  # the report: became "123"
        ("labels", {**SUBMIT_BASE, "labels": {"sector": 5}}),  # the report: became "5"
        ("impact", {**SUBMIT_BASE, "impact": True}),
        ("priority", {**SUBMIT_BASE, "priority": 1}),
        ("options", _with_option("confidence", "0.5")),
    ],
)
def test_submit_refuses_coerced_json_types(world, client_for, field, body):
    agent = client_for(world.submitter)
    response = agent.post(f"{API}/proposals/", body, format="json")
    assert field in _error(response)["details"]
    assert Proposal.objects.count() == 0


def test_bulk_items_refuse_coerced_json_types(world, client_for):
    agent = client_for(world.submitter)
    body = {"proposals": [SUBMIT_BASE, {**SUBMIT_BASE, "confidence": True}]}
    response = agent.post(f"{API}/proposals/bulk/", body, format="json")
    assert response.status_code == 200, response.content[:300]
    good, bad = response.json()["results"]
    assert good["status"] == 201
    assert bad["status"] == 400 and "confidence" in bad["error"]["details"], bad
    assert Proposal.objects.count() == 1


@pytest.fixture
def pending(world):
    return submit(world.submitter, world.checkpoint, title="Inspect", payload={"frequency": 4})


@pytest.mark.parametrize(
    ("field", "value"), [("revision", True), ("revision", "1"), ("decision", 1), ("comment", 5)]
)
def test_votes_refuse_coerced_json_types(world, client_for, pending, field, value):
    reviewer = client_for(world.reviewer)
    body = {**VOTE_BASE, field: value}
    response = reviewer.post(f"{API}/proposals/{pending.pk}/votes/", body, format="json")
    assert field in _error(response)["details"]
    assert Vote.objects.count() == 0


def test_revisions_refuse_coerced_json_types(world, client_for, pending):
    services.vote_cast(
        proposal_id=pending.pk,
        reviewer=world.reviewer,
        decision="request_changes",
        revision=1,
        comment="why",
    )
    agent = client_for(world.submitter)
    body = {**REVISE_BASE, "summary": 5}
    response = agent.post(f"{API}/proposals/{pending.pk}/revisions/", body, format="json")
    assert "summary" in _error(response)["details"]
    pending.refresh_from_db()
    assert pending.revision == 1


@pytest.mark.parametrize("action", ["cancel", "revoke"])
def test_cancel_and_revoke_refuse_coerced_json_types(world, client_for, pending, action):
    manager = client_for(world.manager)
    response = manager.post(f"{API}/proposals/{pending.pk}/{action}/", {"reason": 5}, format="json")
    assert "reason" in _error(response)["details"]
    pending.refresh_from_db()
    assert pending.status == "pending"


@pytest.mark.parametrize(("field", "value"), [("name", 5), ("events", [1]), ("checkpoint", 5)])
def test_webhooks_refuse_coerced_json_types(world, client_for, field, value):
    manager = client_for(world.manager)
    body = {**WEBHOOK_BASE, "checkpoint": world.checkpoint.slug, field: value}
    response = manager.post(f"{API}/webhooks/", body, format="json")
    assert field in _error(response)["details"]


def test_input_serializers_share_fields_and_keep_their_own_results():
    """The fields are built once per class; what a validation finds stays on its serializer."""
    bad = s.ProposalInputSerializer(data={"checkpoint": "c", "title": 1, "payload": {}})
    good = s.ProposalInputSerializer(data={"checkpoint": "c", "title": "t", "payload": {"a": 1}})
    assert bad.fields is good.fields
    assert not bad.is_valid()
    assert good.is_valid(), good.errors
    assert set(bad.errors) == {"title"}
    assert good.validated_data["payload"] == {"a": 1}
    assert good.validated_data["labels"] == {}
