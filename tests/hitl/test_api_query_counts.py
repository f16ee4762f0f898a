"""The intake and queue paths stay cheap (issue 10): statement budgets a change cannot
silently blow, and the shortcuts that buy them (the cached key, the answer rendered from what
was written, the relay kick without a result backend) keep their guarantees."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from guardian.shortcuts import remove_perm
from rest_framework.test import APIClient

from hitl.keys import api_key_create, api_key_revoke
from hitl.models import ApiKey
from notifications import live, tasks
from proposals.permissions import REVIEW
from tests.factories import submit
from tests.notifications.conftest import celery_broker, unique_queue

pytestmark = pytest.mark.django_db

LIST = "/api/v1/proposals/"

# Inside a test's transaction: a savepoint and its release around the service's atomic block.
# Once the key, the checkpoint and its electorate are remembered: proposal, revision, their
# history rows and the outbox row in one statement, sent in one round trip with the audit
# event's lock and append (head read, position and hash in the INSERT itself) = 1, plus the
# savepoint pair.
SUBMIT_MAX_QUERIES = 3
# The page, nothing per row, nothing for the caller's key or grants once cached.
LIST_MAX_QUERIES = 2


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def post_submit(client: APIClient, slug: str, title: str = "x") -> Any:
    return client.post(
        LIST, {"checkpoint": slug, "title": title, "payload": {"a": 1}}, format="json"
    )


def test_submit_stays_within_its_statement_budget(world, django_assert_max_num_queries):
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    assert post_submit(client, world.checkpoint.slug).status_code == 201  # warms the key
    with django_assert_max_num_queries(SUBMIT_MAX_QUERIES):
        response = post_submit(client, world.checkpoint.slug)
    assert response.status_code == 201


def test_submit_answer_is_what_a_fresh_read_returns(world):
    """The answer is rendered from the objects just written, not re-read: it must say exactly
    what a GET says, children and permissions included."""
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    created = post_submit(client, world.checkpoint.slug)
    assert created.status_code == 201
    body = created.json()
    fetched = client.get(f"{LIST}{body['id']}/").json()
    assert body == fetched
    assert [r["number"] for r in body["revisions"]] == [1]
    assert body["votes"] == []


def test_vote_answer_is_what_a_fresh_read_returns(world):
    """The vote's answer is rendered from the proposal the vote locked and wrote (children
    read once after the commit): it must say exactly what a GET says."""
    proposal = submit(world.submitter, world.checkpoint)
    client = bearer(api_key_create(user=world.reviewer, name="q").token)
    path = f"{LIST}{proposal.pk}/"
    voted = client.post(f"{path}votes/", {"decision": "approve", "revision": 1}, format="json")
    assert voted.status_code == 201, voted.json()
    body = voted.json()
    vote = body.pop("vote")
    assert body == client.get(path).json()
    assert [v["id"] for v in body["votes"]] == [vote["id"]]


# A deciding vote, once the key is remembered: the proposal locked; the round's votes (the
# double-vote check and the quorum's count in one read); the vote and its history row (one
# statement); its outbox row sent with its audit event's lock and append; the decision
# (proposal, history and outbox rows in one statement) sent with its audit append; after
# commit, the answer's revisions and votes = 7, plus the savepoint pair.
VOTE_MAX_QUERIES = 9
# A submit that policy approves: its rows and event, then the approval (proposal, history
# and outbox rows in one statement) and its event, all in one round trip, plus the savepoint
# pair.
AUTO_SUBMIT_MAX_QUERIES = 3


def test_deciding_vote_stays_within_its_statement_budget(world, django_assert_max_num_queries):
    proposal = submit(world.submitter, world.checkpoint)
    client = bearer(api_key_create(user=world.reviewer, name="q").token)
    assert client.get(LIST).status_code == 200  # warms the key
    with django_assert_max_num_queries(VOTE_MAX_QUERIES):
        voted = client.post(
            f"{LIST}{proposal.pk}/votes/", {"decision": "approve", "revision": 1}, format="json"
        )
    assert voted.status_code == 201, voted.json()
    assert voted.json()["status"] == "approved"


def test_auto_approved_submit_stays_within_its_statement_budget(
    world, django_assert_max_num_queries
):
    world.checkpoint.auto_approve_at = 0.5
    world.checkpoint.save()
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    body = {"checkpoint": world.checkpoint.slug, "title": "x", "payload": {"a": 1}}
    assert client.post(LIST, {**body, "confidence": 0.9}, format="json").status_code == 201
    with django_assert_max_num_queries(AUTO_SUBMIT_MAX_QUERIES):
        response = client.post(LIST, {**body, "confidence": 0.9}, format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "approved"
    assert response.json() == client.get(f"{LIST}{response.json()['id']}/").json()


def test_list_page_stays_within_its_statement_budget(world, django_assert_max_num_queries):
    for i in range(30):
        submit(world.submitter, world.checkpoint, title=f"p{i}")
    client = bearer(api_key_create(user=world.reviewer, name="q").token)
    assert client.get(LIST).status_code == 200  # warms the key
    with django_assert_max_num_queries(LIST_MAX_QUERIES):
        response = client.get(f"{LIST}?page_size=25")
    assert len(response.json()["results"]) == 25


def test_a_cached_key_is_refused_at_once_after_revocation(world):
    issued = api_key_create(user=world.submitter, name="q")
    client = bearer(issued.token)
    assert client.get(LIST).status_code == 200
    with CaptureQueriesContext(connection) as cached:
        assert client.get(LIST).status_code == 200
    assert not any("hitl_apikey" in q["sql"] for q in cached.captured_queries)  # from cache
    api_key_revoke(api_key=issued.api_key, revoked_by=None)
    assert client.get(LIST).status_code == 401


def test_a_cached_key_loses_a_removed_grant_at_once(world):
    client = bearer(api_key_create(user=world.reviewer, name="q").token)
    submit(world.submitter, world.checkpoint)
    assert len(client.get(LIST).json()["results"]) == 1
    remove_perm(REVIEW, world.reviewer.groups.get(), world.checkpoint)
    assert client.get(LIST).json()["results"] == []


def test_a_cached_key_is_dropped_when_another_process_moves_the_rights_version(world):
    """Another process revoked the key: this one hears of it through the rights version
    (written after that commit), not through its own signals."""
    issued = api_key_create(user=world.submitter, name="q")
    client = bearer(issued.token)
    assert client.get(LIST).status_code == 200
    ApiKey.objects.filter(pk=issued.api_key.pk).update(revoked_at="2020-01-01T00:00:00Z")
    assert client.get(LIST).status_code == 200  # no signal here: still cached
    cache.set(live.RIGHTS_VERSION_KEY, "moved-elsewhere", timeout=None)
    assert client.get(LIST).status_code == 401


def test_a_cached_key_expires_after_its_ttl(world, settings):
    settings.HITL_AUTH_CACHE_SECONDS = 0
    issued = api_key_create(user=world.submitter, name="q")
    client = bearer(issued.token)
    assert client.get(LIST).status_code == 200
    ApiKey.objects.filter(pk=issued.api_key.pk).update(revoked_at="2020-01-01T00:00:00Z")
    assert client.get(LIST).status_code == 401


def test_the_electorate_is_counted_once_per_rights_version(world):
    """A stream of submits to one checkpoint reads its grants once; any change to who may
    review reaches the very next submit's `eligible_reviewers`."""
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    assert post_submit(client, world.checkpoint.slug).json()["eligible_reviewers"] == 2
    with CaptureQueriesContext(connection) as cached:
        assert post_submit(client, world.checkpoint.slug).json()["eligible_reviewers"] == 2
    assert not any("guardian" in q["sql"] for q in cached.captured_queries)
    world.reviewer2.groups.clear()  # in this process: its signals drop the cache at once
    assert post_submit(client, world.checkpoint.slug).json()["eligible_reviewers"] == 1


