"""Several audit chains: writers on different chains never wait for each other, every chain is
verified link by link, and anchors in chain 0 catch a chain cut at its end.

Before, one advisory lock serialized every audited write in the system, so a second sweeper or
web process added no throughput. Now a transaction appends to one of HITL_AUDIT_CHAINS chains
(picked by its first event's proposal) and locks only that one.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import (
    ANCHOR_VERB,
    GENESIS_HASH,
    HASH_V2_JCS,
    BrokenLink,
    ChainWalk,
    audit_anchor,
    audit_batch,
    audit_record,
    audit_verify,
    chain_of,
    event_hash,
)
from proposals.models import Proposal
from tests.factories import submit

pytestmark = pytest.mark.django_db(transaction=True)


def _proposals_on_chains(world: Any, wanted: int) -> list[Proposal]:
    """Submit until `wanted` proposals sit on distinct chains other than 0, and one more on
    the first one's chain; returns them, the same-chain one last."""
    by_chain: dict[int, Proposal] = {}
    twin: Proposal | None = None
    for n in range(400):
        proposal = submit(world.submitter, world.checkpoint, title=f"p{n}")
        chain = chain_of(proposal.pk)
        if chain == 0:
            continue
        if chain not in by_chain and len(by_chain) < wanted:
            by_chain[chain] = proposal
        elif by_chain and chain == next(iter(by_chain)) and twin is None:
            twin = proposal
        if len(by_chain) == wanted and twin is not None:
            return [*by_chain.values(), twin]
    raise AssertionError("400 proposals did not spread over the chains")


def _tamper(sql: str, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        # What a rogue superuser can do: replica mode skips ordinary triggers.
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(sql, params)
            assert cursor.rowcount == 1
        finally:
            cursor.execute("SET session_replication_role = origin")


def _problems() -> list[BrokenLink]:
    return list(ChainWalk(chunk_size=3))  # small chunks: the walk crosses chunk boundaries


def test_writers_on_different_chains_do_not_wait_for_each_other(world: Any) -> None:
    first, second, twin = _proposals_on_chains(world, 2)
    holding = threading.Event()
    release = threading.Event()
    finished: dict[str, threading.Event] = {"other": threading.Event(), "same": threading.Event()}
    errors: list[BaseException] = []

    def hold_first_chain() -> None:
        try:
            with transaction.atomic():
                audit_record(verb="test.held", actor=None, proposal=first)
                holding.set()
                release.wait(120)  # the chain lock is held until this transaction ends
        except BaseException as exc:
            errors.append(exc)
        finally:
            holding.set()
            connection.close()

    def append(name: str, proposal: Proposal) -> None:
        try:
            with transaction.atomic():
                audit_record(verb=f"test.{name}", actor=None, proposal=proposal)
            finished[name].set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_first_chain)
    holder.start()
    assert holding.wait(60)
    other = threading.Thread(target=append, args=("other", second))
    same = threading.Thread(target=append, args=("same", twin))
    other.start()
    same.start()
    try:
        # With one lock for the whole system this waited for the holder (forever, here).
        assert finished["other"].wait(60), "a writer on another chain waited for the holder"
        # The lock is real: a writer on the held chain does wait.
        assert not finished["same"].wait(1.0), "a writer on the held chain did not wait"
    finally:
        release.set()
        for thread in (holder, other, same):
            thread.join(60)
    assert not errors, errors
    assert finished["same"].is_set()
    assert audit_verify()[1] is None
    held = AuditEvent.objects.get(verb="test.held")
    later = AuditEvent.objects.get(verb="test.same")
    assert (later.chain, later.chain_seq) == (held.chain, held.chain_seq + 1)
    assert later.prev_hash == held.hash


