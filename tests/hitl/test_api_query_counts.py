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

from hitl.authentication import key_cache
from hitl.keys import api_key_create, api_key_revoke
from hitl.models import ApiKey
from notifications import live, tasks
from proposals.permissions import REVIEW
from tests.factories import submit
from tests.notifications.conftest import celery_broker, unique_queue

pytestmark = pytest.mark.django_db

LIST = "/api/v1/proposals/"

# Inside a test's transaction: a savepoint and its release around the service's atomic block.
# checkpoint, grants (electorate), proposal, history, revision, outbox, audit (lock, head,
# insert) = 9, plus the savepoint pair.
SUBMIT_MAX_QUERIES = 11
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
def _fresh_key_cache() -> Any:
    key_cache.forget_all()
    yield
    key_cache.forget_all()
