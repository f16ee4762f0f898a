"""A transaction's BEGIN goes to PostgreSQL with its first statement (config/postgresql), not
as a round trip of its own, and every statement of an atomic block still runs inside it:
whatever the first statement is, and whether or not it reached the server."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import ProgrammingError, connection, transaction
from psycopg import pq

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


class Boom(Exception):
    pass


def _status() -> pq.TransactionStatus:
    return connection.connection.info.transaction_status


def test_the_first_statement_carries_the_begin(psycopg_commands: list[bytes]) -> None:
    connection.ensure_connection()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT %s::int + 1", [1])
        assert cursor.fetchone() == (2,)  # the statement's result, not BEGIN's
        assert _status() == pq.TransactionStatus.INTRANS
    assert b"BEGIN" not in psycopg_commands
    assert psycopg_commands == [b"COMMIT"]
    assert _status() == pq.TransactionStatus.IDLE


def test_a_block_that_ran_nothing_sends_nothing(psycopg_commands: list[bytes]) -> None:
    connection.ensure_connection()
    with transaction.atomic():
        pass
    assert psycopg_commands == []


def test_a_first_statement_that_never_left_still_opens_the_transaction() -> None:
    with pytest.raises(Boom), transaction.atomic():
        with connection.cursor() as cursor, pytest.raises(ProgrammingError):
            cursor.execute("SELECT %s", [object()])  # cannot be adapted: never sent
        User.objects.create(username="inside")
        raise Boom
    assert not User.objects.filter(username="inside").exists()


def test_copy_and_executemany_first_in_a_block_roll_back_with_it() -> None:
    with pytest.raises(Boom), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO auth_group (name) VALUES (%s)", [["many-1"], ["many-2"]]
            )
        raise Boom
    with pytest.raises(Boom), transaction.atomic():
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy("COPY auth_group (name) FROM STDIN") as copy,
        ):
            copy.write_row(["copied"])
        raise Boom
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM auth_group WHERE name LIKE 'many-%%' OR name = %s", ["copied"]
        )
        assert cursor.fetchone() == (0,)


def test_named_cursors_inside_and_outside_a_transaction() -> None:
    User.objects.bulk_create([User(username=f"u{n}") for n in range(5)])
    names = {u.username for u in User.objects.order_by("pk").iterator(chunk_size=2)}
    assert {f"u{n}" for n in range(5)} <= names
    with transaction.atomic():
        inside = [u.username for u in User.objects.order_by("pk").iterator(chunk_size=2)]
        assert _status() == pq.TransactionStatus.INTRANS
    assert set(inside) == names
