"""The audit chain under concurrent appenders, and against edits that go around the ORM.

`audit_record` serializes appends to each chain with a PostgreSQL advisory lock; without it two
writers would read the same head and one would fail on the unique (chain, chain_seq) (or fork
the chain). The
append-only guarantees come in layers: the model and queryset refuse updates and deletes, a
trigger refuses them in the database, and `audit_verify` catches a superuser who disables the
trigger.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AppendOnlyError, AuditEvent
from audit.services import audit_verify
from tests.concurrency import run_in_threads
from tests.factories import submit


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_every_chain_contiguous(world: Any) -> None:
    workers, per_worker = 20, 10
    before = AuditEvent.objects.count()  # the fixture's key creation is audited too

    def work(index: int, barrier: threading.Barrier) -> None:
        barrier.wait(timeout=30)
        for n in range(per_worker):
            submit(world.submitter, world.checkpoint, title=f"w{index}-{n}")

    started = time.perf_counter()
    run_in_threads(workers, work)
    elapsed = time.perf_counter() - started

    submitted = workers * per_worker
    assert AuditEvent.objects.filter(verb="proposal.submitted").count() == submitted
    total = AuditEvent.objects.count()
    assert total == before + submitted
    rows = list(
        AuditEvent.objects.order_by("chain", "chain_seq").values_list("chain", "chain_seq", "seq")
    )
    for chain in {row[0] for row in rows}:
        mine = [row for row in rows if row[0] == chain]
        assert [row[1] for row in mine] == list(range(1, len(mine) + 1)), (
            f"chain {chain} has gaps or duplicates"
        )
        assert [row[2] for row in mine] == sorted(row[2] for row in mine), (
            f"seq does not follow the order of chain {chain}"
        )
    assert len({row[0] for row in rows}) > 1, "200 proposals should spread over the chains"
    checked, broken = audit_verify()
    assert broken is None, broken
    assert checked == total
    print(
        f"\naudit chain: {submitted} submits on {workers} threads in {elapsed:.2f}s, "
        f"{total} events verified"
    )


def _seed_chain(world: Any, proposals: int = 5) -> list[AuditEvent]:
    for n in range(proposals):
        submit(world.submitter, world.checkpoint, title=f"p{n}")
    assert audit_verify()[1] is None
    return list(AuditEvent.objects.order_by("seq"))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sql", "value"),
    [
        ("UPDATE audit_auditevent SET reason = %s WHERE id = %s", "nothing to see here"),
        ("UPDATE audit_auditevent SET data = %s::jsonb WHERE id = %s", '{"routing": "approve"}'),
    ],
    ids=["reason", "data"],
)
def test_verify_names_a_row_edited_behind_the_trigger(world: Any, sql: str, value: str) -> None:
    events = _seed_chain(world)
    target = events[len(events) // 2]
    assert target.seq > 1 and target.seq < events[-1].seq  # not the ends: links on both sides
    with connection.cursor() as cursor:
        # What a rogue superuser can do: replica mode skips ordinary triggers.
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(sql, [value, target.pk])
            assert cursor.rowcount == 1
        finally:
            cursor.execute("SET session_replication_role = origin")
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,  # the trigger is back for this session
    ):
        cursor.execute("UPDATE audit_auditevent SET reason = '' WHERE id = %s", [target.pk])

    checked, broken = audit_verify()

    assert broken is not None
    assert (broken.seq, broken.event_id) == (target.seq, target.pk)
    assert "edited" in broken.problem
    # A test's transaction appends to one chain: the events before the break are its
    # positions before the target's.
    assert checked == target.chain_seq - 1


@pytest.mark.django_db
def test_database_refuses_update_and_delete(world: Any) -> None:
    event = _seed_chain(world, proposals=1)[-1]
    for sql in (
        "UPDATE audit_auditevent SET reason = 'x' WHERE id = %s",
        "DELETE FROM audit_auditevent WHERE id = %s",
    ):
        # A savepoint, so the failed statement doesn't poison the test's transaction.
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [event.pk])
    event.refresh_from_db()
    assert event.reason == ""
    assert audit_verify()[1] is None


@pytest.mark.django_db
def test_orm_refuses_update_and_delete(world: Any) -> None:
    event = _seed_chain(world, proposals=1)[-1]
    queryset = AuditEvent.objects.filter(pk=event.pk)
    with pytest.raises(AppendOnlyError):
        queryset.update(reason="x")
    with pytest.raises(AppendOnlyError):
        queryset.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    event.reason = "x"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    event.refresh_from_db()
    assert event.reason == ""
    assert audit_verify()[1] is None
