"""The audit append and the statements sent with it are prepared once per connection
(config/postgresql: DatabaseWrapper.prepared), then sent as EXECUTE: PostgreSQL parses and
plans them once, and what they write is exactly what the text would have written."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from audit.services import audit_record, audit_verify

pytestmark = pytest.mark.django_db(transaction=True)


def _prepared_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


def _append(verb: str) -> list[str]:
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        audit_record(verb=verb, actor=None, data={"v": verb, "n": 1.5})
    return [query["sql"] for query in statements.captured_queries if query["sql"] != "COMMIT"]


def test_an_append_is_prepared_once_then_executed() -> None:
    connections["default"].close()  # a connection of its own: nothing prepared on it yet
    first = _append("test.one")
    assert any(sql.startswith(("PREPARE nihil_", "BEGIN; PREPARE nihil_")) for sql in first)
    second = _append("test.two")
    assert len(second) == 1 and "EXECUTE nihil_" in second[0], second
    assert not any("PREPARE" in sql for sql in second)
    assert any(name.startswith("nihil_") for name in _prepared_names())
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_a_prepared_statement_outlives_a_rolled_back_transaction() -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        audit_record(verb="test.undone", actor=None, data={})
        raise Boom
    assert not AuditEvent.objects.filter(verb="test.undone").exists()
    assert len(_append("test.after")) == 1  # EXECUTE, not a second PREPARE (which would fail)
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_a_new_connection_prepares_again() -> None:
    _append("test.before")
    connections["default"].close()
    again = _append("test.again")
    assert any("PREPARE nihil_" in sql for sql in again)
    assert audit_verify() == (AuditEvent.objects.count(), None)


def test_nothing_is_prepared_when_turned_off(settings: Any) -> None:
    """Behind a pooler in transaction mode (DB_PREPARED_STATEMENTS=false)."""
    settings.DB_PREPARED_STATEMENTS = False
    connections["default"].close()
    statements = _append("test.plain") + _append("test.plain2")
    assert not any("PREPARE" in sql or "EXECUTE" in sql for sql in statements)
    assert _prepared_names() == set()
    assert audit_verify() == (AuditEvent.objects.count(), None)
