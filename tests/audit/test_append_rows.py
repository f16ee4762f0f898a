"""audit_append_rows (the set-based append seed_demo --proposals uses): events written by COPY
are positioned, linked and hashed exactly as audit_record writes them one by one, on the chain
the transaction holds, so audit_verify checks each alone and names an edited one."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import _fields_of, audit_append_rows, audit_record, audit_verify, event_hash
from proposals.models import Proposal
from tests.factories import submit

pytestmark = pytest.mark.django_db


def _rows(proposal: Proposal, n: int) -> list[dict[str, Any]]:
    return [
        {
            "created_at": timezone.now(),
            "actor_id": None,
            "actor_label": "system",
            "verb": "proposal.noted",
            "proposal_id": proposal.pk,
            "checkpoint_id": proposal.checkpoint_id,
            "revision": 1,
            "data": {"n": i, "big": 10**17, "ratio": 0.5, "text": "é"},
            "reason": "",
        }
        for i in range(n)
    ]


def test_appended_rows_verify_and_continue_the_chain(world, settings):
    settings.DB_PREPARED_STATEMENTS = False  # the statements' text, not a prepared name
    proposal = submit(world.submitter, world.checkpoint)
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        audit_append_rows(_rows(proposal, 50))
        audit_record(verb="proposal.after", actor=None, proposal=proposal, data={})
    # The 50 rows go in by one COPY (below Django's query log); the one INSERT is audit_record's.
    inserts = [q["sql"] for q in queries.captured_queries if "INSERT" in q["sql"]]
    assert len([sql for sql in inserts if "audit_auditevent" in sql]) == 1
    events = list(AuditEvent.objects.filter(proposal=proposal).order_by("chain_seq"))
    assert {e.chain for e in events} == {events[0].chain}
    positions = [e.chain_seq for e in events]
    assert positions == list(range(positions[0], positions[0] + len(events)))
    for before, after in pairwise(events):
        assert after.prev_hash == before.hash
        assert after.seq > before.seq
    # Each row hashes as audit_record would have hashed it.
    for event in events:
        assert event.hash == event_hash(hash_version=event.hash_version, **_fields_of(event))
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_an_edited_appended_row_is_named(world):
    proposal = submit(world.submitter, world.checkpoint)
    with transaction.atomic():
        audit_append_rows(_rows(proposal, 5))
    victim = AuditEvent.objects.filter(verb="proposal.noted").order_by("chain_seq")[2]
    with connection.cursor() as cursor:
        # What a rogue superuser can do: replica mode skips the append-only trigger.
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute("UPDATE audit_auditevent SET reason = 'x' WHERE id = %s", [victim.pk])
        finally:
            cursor.execute("SET session_replication_role = origin")
    _checked, broken = audit_verify()
    assert broken is not None
    assert (broken.event_id, broken.chain, broken.position) == (
        victim.pk,
        victim.chain,
        victim.chain_seq,
    )