def test_a_transaction_appends_to_one_chain(world: Any) -> None:
    """Its first event picks the chain, the rest join it: one lock per transaction, so
    transactions that touch several proposals (a sweep chunk) cannot deadlock."""
    first, second, _ = _proposals_on_chains(world, 2)
    with transaction.atomic():
        audit_record(verb="test.a", actor=None, proposal=first)
        audit_record(verb="test.b", actor=None, proposal=second)
    a, b = AuditEvent.objects.get(verb="test.a"), AuditEvent.objects.get(verb="test.b")
    assert a.chain == b.chain == chain_of(first.pk)
    assert b.chain_seq == a.chain_seq + 1


def test_an_append_is_one_round_trip_with_its_lock(world: Any, settings: Any) -> None:
    """Lock and insert are two statements (each its own snapshot, so the head the insert reads
    is read after the lock is granted: test_writers_on_different_chains_do_not_wait_for_each_other
    links the waiter to the holder's row) sent together, in one round trip. A second append of
    the transaction is one statement, under the lock it holds."""
    settings.DB_PREPARED_STATEMENTS = False  # the statements' text, not a prepared name
    first, second, _ = _proposals_on_chains(world, 2)
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        audit_record(verb="test.a", actor=None, proposal=first)
        assert len(statements) == 1
        assert "pg_advisory_xact_lock" in statements[0]["sql"]
        assert "INSERT INTO audit_auditevent" in statements[0]["sql"]
        audit_record(verb="test.b", actor=None, proposal=second)
        assert len(statements) == 2
        assert "pg_advisory_xact_lock" not in statements[1]["sql"]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = 7301"
                " AND pid = pg_backend_pid()"
            )
            assert [row[0] for row in cursor.fetchall()] == [chain_of(first.pk)]
    a, b = AuditEvent.objects.get(verb="test.a"), AuditEvent.objects.get(verb="test.b")
    assert (b.chain, b.chain_seq, b.prev_hash) == (a.chain, a.chain_seq + 1, a.hash)
    assert audit_verify()[1] is None


def test_a_rolled_back_savepoint_gives_up_its_chain(world: Any) -> None:
    """PostgreSQL releases an advisory lock taken in a savepoint that rolls back; the
    transaction must then lock again before appending, not append to an unlocked chain."""
    first, second, _ = _proposals_on_chains(world, 2)
    with transaction.atomic():
        try:
            with transaction.atomic():
                audit_record(verb="test.gone", actor=None, proposal=first)
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        audit_record(verb="test.kept", actor=None, proposal=second)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = 7301"
                " AND pid = pg_backend_pid()"
            )
            held = [row[0] for row in cursor.fetchall()]
    assert held == [chain_of(second.pk)]
    assert AuditEvent.objects.get(verb="test.kept").chain == chain_of(second.pk)
    assert not AuditEvent.objects.filter(verb="test.gone").exists()
    assert audit_verify()[1] is None


def test_tampering_in_any_chain_is_detected_at_its_position(world: Any) -> None:
    first, second, _ = _proposals_on_chains(world, 2)
    for proposal in (first, second):
        for n in range(4):
            with transaction.atomic():
                audit_record(verb=f"test.{n}", actor=None, proposal=proposal)
    assert _problems() == []
    edited = AuditEvent.objects.get(proposal=first, verb="test.1")
    deleted = AuditEvent.objects.get(proposal=second, verb="test.1")
    after = AuditEvent.objects.get(chain=deleted.chain, chain_seq=deleted.chain_seq + 1)
    _tamper("UPDATE audit_auditevent SET reason = 'nothing' WHERE id = %s", [edited.pk])
    _tamper("DELETE FROM audit_auditevent WHERE id = %s", [deleted.pk])

    found = {(p.chain, p.position, p.event_id, p.problem) for p in _problems()}

    assert found == {
        (edited.chain, edited.chain_seq, edited.pk, "content does not match its hash (edited)"),
        (
            deleted.chain,
            after.chain_seq,
            after.pk,
            f"expected position {deleted.chain_seq} (row missing)",
        ),
        (deleted.chain, after.chain_seq, after.pk, "prev_hash does not match the previous event"),
    }


