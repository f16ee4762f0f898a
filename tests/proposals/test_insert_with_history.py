"""A submit writes its proposal, first revision and their history rows in one statement
(services._insert_with_history): the rows must be exactly what save() and simple_history's
post_save write. Each case is built twice from the same objects at the same frozen instant,
once through save(force_insert=True) and once through the one statement, and the rows read
back are compared field by field (all but the ids)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import IntEnum
from typing import Any

import pytest
import time_machine
from django.db import DatabaseError, connection, transaction
from django.db.models import Model
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import OutboxEvent
from notifications.services import outbox_event
from proposals import services
from proposals.models import Proposal, Revision, Status

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
    announced = outbox_event("proposal.approved", proposal=by_statement, data={"n": 2.5})
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        lead = services._update_with_history_lead(by_statement, fields, plain=[announced])
        assert lead is not None
        lead.run_alone()
    assert len(statements) == 1
    assert _stored(by_statement) == _stored(by_save)
    changed = Proposal.history.filter(id=by_statement.pk, history_type="~").get()
    assert (changed.history_user_id, changed.status) == (world.reviewer.pk, "approved")
    # The outbox row went in with them, as save() writes it.
    stored = OutboxEvent.objects.get(pk=announced.pk)
    assert (stored.topic, stored.proposal_id, stored.payload) == (
        "proposal.approved",
        by_statement.pk,
        announced.payload,
    )
    assert not announced._state.adding


def test_an_update_of_a_missing_row_fails_as_save_does(world: Any) -> None:
    proposal, _ = _twin(world, title="t", idempotency_key="k")
    announced = outbox_event("proposal.approved", proposal=proposal, data={})
    lead = services._update_with_history_lead(proposal, ["title"], plain=[announced])
    assert lead is not None
    with pytest.raises(DatabaseError, match="did not affect any rows"), transaction.atomic():
        lead.run_alone()


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


class _Two(IntEnum):
    TWO = 2


def _awkward(world: Any, n: int, key: str) -> tuple[Proposal, Revision]:
    """A proposal and its revision holding values the JSON document must carry exactly: text
    that needs escaping, floats and decimals at their edges, JSON null inside a JSONField and
    SQL NULL for one, values of other types than the field's (an int where a float goes, a
    bool or an IntEnum member where an int goes, a float where a Decimal goes, a key given
    as text), a TextChoices member."""
    data = services.ProposalInput(
        title=f'it\'s \\ "quoted" \u2028 𝄞 {n}',
        payload={"x": [0.1, 1e16, -0.0, None, True], "é": {"": "\u0001 \\n"}},
        summary="line\nbreak\ttab",
        labels={"k": None},
        confidence=1 if n % 2 else 0.30000000000000004,
        impact=Decimal("-1234567890123456.1234") if n % 2 else Decimal("0.0001"),
        region="",
        external_id="'; DROP TABLE x; --",
        payload_schema=None if n % 2 else {"type": "object"},
        timeout_seconds=None if n % 2 else 60,
    )
    now = timezone.now()
    proposal = services._new_proposal(world.submitter, world.checkpoint, data, f"{key}{n}", 2, now)
    proposal.status = Status.PENDING  # a TextChoices member, as _new_proposal sets it
    proposal.quorum_required = True  # type: ignore[assignment]  # a bool where an int goes
    proposal.eligible_reviewers = _Two.TWO
    if n == 2:
        proposal.impact = 0.1  # type: ignore[assignment]  # a float where a Decimal goes
    proposal._history_user = world.submitter  # type: ignore[attr-defined]
    revision = services._first_revision(proposal, data, world.submitter, now)
    revision.proposal_id = str(proposal.pk)  # type: ignore[assignment]  # text, not a UUID
    return proposal, revision


@time_machine.travel("2026-11-30 12:00:00+00:00", tick=False)
def test_awkward_values_are_stored_as_save_stores_them(world: Any) -> None:
    by_save = [_awkward(world, n, "s") for n in range(5)]
    by_statement = [_awkward(world, n, "b") for n in range(5)]
    with transaction.atomic():
        for proposal, revision in by_save:
            revision._history_user = world.submitter  # type: ignore[attr-defined]
            proposal.save(force_insert=True)
            revision.save(force_insert=True)
    with transaction.atomic():
        services.insert_many_with_history(
            [p for p, _ in by_statement[:4]],
            [r for _, r in by_statement[:4]],
            user=world.submitter,
            when=timezone.now(),
        )
        by_statement[4][1]._history_user = world.submitter  # type: ignore[attr-defined]
        services._insert_with_history(*by_statement[4])  # one row: the same statement
    assert [_stored(p) for p, _ in by_statement] == [_stored(p) for p, _ in by_save]


def test_the_rows_go_in_as_one_parameter_per_table(world: Any) -> None:
    """The values travel as one JSON document per table, not one parameter per value (what
    Django prepares and psycopg quotes one by one): the statement's parameters do not grow
    with the rows."""
    sent: list[int] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(len(params))
        return execute(sql, params, many, context)

    for n in (1, 3, 30):
        rows = [_twin(world, title="t", idempotency_key=f"{n}-{i}") for i in range(n)]
        with transaction.atomic(), connection.execute_wrapper(count):
            services.insert_many_with_history(
                [p for p, _ in rows],
                [r for _, r in rows],
                user=world.submitter,
                when=timezone.now(),
            )
    assert len(sent) == 3 and len(set(sent)) == 1, sent


@time_machine.travel("2026-11-30 12:00:00+00:00", tick=False)
def test_a_model_with_a_column_of_another_kind_goes_through_the_compiler(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kind of column the JSON document has no form for (here, as if DecimalField were
    one): Django's compiled INSERT, which stores the same."""
    forms = {k: v for k, v in services._JSON_FORMS.items() if k != "DecimalField"}
    monkeypatch.setattr(services, "_JSON_FORMS", forms)
    services._json_insert.cache_clear()
    try:
        by_save, saved_revision = _twin(world, title="t", idempotency_key="k1")
        by_statement, revision = _twin(world, title="t", idempotency_key="k2")
        with transaction.atomic():
            by_save.save(force_insert=True)
            saved_revision.save(force_insert=True)
        with transaction.atomic(), CaptureQueriesContext(connection) as statements:
            services._insert_with_history(by_statement, revision)
        assert "jsonb_array_elements" not in statements[0]["sql"].split(" r1 AS ")[0]
        assert _stored(by_statement) == _stored(by_save)
    finally:
        services._json_insert.cache_clear()