def test_a_remembered_electorate_is_dropped_when_another_process_moves_the_rights_version(
    world,
):
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    assert post_submit(client, world.checkpoint.slug).json()["eligible_reviewers"] == 2
    # Another process deactivated a reviewer: no signal here, only the version moves.
    type(world.reviewer2).objects.filter(pk=world.reviewer2.pk).update(is_active=False)
    assert post_submit(client, world.checkpoint.slug).json()["eligible_reviewers"] == 2
    cache.set(live.RIGHTS_VERSION_KEY, "moved-elsewhere", timeout=None)
    assert post_submit(client, world.checkpoint.slug).json()["eligible_reviewers"] == 1


def test_a_remembered_checkpoint_serves_submits_until_it_changes(world):
    """The intake reads a checkpoint once; a save here reaches the next submit at once, a
    change elsewhere as soon as the rights version moves."""
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    veto = world.checkpoint.veto

    def veto_seen() -> bool:
        return bool(post_submit(client, world.checkpoint.slug).json()["quorum"]["veto"])

    assert veto_seen() is veto
    with CaptureQueriesContext(connection) as cached:
        post_submit(client, world.checkpoint.slug)
    assert not any("proposals_checkpoint" in q["sql"] for q in cached.captured_queries)
    world.checkpoint.veto = not veto
    world.checkpoint.save()
    assert veto_seen() is not veto
    type(world.checkpoint).objects.filter(pk=world.checkpoint.pk).update(veto=veto)
    assert veto_seen() is not veto  # no signal here: still remembered
    cache.set(live.RIGHTS_VERSION_KEY, "moved-elsewhere", timeout=None)
    assert veto_seen() is veto


