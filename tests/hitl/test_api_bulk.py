"""A bulk submit is set-based end to end (issue 10): its statements do not grow with the items,
its audit events go in with one INSERT per chunk and still verify one by one, and each item's
answer is rendered from what was written yet says what a fresh read says."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from audit.services import audit_verify
from hitl.api import views

pytestmark = pytest.mark.django_db

API = "/api/v1"
BULK = f"{API}/proposals/bulk/"


@pytest.fixture(autouse=True)
def _fresh_key_cache(private_rights_version: None) -> None:
    """Statement counts without another process's rights change in the middle."""


def _items(world: Any, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"checkpoint": world.checkpoint.slug, "title": f"b{i}", "payload": {"i": i}, **extra}
        for i in range(n)
    ]


def _statements(client: Any, body: dict[str, Any], **headers: Any) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.post(BULK, body, format="json", **headers)
    assert response.status_code == 200, response.content[:300]
    assert {r["status"] for r in response.json()["results"]} == {201}
    return [q["sql"] for q in queries.captured_queries]


def _head_reads(statements: list[str]) -> list[str]:
    """Reads of an audit chain's head: one per append of events (audit.services)."""
    return [sql for sql in statements if "head.chain_seq" in sql]


@pytest.mark.parametrize("keyed", [False, True])
def test_statements_do_not_grow_with_the_items(world, client_for, keyed):
    """Before: two audit statements per item (position, INSERT), so 500 items cost ~1,050
    statements. Now a chunk costs the same whether it holds 5 items or 50."""
    client = client_for(world.submitter)
    client.post(BULK, {"proposals": _items(world, 1)}, format="json")  # warms caches

    def headers(name: str) -> dict[str, str]:
        return {"HTTP_IDEMPOTENCY_KEY": name} if keyed else {}

    few = _statements(client, {"proposals": _items(world, 5)}, **headers("few"))
    many = _statements(client, {"proposals": _items(world, 50)}, **headers("many"))
    assert len(many) == len(few), (len(few), len(many))
    # One chunk (CHUNK >= 50): one append for all its events, after one read of the chain's
    # head (the append itself is a COPY, which the capture does not see).
    assert len(_head_reads(many)) == 1
    assert AuditEvent.objects.filter(verb="proposal.submitted").count() == 56
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_one_audit_append_per_chunk_each_event_verifiable(world, client_for, monkeypatch):
    monkeypatch.setattr(views.ProposalBulkView, "CHUNK", 4)
    statements = _statements(client_for(world.submitter), {"proposals": _items(world, 10)})
    assert len(_head_reads(statements)) == 3  # chunks of 4, 4 and 2: one append each
    events = AuditEvent.objects.filter(verb="proposal.submitted")
    assert events.count() == 10
    assert events.values("proposal_id").distinct().count() == 10
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_each_answer_is_what_a_fresh_read_returns(world, client_for):
    """Rendered from the objects written (no read back, no serializer per item), for queued
    items and for items a policy decided on the spot."""
    world.checkpoint.auto_approve_at = 0.9
    world.checkpoint.save()
    client = client_for(world.submitter)
    items = _items(world, 6, summary="s", labels={"team": "a"}, impact="12.5", region="eu")
    for i, item in enumerate(items):
        item["confidence"] = 0.95 if i % 2 else 0.5
    results = client.post(BULK, {"proposals": items}, format="json").json()["results"]
    assert {r["proposal"]["status"] for r in results} == {"pending", "approved"}
    for result in results:
        fresh = client.get(f"{API}/proposals/{result['proposal']['id']}/").json()
        assert result["proposal"] == {name: fresh[name] for name in result["proposal"]}


def test_a_bad_item_is_worded_exactly_as_a_single_submit_words_it(world, client_for):
    client = client_for(world.submitter)
    bad = [
        {"checkpoint": world.checkpoint.slug, "title": 5, "payload": {}},
        {"checkpoint": world.checkpoint.slug, "payload": {}},
        "text",
    ]
    results = client.post(BULK, {"proposals": bad}, format="json").json()["results"]
    for item, result in zip(bad, results, strict=True):
        alone = client.post(f"{API}/proposals/", item, format="json")
        assert result["status"] == alone.status_code == 400
        assert {k: v for k, v in result.items() if k not in ("index", "status")} == alone.json()