def test_moving_a_row_to_another_chain_breaks_its_hash(world: Any) -> None:
    first = _proposals_on_chains(world, 1)[0]
    event = AuditEvent.objects.filter(chain=chain_of(first.pk)).order_by("-chain_seq").first()
    assert event is not None
    _tamper("UPDATE audit_auditevent SET chain = 99 WHERE id = %s", [event.pk])
    assert (99, event.chain_seq, "content does not match its hash (edited)") in {
        (p.chain, p.position, p.problem) for p in _problems()
    }


def test_anchors_detect_a_chain_cut_at_its_end(world: Any) -> None:
    first, _, _ = _proposals_on_chains(world, 2)
    chain = chain_of(first.pk)
    tail = AuditEvent.objects.filter(chain=chain).order_by("-chain_seq").first()
    assert tail is not None and tail.chain_seq > 1

    # Without an anchor a cut at the end leaves every remaining link intact: the limit of
    # any hash chain, and why anchors exist.
    anchor = audit_anchor()
    assert anchor is not None and anchor.chain == 0
    assert audit_anchor() is None, "nothing moved: no second anchor"
    assert _problems() == []
    named = {h["chain"]: h for h in anchor.data["heads"]}
    assert named[chain] == {"chain": chain, "chain_seq": tail.chain_seq, "hash": tail.hash}

    _tamper("DELETE FROM audit_auditevent WHERE id = %s", [tail.pk])

    problems = _problems()
    assert [(p.chain, p.position, p.event_id) for p in problems] == [
        (chain, tail.chain_seq, anchor.pk)
    ]
    assert "rows cut from its end" in problems[0].problem
    checked, broken = audit_verify()
    assert broken == problems[0]


def test_anchors_catch_a_chain_rewritten_from_its_cut(world: Any) -> None:
    """A cut followed by new appends re-links perfectly (each new row hashes over the new
    head), so only the anchor's hash at the old position shows the history changed."""
    first = _proposals_on_chains(world, 1)[0]
    chain = chain_of(first.pk)
    tail = AuditEvent.objects.filter(chain=chain).order_by("-chain_seq").first()
    assert tail is not None
    anchor = audit_anchor()
    assert anchor is not None
    _tamper("DELETE FROM audit_auditevent WHERE id = %s", [tail.pk])
    with transaction.atomic():
        audit_record(verb="test.replacement", actor=None, proposal=first)
    replacement = AuditEvent.objects.get(verb="test.replacement")
    assert replacement.chain_seq == tail.chain_seq

    assert [(p.chain, p.position, p.event_id) for p in _problems()] == [
        (chain, tail.chain_seq, replacement.pk)
    ]


def test_rows_from_the_single_chain_verify_as_chain_zero(world: Any) -> None:
    """Rows written before chains (hash version 2, seq = position in the one chain) are chain
    0 at chain_seq = seq, as migration 0004 leaves them, and chain 0 goes on after them."""
    with connection.cursor() as cursor:  # the world fixture's own events: start empty
        cursor.execute("TRUNCATE audit_auditevent")  # fires no row trigger
    prev = GENESIS_HASH
    start = timezone.now()
    with transaction.atomic():
        for seq in range(1, 6):
            fields: dict[str, Any] = {
                "seq": seq,
                "created_at": start,
                "actor_id": None,
                "actor_label": "system",
                "verb": "proposal.submitted",
                "proposal_id": None,
                "checkpoint_id": None,
                "revision": None,
                "data": {"n": seq, "cost": 1e16},
                "reason": "",
                "prev_hash": prev,
            }
            # The version-2 rule hashes neither chain nor chain_seq.
            digest = event_hash(hash_version=HASH_V2_JCS, **fields)
            AuditEvent.objects.create(
                chain=0, chain_seq=seq, hash=digest, hash_version=HASH_V2_JCS, **fields
            )
            prev = digest
    with connection.cursor() as cursor:  # as the migration sets it: after the old rows
        cursor.execute("SELECT setval('audit_auditevent_global_seq', 6, false)")
    with transaction.atomic():
        audit_record(verb="test.after", actor=None)  # no proposal: chain 0
    after = AuditEvent.objects.get(verb="test.after")
    assert (after.chain, after.chain_seq, after.prev_hash) == (0, 6, prev)
    _proposals_on_chains(world, 1)  # events on other chains too
    assert audit_anchor() is not None
    assert audit_verify() == (AuditEvent.objects.count(), None)
    assert AuditEvent.objects.filter(verb=ANCHOR_VERB).count() == 1

    old = AuditEvent.objects.get(chain=0, chain_seq=3)
    _tamper("UPDATE audit_auditevent SET data = %s::jsonb WHERE id = %s", ['{"n": 4}', old.pk])
    assert [(p.chain, p.position, p.seq) for p in _problems()] == [(0, 3, 3)]


