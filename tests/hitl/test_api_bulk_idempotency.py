"""A keyed bulk submit (Idempotency-Key) commits item by item: other writes go on while it
runs, a replay returns the stored response, a retry after a crash resumes without duplicates."""

from __future__ import annotations

import threading
import time
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
def test_a_keyed_bulk_does_not_stop_a_vote_on_another_proposal(world, client_for):
    """The report: a vote on an unrelated proposal took 7.9 s during a 300-item keyed bulk,
    because the batch ran in one transaction holding the audit chain's lock to the end."""
    elsewhere = make_service_account("agent-elsewhere", world.other_checkpoint)
    unrelated = submit(elsewhere, world.other_checkpoint, payload={"x": 1})
    agent = client_for(world.submitter)
    reviewer = client_for(world.other_reviewer)
    body = _batch(ITEMS)
    times: dict[str, float] = {}
    bulk_done = threading.Event()

    def work(index: int, barrier: threading.Barrier) -> Any:
        barrier.wait()
        if index == 0:
            times["bulk_start"] = time.monotonic()
            response = agent.post(BULK, body, format="json", HTTP_IDEMPOTENCY_KEY="big-batch")
            times["bulk_end"] = time.monotonic()
            bulk_done.set()
            return response
        # Vote once the bulk is under way: a few of its items committed (or, had it been one
        # transaction, nothing visible yet: then two seconds in).
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not bulk_done.is_set():
            if Proposal.objects.filter(submitted_by=world.submitter).count() >= 5:
                break
            time.sleep(0.05)
        times["vote_start"] = time.monotonic()
        times["bulk_running_at_vote"] = float(not bulk_done.is_set())
        response = reviewer.post(
            f"{API}/proposals/{unrelated.pk}/votes/",
            {"decision": "approve", "revision": 1},
            format="json",
        )
        times["vote_end"] = time.monotonic()
        return response

    bulk, vote = run_in_threads(2, work, timeout=600)
    assert bulk.status_code == 200, bulk.content[:300]
    assert [r["status"] for r in bulk.json()["results"]] == [201] * ITEMS
    assert vote.status_code == 201, vote.content[:300]
    assert times["bulk_running_at_vote"] == 1.0, "the bulk finished before the vote started"
    vote_seconds = times["vote_end"] - times["vote_start"]
    bulk_seconds = times["bulk_end"] - times["bulk_start"]
    print(f"vote {vote_seconds:.2f}s during a {ITEMS}-item keyed bulk of {bulk_seconds:.2f}s")
    # Not serialized behind the batch: the vote is answered while the bulk still runs.
    assert times["vote_end"] < times["bulk_end"], (vote_seconds, bulk_seconds)

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
