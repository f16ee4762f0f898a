"""Keyset pagination of the proposal list: every row exactly once in (sla_due_at, id) order,
across ties and concurrent inserts; no COUNT, no N+1; and the queue query can use the partial
open-work indexes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.shortcuts import assign_perm

from notifications import live
from proposals import services
from proposals.models import Proposal
from proposals.permissions import SUBMIT
from tests.factories import make_service_account, submit

pytestmark = pytest.mark.django_db

LIST = "/api/v1/proposals/"
PRIORITIES = ["critical", "high", "medium", "low"]


def walk(client: Any, url: str, page_size: int) -> tuple[list[str], int]:
    """Follow `next` to the end; returns (ids in order, number of pages)."""
    ids: list[str] = []
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.json()
        body = response.json()
        results = body["results"]
        pages += 1
        assert pages < 100, "pagination does not terminate"
        if body["next"] is not None:
            assert len(results) == page_size, "a page before the last one is short"
            assert body["next"].startswith("http://testserver/api/v1/proposals/?")
        else:
            assert len(results) <= page_size
        ids.extend(p["id"] for p in results)
        url = body["next"]
    return ids, pages


def expected_order(qs: Any) -> list[str]:
    rows = list(qs.values_list("sla_due_at", "id"))
    return [str(pk) for _, pk in sorted(rows)]  # Python's own (datetime, UUID) order


@pytest.fixture
def queue(world):
    """25 proposals on the checkpoint with varying priorities, two tie groups on sla_due_at
    that straddle page boundaries (page_size=7), two cancelled, plus rows the reviewer may not
    see on the other checkpoint."""
    proposals = [
        submit(world.submitter, world.checkpoint, title=f"p{i}", priority=PRIORITIES[i % 4])
        for i in range(25)
    ]
    now = timezone.now()
    # Documented bulk path for tests: identical deadlines cannot be produced through the service.
    Proposal.objects.filter(pk__in=[p.pk for p in proposals[:9]]).update(
        sla_due_at=now + timedelta(minutes=10)  # the first 9 rows: splits at 7
    )
    Proposal.objects.filter(pk__in=[p.pk for p in proposals[12:18]]).update(
        sla_due_at=now + timedelta(hours=2)  # after the 6-7 critical ones: splits at 14
    )
    for p in proposals[20:22]:
        services.proposal_cancel(proposal_id=p.pk, actor=world.submitter, reason="dup")
    other = make_service_account("agent-other", world.other_checkpoint)
    for i in range(5):
        submit(other, world.other_checkpoint, title=f"hidden{i}")
    return proposals


def test_sla_deadlines_really_tie_and_differ(world, queue):
    deadlines = list(
        Proposal.objects.filter(checkpoint=world.checkpoint).values_list("sla_due_at", flat=True)
    )
    assert len(set(deadlines)) < len(deadlines), "no ties: the test would not test ties"
    assert len(set(deadlines)) > 4, "too few distinct deadlines"


@pytest.mark.parametrize("page_size", [7, 3, 25, 26])
def test_walk_every_page(world, client_for, queue, page_size):
    client = client_for(world.reviewer)
    ids, pages = walk(client, f"{LIST}?page_size={page_size}", page_size)
    visible = Proposal.objects.filter(checkpoint=world.checkpoint)
    assert len(ids) == len(set(ids)) == 25, "a row was repeated or skipped"
    assert ids == expected_order(visible)
    assert pages == -(-25 // page_size)  # ceil: no trailing empty page


def test_walk_keeps_filters_in_next(world, client_for, queue):
    client = client_for(world.reviewer)
    ids, pages = walk(
        client, f"{LIST}?status=pending&checkpoint=inspection-schedule&page_size=7", 7
    )
    pending = Proposal.objects.filter(checkpoint=world.checkpoint, status="pending")
    assert len(ids) == 23
    assert ids == expected_order(pending)
    assert pages == 4


def test_walk_as_manager_and_submitter_sees_the_same_rows(world, client_for, queue):
    expected = expected_order(Proposal.objects.filter(checkpoint=world.checkpoint))
    for user in (world.manager, world.submitter):
        ids, _ = walk(client_for(user), f"{LIST}?page_size=7", 7)
        assert ids == expected
    other_ids, _ = walk(client_for(world.other_reviewer), f"{LIST}?page_size=2", 2)
    assert len(other_ids) == 5 and not set(other_ids) & set(expected)


def test_rows_inserted_during_the_walk_never_duplicate(world, client_for, queue):
    client = client_for(world.reviewer)
    first = client.get(f"{LIST}?page_size=7").json()
    seen = [p["id"] for p in first["results"]]
    # One row sorting before the cursor (missed: it is behind us), one far after it (seen).
    early = submit(world.submitter, world.checkpoint, title="early")
    Proposal.objects.filter(pk=early.pk).update(sla_due_at=timezone.now() - timedelta(days=1))
    late = submit(world.submitter, world.checkpoint, title="late", priority="low")
    Proposal.objects.filter(pk=late.pk).update(sla_due_at=timezone.now() + timedelta(days=30))
    rest, _ = walk(client, first["next"], 7)
    seen += rest
    assert len(seen) == len(set(seen)) == 26
    assert str(early.pk) not in seen
    assert seen[-1] == str(late.pk)


def test_cursor_is_opaque_and_stable(world, client_for, queue):
    client = client_for(world.reviewer)
    first = client.get(f"{LIST}?page_size=7").json()
    again = client.get(first["next"]).json()
    once_more = client.get(first["next"]).json()
    assert again == once_more
    assert not set(p["id"] for p in again["results"]) & set(p["id"] for p in first["results"])


def test_page_size_bounds_and_default(world, client_for, queue, settings):
    client = client_for(world.manager)
    assert len(client.get(f"{LIST}?page_size=200").json()["results"]) == 25
    assert client.get(f"{LIST}?page_size=201").status_code == 400
    settings.HITL_PAGE_SIZE = 10
    body = client.get(LIST).json()
    assert len(body["results"]) == 10 and body["next"] is not None


# --- query shape: no COUNT, no N+1 -----------------------------------------------------------


def _list_queries(client: Any, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return [q["sql"] for q in ctx.captured_queries]


def _make_rows(world: Any, n: int, human_submitter: Any) -> None:
    """Rows that exercise every related field the list renders: two submitters, some claimed."""
    for i in range(n):
        submitter = world.submitter if i % 2 else human_submitter
        p = submit(submitter, world.checkpoint, title=f"r{i}", priority=PRIORITIES[i % 4])
        if i % 3 == 0:
            claimer = world.reviewer2 if submitter is world.reviewer else world.reviewer
            services.proposal_claim(proposal_id=p.pk, actor=claimer)


def test_list_issues_no_count_and_a_constant_number_of_queries(
    world, client_for, settings, monkeypatch
):
    # The key stays cached across the row-making below, however slow the machine, and
    # whatever rights other processes on this Redis change meanwhile.
    settings.HITL_AUTH_CACHE_SECONDS = 3600
    monkeypatch.setattr(live, "RIGHTS_VERSION_KEY", f"test-rights-{uuid.uuid4().hex}")
    assign_perm(SUBMIT, world.reviewer, world.checkpoint)
    client = client_for(world.manager)
    url = f"{LIST}?page_size=50"
    client.get(url)  # warm-up: the key's last_used_at write happens at most once a minute

    _make_rows(world, 5, world.reviewer)
    small = _list_queries(client, url)
    _make_rows(world, 35, world.reviewer)
    large = _list_queries(client, url)

    assert len(client.get(url).json()["results"]) == 40
    for sql in small + large:
        assert "COUNT(" not in sql.upper(), sql
        assert "OFFSET" not in sql.upper(), sql
    assert len(small) == len(large), "\n".join(large)
    # Filters add no per-row queries either.
    filtered = f"{url}&status=pending&priority=low,high&checkpoint=inspection-schedule"
    expected = Proposal.objects.filter(status="pending", priority__in=["low", "high"]).count()
    assert expected > 10
    assert len(client.get(filtered).json()["results"]) == expected
    # One extra, constant query: the checkpoint slug is resolved to its id first.
    assert len(_list_queries(client, filtered)) == len(small) + 1


def test_second_page_costs_the_same_as_the_first(world, client_for, queue):
    client = client_for(world.reviewer)
    client.get(LIST)
    with CaptureQueriesContext(connection) as first_ctx:
        first = client.get(f"{LIST}?page_size=7").json()
    with CaptureQueriesContext(connection) as second_ctx:
        client.get(first["next"])
    assert len(first_ctx.captured_queries) == len(second_ctx.captured_queries)


# --- the partial index serves the queue --------------------------------------------------------

OPEN_INDEXES = ("proposal_open_queue_idx", "proposal_open_by_cp_idx")


def test_pending_queue_query_can_use_the_partial_index(world, client_for):
    assert connection.vendor == "postgresql"
    now = timezone.now()
    rows = []
    for i in range(4000):
        # A working queue: a large decided history, and open work in the hundreds.
        is_open = i % 5 == 0
        created = now - timedelta(minutes=i)
        rows.append(
            Proposal(
                id=uuid.uuid4(),
                checkpoint=world.checkpoint,
                title=f"bulk {i}",
                submitted_by=world.submitter,
                status="pending" if is_open else "approved",
                resolution="" if is_open else "policy",
                priority=PRIORITIES[i % 4],
                sla_due_at=created + timedelta(hours=i % 97),
                decided_at=None if is_open else created,
                created_at=created,
                updated_at=created,
            )
        )
    Proposal.objects.bulk_create(rows, batch_size=1000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE proposals_proposal")

    client = client_for(world.reviewer)
    client.get(LIST)  # warm-up
    queries = _list_queries(client, f"{LIST}?status=pending&page_size=50")
    [sql] = [q for q in queries if 'FROM "proposals_proposal"' in q and "ORDER BY" in q]
    assert "'pending'" in sql

    def plan(extra: str = "") -> str:
        with connection.cursor() as cursor:
            if extra:
                cursor.execute(extra)
            cursor.execute("EXPLAIN " + sql)
            return "\n".join(row[0] for row in cursor.fetchall())

    text = plan()
    if not any(name in text for name in OPEN_INDEXES):
        # Small tables can make a seq scan cheaper; the point is that the index is usable.
        text = plan("SET LOCAL enable_seqscan = off")
    assert any(name in text for name in OPEN_INDEXES), text
