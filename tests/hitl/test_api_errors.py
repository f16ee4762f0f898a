"""Every API error is `{"error": {"code", "message", "details"}}` with the right status, and no
malformed request is ever a 500 or leaves a row behind."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings

from audit.models import AuditEvent
from hitl.models import IdempotencyRecord
from proposals import services
from proposals.models import Proposal, Revision, Vote
from tests.factories import submit

pytestmark = pytest.mark.django_db

API = "/api/v1"
NEW = {"checkpoint": "inspection-schedule", "title": "Inspect", "payload": {"frequency": 4}}


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict), body
    if code is not None:
        assert error["code"] == code, body
    return error


@pytest.fixture
def agent(world, client_for):
    return client_for(world.submitter)


@pytest.fixture
def pending(world):
    return submit(world.submitter, world.checkpoint, title="Inspect", payload={"frequency": 4})


# --- 400 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({k: v for k, v in NEW.items() if k != "title"}, "title", id="missing-title"),
        pytest.param({**NEW, "title": ""}, "title", id="blank-title"),
        pytest.param({**NEW, "payload": [1, 2]}, "payload", id="payload-list"),
        pytest.param({**NEW, "payload": "x"}, "payload", id="payload-string"),
        pytest.param({**NEW, "payload": None}, "payload", id="payload-null"),
        pytest.param({**NEW, "confidence": 2}, "confidence", id="confidence-2"),
        pytest.param({**NEW, "confidence": -0.1}, "confidence", id="confidence-negative"),
        pytest.param({**NEW, "priority": "urgent"}, "priority", id="unknown-priority"),
        pytest.param({**NEW, "checkpoint": "no-such-gate"}, "checkpoint", id="unknown-checkpoint"),
        pytest.param({**NEW, "checkpoint": "elsewhere"}, "checkpoint", id="invisible-checkpoint"),
        pytest.param({**NEW, "callback_url": "not a url"}, "callback_url", id="callback-url"),
        pytest.param({**NEW, "labels": {"a": {"b": 1}}}, "labels", id="label-not-string"),
        pytest.param({**NEW, "options": [{"key": "a"}]}, "options", id="option-no-payload"),
    ],
)
def test_validation_errors_are_400_with_field_details(agent, body, field):
    error = assert_error(agent.post(f"{API}/proposals/", body, format="json"), 400, "invalid")
    assert field in error["details"], error
    assert Proposal.objects.count() == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_literals_are_400(agent, literal):
    raw = json.dumps(NEW)[:-1] + f', "confidence": {literal}}}'
    response = agent.post(f"{API}/proposals/", raw, content_type="application/json")
    assert_error(response, 400, "parse_error")
    assert Proposal.objects.count() == 0


def test_duplicate_option_keys_are_422(agent):
    body = {
        **NEW,
        "options": [{"key": "a", "payload": {"x": 1}}, {"key": "a", "payload": {"x": 2}}],
    }
    error = assert_error(agent.post(f"{API}/proposals/", body, format="json"), 422, "unprocessable")
    assert error["details"] == {"options": ["a", "a"]}
    assert Proposal.objects.count() == 0


# --- bodies the database cannot store are refused up front (400), never a 500 ---------------


def _post_raw(client: Any, raw: str, **headers: Any) -> Any:
    client.raise_request_exception = False
    return client.generic(
        "POST",
        f"{API}/proposals/",
        raw.encode("utf-8", "surrogatepass"),
        content_type="application/json",
        **headers,
    )


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_400(agent, opener):
    closer = "]" if opener == "[" else "}"
    raw = json.dumps(NEW)[:-1] + ', "context": ' + opener * 10_000 + "1" + closer * 10_000 + "}"
    assert_error(_post_raw(agent, raw), 400)
    assert Proposal.objects.count() == 0


@pytest.mark.parametrize(
    "payload",
    [{"note": "a\u0000b"}, {"a\u0000": 1}],
    ids=["nul-in-value", "nul-in-key"],
)
def test_nul_character_in_payload_is_400(agent, payload):
    raw = json.dumps({**NEW, "payload": payload})
    assert "\\u0000" in raw  # the JSON escape, as a client would send it
    assert_error(_post_raw(agent, raw), 400)
    assert Proposal.objects.count() == 0


def test_lone_surrogate_in_payload_is_400(agent):
    raw = json.dumps({**NEW, "payload": {"note": "\ud800"}})
    assert_error(_post_raw(agent, raw), 400)
    assert Proposal.objects.count() == 0


def test_lone_surrogate_in_title_with_idempotency_key_is_400(agent):
    raw = json.dumps({**NEW, "title": "\ud800"})
    assert_error(_post_raw(agent, raw), 400)
    assert_error(_post_raw(agent, raw, HTTP_IDEMPOTENCY_KEY="k"), 400)
    assert Proposal.objects.count() == IdempotencyRecord.objects.count() == 0


# --- 401 / 403 / 404 / 405 ------------------------------------------------------------------


def test_401_shape_and_header(client_for, world):
    response = client_for(None).get(f"{API}/proposals/")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'

    bad = client_for(None)
    bad.credentials(HTTP_AUTHORIZATION="Bearer nok_0000_nope")
    response = bad.get(f"{API}/proposals/")
    assert_error(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_403_shape(world, client_for, pending):
    response = client_for(world.reviewer).post(
        f"{API}/proposals/{pending.pk}/cancel/", {"reason": "no"}, format="json"
    )
    error = assert_error(response, 403, "permission_denied")
    assert error["details"] == {}
    assert Proposal.objects.get(pk=pending.pk).status == "pending"


@pytest.mark.parametrize(
    "path",
    [
        "/proposals/not-a-uuid/",
        "/proposals/not-a-uuid/events/",
        "/proposals/not-a-uuid/wait/?timeout=0",
        "/proposals/00000000-0000-4000-8000-000000000000/",
        "/proposals/00000000-0000-4000-8000-000000000000/events/",
        "/proposals/%00/",
        "/proposals/" + "9" * 300 + "/",
        "/checkpoints/no-such-checkpoint/",
    ],
)
def test_404_on_unknown_ids(world, client_for, path):
    assert_error(client_for(world.manager).get(API + path), 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "/proposals/not-a-uuid/votes/",
        "/proposals/00000000-0000-4000-8000-000000000000/votes/",
        "/proposals/00000000-0000-4000-8000-000000000000/cancel/",
        "/proposals/00000000-0000-4000-8000-000000000000/claim/",
    ],
)
def test_404_on_posts_to_unknown_ids(world, client_for, path):
    response = client_for(world.reviewer).post(
        API + path, {"decision": "approve", "revision": 1}, format="json"
    )
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "path",
    ["/api/v1/nope/", "/api/nope", "/api/v2/proposals/", "/api/v1/proposals/a/b/c/", "/api/"],
)
def test_unknown_api_paths_are_json_404(world, client_for, path):
    response = client_for(world.reviewer).get(path)
    assert_error(response, 404, "not_found")
    assert b"<html" not in response.content.lower()


@pytest.mark.parametrize(
    ("accept", "query", "status", "indented"),
    [
        (None, "", 200, False),
        ("*/*", "", 200, False),
        ("application/json", "", 200, False),
        ("application/json; indent=2", "", 200, True),
        ("text/html", "", 406, False),
        ("*/*", "?format=json", 200, False),
        ("*/*", "?format=xml", 404, False),
    ],
)
def test_content_negotiation(world, client_for, pending, accept, query, status, indented):
    """JSON is the one renderer: the common Accept headers skip DRF's negotiation, with its
    answer; any other header, or a format asked for, is negotiated as before."""
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    response = client_for(world.reviewer).get(f"{API}/proposals/{query}", **headers)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert (b'\n  "' in response.content) is indented
    if status == 406:
        assert_error(response, 406, "not_acceptable")


def test_unknown_non_api_path_stays_html(client):
    response = client.get("/definitely-not-here/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/proposals/"),
        ("delete", "/proposals/"),
        ("get", "/proposals/bulk/"),
        ("patch", "/proposals/{id}/"),
        ("delete", "/proposals/{id}/"),
        ("get", "/proposals/{id}/votes/"),
        ("get", "/proposals/{id}/cancel/"),
        ("put", "/proposals/{id}/claim/"),
        ("post", "/proposals/{id}/events/"),
        ("post", "/checkpoints/"),
        ("delete", "/checkpoints/inspection-schedule/"),
    ],
)
def test_405(world, client_for, pending, method, path):
    response = getattr(client_for(world.manager), method)(
        API + path.format(id=pending.pk), {}, format="json"
    )
    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"]
    assert Proposal.objects.get(pk=pending.pk).status == "pending"


# --- 409 / 415 / 422 -----------------------------------------------------------------------


def test_409_conflicts(world, client_for, pending):
    rita, raj, agent = (client_for(u) for u in (world.reviewer, world.reviewer2, world.submitter))
    base = f"{API}/proposals/{pending.pk}/"

    assert rita.post(base + "claim/").status_code == 200
    assert_error(raj.post(base + "claim/"), 409, "claimed")

    error = assert_error(
        raj.post(base + "votes/", {"decision": "approve", "revision": 7}, format="json"),
        409,
        "stale_revision",
    )
    assert error["details"] == {"revision": 1}

    assert agent.post(base + "cancel/", {"reason": "dup"}, format="json").status_code == 200
    assert_error(agent.post(base + "cancel/", {}, format="json"), 409, "invalid_transition")
    assert_error(
        raj.post(base + "votes/", {"decision": "approve", "revision": 1}, format="json"),
        409,
        "invalid_transition",
    )
    assert_error(agent.post(base + "revisions/", {"payload": {}}, format="json"), 409)


def test_409_already_voted(world, client_for):
    world.checkpoint.quorum_rule = "all"
    world.checkpoint.save()
    proposal = submit(world.submitter, world.checkpoint)
    assert proposal.quorum_required == 2
    rita = client_for(world.reviewer)
    url = f"{API}/proposals/{proposal.pk}/votes/"
    assert rita.post(url, {"decision": "approve", "revision": 1}, format="json").status_code == 201
    assert_error(
        rita.post(url, {"decision": "approve", "revision": 1}, format="json"), 409, "already_voted"
    )
    assert Vote.objects.filter(proposal=proposal).count() == 1


FLAT = {"checkpoint": "inspection-schedule", "title": "Inspect", "payload": "{}"}


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"data": FLAT}, id="multipart-default"),
        pytest.param({"data": FLAT, "format": "multipart"}, id="multipart"),
        pytest.param(
            {
                "data": "checkpoint=inspection-schedule&title=x",
                "content_type": "application/x-www-form-urlencoded",
            },
            id="form-encoded",
        ),
        pytest.param({"data": json.dumps(NEW), "content_type": "text/plain"}, id="text-plain"),
        pytest.param({"data": "<x/>", "content_type": "application/xml"}, id="xml"),
    ],
)
def test_415_for_non_json_bodies(agent, kwargs):
    assert_error(agent.post(f"{API}/proposals/", **kwargs), 415, "unsupported_media_type")
    assert Proposal.objects.count() == 0


def test_422_unprocessable(world, client_for, pending):
    rita = client_for(world.reviewer)
    base = f"{API}/proposals/{pending.pk}/"
    error = assert_error(
        rita.post(
            base + "votes/",
            {"decision": "approve", "revision": 1, "patch": [{"op": "remove", "path": "/nope"}]},
            format="json",
        ),
        422,
        "unprocessable",
    )
    assert "patch" in error["details"]
    assert_error(
        rita.post(base + "votes/", {"decision": "reject", "revision": 1}, format="json"),
        422,
        "unprocessable",
    )  # a reason is required to reject
    assert_error(
        rita.post(
            base + "votes/",
            {"decision": "approve", "revision": 1, "patch": [], "adjustments": {"a": 1}},
            format="json",
        ),
        422,
        "unprocessable",
    )
    assert Vote.objects.count() == 0
    assert Proposal.objects.get(pk=pending.pk).revision == 1

    assert rita.post(base + "votes/", {"decision": "approve", "revision": 1}).status_code == 415
    assert (
        rita.post(
            base + "votes/", {"decision": "approve", "revision": 1}, format="json"
        ).status_code
        == 201
    )
    manager = client_for(world.manager)
    assert_error(
        manager.post(base + "revoke/", {"reason": "   "}, format="json"), 422, "unprocessable"
    )
    assert Proposal.objects.get(pk=pending.pk).status == "approved"


# --- fuzz: malformed bodies to every POST endpoint ------------------------------------------

DEEP = 10_000


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _deep_object(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def _with(base: dict[str, Any], **changes: Any) -> str:
    return _dumps({**base, **changes})


def _raw_variants(base: dict[str, Any]) -> list[tuple[str, bytes | str]]:
    """Bodies that are broken whatever the endpoint."""
    valid = json.dumps(base)
    return [
        ("invalid-json", "{"),
        ("trailing-garbage", valid + "}"),
        ("single-quotes", valid.replace('"', "'")),
        ("list", "[]"),
        ("list-of-body", f"[{valid}]"),
        ("string", '"x"'),
        ("number", "1"),
        ("null", "null"),
        ("true", "true"),
        ("deep-list", _deep(DEEP)),
        ("deep-object", _deep_object(DEEP)),
        ("nan", valid[:-1] + ', "z": NaN}'),
        ("not-utf8", b'{"title": "\xff\xfe"}'),
        ("utf16", valid.encode("utf-16")),
        ("nul-byte-outside-string", valid[:-1] + "\x00}"),
        ("huge-int-literal", "1" * 5000),
    ]


# A JSON number literal that Python reads as float("inf"): valid JSON, not storable in jsonb.
OVERFLOW = "__overflow_1e400__"


def _dumps(value: Any) -> str:
    return json.dumps(value).replace(f'"{OVERFLOW}"', "1e400")


JSON_OBJECT_FIELD_BAD: list[tuple[str, Any]] = [
    ("list", [1]),
    ("string", "x"),
    ("number", 1),
    ("null", None),
    ("bool", True),
    ("nul-in-value", {"a": "x\u0000y"}),
    ("nul-in-key", {"a\u0000": 1}),
    ("lone-surrogate-value", {"a": "\ud800"}),
    ("lone-surrogate-key", {"\udfff": 1}),
    ("too-deep-40", json.loads(_deep_object(40))),
    ("overflow-1e400", {"a": OVERFLOW}),
    ("nested-overflow-1e400", {"a": [1, {"b": OVERFLOW}]}),
]
CHAR_FIELD_BAD: list[tuple[str, Any]] = [
    ("dict", {"a": 1}),
    ("list", ["a"]),
    ("bool", True),
    ("nul", "a\u0000b"),
    ("lone-surrogate", "a\ud800b"),
    ("too-long", "x" * 30_000),
]


def _field_variants(base: dict[str, Any], fields: dict[str, list[tuple[str, Any]]]) -> list:
    out = []
    for name, values in fields.items():
        for label, value in values:
            out.append((f"{name}={label}", _with(base, **{name: value})))
    return out


SUBMIT_BASE = {**NEW, "summary": "s", "region": "r", "external_id": "e", "labels": {"k": "v"}}
SUBMIT_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "checkpoint": [("dict", {}), ("list", []), ("nul", "inspection\u0000"), ("spaces", "a b")],
    "title": [*CHAR_FIELD_BAD, ("null", None), ("blank", "")],
    "summary": CHAR_FIELD_BAD,
    "payload": JSON_OBJECT_FIELD_BAD,
    "context": [x for x in JSON_OBJECT_FIELD_BAD if x[0] != "null"],
    "options": [
        ("string", "x"),
        ("dict", {}),
        ("list-of-int", [1]),
        ("key-dict", [{"key": {}, "payload": {}}]),
        ("payload-list", [{"key": "a", "payload": []}]),
        ("payload-nul", [{"key": "a", "payload": {"x": "\u0000"}}]),
        ("confidence-huge", [{"key": "a", "payload": {}, "confidence": 10**400}]),
        ("confidence-overflow", [{"key": "a", "payload": {}, "confidence": OVERFLOW}]),
        ("too-many", [{"key": str(i), "payload": {}} for i in range(51)]),
        ("duplicate-keys", [{"key": "a", "payload": {}}, {"key": "a", "payload": {}}]),
    ],
    "confidence": [
        ("string", "abc"),
        ("dict", {}),
        ("list", []),
        ("two", 2),
        ("overflow-1e400", OVERFLOW),
        ("huge-int-10e400", 10**400),
        ("string-nan", "nan"),
        ("string-inf", "inf"),
    ],
    "priority": [
        ("int", 5),
        ("list", []),
        ("dict", {}),
        ("unknown", "urgent"),
        ("nul", "high\u0000"),
    ],
    "impact": [
        ("string", "abc"),
        ("dict", {}),
        ("list", []),
        ("overflow-1e400", OVERFLOW),
        ("huge-int-10e400", 10**400),
        ("string-nan", "NaN"),
        ("string-inf", "Infinity"),
        ("too-many-digits", "1" * 30),
    ],
    "region": CHAR_FIELD_BAD,
    "labels": [
        ("list", ["a"]),
        ("string", "a"),
        ("value-dict", {"a": {}}),
        ("value-nul", {"a": "\u0000"}),
        ("key-nul", {"\u0000": "a"}),
        ("key-surrogate", {"\ud800": "a"}),
    ],
    "external_id": CHAR_FIELD_BAD,
    "callback_url": [("not-url", "not a url"), ("int", 5), ("javascript", "javascript:alert(1)")],
}

VOTE_BASE = {"decision": "approve", "revision": 1, "comment": "ok"}
VOTE_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "decision": [("int", 5), ("list", []), ("dict", {}), ("unknown", "maybe"), ("null", None)],
    "revision": [
        ("string", "abc"),
        ("zero", 0),
        ("negative", -1),
        ("float", 1.5),
        ("huge-int", 10**400),
        ("overflow-1e400", OVERFLOW),
        ("above-int32", 2**31),
        ("list", []),
        ("dict", {}),
        ("bool", True),
        ("null", None),
    ],
    "comment": CHAR_FIELD_BAD,
    "selected_option": [*CHAR_FIELD_BAD, ("unknown", "nope")],
    "patch": [
        ("string", "x"),
        ("dict", {}),
        ("list-of-int", [1]),
        ("bad-op", [{"op": "bogus", "path": "/a"}]),
        ("missing-path", [{"op": "replace", "path": "/nope/deeper", "value": 1}]),
        ("root-to-list", [{"op": "replace", "path": "", "value": [1]}]),
        ("nul-value", [{"op": "add", "path": "/a", "value": "\u0000"}]),
        ("nul-key", [{"op": "add", "path": "/a\u0000", "value": 1}]),
        ("surrogate-value", [{"op": "add", "path": "/a", "value": "\ud800"}]),
        ("overflow-value", [{"op": "add", "path": "/a", "value": OVERFLOW}]),
        ("no-op", [{"op": "test", "path": "/frequency", "value": 4}]),
    ],
    "adjustments": [
        ("list", [1]),
        ("string", "x"),
        ("nul-value", {"a": "\u0000"}),
        ("nul-key", {"\u0000": 1}),
        ("surrogate-key", {"\ud800": 1}),
        ("overflow-1e400", {"a": OVERFLOW}),
        ("too-deep-40", json.loads(_deep_object(40))),
        ("no-change", {"frequency": 4}),
    ],
}

REVISE_BASE = {"payload": {"frequency": 2}, "summary": "s", "comment": "c"}
REVISE_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "payload": JSON_OBJECT_FIELD_BAD,
    "summary": CHAR_FIELD_BAD,
    "comment": CHAR_FIELD_BAD,
}

REASON_BASE = {"reason": "because"}
REASON_FIELDS: dict[str, list[tuple[str, Any]]] = {"reason": CHAR_FIELD_BAD}


def _bulk_variants() -> list[tuple[str, bytes | str]]:
    out = _raw_variants({"proposals": [NEW]})
    for label, value in [
        ("proposals-missing", {}),
        ("proposals-empty", {"proposals": []}),
        ("proposals-dict", {"proposals": {}}),
        ("proposals-string", {"proposals": "x"}),
        ("proposals-null", {"proposals": None}),
        ("too-many", {"proposals": [NEW] * 501}),
    ]:
        out.append((label, json.dumps(value)))
    # Bad items: the request is answered (200) but every item fails and nothing is written.
    for label, body in _field_variants(SUBMIT_BASE, SUBMIT_FIELDS):
        out.append((f"item:{label}", '{"proposals": [' + body + "]}"))
    for label, item in [("item-list", []), ("item-string", "x"), ("item-null", None)]:
        out.append((label, json.dumps({"proposals": [item]})))
    return out


ENDPOINTS = {
    # name: (role, state, suffix, variants)
    "submit": (
        "submitter",
        None,
        None,
        _raw_variants(SUBMIT_BASE) + _field_variants(SUBMIT_BASE, SUBMIT_FIELDS),
    ),
    "bulk": ("submitter", None, "bulk", _bulk_variants()),
    "votes": (
        "reviewer",
        "pending",
        "votes",
        _raw_variants(VOTE_BASE) + _field_variants(VOTE_BASE, VOTE_FIELDS),
    ),
    "revisions": (
        "submitter",
        "changes_requested",
        "revisions",
        _raw_variants(REVISE_BASE) + _field_variants(REVISE_BASE, REVISE_FIELDS),
    ),
    "cancel": (
        "manager",
        "pending",
        "cancel",
        _raw_variants(REASON_BASE) + _field_variants(REASON_BASE, REASON_FIELDS),
    ),
    "revoke": (
        "manager",
        "approved",
        "revoke",
        _raw_variants(REASON_BASE)
        + _field_variants(REASON_BASE, REASON_FIELDS)
        + [("reason-blank", _with(REASON_BASE, reason=" ")), ("no-reason", "{}")],
    ),
}


def _state(world: Any, state: str | None) -> Proposal | None:
    if state is None:
        return None
    proposal = submit(world.submitter, world.checkpoint, title="Inspect", payload={"frequency": 4})
    if state == "changes_requested":
        services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=world.reviewer2,
            decision="request_changes",
            revision=1,
            comment="why",
        )
    elif state == "approved":
        services.vote_cast(
            proposal_id=proposal.pk, reviewer=world.reviewer2, decision="approve", revision=1
        )
    return proposal


def _rows() -> tuple[Any, ...]:
    """Row counts of everything a request could write, plus each proposal's mutable state,
    in one round trip (the fuzz loop calls this twice per body)."""
    tables = [m._meta.db_table for m in (Proposal, Revision, Vote, AuditEvent, IdempotencyRecord)]
    counts = ", ".join(f'(SELECT COUNT(*) FROM "{t}")' for t in tables)  # noqa: S608
    state = (
        "(SELECT string_agg(concat_ws(':', id, status, revision, claimed_by_id, updated_at),"
        " ',' ORDER BY id) FROM \"proposals_proposal\")"
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {counts}, {state}")
        return tuple(cursor.fetchone())


def _check_error_body(response: Any) -> str | None:
    """None if the response is a well-formed 4xx error, else what is wrong with it."""
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}"
    try:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}
    except Exception:
        return f"{response.status_code} without a JSON error body: {response.content[:120]!r}"
    return None


FUZZ_RUNS = [(name, False) for name in ENDPOINTS] + [("submit", True), ("bulk", True)]


@pytest.mark.parametrize(
    ("endpoint", "with_key"),
    FUZZ_RUNS,
    ids=[f"{name}{'-with-idempotency-key' if key else ''}" for name, key in FUZZ_RUNS],
)
def test_malformed_bodies_are_4xx_and_write_nothing(world, client_for, endpoint, with_key):
    role, state, suffix, variants = ENDPOINTS[endpoint]
    proposal = _state(world, state)
    client = client_for(getattr(world, role))
    client.raise_request_exception = False  # a 500 is a finding to report, not a crash
    url = f"{API}/proposals/"
    if proposal is not None:
        url += f"{proposal.pk}/{suffix}/"
    elif suffix:
        url += f"{suffix}/"

    problems: list[str] = []
    for index, (label, raw) in enumerate(variants):
        headers = {"HTTP_IDEMPOTENCY_KEY": f"fuzz-{index}"} if with_key else {}
        before = _rows()
        savepoint = transaction.savepoint()
        response = client.generic(
            "POST",
            url,
            raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw,
            content_type="application/json",
            **headers,
        )
        if response.status_code >= 500:
            transaction.savepoint_rollback(savepoint)
            exc = response.exc_info[1] if response.exc_info else None
            problems.append(f"{label}: {response.status_code} {type(exc).__name__}: {exc}"[:200])
            continue
        after = _rows()
        if endpoint == "bulk" and response.status_code == 200:
            # A bulk request is answered even when every item fails; with a key, that answer is
            # recorded for replay. Nothing else may be written.
            after = (after[0], *after[1:4], before[4], *after[5:])
            results = response.json()["results"]
            bad = [r for r in results if not 400 <= r["status"] < 500 or "error" not in r]
            if bad:
                problems.append(f"{label}: bulk item answered {bad[0]['status']}")
        else:
            problem = _check_error_body(response)
            if problem:
                problems.append(f"{label}: {problem}")
        if after != before:
            problems.append(f"{label}: rows written ({response.status_code})")
        transaction.savepoint_rollback(savepoint)  # start every variant from the same state
    assert not problems, f"{len(problems)} of {len(variants)} bodies mishandled:\n" + "\n".join(
        problems
    )


def test_claim_ignores_its_body(world, client_for, pending):
    """Claim takes no input: a garbage body neither breaks it nor is parsed."""
    client = client_for(world.reviewer)
    client.raise_request_exception = False
    for raw in ("{", "[]", _deep(DEEP), '{"a": "\\u0000"}'):
        response = client.generic(
            "POST", f"{API}/proposals/{pending.pk}/claim/", raw, content_type="application/json"
        )
        assert response.status_code == 200, (raw[:20], response.status_code)
    assert Proposal.objects.get(pk=pending.pk).claimed_by_id == world.reviewer.pk


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100_000)
def test_oversized_body_is_413(agent):
    agent.raise_request_exception = False
    body = json.dumps({**NEW, "payload": {"blob": "x" * 200_000}})
    response = agent.post(f"{API}/proposals/", body, content_type="application/json")
    assert_error(response, 413, "payload_too_large")
    assert Proposal.objects.count() == 0


# --- query-string garbage on the list --------------------------------------------------------


def _cursor(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        "cursor=garbage",
        "cursor=%00",
        "cursor=!!!!",
        "cursor=" + "A" * 501,
        "cursor=" + _cursor({"a": 1}),
        "cursor=" + _cursor([1, 2]),
        "cursor=" + _cursor([1, 2, 3]),
        "cursor=" + _cursor(None),
        "cursor=" + _cursor("ab"),
        "cursor=" + _cursor(["2024-01-01T00:00:00", "00000000-0000-4000-8000-000000000000"]),
        "cursor=" + _cursor(["2024-01-01T00:00:00+00:00", "not-a-uuid"]),
        "cursor=" + _cursor(["not-a-date", "00000000-0000-4000-8000-000000000000"]),
        "cursor=" + _cursor(b"\xff\xfe\x00"),
        "page_size=0",
        "page_size=-1",
        "page_size=abc",
        "page_size=1.5",
        "page_size=10000",
        "page_size=" + "9" * 400,
        "label=nocolon",
        "label=:value",
        "label=" + "x" * 301,
        "reviewable=you",
        "submitted=them",
        "checkpoint=not%20a%20slug",
        "region=" + "r" * 101,
        "status=%00",
        "status=nonsense",
        "status=pending,nonsense&priority=nonsense",
        "priority=urgent",
        "priority=high,urgent",
        "region=a%00b",
        "external_id=" + "e" * 201,
        "label=a:%00",
    ],
)
def test_list_query_garbage_is_400(world, client_for, pending, query):
    client = client_for(world.manager)
    client.raise_request_exception = False
    response = client.get(f"{API}/proposals/?{query}")
    assert_error(response, 400, "invalid")


def test_list_unknown_status_or_priority_names_the_known_ones(world, client_for, pending):
    response = client_for(world.manager).get(f"{API}/proposals/?status=pending,aproved")
    body = assert_error(response, 400, "invalid")
    assert "aproved" in str(body) and "changes_requested" in str(body)
    response = client_for(world.manager).get(f"{API}/proposals/?priority=urgent")
    body = assert_error(response, 400, "invalid")
    assert "urgent" in str(body) and "critical" in str(body)


@pytest.mark.parametrize(
    "query",
    [
        "checkpoint=no-such-checkpoint",
        "region=nowhere",
        "label=a:b",
        "external_id=%F0%9F%98%80",
        "status=,,,",
        "cursor="
        + _cursor(["9999-12-31T23:59:59.999999+00:00", "ffffffff-ffff-ffff-ffff-ffffffffffff"]),
        "cursor=" + _cursor(["0001-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000"]),
        "cursor=" + _cursor(["0001-01-01T00:00:00+14:00", "00000000-0000-0000-0000-000000000000"]),
    ],
)
def test_list_query_nonsense_filters_to_empty_or_ok(world, client_for, pending, query):
    client = client_for(world.manager)
    client.raise_request_exception = False
    response = client.get(f"{API}/proposals/?{query}")
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])
    if response.status_code == 400:
        assert_error(response, 400, "invalid")
        return
    ids = [p["id"] for p in response.json()["results"]]
    # Only the far-past cursor and the comma-only status (no filter at all) may return the row.
    assert set(ids) <= {str(pending.pk)}
    if "nowhere" in query or "9999" in query:
        assert ids == []


@pytest.mark.parametrize("timeout", ["abc", "-1", "61", "nan", "inf", "1e400", ""])
def test_wait_timeout_garbage_is_400(world, client_for, pending, timeout):
    response = client_for(world.submitter).get(
        f"{API}/proposals/{pending.pk}/wait/?timeout={timeout}"
    )
    assert_error(response, 400, "invalid")
