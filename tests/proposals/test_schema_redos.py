"""Schemas come from agents and managers, so their regular expressions are untrusted: a
`pattern` such as ^(a+)+$ against "aaaa…!" backtracks exponentially in Python's `re` (a
30-character payload pinned a web process for tens of seconds). Payload schemas run their
patterns on RE2, which matches in linear time, and refuse what RE2 cannot run (back-references,
look-arounds) with 400 invalid_payload_schema saying why."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from proposals.models import Proposal

pytestmark = pytest.mark.django_db

API = "/api/v1"
CATASTROPHIC = "^(a+)+$"
# 2^30 ways for a backtracking engine to split the a's before it can say "no match".
EVIL = "a" * 30 + "!"


def post(world: Any, client_for: Any, schema: Any, payload: Any) -> Any:
    body = {
        "checkpoint": world.checkpoint.slug,
        "title": "Rename",
        "payload": payload,
        "payload_schema": schema,
    }
    return client_for(world.submitter).post(f"{API}/proposals/", body, format="json")


def errors_of(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid_payload", error
    return [(e["path"], e["keyword"]) for e in error["details"]["errors"]]


def test_a_catastrophic_pattern_is_matched_without_backtracking(
    world: Any, client_for: Any
) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": CATASTROPHIC}}}
    assert errors_of(post(world, client_for, schema, {"name": EVIL})) == [("/name", "pattern")]
    assert post(world, client_for, schema, {"name": "a" * 30}).status_code == 201


def test_pattern_properties_keys_are_matched_without_backtracking(
    world: Any, client_for: Any
) -> None:
    # The key is searched by patternProperties and again by additionalProperties.
    schema = {
        "type": "object",
        "patternProperties": {CATASTROPHIC: {"type": "integer"}},
        "additionalProperties": False,
    }
    assert errors_of(post(world, client_for, schema, {EVIL: 1})) == [("", "additionalProperties")]
    assert errors_of(post(world, client_for, schema, {"aaa": "x"})) == [("/aaa", "type")]
    assert post(world, client_for, schema, {"aaa": 1}).status_code == 201


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "string", "pattern": r"^(a)\1$"}, "/pattern"),
        ({"properties": {"n": {"pattern": "(?=a)a"}}}, "/properties/n/pattern"),
        ({"patternProperties": {"(?<!x)y": {}}}, "/patternProperties"),
        ({"type": "string", "pattern": "a{1001}"}, "/pattern"),
    ],
)
def test_patterns_re2_cannot_run_are_refused_saying_why(
    world: Any, client_for: Any, schema: Any, where: str
) -> None:
    response = post(world, client_for, schema, {})
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid_payload_schema", error
    assert f"'{where}'" in error["message"], error["message"]
    assert "RE2" in error["message"], error["message"]
    assert not Proposal.objects.exists()


def test_unevaluated_properties_with_pattern_properties_is_refused(
    world: Any, client_for: Any
) -> None:
    # jsonschema finds unevaluated keys by searching patternProperties with Python's `re`.
    schema = {"patternProperties": {"^a+$": {}}, "unevaluatedProperties": False}
    response = post(world, client_for, schema, {})
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == "invalid_payload_schema"
    assert "unevaluatedProperties" in response.json()["error"]["message"]
    alone = {"properties": {"a": {}}, "unevaluatedProperties": False}
    assert post(world, client_for, alone, {"a": 1}).status_code == 201


def test_a_checkpoint_schema_is_held_to_the_same_rules(world: Any, client_for: Any) -> None:
    world.checkpoint.payload_schema = {"properties": {"n": {"pattern": r"(a)\1"}}}
    with pytest.raises(ValidationError, match="RE2"):
        world.checkpoint.full_clean()
    world.checkpoint.payload_schema = {"properties": {"name": {"pattern": CATASTROPHIC}}}
    world.checkpoint.full_clean()
    world.checkpoint.save()
    body = {"checkpoint": world.checkpoint.slug, "title": "Rename", "payload": {"name": EVIL}}
    response = client_for(world.submitter).post(f"{API}/proposals/", body, format="json")
    assert errors_of(response) == [("/name", "pattern")]
