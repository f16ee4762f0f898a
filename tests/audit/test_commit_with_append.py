"""A submit's one round trip to PostgreSQL carries its COMMIT (audit_round_trip(final=True)
with config/postgresql's backend): no COMMIT of psycopg's own after it, everything it wrote
committed and verifiable, and never outside the rules that make that safe: only Django's
outermost atomic block, only on a server that hashes as Python does, and no statement after
it in the block."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from psycopg import pq
from rest_framework.test import APIClient

from audit import services as audit
from audit.models import AuditEvent
from audit.services import Lead, audit_record, audit_round_trip, audit_verify
from hitl.keys import api_key_create
from notifications.models import OutboxEvent
from proposals.models import Proposal

pytestmark = pytest.mark.django_db(transaction=True)

LIST = "/api/v1/proposals/"


def _client(world: Any) -> APIClient:
    token = api_key_create(user=world.submitter, name="c").token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def _submit(client: APIClient, world: Any, **extra: Any) -> Any:
    body = {"checkpoint": world.checkpoint.slug, "title": "t", "payload": {"a": 1}}
    return client.post(LIST, body, format="json", **extra)


def _status() -> pq.TransactionStatus:
    return connection.connection.info.transaction_status


def test_a_queued_submit_commits_with_its_audit_append(
    world: Any, psycopg_commands: list[bytes]
) -> None:
    client = _client(world)
    assert _submit(client, world).status_code == 201  # the connection's probe, once
    psycopg_commands.clear()
    response = _submit(client, world)
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "pending"
    assert b"COMMIT" not in psycopg_commands
    assert _status() == pq.TransactionStatus.IDLE
    proposal = Proposal.objects.get(pk=response.json()["id"])
    assert AuditEvent.objects.filter(proposal=proposal, verb="proposal.submitted").count() == 1
    assert OutboxEvent.objects.filter(proposal=proposal, topic="proposal.submitted").exists()
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_a_policy_decided_submit_commits_with_its_decision(
    world: Any, psycopg_commands: list[bytes]
) -> None:
    world.checkpoint.auto_approve_at = 0.5
    world.checkpoint.save()
    client = _client(world)
    assert _submit(client, world).status_code == 201
    psycopg_commands.clear()
    body = {"checkpoint": world.checkpoint.slug, "title": "t", "payload": {"a": 1}}
    response = client.post(LIST, {**body, "confidence": 0.9}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "approved"
    assert b"COMMIT" not in psycopg_commands
    verbs = list(
        AuditEvent.objects.filter(proposal_id=response.json()["id"])
        .order_by("seq")
        .values_list("verb", flat=True)
    )
    assert verbs == ["proposal.submitted", "proposal.approved"]
    assert Proposal.objects.get(pk=response.json()["id"]).status == "approved"
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_a_submit_with_an_idempotency_key_commits_as_always(
    world: Any, psycopg_commands: list[bytes]
) -> None:
    """Its block is nested in the key's (a savepoint): the COMMIT is the outer block's."""
    client = _client(world)
    response = _submit(client, world, HTTP_IDEMPOTENCY_KEY="k-1")
    assert response.status_code == 201, response.json()
    assert b"COMMIT" in psycopg_commands
    assert _submit(client, world, HTTP_IDEMPOTENCY_KEY="k-1").json() == response.json()
    assert Proposal.objects.count() == 1


def test_a_statement_after_the_committing_append_is_refused(world: Any) -> None:
    """It would run outside the block's transaction: refused, and what the block wrote
    before stays committed (as the append's COMMIT said)."""
    with pytest.raises(RuntimeError, match="after the one that carried"), transaction.atomic():
        with audit_round_trip(final=True):
            audit_record(verb="test.final", actor=None, data={"n": 1})
        assert _status() == pq.TransactionStatus.IDLE
        AuditEvent.objects.count()
    assert AuditEvent.objects.filter(verb="test.final").count() == 1
    # The connection is usable, and the next block is a transaction again.
    with transaction.atomic():
        audit_record(verb="test.next", actor=None, data={})
        assert _status() == pq.TransactionStatus.INTRANS
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_a_failing_committing_round_trip_commits_nothing(world: Any) -> None:
    failing = Lead("SELECT 1 / 0", [], lambda cursor: None)
    with pytest.raises(Exception, match="division by zero"), transaction.atomic():
        audit_record(verb="test.before", actor=None, data={})
        with audit_round_trip(final=True):
            audit_record(verb="test.final", actor=None, data={}, lead=failing)
    assert not AuditEvent.objects.filter(verb__startswith="test.").exists()
    assert _status() == pq.TransactionStatus.IDLE


def test_no_commit_with_the_append_inside_another_block(world: Any) -> None:
    with transaction.atomic(), transaction.atomic():
        with audit_round_trip(final=True):
            audit_record(verb="test.nested", actor=None, data={})
        assert _status() == pq.TransactionStatus.INTRANS
    assert AuditEvent.objects.filter(verb="test.nested").count() == 1


def test_a_round_trip_sends_its_appends_and_leads_in_order_at_its_end(
    world: Any, settings: Any
) -> None:
    settings.DB_PREPARED_STATEMENTS = False  # one round trip, not counting first PREPAREs
    seen: list[Any] = []

    def lead(n: int) -> Lead:
        return Lead(f"SELECT {n}", [], lambda cursor: seen.append(cursor.fetchone()[0]))

    with transaction.atomic():
        with CaptureQueriesContext(connection) as statements, audit_round_trip():
            first = audit_record(verb="test.first", actor=None, data={}, lead=lead(1))
            second = audit_record(verb="test.second", actor=None, data={}, lead=lead(2))
            assert first.seq is None and seen == []  # nothing sent yet
        assert len(statements) == 1
        assert seen == [1, 2]
        assert first.chain_seq + 1 == second.chain_seq and first.seq < second.seq
        assert second.prev_hash == first.hash
        assert _status() == pq.TransactionStatus.INTRANS
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_a_statement_inside_a_round_trip_is_refused(world: Any) -> None:
    """It would run before the writes queued in the block."""
    with (
        pytest.raises(RuntimeError, match="inside audit_round_trip"),
        transaction.atomic(),
        audit_round_trip(),
    ):
        audit_record(verb="test.queued", actor=None, data={})
        AuditEvent.objects.count()
    assert not AuditEvent.objects.filter(verb="test.queued").exists()


def test_no_commit_with_the_append_where_the_server_hashes_otherwise(
    world: Any, monkeypatch: Any
) -> None:
    """The probe compares the server's sha256 of awkward text with Python's; a server that
    disagrees (another encoding) gets its appends checked before they commit."""
    connection.ensure_connection()
    assert audit._may_commit_with_append() is False  # outside a block: never
    with transaction.atomic():
        assert audit._may_commit_with_append() is True
    assert connection.connection._nihil_hashes_as_python is True
    connection.connection._nihil_hashes_as_python = False
    with transaction.atomic():
        with audit_round_trip(final=True):
            audit_record(verb="test.checked", actor=None, data={})
        assert _status() == pq.TransactionStatus.INTRANS
    # A fresh verdict, where the server's digest of the probe is not Python's.
    connection.connection._nihil_hashes_as_python = None
    monkeypatch.setattr(audit, "_HASH_PROBE", audit._HASH_PROBE + "x")
    monkeypatch.setattr(audit.hashlib, "sha256", lambda data: hashlib_sha256(b"other"))
    with transaction.atomic():
        assert audit._may_commit_with_append() is False
    assert connection.connection._nihil_hashes_as_python is False


def hashlib_sha256(data: bytes) -> Any:
    import hashlib

    return hashlib.new("sha256", data)