def test_each_model_a_submit_or_vote_inserts_has_a_json_form(world: Any) -> None:
    """Proposal, revision, vote and outbox rows all go in through the JSON document."""
    from notifications.models import OutboxEvent
    from proposals.models import Vote

    for model in (Proposal, Revision, Vote, OutboxEvent):
        meta = model._meta
        fields = tuple(f for f in meta.local_concrete_fields if f is not meta.auto_field)
        assert services._json_insert(model, fields) is not None, model


@time_machine.travel("2026-11-30 12:00:00+00:00", tick=False)
def test_many_rows_update_as_save_with_update_fields(world: Any) -> None:
    """A sweep chunk's UPDATE (services._update_rows, its rows' values one JSON document):
    what save(update_fields=…) stores, for awkward values too, in one statement with one
    parameter however many rows."""
    by_save = [_awkward(world, n, "us") for n in range(4)]
    by_update = [_awkward(world, n, "uu") for n in range(4)]
    with transaction.atomic():
        services.insert_many_with_history(
            [p for p, _ in by_save + by_update],
            [r for _, r in by_save + by_update],
            user=world.submitter,
            when=timezone.now(),
        )
    fields = ["status", "resolution", "decided_at", "approved_payload", "confidence", "impact"]
    for n, (proposal, _) in enumerate(by_save + by_update):
        proposal.status, proposal.resolution = Status.REJECTED, "timeout" if n % 2 else "policy"
        proposal.decided_at = timezone.now()
        proposal.approved_payload = None if n % 4 == 3 else {"s": 'a"\\', "n": [1e16, -0.0]}
        proposal.confidence = 0.1 + 0.2 if n % 2 else 1  # type: ignore[assignment]
        proposal.impact = Decimal("-0.000100") if n % 2 else 0.5  # type: ignore[assignment]
    with transaction.atomic():
        for proposal, _ in by_save:
            proposal.save(update_fields=fields)
    with transaction.atomic(), CaptureQueriesContext(connection) as statements:
        services._update_rows([p for p, _ in by_update], fields)
    assert len(statements) == 1
    assert statements[0]["sql"].count("jsonb_array_elements") == 1
    for (saved, _), (updated, _) in zip(by_save, by_update, strict=True):
        skip = ("id", "idempotency_key")
        assert _row(Proposal.objects.get(pk=updated.pk), skip=skip) == _row(
            Proposal.objects.get(pk=saved.pk), skip=skip
        )