def test_a_batch_appends_its_events_at_its_end_chained_as_one_by_one(world: Any) -> None:
    first, second, _ = _proposals_on_chains(world, 2)
    with CaptureQueriesContext(connection) as queries, transaction.atomic(), audit_batch():
        events = [
            audit_record(verb=f"test.{n}", actor=None, proposal=proposal)
            for n, proposal in enumerate((first, second, first))
        ]
        assert not AuditEvent.objects.filter(verb__startswith="test.").exists()
    # One COPY at the end (Django does not log it): no INSERT, no head read per event.
    statements = [q["sql"] for q in queries.captured_queries]
    assert not [sql for sql in statements if sql.startswith('INSERT INTO "audit')]
    assert len([sql for sql in statements if "ORDER BY chain_seq DESC" in sql]) == 1
    stored = [AuditEvent.objects.get(verb=f"test.{n}") for n in range(3)]
    assert {event.chain for event in stored} == {chain_of(first.pk)}
    assert [e.chain_seq for e in stored] == [stored[0].chain_seq + n for n in range(3)]
    assert [e.seq for e in stored] == sorted(e.seq for e in stored)
    assert stored[1].prev_hash == stored[0].hash and stored[2].prev_hash == stored[1].hash
    assert [e.hash for e in events] == [e.hash for e in stored]
    assert audit_verify()[1] is None


def test_an_event_of_a_rolled_back_savepoint_leaves_the_batch(world: Any) -> None:
    first, second, _ = _proposals_on_chains(world, 2)
    with transaction.atomic(), audit_batch():
        audit_record(verb="test.kept", actor=None, proposal=first)
        try:
            with transaction.atomic():
                audit_record(verb="test.gone", actor=None, proposal=second)
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        audit_record(verb="test.after", actor=None, proposal=second)
    assert not AuditEvent.objects.filter(verb="test.gone").exists()
    kept = AuditEvent.objects.get(verb="test.kept")
    after = AuditEvent.objects.get(verb="test.after")
    assert (after.chain, after.chain_seq, after.prev_hash) == (
        kept.chain,
        kept.chain_seq + 1,
        kept.hash,
    )
    assert audit_verify()[1] is None


def test_a_failed_batch_block_keeps_no_change_without_its_event(world: Any) -> None:
    """The events wait for the block's end, so the block is a savepoint of its own: a caller
    who catches the error keeps neither the block's changes nor its events."""
    first = _proposals_on_chains(world, 1)[0]
    with transaction.atomic():
        try:
            with audit_batch():
                Proposal.objects.filter(pk=first.pk).update(title="changed")
                audit_record(verb="test.changed", actor=None, proposal=first)
                raise RuntimeError("fails after the change")
        except RuntimeError:
            pass
    first.refresh_from_db()
    assert first.title != "changed"
    assert not AuditEvent.objects.filter(verb="test.changed").exists()
