"""bench's SQL count says what went to the server: a BEGIN or COMMIT that Django logs as an
entry of its own but the product's backend sent inside a statement is not counted twice."""

from __future__ import annotations

from bench.probe import sent


def test_begin_and_commit_sent_with_a_statement_are_not_counted_alone() -> None:
    logged = ["BEGIN", "BEGIN; INSERT 1; SELECT 2; COMMIT", "COMMIT"]
    assert sent(logged) == ["BEGIN; INSERT 1; SELECT 2; COMMIT"]


def test_begin_and_commit_sent_alone_are_counted() -> None:
    """The baseline's stock backend, and a product transaction whose COMMIT went alone."""
    logged = ["BEGIN", "INSERT 1", "COMMIT", "BEGIN", "BEGIN; UPDATE 2", "COMMIT"]
    assert sent(logged) == ["BEGIN", "INSERT 1", "COMMIT", "BEGIN; UPDATE 2", "COMMIT"]
