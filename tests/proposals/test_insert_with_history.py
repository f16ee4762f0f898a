"""A submit writes its proposal, first revision and their history rows in one statement
(services._insert_with_history): the rows must be exactly what save() and simple_history's
post_save write. Each case is built twice from the same objects at the same frozen instant,
once through save(force_insert=True) and once through the one statement, and the rows read
back are compared field by field (all but the ids)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import DatabaseError, connection, transaction
from django.db.models import Model
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from proposals import services
from proposals.models import Proposal, Revision

pytestmark = pytest.mark.django_db


def _row(instance: Model, *, skip: tuple[str, ...]) -> dict[str, Any]:
    return {
        field.attname: getattr(instance, field.attname)
        for field in instance._meta.concrete_fields
        if field.attname not in skip
    }


def _twin(world: Any, *, title: str, idempotency_key: str) -> tuple[Proposal, Revision]:
    data = services.ProposalInput(
        title=title,
        payload={"amount": 12.5, "nested": {"k": [1, "two", None]}},
        summary="é ünïcode",
        labels={"team": "x"},
        confidence=0.25,
        impact=Decimal("1234.50"),
        region="eu",
    )
    now = timezone.now()
    proposal = services._new_proposal(
        world.submitter, world.checkpoint, data, idempotency_key, 2, now
    )
    proposal._history_user = world.submitter  # type: ignore[attr-defined]
    return proposal, services._first_revision(proposal, data, world.submitter, now)


def _stored(proposal: Proposal) -> dict[str, Any]:
    skip_ids = ("id", "proposal_id", "idempotency_key", "history_id")
    revision = Revision.objects.get(proposal=proposal)
    return {
        "proposal": _row(Proposal.objects.get(pk=proposal.pk), skip=("id", "idempotency_key")),
        "revision": _row(revision, skip=skip_ids),
        "proposal history": [
            _row(h, skip=skip_ids) for h in Proposal.history.filter(id=proposal.pk)
        ],
        "revision history": [
            _row(h, skip=skip_ids) for h in Revision.history.filter(id=revision.pk)
        ],
    }


@time_machine.travel("2026-11-30 12:00:00+00:00", tick=False)
def test_one_statement_writes_what_save_and_its_history_write(world: Any) -> None:
    by_save, saved_revision = _twin(world, title="t", idempotency_key="k1")
    by_statement, revision = _twin(world, title="t", idempotency_key="k2")
    with transaction.atomic():
        by_save.save(force_insert=True)
        saved_revision.save(force_insert=True)
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        services._insert_with_history(by_statement, revision)
    assert len(statements) == 1
    assert revision.pk is not None and revision.pk != saved_revision.pk
    assert not by_statement._state.adding and not revision._state.adding
    assert _stored(by_statement) == _stored(by_save)
    history = Proposal.history.get(id=by_statement.pk)
    assert (history.history_type, history.history_user_id) == ("+", world.submitter.pk)
    assert (
        Revision.history.get(id=revision.pk).history_user_id is None
    )  # as save() outside a request


def test_a_submit_answers_with_the_revision_it_wrote(world: Any) -> None:
    proposal = services.proposal_submit(
        submitter=world.submitter,
        checkpoint=world.checkpoint,
        data=services.ProposalInput(title="t", payload={"a": 1}),
        idempotency_key=str(uuid.uuid4()),
    )
    [revision] = proposal.revisions.all()
    assert revision.pk == Revision.objects.get(proposal=proposal).pk
    assert Proposal.history.filter(id=proposal.pk).count() >= 1
    assert Revision.history.filter(id=revision.pk).count() == 1


@time_machine.travel("2026-11-30 12:00:00+00:00", tick=False)
def test_one_statement_updates_as_save_with_update_fields_and_its_history(world: Any) -> None:
    """As `transition` calls it: the proposal is locked, so the fields it does not write hold
    what is stored (the history row copies the stored row, save()'s the instance)."""
    twins = [_twin(world, title="t", idempotency_key=key) for key in ("k1", "k2")]
    for proposal, revision in twins:
        services._insert_with_history(proposal, revision)
    (by_save, _), (by_statement, _) = twins
    fields = ["status", "resolution", "decided_at", "approved_payload", "updated_at"]
    for proposal in (by_save, by_statement):
        proposal.status, proposal.resolution = "approved", "policy"
        proposal.decided_at = proposal.updated_at = timezone.now()
        proposal.approved_payload = {"amount": 1e16, "x": [True]}
        proposal._history_user = world.reviewer  # type: ignore[attr-defined]
    with transaction.atomic():
        by_save.save(update_fields=fields)
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        services._update_with_history(by_statement, fields)
    assert len(statements) == 1
    assert _stored(by_statement) == _stored(by_save)
    changed = Proposal.history.filter(id=by_statement.pk, history_type="~").get()
    assert (changed.history_user_id, changed.status) == (world.reviewer.pk, "approved")


def test_an_update_of_a_missing_row_fails_as_save_does(world: Any) -> None:
    proposal, _ = _twin(world, title="t", idempotency_key="k")
    with pytest.raises(DatabaseError, match="did not affect any rows"), transaction.atomic():
        services._update_with_history(proposal, ["title"])


@time_machine.travel("2026-11-30 12:00:00+00:00", tick=False)
def test_many_rows_in_one_statement_as_save_writes_each(world: Any) -> None:
    """A bulk submit's statement (services.insert_many_with_history): every proposal and
    revision, and their history rows, as save() writes them with the submitter as the
    history user; the keys the database assigns come back in the rows' order."""
    by_save = [_twin(world, title=f"t{i}", idempotency_key=f"s{i}") for i in range(3)]
    by_statement = [_twin(world, title=f"t{i}", idempotency_key=f"b{i}") for i in range(3)]
    with transaction.atomic():
        for proposal, revision in by_save:
            revision._history_user = world.submitter  # type: ignore[attr-defined]
            proposal.save(force_insert=True)
            revision.save(force_insert=True)
    proposals = [proposal for proposal, _ in by_statement]
    revisions = [revision for _, revision in by_statement]
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        services.insert_many_with_history(
            proposals, revisions, user=world.submitter, when=timezone.now()
        )
    assert len(statements) == 1
    for proposal, revision in by_statement:
        assert revision.pk == Revision.objects.get(proposal=proposal).pk
        assert not proposal._state.adding and not revision._state.adding
    assert [_stored(p) for p, _ in by_statement] == [_stored(p) for p, _ in by_save]


def test_a_one_row_insert_compiled_once_writes_what_the_compiler_writes(world: Any) -> None:
    """services._insert_sql keeps a model's one-row INSERT text and prepares the values
    itself: text and values must be the compiler's, for each model a submit or vote inserts."""
    from django.db.models.sql import InsertQuery

    from notifications.services import outbox_event
    from proposals.models import Vote

    def compiled(row: Model, fields: list[Any]) -> tuple[str, list[Any]]:
        query = InsertQuery(type(row))
        query.insert_values(fields, [row])
        [(sql, params)] = query.get_compiler(connection=connection).as_sql()
        return sql, list(params)

    def plain(params: list[Any]) -> list[Any]:  # psycopg's JSON wrappers compare by content
        return [getattr(value, "obj", value) for value in params]

    services._ONE_ROW_INSERTS.clear()
    for title in ("first", "second"):
        proposal, revision = _twin(world, title=title, idempotency_key=title)
        vote = Vote(
            proposal=proposal,
            revision=1,
            reviewer=world.reviewer,
            decision="approve",
            created_at=timezone.now(),
            checkpoint_id=proposal.checkpoint_id,
            review_seconds=1.5,
        )
        announced = outbox_event("proposal.submitted", proposal=proposal, data={"n": title})
        for row in (proposal, revision, vote, announced):
            meta = row._meta
            fields = [f for f in meta.local_concrete_fields if f is not meta.auto_field]
            sql, params = services._insert_sql(type(row), fields, [row])
            expected_sql, expected_params = compiled(row, fields)
            assert sql == expected_sql
            assert plain(params) == plain(expected_params)
    assert len(services._ONE_ROW_INSERTS) == 4  # the second round used the kept text
