"""A keyed bulk submit (Idempotency-Key) commits item by item: other writes go on while it
runs, a replay returns the stored response, a retry after a crash resumes without duplicates."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from hitl.api import views
from hitl.models import IdempotencyRecord
from proposals.models import Proposal
from tests.concurrency import run_in_threads
from tests.factories import make_service_account, submit

API = "/api/v1"
BULK = f"{API}/proposals/bulk/"
BODY = {"checkpoint": "inspection-schedule", "title": "Inspect", "payload": {"frequency": 4}}
ITEMS = 300


def _batch(n: int) -> dict[str, Any]:
    return {"proposals": [{**BODY, "title": f"item {i}"} for i in range(n)]}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_keyed_bulk_does_not_stop_a_vote_on_another_proposal(world, client_for, monkeypatch):
    """The report: a vote on an unrelated proposal took 7.9 s during a 300-item keyed bulk,
    because the batch ran in one transaction holding the audit chain's lock to the end.

    The bulk is held between its first and second chunk until the vote has been answered (at
    most 30 s): a vote that waited on anything the bulk still held would only be answered
    once the bulk went on. (Racing the two requests' end times failed once in CI: a bulk of
    0.17 s answered 9 ms before a vote that started while it ran.)"""
    elsewhere = make_service_account("agent-elsewhere", world.other_checkpoint)
    unrelated = submit(elsewhere, world.other_checkpoint, payload={"x": 1})
    agent = client_for(world.submitter)
    reviewer = client_for(world.other_reviewer)
    body = _batch(ITEMS)
    first_chunk_done, vote_answered = threading.Event(), threading.Event()
    paused: dict[str, bool] = {}
    real_item = views._bulk_item
    second_chunk_first_item = f"item {views.ProposalBulkView.CHUNK}"

    def pause_before_the_second_chunk(parser: Any, data: Any, key: Any, checkpoints: Any) -> Any:
        if data["title"] == second_chunk_first_item:
            first_chunk_done.set()
            paused["vote answered meanwhile"] = vote_answered.wait(30)
        return real_item(parser, data, key, checkpoints)

    monkeypatch.setattr(views, "_bulk_item", pause_before_the_second_chunk)

    def work(index: int, barrier: threading.Barrier) -> Any:
        barrier.wait()
        if index == 0:
            return agent.post(BULK, body, format="json", HTTP_IDEMPOTENCY_KEY="big-batch")
        try:
            assert first_chunk_done.wait(60), "the bulk never reached its second chunk"
            return reviewer.post(
                f"{API}/proposals/{unrelated.pk}/votes/",
                {"decision": "approve", "revision": 1},
                format="json",
            )
        finally:
            vote_answered.set()  # (a failed vote lets the bulk go on at once, too)

    bulk, vote = run_in_threads(2, work, timeout=600)
    assert vote.status_code == 201, vote.content[:300]
    assert paused == {"vote answered meanwhile": True}
    assert bulk.status_code == 200, bulk.content[:300]
    assert [r["status"] for r in bulk.json()["results"]] == [201] * ITEMS
    assert Proposal.objects.filter(submitted_by=world.submitter).count() == ITEMS
    monkeypatch.setattr(views, "_bulk_item", real_item)

    # Replay: the stored response, nothing new.
    count = Proposal.objects.count()
    again = agent.post(BULK, body, format="json", HTTP_IDEMPOTENCY_KEY="big-batch")
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == bulk.json()
    assert Proposal.objects.count() == count


@pytest.mark.django_db
def test_a_keyed_bulk_retried_after_a_crash_resumes_without_duplicates(
    world, client_for, monkeypatch
):
    agent = client_for(world.submitter)
    agent.raise_request_exception = False
    body = _batch(5)
    real_item = views._bulk_item
    monkeypatch.setattr(views.ProposalBulkView, "CHUNK", 2)  # items commit two at a time

    def crash_at_item_3(parser: Any, data: Any, key: str | None, checkpoints: Any) -> Any:
        if data["title"] == "item 3":
            raise RuntimeError("the process died here")
        return real_item(parser, data, key, checkpoints)

    monkeypatch.setattr(views, "_bulk_item", crash_at_item_3)
    crashed = agent.post(BULK, body, format="json", HTTP_IDEMPOTENCY_KEY="resumable")
    assert crashed.status_code == 500
    first = list(Proposal.objects.order_by("title").values_list("title", "pk"))
    assert [title for title, _ in first] == ["item 0", "item 1"]  # the chunk before committed
    assert IdempotencyRecord.objects.get(key="resumable").response_status == 0  # in progress

    monkeypatch.setattr(views, "_bulk_item", real_item)
    retried = agent.post(BULK, body, format="json", HTTP_IDEMPOTENCY_KEY="resumable")
    assert retried.status_code == 200, retried.content[:300]
    assert "Idempotent-Replayed" not in retried
    results = retried.json()["results"]
    assert [r["status"] for r in results] == [201] * 5
    assert [r["proposal"]["id"] for r in results[:2]] == [str(pk) for _, pk in first]
    assert Proposal.objects.count() == 5

    replay = agent.post(BULK, body, format="json", HTTP_IDEMPOTENCY_KEY="resumable")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == retried.json()
    other_body = agent.post(BULK, _batch(2), format="json", HTTP_IDEMPOTENCY_KEY="resumable")
    assert other_body.status_code == 422
    assert Proposal.objects.count() == 5


@pytest.mark.django_db
def test_bulk_item_keys_never_collide_with_single_submit_keys(world, client_for):
    """An item's key starts with U+001F, which no Idempotency-Key header may hold."""
    agent = client_for(world.submitter)
    assert agent.post(BULK, _batch(1), format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 200
    (item_key,) = Proposal.objects.values_list("idempotency_key", flat=True)
    assert item_key is not None and item_key.startswith("\x1f")
    response = agent.post(f"{API}/proposals/", BODY, format="json", HTTP_IDEMPOTENCY_KEY=item_key)
    assert response.status_code == 400