def test_a_remembered_checkpoint_is_still_refused_to_those_without_access(world):
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    assert post_submit(client, world.checkpoint.slug).status_code == 201
    outsider = bearer(api_key_create(user=world.outsider, name="q").token)
    response = post_submit(outsider, world.checkpoint.slug)
    assert response.status_code == 400
    assert response.json()["error"]["details"]["checkpoint"]


def test_relay_kick_builds_no_result_backend_per_thread(settings):
    """The ASGI server runs each request in a new thread; Celery caches its result backend per
    thread, so an AsyncResult per publish rebuilt a backend on every request."""
    from config.celery import app

    seen: list[bool] = []

    def kick() -> None:
        tasks.kick_relay()
        seen.append("backend" in vars(app._local))

    with celery_broker(settings.REDIS_URL, queue=unique_queue()):
        thread = threading.Thread(target=kick)
        thread.start()
        thread.join(30)
    assert seen == [False]


@pytest.fixture(autouse=True)
def _fresh_key_cache(private_rights_version: None) -> None:
    """Statement counts without another process's rights change in the middle."""


# --- bulk ----------------------------------------------------------------------------------

BULK = "/api/v1/proposals/bulk/"
BULK_ITEMS = 40
# Per chunk: checkpoints, grants, one statement for the proposals, revisions, both history
# tables and the outbox rows, and the audit events (at most three statements each); nothing
# else per item.
BULK_FIXED_QUERIES = 12
AUDIT_QUERIES_PER_EVENT = 3


def _items(world: Any, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"checkpoint": world.checkpoint.slug, "title": f"b{i}", "payload": {"i": i}, **extra}
        for i in range(n)
    ]


def test_bulk_writes_set_based_with_one_audit_event_per_proposal(world):
    from audit.models import AuditEvent
    from audit.services import audit_verify
    from notifications.models import OutboxEvent
    from proposals.models import Proposal, Revision

    client = bearer(api_key_create(user=world.submitter, name="q").token)
    assert client.get(LIST).status_code == 200  # warms the key
    with CaptureQueriesContext(connection) as queries:
        response = client.post(BULK, {"proposals": _items(world, BULK_ITEMS)}, format="json")
    assert response.status_code == 200
    assert [r["status"] for r in response.json()["results"]] == [201] * BULK_ITEMS
    assert len(queries) <= BULK_FIXED_QUERIES + AUDIT_QUERIES_PER_EVENT * BULK_ITEMS
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    audit_inserts = [sql for sql in inserts if "audit_auditevent" in sql]
    statements = [q["sql"] for q in queries.captured_queries]
    rows_and_history = [sql for sql in statements if sql.startswith("WITH r0")]
    assert len(rows_and_history) == 1  # proposals, revisions, both histories and the outbox
    assert len(inserts) - len(audit_inserts) == 0, inserts  # no INSERT per table or item
    ids = {r["proposal"]["id"] for r in response.json()["results"]}
    assert Proposal.objects.filter(pk__in=ids).count() == BULK_ITEMS
    assert Revision.objects.filter(proposal_id__in=ids).count() == BULK_ITEMS
    assert Proposal.history.filter(id__in=ids).count() == BULK_ITEMS  # type: ignore[attr-defined]
    assert OutboxEvent.objects.filter(proposal_id__in=ids).count() == BULK_ITEMS
    events = AuditEvent.objects.filter(proposal_id__in=ids, verb="proposal.submitted")
    assert events.count() == BULK_ITEMS
    assert audit_verify()[1] is None


def test_bulk_routes_every_item_exactly_as_a_single_submit(world):
    """A policy that decides (auto-approve above a confidence) and one that does not: each
    bulk item ends as the same item submitted alone, with the same events."""
    from audit.models import AuditEvent

    world.checkpoint.auto_approve_at = 0.9
    world.checkpoint.save()
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    items = _items(world, 4)
    for i, item in enumerate(items):
        item["confidence"] = 0.95 if i % 2 else 0.5
    bulk = client.post(BULK, {"proposals": items}, format="json").json()["results"]
    single = [client.post(LIST, item, format="json").json() for item in items]

    def shape(p: dict[str, Any]) -> tuple[Any, ...]:
        verbs = tuple(
            AuditEvent.objects.filter(proposal_id=p["id"]).order_by("id").values_list("verb")
        )
        return p["status"], p["resolution"], p["approved_payload"], p["quorum_required"], verbs

    assert [shape(r["proposal"]) for r in bulk] == [shape(p) for p in single]
    assert {r["proposal"]["status"] for r in bulk} == {"pending", "approved"}


def test_bulk_answers_a_bad_item_alone_and_writes_the_others(world):
    client = bearer(api_key_create(user=world.submitter, name="q").token)
    items = _items(world, 3)
    items[1]["checkpoint"] = "no-such-checkpoint"
    results = client.post(BULK, {"proposals": items}, format="json").json()["results"]
    assert [r["status"] for r in results] == [201, 400, 201]
