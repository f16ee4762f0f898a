"""`Idempotency-Key` on the creating POSTs: replay, mismatch, per-caller keys, bad keys, failed
requests that leave the key free, and the 409 while the first request is still running."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction

from audit.models import AuditEvent
from hitl.api.idempotency import IDEMPOTENCY_LOCK_CLASS, _lock_key
from hitl.models import IdempotencyRecord
from proposals.models import Proposal
from tests.factories import make_service_account

pytestmark = pytest.mark.django_db

URL = "/api/v1/proposals/"
BULK = "/api/v1/proposals/bulk/"
BODY = {"checkpoint": "inspection-schedule", "title": "Inspect", "payload": {"frequency": 4}}


def post(client: Any, url: str, body: Any, key: str | None) -> Any:
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(url, body, format="json", **headers)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    return body


def counts() -> tuple[int, int, int]:
    return Proposal.objects.count(), AuditEvent.objects.count(), IdempotencyRecord.objects.count()


def test_same_key_same_body_replays_the_first_response(world, client_for):
    agent = client_for(world.submitter)
    first = post(agent, URL, BODY, "key-1")
    assert first.status_code == 201, first.json()
    assert "Idempotent-Replayed" not in first
    after_first = counts()
    assert after_first[0] == 1 and after_first[2] == 1

    # Key order in the body does not matter: the hash is over canonical JSON.
    reordered = {
        "payload": {"frequency": 4},
        "title": "Inspect",
        "checkpoint": "inspection-schedule",
    }
    for body in (BODY, reordered):
        again = post(agent, URL, body, "key-1")
        assert again.status_code == 201
        assert again["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
    assert counts() == after_first

    # The stored record names the proposal that was created, once.
    proposal = Proposal.objects.get()
    assert str(proposal.pk) == first.json()["id"]
    assert proposal.idempotency_key == "key-1"


def test_replay_after_the_proposal_changed_returns_the_original_response(world, client_for):
    agent = client_for(world.submitter)
    first = post(agent, URL, BODY, "key-1")
    pid = first.json()["id"]
    assert (
        client_for(world.reviewer)
        .post(f"{URL}{pid}/votes/", {"decision": "approve", "revision": 1}, format="json")
        .status_code
        == 201
    )
    again = post(agent, URL, BODY, "key-1")
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.json()["status"] == "pending"  # the first response, not the current state


def test_same_key_other_body_is_422(world, client_for):
    agent = client_for(world.submitter)
    assert post(agent, URL, BODY, "key-1").status_code == 201
    before = counts()
    response = post(agent, URL, {**BODY, "title": "Something else"}, "key-1")
    body = assert_error(response, 422, "idempotency_key_reused")
    assert "Idempotent-Replayed" not in response
    assert body["error"]["message"]
    assert counts() == before


def test_same_key_on_another_endpoint_is_422(world, client_for):
    agent = client_for(world.submitter)
    assert post(agent, URL, BODY, "shared").status_code == 201
    before = counts()
    response = post(agent, BULK, {"proposals": [BODY]}, "shared")
    assert_error(response, 422, "idempotency_key_reused")
    assert counts() == before


def test_same_key_from_two_callers_is_independent(world, client_for):
    second = make_service_account("agent-jones", world.checkpoint)
    one = post(client_for(world.submitter), URL, BODY, "nightly-run")
    two = post(client_for(second), URL, BODY, "nightly-run")
    assert one.status_code == two.status_code == 201
    assert "Idempotent-Replayed" not in two
    assert one.json()["id"] != two.json()["id"]
    assert two.json()["submitted_by"] == "agent-jones"
    assert Proposal.objects.count() == 2
    # And a different body under the same key is fine for the other caller too.
    three = post(client_for(world.submitter), URL, {**BODY, "title": "x"}, "nightly-run")
    assert_error(three, 422, "idempotency_key_reused")


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("k" * 201, id="too-long"),
        pytest.param("tab\there", id="control-char"),
    ],
)
def test_invalid_keys_are_400(world, client_for, key):
    response = post(client_for(world.submitter), URL, BODY, key)
    body = assert_error(response, 400, "invalid")
    assert "Idempotency-Key" in body["error"]["details"]
    assert counts()[0] == 0


def test_longest_key_is_accepted(world, client_for):
    agent = client_for(world.submitter)
    key = "k" * 200
    assert post(agent, URL, BODY, key).status_code == 201
    assert post(agent, URL, BODY, key)["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    ("bad", "status", "code"),
    [
        pytest.param({k: v for k, v in BODY.items() if k != "title"}, 400, "invalid", id="400"),
        pytest.param({**BODY, "checkpoint": "elsewhere"}, 400, "invalid", id="unknown-cp"),
        pytest.param(
            {**BODY, "options": [{"key": "a", "payload": {}}, {"key": "a", "payload": {}}]},
            422,
            "unprocessable",
            id="422",
        ),
    ],
)
def test_failed_request_does_not_burn_the_key(world, client_for, bad, status, code):
    agent = client_for(world.submitter)
    before = counts()
    assert_error(post(agent, URL, bad, "retry-me"), status, code)
    assert counts() == before  # no record, no proposal, no audit event
    # Retrying the same failing body fails the same way (it is not replayed, it is re-run).
    assert_error(post(agent, URL, bad, "retry-me"), status, code)
    fixed = post(agent, URL, BODY, "retry-me")
    assert fixed.status_code == 201, fixed.json()
    assert "Idempotent-Replayed" not in fixed
    assert post(agent, URL, BODY, "retry-me")["Idempotent-Replayed"] == "true"


def test_forbidden_request_does_not_burn_the_key(world, client_for):
    reviewer = client_for(world.reviewer)
    assert_error(post(reviewer, URL, BODY, "k"), 403, "permission_denied")
    assert IdempotencyRecord.objects.count() == 0
    assert_error(post(reviewer, URL, BODY, "k"), 403, "permission_denied")


def test_bulk_with_a_key_replays(world, client_for):
    agent = client_for(world.submitter)
    body = {"proposals": [BODY, {**BODY, "title": "Second"}, {"title": "no checkpoint"}]}
    first = post(agent, BULK, body, "batch-7")
    assert first.status_code == 200, first.json()
    assert [r["status"] for r in first.json()["results"]] == [201, 201, 400]
    before = counts()
    assert before[0] == 2

    again = post(agent, BULK, body, "batch-7")
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert counts() == before

    changed = post(agent, BULK, {"proposals": [BODY]}, "batch-7")
    assert_error(changed, 422, "idempotency_key_reused")
    assert counts() == before


def test_bulk_without_a_key_creates_every_time(world, client_for):
    agent = client_for(world.submitter)
    body = {"proposals": [BODY]}
    assert post(agent, BULK, body, None).status_code == 200
    assert post(agent, BULK, body, None).status_code == 200
    assert Proposal.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.parametrize("bulk_first", [True, False], ids=["bulk-then-single", "single-then-bulk"])
def test_a_key_that_looks_like_a_bulk_item_key_is_still_a_new_request(
    world, client_for, bulk_first
):
    """Bulk stores item i under "<key>:<i>" on the proposal. A single submit that happens to use
    "<key>:0" is another request with another key: both must be created, in either order (not
    crash on the proposal's unique (submitted_by, idempotency_key) constraint)."""
    agent = client_for(world.submitter)
    agent.raise_request_exception = False

    def bulk() -> Any:
        return post(agent, BULK, {"proposals": [BODY]}, "batch")

    def single() -> Any:
        return post(agent, URL, {**BODY, "title": "single"}, "batch:0")

    first, second = (bulk, single) if bulk_first else (single, bulk)
    assert first().status_code in (200, 201)
    response = second()
    assert response.status_code in (200, 201), (response.status_code, response.content[:300])
    if response.status_code == 200:
        assert [r["status"] for r in response.json()["results"]] == [201]
    assert Proposal.objects.count() == 2


def test_bulk_with_a_key_never_500s_on_an_item_error_that_echoes_input(world, client_for):
    """DRF's choice error echoes the input ('"high\\x00" is not a valid choice.'); the recorded
    response must still be storable, or the whole batch becomes a 500."""
    agent = client_for(world.submitter)
    agent.raise_request_exception = False
    body = {"proposals": [BODY, {**BODY, "priority": "high\u0000"}]}
    response = post(agent, BULK, body, "batch-nul")
    assert response.status_code < 500, response.content[:300]
    if response.status_code == 200:
        assert [r["status"] for r in response.json()["results"]] == [201, 400]
        assert post(agent, BULK, body, "batch-nul")["Idempotent-Replayed"] == "true"
    else:
        assert_error(response, 400, response.json()["error"]["code"])
        assert Proposal.objects.count() == 0


# --- in flight -----------------------------------------------------------------------------


class HeldLock:
    """Holds the request's advisory lock from another connection, as a concurrent request with
    the same (caller, key) would while it runs."""

    def __init__(self, owner_id: int, key: str) -> None:
        self.lock_key = _lock_key(owner_id, key)
        self.acquired = threading.Event()
        self.release = threading.Event()
        self.got: bool | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, %s)",
                    [IDEMPOTENCY_LOCK_CLASS, self.lock_key],
                )
                self.got = bool(cursor.fetchone()[0])
                self.acquired.set()
                self.release.wait(timeout=30)
        except BaseException as exc:  # surfaced in the main thread
            self.error = exc
            self.acquired.set()
        finally:
            connection.close()

    def __enter__(self) -> HeldLock:
        self.thread.start()
        assert self.acquired.wait(timeout=10)
        assert self.error is None, self.error
        assert self.got is True
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_same_key_in_flight_is_409(world, client_for):
    agent = client_for(world.submitter)
    with HeldLock(world.submitter.pk, "busy"):
        response = post(agent, URL, BODY, "busy")
        assert_error(response, 409, "idempotency_in_flight")
        assert Proposal.objects.count() == 0
        # Another key from the same caller, and the same key from another caller, go through.
        assert post(agent, URL, BODY, "not-busy").status_code == 201
        other = make_service_account("agent-jones", world.checkpoint)
        assert post(client_for(other), URL, BODY, "busy").status_code == 201
    # Once the first request is done, the key works (here: nothing was recorded under it).
    response = post(agent, URL, BODY, "busy")
    assert response.status_code == 201, response.json()
    assert "Idempotent-Replayed" not in response
    assert Proposal.objects.filter(submitted_by=world.submitter).count() == 2


@pytest.mark.django_db(transaction=True)
def test_bulk_in_flight_is_409(world, client_for):
    agent = client_for(world.submitter)
    with HeldLock(world.submitter.pk, "batch"):
        response = post(agent, BULK, {"proposals": [BODY]}, "batch")
        assert_error(response, 409, "idempotency_in_flight")
    assert Proposal.objects.count() == 0
