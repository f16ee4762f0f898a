"""An event appended in one statement (audit.services._insert_linked): PostgreSQL reads the
head, takes the position and the order number, and computes the hash from the canonical
text Python cut around those two values. What it stores must be exactly what
event_hash() and audit_verify compute from the row, for any content."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext

from audit import services
from audit.models import AuditEvent
from audit.services import audit_record, audit_verify, event_hash
from tests.factories import submit

pytestmark = pytest.mark.django_db

AWKWARD_DATA: list[dict[str, Any]] = [
    {},
    # Keys the cut looks for, nested in the data: only the body's own may be cut.
    {"seq": 0, "chain_seq": 0, "created_at": "", "x": {"seq": 0, "chain_seq": 0}},
    {"text": '"seq":0, "chain_seq":0, "created_at":"",', "quote": '\\"', "nul": "a\u0001b"},
    {"unicode": "zürich ☃ 𝄞 日本", "emoji": "🙂", "rtl": "שלום"},
    {"big": 2**53 + 1, "float": 2.5e20, "small": 1e-7, "neg": -0.0, "list": [1, [2, [3]]]},
    {"bool": True, "none": None, "deep": {"a": {"b": {"c": {"d": "e"}}}}},
]


@pytest.mark.parametrize("data", AWKWARD_DATA)
def test_the_stored_hash_is_event_hash_of_the_row(world: Any, data: dict[str, Any]) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    with transaction.atomic():
        event = audit_record(
            verb="test.awkward", actor=world.reviewer, proposal=proposal, data=data, reason='r"'
        )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.seq, stored.chain_seq, stored.hash) == (event.seq, event.chain_seq, event.hash)
    assert stored.created_at == event.created_at
    fields = services._fields_of(stored)
    assert stored.hash == event_hash(hash_version=stored.hash_version, **fields)
    assert audit_verify()[1] is None


def test_a_hash_the_database_got_wrong_appends_nothing(world: Any, monkeypatch: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    before = AuditEvent.objects.count()
    real = services._hash_text_parts

    def off_by_one(event: AuditEvent) -> tuple[str, str, str]:
        parts = real(event)
        return parts[0], parts[1], parts[2] + " "

    monkeypatch.setattr(services, "_hash_text_parts", off_by_one)
    with pytest.raises(RuntimeError, match="hashed event"), transaction.atomic():
        audit_record(verb="test.wrong", actor=None, proposal=proposal)
    assert AuditEvent.objects.count() == before
    assert audit_verify()[1] is None


def test_a_lead_statement_goes_in_the_same_round_trip(world: Any, settings: Any) -> None:
    settings.DB_PREPARED_STATEMENTS = False  # the statements' text, not a prepared name
    proposal = submit(world.submitter, world.checkpoint)
    got: list[Any] = []
    lead = services.Lead("SELECT %s::int + 1", [41], lambda cursor: got.append(cursor.fetchone()))
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        event = audit_record(verb="test.lead", actor=None, proposal=proposal, lead=lead)
    assert got == [(42,)]
    assert len(statements) == 1
    assert AuditEvent.objects.get(pk=event.pk).hash == event.hash
    assert audit_verify()[1] is None


def test_a_failing_lead_appends_nothing(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    before = AuditEvent.objects.count()
    lead = services.Lead("SELECT 1 / %s", [0], lambda cursor: None)
    with pytest.raises(DataError), transaction.atomic():
        audit_record(verb="test.lead", actor=None, proposal=proposal, lead=lead)
    assert AuditEvent.objects.count() == before
    with transaction.atomic():
        audit_record(verb="test.after", actor=None, proposal=proposal)
    assert AuditEvent.objects.count() == before + 1
    assert audit_verify()[1] is None
