"""The API answers what it documents, in every mode: the JSON error shape for every failure
(DEBUG on or off, unknown paths, unhandled exceptions), and an OpenAPI schema that describes
the real responses (list envelopes, error statuses, claim release's 200)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator

from hitl.api import views
from tests.factories import submit

pytestmark = pytest.mark.django_db

API = "/api/v1"
UUID = "00000000-0000-4000-8000-000000000000"


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def assert_json_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    if code:
        assert error["code"] == code, error
    return dict(error)


@pytest.fixture
def manager(world, client_for):
    client = client_for(world.manager)
    client.raise_request_exception = False
    return client


@pytest.mark.parametrize(
    "moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"], ids=["year1", "year9999"]
)
def test_forged_cursor_that_overflows_utc_is_400(manager, moment):
    response = manager.get(f"{API}/proposals/?cursor={_cursor([moment, UUID])}")
    assert_json_error(response, 400, "invalid")


def test_label_filter_matches_key_and_value(world, manager):
    leather = submit(world.submitter, world.checkpoint, labels={"sector": "leather", "n": "5"})
    submit(world.submitter, world.checkpoint, labels={"sector": "steel"})
    submit(world.submitter, world.checkpoint, labels={})

    def ids(query: str) -> list[str]:
        response = manager.get(f"{API}/proposals/?{query}")
        assert response.status_code == 200, response.content[:300]
        return [p["id"] for p in response.json()["results"]]

    assert ids("label=sector:leather") == [str(leather.pk)]
    assert ids("label=sector:leather&label=n:5") == [str(leather.pk)]
    assert ids("label=sector:wood") == []
    assert ids("label=n:") == []


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "no-debug"])
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/nope/", 404),
        ("POST", "/api/v1/nope", 404),
        ("GET", "/api/", 404),
        ("GET", "/api/v1/webhooks/%C2%B9/", 404),  # a Unicode digit: "¹".isdigit() is True
        ("DELETE", "/api/v1/webhooks/%D9%A3/", 404),  # Arabic-Indic three
        ("GET", "/api/v1/proposals/%C2%B9/", 404),
        ("GET", f"/api/v1/proposals/{UUID}x/", 404),
        ("DELETE", "/api/v1/checkpoints/", 405),
    ],
)
def test_every_api_answer_is_the_json_error_shape(manager, debug, method, path, status):
    with override_settings(DEBUG=debug):
        assert_json_error(manager.generic(method, path), status)


def test_api_path_without_its_slash_is_a_json_404_with_a_hint(manager):
    error = assert_json_error(manager.get(f"{API}/proposals"), 404, "not_found")
    assert error["details"] == {"hint": "API paths end with a slash: /api/v1/proposals/"}


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "no-debug"])
def test_an_unhandled_exception_is_a_json_500(manager, monkeypatch, debug):
    def bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(views.selectors, "checkpoint_list", bug)
    with override_settings(DEBUG=debug):
        error = assert_json_error(manager.get(f"{API}/checkpoints/"), 500, "server_error")
    assert "a bug" not in json.dumps(error)


@pytest.mark.parametrize("param", ["checkpoint", "status", "region", "priority", "external_id"])
def test_an_empty_filter_is_400_not_ignored(manager, param):
    assert_json_error(manager.get(f"{API}/proposals/?{param}="), 400, "invalid")


def test_releasing_a_claim_answers_200_as_documented(world, client_for):
    proposal = submit(world.submitter, world.checkpoint)
    reviewer = client_for(world.reviewer)
    assert reviewer.post(f"{API}/proposals/{proposal.pk}/claim/").status_code == 200
    response = reviewer.delete(f"{API}/proposals/{proposal.pk}/claim/")
    assert response.status_code == 200
    assert response.json()["claimed_by"] is None
    operation = _schema()["paths"]["/api/v1/proposals/{proposal_id}/claim/"]["delete"]
    assert "200" in operation["responses"] and "204" not in operation["responses"]


# --- the schema ---------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    return dict(SchemaGenerator().get_schema(request=None, public=True))


def test_every_operation_documents_the_error_responses():
    schema = _schema()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            expected = {"400", "401", "403", "404", "429"}
            if method != "get":
                expected |= {"409", "413", "415", "422"}
            assert expected <= codes, (method, path, sorted(codes))
            ref = operation["responses"]["404"]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/Error"


@pytest.mark.parametrize(
    ("path", "paginated"),
    [
        ("/api/v1/proposals/", True),
        ("/api/v1/checkpoints/", False),
        ("/api/v1/proposals/{proposal_id}/events/", False),
        ("/api/v1/webhooks/", False),
    ],
)
def test_list_responses_are_documented_as_their_envelope(path, paginated):
    schema = _schema()
    ref = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    name = ref["schema"]["$ref"].rsplit("/", 1)[1]
    component = schema["components"]["schemas"][name]
    assert component["type"] == "object"
    assert component["properties"]["results"]["type"] == "array"
    assert ("next" in component["properties"]) is paginated


def test_path_ids_are_ascii_patterns_in_the_schema():
    schema = _schema()
    for path, item in schema["paths"].items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"].endswith("_id"):
                    assert parameter["schema"]["pattern"].startswith("^["), (path, parameter)
