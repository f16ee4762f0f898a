"""The only code that changes proposals.

`transition` is the one place a status changes: it checks `TRANSITIONS`, saves, writes the
audit event and the outbox row, all inside the caller's transaction and under the row lock.
The public services (`proposal_submit`, `vote_cast`, `proposal_revise`, `proposal_cancel`,
`proposal_revoke`, `proposal_claim`, `proposal_release`) validate, lock, and call it.

Locking order, everywhere: the proposal row (FOR NO KEY UPDATE, so foreign-key checks from
other transactions don't queue behind it) first, the audit chain lock last. Whoever holds the
chain lock therefore never waits on a proposal row, and appenders cannot deadlock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import jsonpatch
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connection,
    connections,
    transaction,
)
from django.db.models import Field, Model, Q
from django.db.models.sql import InsertQuery, UpdateQuery
from django.utils import timezone
from referencing.exceptions import Unresolvable
from simple_history.models import HistoricalRecords

from audit.services import Lead, audit_record, audit_round_trip, canonical_json
from notifications.services import outbox_emit, outbox_emit_many, outbox_event
from proposals import policy
from proposals.errors import (
    AlreadyVoted,
    ClaimedByOther,
    Conflict,
    IdempotencyMismatch,
    InvalidInput,
    InvalidPayload,
    InvalidSchema,
    InvalidTransition,
    NotFound,
    PayloadLimitExceeded,
    PermissionDenied,
    StaleRevision,
    Unprocessable,
)
from proposals.models import (
    OPEN_STATUSES,
    TRANSITIONS,
    Action,
    Checkpoint,
    Proposal,
    Resolution,
    Revision,
    RevisionKind,
    Status,
    TimeoutAction,
    Vote,
)
from proposals.permissions import (
    SUBMIT,
    Access,
    access_for,
    electorate,
    electorate_size,
    may_cancel,
    may_revise,
    may_revoke,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

ACTION_VERBS = {
    Action.APPROVE: "proposal.approved",
    Action.REJECT: "proposal.rejected",
    Action.REQUEST_CHANGES: "proposal.changes_requested",
    Action.REVISE: "proposal.revised",
    Action.CANCEL: "proposal.cancelled",
    Action.REVOKE: "proposal.revoked",
}


def payload_hash(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# --- the transition function ---------------------------------------------------------------


def lock_proposal(proposal_id: Any) -> Proposal:
    """Fetch and lock a proposal for the rest of the transaction. Precondition: atomic."""
    try:
        proposal = (
            Proposal.objects.select_for_update(no_key=True, of=("self",))
            # The users too: the API answers from this instance once the change is written.
            .select_related("checkpoint", "submitted_by", "claimed_by")
            .get(pk=proposal_id)
        )
    except (Proposal.DoesNotExist, ValueError, TypeError, DjangoValidationError):
        raise NotFound("Proposal not found.") from None
    proposal._hitl_locked = True  # type: ignore[attr-defined]
    return proposal


def _authorize(access: Access, proposal: Proposal, allowed: bool, refusal: str) -> None:
    """403 for those who may see the proposal, 404 for everyone else (no existence leak)."""
    if allowed:
        return
    if access.may_view(proposal):
        raise PermissionDenied(refusal)
    raise NotFound("Proposal not found.")


@dataclass
class Change:
    """One proposal changed in memory and not yet written: the fields to save, and the event
    that announces it (`verb`; `announce` goes to the outbox row, `data` to the audit event).
    `transition` and the timers build them; `_write` writes one as every change always was
    (save, outbox row, audit event), `write_changes` a sweep chunk of them set-based."""

    proposal: Proposal
    fields: list[str]
    verb: str
    data: dict[str, Any]
    announce: dict[str, Any]
    actor: User | None = None
    reason: str = ""


def transition(
    proposal: Proposal,
    action: str,
    *,
    actor: User | None,
    resolution: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
    **changes: Any,
) -> Proposal:
    """Apply `action` to a locked proposal.

    Preconditions: inside `transaction.atomic()`; `proposal` came from `lock_proposal` (or was
    created in this same transaction). Raises InvalidTransition (409) when TRANSITIONS has no
    entry for (status, action): the loser of every race ends here.
    """
    _write(
        _transitioned(
            proposal,
            action,
            actor=actor,
            resolution=resolution,
            reason=reason,
            data=data,
            now=timezone.now(),
            changes=changes,
        )
    )
    return proposal


def _transitioned(
    proposal: Proposal,
    action: str,
    *,
    actor: User | None,
    resolution: str,
    reason: str,
    data: dict[str, Any] | None,
    now: Any,
    changes: dict[str, Any],
) -> Change:
    """The rules of a transition, applied to `proposal` in memory (see `transition`)."""
    if not getattr(proposal, "_hitl_locked", False):
        raise RuntimeError("transition() needs a proposal locked by lock_proposal().")
    target = TRANSITIONS[proposal.status].get(action)
    if target is None:
        raise InvalidTransition(
            f"Cannot {action.replace('_', ' ')} a proposal that is {proposal.status}.",
            details={"status": proposal.status, "action": action},
        )
    previous = proposal.status
    proposal.status = target
    proposal.resolution = "" if target in OPEN_STATUSES else resolution
    if target not in OPEN_STATUSES:
        if not proposal.resolution:
            raise ValueError("A terminal transition needs a resolution.")
        proposal.decided_at = now
        proposal.claimed_by = None
        proposal.claimed_until = None
    if target == Status.APPROVED and "approved_payload" not in changes:
        proposal.approved_payload = proposal.payload
    for name, value in changes.items():
        setattr(proposal, name, value)
    proposal.updated_at = now
    return Change(
        proposal,
        fields=[
            "status",
            "resolution",
            "decided_at",
            "claimed_by",
            "claimed_until",
            "approved_payload",
            "updated_at",
            *changes.keys(),
        ],
        verb=ACTION_VERBS[Action(action)],
        data={"from": previous, "to": target, "resolution": proposal.resolution, **(data or {})},
        announce={"reason": reason},
        actor=actor,
        reason=reason,
    )


def _write(change: Change) -> None:
    """One change: saved (and so its history row), then its outbox row and audit event. On
    PostgreSQL the first three are one statement sent with the audit append, one round trip
    (three before)."""
    proposal = change.proposal
    proposal._history_user = change.actor  # type: ignore[attr-defined]
    announced = outbox_event(change.verb, proposal=proposal, data=change.announce)
    lead = _update_with_history_lead(proposal, change.fields, plain=[announced])
    if lead is None:
        proposal.save(update_fields=change.fields)
        announced.save(force_insert=True)
    audit_record(
        verb=change.verb,
        actor=change.actor,
        proposal=proposal,
        revision=proposal.revision,
        data=change.data,
        reason=change.reason,
        lead=lead,
    )


def write_changes(changes: list[Change]) -> None:
    """Many changes as `_write` writes each, set-based (a sweep chunk): one UPDATE of the
    proposals, one INSERT each of their history rows and outbox rows, and their audit events
    in order (one INSERT at the end of an audit_batch). Preconditions as `transition`: the
    proposals are locked in this transaction, so the fields one change did not touch hold
    what was read, and writing the union of the changed fields for all is exact."""
    if not changes:
        return
    proposals = [change.proposal for change in changes]
    fields = dict.fromkeys(name for change in changes for name in change.fields)
    _update_rows(proposals, list(fields))
    _copy_to_history(changes, timezone.now())
    outbox_emit_many([(change.verb, change.proposal, change.announce) for change in changes])
    for change in changes:
        audit_record(
            verb=change.verb,
            actor=change.actor,
            proposal=change.proposal,
            revision=change.proposal.revision,
            data=change.data,
            reason=change.reason,
        )


def _record(
    proposal: Proposal, verb: str, *, actor: User | None, data: dict[str, Any], reason: str = ""
) -> None:
    """An event that changes no status (vote cast, edit, claim): outbox row, then audit (on
    PostgreSQL in one round trip)."""
    announced = outbox_event(verb, proposal=proposal, data=data)
    lead = _insert_with_history_lead(plain=[announced])
    if lead is None:
        announced.save(force_insert=True)
    audit_record(
        verb=verb,
        actor=actor,
        proposal=proposal,
        revision=proposal.revision,
        data=data,
        reason=reason,
        lead=lead,
    )


def _update_rows(proposals: list[Proposal], names: list[str]) -> None:
    """`UPDATE` of the fields `names` of many rows in one statement, each row's values from a
    VALUES list joined on the primary key. (QuerySet.bulk_update builds a CASE per field and
    row: ~5 ms of Python per row, more than everything else a sweep does.) PostgreSQL types
    a VALUES list's parameters as text, so each is cast to its column's type there."""
    meta = Proposal._meta
    fields = [field for field in meta.concrete_fields if field.name in names]
    if len(fields) != len(names):
        raise ValueError(f"not fields of Proposal: {names}")
    if connection.vendor == "postgresql":
        plan = _json_update(Proposal, tuple(fields))
        if plan is not None:
            # One parameter, as _insert_sql: not a quoted parameter per value and row.
            sql, json_columns = plan
            db = connections[DEFAULT_DB_ALIAS]
            document = json.dumps([_json_row(p, json_columns, db) for p in proposals])
            with connection.cursor() as cursor:
                cursor.execute(sql, [document])
            return
    columns = [next(field for field in meta.concrete_fields if field.primary_key), *fields]
    quote = connection.ops.quote_name
    if connection.vendor == "postgresql":
        row = ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in columns)
    else:
        row = ", ".join("%s" for _ in columns)
    params = [
        field.get_db_prep_save(getattr(proposal, field.attname), connection)
        for proposal in proposals
        for field in columns
    ]
    table, pk = quote(meta.db_table), quote(columns[0].column)
    names_sql = ", ".join(quote(field.column) for field in columns)
    assignments = ", ".join(f"{quote(f.column)} = v.{quote(f.column)}" for f in fields)
    values = ", ".join(f"({row})" for _ in proposals)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH v ({names_sql}) AS (VALUES {values})"  # noqa: S608 (identifiers from the model)
            f" UPDATE {table} SET {assignments} FROM v WHERE {table}.{pk} = v.{pk}",
            params,
        )


def _copy_to_history(changes: list[Change], when: Any) -> None:
    """The history rows save() writes for these changes (django-simple-history: every tracked
    field as the row now is, an update "~", no change reason, the change's actor), copied by
    the database from the rows just updated: one INSERT … SELECT per actor (a sweep has one),
    no model instance per row."""
    history = Proposal.history.model  # type: ignore[attr-defined]
    meta = history._meta
    quote = connection.ops.quote_name
    copied = ", ".join(quote(field.column) for field in history.tracked_fields)
    extra = [meta.get_field(name) for name in ("history_date", "history_type", "history_user")]
    if connection.vendor == "postgresql":
        slots = ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in extra)
    else:
        slots = ", ".join("%s" for _ in extra)
    targets = ", ".join(quote(field.column) for field in extra)
    pk = next(field for field in Proposal._meta.concrete_fields if field.primary_key)
    by_actor: dict[int | None, list[Any]] = {}
    for change in changes:
        actor_id = change.actor.pk if change.actor is not None else None
        by_actor.setdefault(actor_id, []).append(change.proposal.pk)
    for actor_id, ids in by_actor.items():
        sql = (
            f"INSERT INTO {quote(meta.db_table)} ({copied}, {targets}, history_change_reason)"  # noqa: S608 (names from the models)
            f" SELECT {copied}, {slots}, NULL FROM {quote(Proposal._meta.db_table)}"
            f" WHERE {quote(pk.column)} IN ({', '.join('%s' for _ in ids)})"
        )
        params = [
            field.get_db_prep_save(value, connection)
            for field, value in zip(extra, (when, "~", actor_id), strict=True)
        ]
        params += [pk.get_db_prep_save(proposal_id, connection) for proposal_id in ids]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


# --- submit --------------------------------------------------------------------------------


@dataclass
class ProposalInput:
    title: str
    payload: dict[str, Any]
    summary: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    confidence: float | None = None
    priority: str = "medium"
    impact: Decimal | None = None
    region: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    external_id: str = ""
    callback_url: str = ""
    payload_schema: dict[str, Any] | None = None
    timeout_seconds: int | None = None


def _validate_options(options: list[dict[str, Any]], schema: dict[str, Any] | None) -> None:
    keys = [option.get("key") for option in options]
    if len(set(keys)) != len(keys):
        raise Unprocessable("Option keys must be unique.", details={"options": keys})
    for index, option in enumerate(options):
        _check_bounds(option.get("payload"), where=f"options[{index}].payload")
        _check_schema(option.get("payload"), schema, where=f"options[{index}].payload")


def _schema_of(proposal: Proposal) -> dict[str, Any] | None:
    """The schema its payloads must satisfy: its own, else its checkpoint's (read now, so a
    manager's fix to the checkpoint's schema applies to open proposals' next revisions)."""
    return proposal.payload_schema or proposal.checkpoint.payload_schema or None


def _check_schema(payload: Any, schema: dict[str, Any] | None, *, where: str = "payload") -> None:
    """400 invalid_payload listing every error path: no stored payload (submitted, an
    option's, revised, edited by a reviewer) is one the agent could not accept."""
    if not schema:
        return
    try:
        errors = policy.payload_errors(payload, schema)
    except Unresolvable as exc:
        raise InvalidSchema(
            f"The payload schema has a $ref that cannot be resolved: {exc}",
            details={"payload_schema": str(exc)},
        ) from None
    if errors:
        raise InvalidPayload(
            f"The {where} does not match its JSON Schema ({len(errors)} error(s)).",
            details={"field": where, "errors": errors},
        )


def _timeout_of(proposal: Proposal) -> int | None:
    if proposal.timeout_seconds is not None:
        return proposal.timeout_seconds
    return proposal.checkpoint.timeout_seconds


def _check_bounds(payload: Any, *, where: str = "payload") -> None:
    """Every stored payload (submitted, an option's, revised, edited) within the bounds of a
    submitted one: the request body limit and the API's depth limit."""
    try:
        policy.check_payload_bounds(
            payload,
            max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
            max_depth=policy.MAX_PAYLOAD_DEPTH,
        )
    except policy.PayloadBoundExceeded as exc:
        raise PayloadLimitExceeded(str(exc), details={"field": where, **exc.details}) from None


def _approval(proposal: Proposal, option_key: str) -> dict[str, Any]:
    """The fields an approval sets (policy.approved_content), for transition(**changes)."""
    return policy.approved_content(
        payload=proposal.payload, options=proposal.options, option_key=option_key
    )


def bypass_active(checkpoint: Checkpoint, now: Any) -> bool:
    return checkpoint.bypass_until is not None and checkpoint.bypass_until > now


def proposal_submit(
    *,
    submitter: User,
    checkpoint: Checkpoint,
    data: ProposalInput,
    idempotency_key: str | None = None,
    access: Access | None = None,
) -> Proposal:
    """Create a proposal and route it.

    Returns it `pending`, or already `approved`/`rejected` when policy (or a disabled
    checkpoint, or an active bypass) decided. Raises PermissionDenied without the submit
    permission on the checkpoint.
    """
    access = access or access_for(submitter)
    _check_submission(access, checkpoint, data)
    now = timezone.now()
    with transaction.atomic():
        eligible = electorate_size(checkpoint, submitter_id=submitter.pk, access=access)
        proposal = _new_proposal(submitter, checkpoint, data, idempotency_key, eligible, now)
        proposal._history_user = submitter  # type: ignore[attr-defined]
        revision = _first_revision(proposal, data, submitter, now)
        decision = _route(proposal, checkpoint, data, now)
        submitted = _submitted_data(decision, revision)
        # The outbox row goes in with the proposal (one statement), sent on PostgreSQL in one
        # round trip with the audit event's lock and append.
        announced = outbox_event("proposal.submitted", proposal=proposal, data=submitted)
        inserts = _insert_with_history_lead(proposal, revision, plain=[announced])
        # Created in this transaction: invisible to everyone else, so as good as locked.
        proposal._hitl_locked = True  # type: ignore[attr-defined]

        def write() -> None:
            # On PostgreSQL one round trip for all of it: the rows and their event, then the
            # policy's decision (its UPDATE, history and outbox rows) and its event, and the
            # COMMIT: nothing runs in this transaction after them (`final`), the rest of this
            # function only fills in what the caller reads.
            with audit_round_trip(final=True):
                if inserts is None:
                    _insert_with_history(proposal, revision, plain=[announced])
                audit_record(
                    verb="proposal.submitted",
                    actor=submitter,
                    proposal=proposal,
                    revision=proposal.revision,
                    data=submitted,
                    lead=inserts,
                )
                _apply_route(proposal, decision, data)

        if idempotency_key is None:
            # A fresh UUID and no key: no constraint can fail, so no savepoint to pay for.
            write()
        else:
            try:
                with transaction.atomic():
                    write()
            except IntegrityError:
                # Only the (submitter, idempotency_key) constraint can fail on a fresh UUID:
                # the key's API record expired (HITL_IDEMPOTENCY_TTL_HOURS) but keys stay unique.
                raise IdempotencyMismatch(
                    "This Idempotency-Key was already used for another proposal."
                ) from None
    # What was written is what the caller answers with: its one revision and no votes yet,
    # without reading the proposal back (hitl.api.views).
    _as_prefetched(proposal, revisions=[revision], votes=[])
    return proposal


# simple_history's defaults, as every model here declares them (HistoricalRecords()): who a
# history row names and its change reason, exactly as its post_save handler would.
_HISTORY_DEFAULTS = HistoricalRecords()


def _insert_with_history(*rows: Model, plain: Sequence[Model] = ()) -> None:
    """save(force_insert=True) of each row, in order, with the history row simple_history's
    post_save writes for it (every tracked field as stored, "+", the same user, date and
    reason), then of each `plain` row (a model without history: the outbox row announcing
    them), as one statement on PostgreSQL: each INSERT … RETURNING * feeds an INSERT …
    SELECT of its history row (a data-modifying WITH), instead of five round trips for a
    proposal, its first revision and its outbox row. Elsewhere, save() one by one. Nothing
    here listens to these models' other save signals (none but simple_history's are
    connected)."""
    lead = _insert_with_history_lead(*rows, plain=plain)
    if lead is None:
        for row in [*rows, *plain]:
            row.save(force_insert=True)
        return
    lead.run_alone()


def _insert_with_history_lead(*rows: Model, plain: Sequence[Model] = ()) -> Lead | None:
    """`_insert_with_history`'s statement on PostgreSQL, for the caller to send (with the
    audit append that records these rows: audit_record(lead=…)); None elsewhere."""
    if connection.vendor != "postgresql":
        return None
    return _insert_groups_lead(
        [([row], _history_values(row, "+")) for row in rows] + [([row], None) for row in plain]
    )


def insert_many_with_history(
    *groups: Sequence[Model], user: User, when: Any, plain: Sequence[Model] = ()
) -> None:
    """As `_insert_with_history` for many rows (a bulk submit): each group, rows of one model,
    goes in with one INSERT … RETURNING * (its rows' values one JSON document: `_insert_sql`)
    feeding the INSERT … SELECT of their history rows, every group in one statement. Their
    history rows name `user` and `when`, with no change reason, as save() writes them for a
    row whose `_history_user` is `user`. Then the `plain` rows, of one model without history
    (the outbox rows announcing them). Elsewhere, bulk_create and simple_history's
    bulk_history_create, which write the same."""
    if connection.vendor != "postgresql":
        for group in groups:
            model = type(group[0]) if group else None
            if model is not None:
                model._default_manager.bulk_create(group)
                model.history.bulk_history_create(  # type: ignore[attr-defined]
                    group, default_user=user, default_date=when, default_change_reason=None
                )
        if plain:
            type(plain[0])._default_manager.bulk_create(plain)
        return
    rows: list[tuple[list[Model], list[Any] | None]] = [
        (list(group), [when, "+", user.pk, None]) for group in groups if group
    ]
    if plain:
        rows.append((list(plain), None))
    _insert_groups(rows)


def _insert_groups(groups: list[tuple[list[Model], list[Any] | None]]) -> None:
    _insert_groups_lead(groups).run_alone()


def _insert_groups_lead(groups: list[tuple[list[Model], list[Any] | None]]) -> Lead:
    """One statement: for each (rows of one model, their history values: date, type, user,
    change reason; None for a model without history), the rows' INSERT … RETURNING * and the
    INSERT … SELECT of their history rows from it. Primary keys the database assigns are set
    on the rows, in order."""
    parts, params, keys, inserted = _group_parts(groups)
    return Lead(f"WITH {', '.join(parts)} SELECT {keys}", params, lambda c: inserted(c.fetchone()))


def _group_parts(
    groups: list[tuple[list[Model], list[Any] | None]],
) -> tuple[list[str], list[Any], str, Callable[[Sequence[Any]], None]]:
    """`_insert_groups_lead`'s pieces: the WITH parts and their parameters, the select list of
    each group's assigned keys, and what sets them on the rows from those columns."""
    parts: list[str] = []
    params: list[Any] = []
    for n, (rows, values) in enumerate(groups):
        model = type(rows[0])
        meta = model._meta
        fields = [
            field
            for field in meta.local_concrete_fields
            if not (field is meta.auto_field and rows[0].pk is None)
        ]
        insert_sql, insert_params = _insert_sql(model, fields, rows)
        parts.append(f"r{n} AS ({insert_sql} RETURNING *)")
        params += insert_params
        if values is None:
            continue
        history_sql, extra = _history_insert(model, f"r{n}")
        parts.append(f"h{n} AS ({history_sql})")
        params += [
            slot.get_db_prep_save(value, connection)
            for slot, value in zip(extra, values, strict=True)
        ]
    quote = connection.ops.quote_name
    # Each group's assigned keys, in the order of its rows (RETURNING follows the VALUES
    # list, as QuerySet.bulk_create relies on), one array per group.
    keys = ", ".join(
        f"ARRAY(SELECT {quote(rows[0]._meta.pk.column)} FROM r{n})"  # type: ignore[union-attr]  # noqa: S608
        for n, (rows, _values) in enumerate(groups)
    )

    def inserted(returned: Sequence[Any]) -> None:
        alias = connection.alias
        for (rows, _values), pks in zip(groups, returned, strict=True):
            for row, pk in zip(rows, pks, strict=True):
                if row.pk is None:
                    row.pk = pk
                row._state.adding = False
                row._state.db = alias

    return parts, params, keys, inserted


def _insert_sql(model: type[Model], fields: list[Any], rows: list[Model]) -> tuple[str, list[Any]]:
    """INSERT of `rows` (no RETURNING), their values sent as one parameter: a JSON array of
    rows, each the array of its values, that the statement reads back column by column
    (`_json_insert`). As a multi-row VALUES list (or Django's UNNEST of an array per column)
    Django prepares every value and psycopg quotes each of them (psycopg's arrays in pure
    Python): half of a 500-item bulk submit's CPU in its profile, where building and quoting
    the one document costs a sixth of that. A model with a column of another kind goes
    through Django's compiler, as before."""
    # The connection itself, not the `django.db.connection` proxy: every lookup through the
    # proxy is a thread-local read.
    db = connections[DEFAULT_DB_ALIAS]
    plan = _json_insert(model, tuple(fields))
    if plan is None:
        query = InsertQuery(model)
        query.insert_values(fields, rows)
        [(sql, params)] = query.get_compiler(connection=db).as_sql()
        return sql, list(params)
    sql, columns = plan
    return sql, [json.dumps([_json_row(row, columns, db) for row in rows])]


# A column of the JSON document: the field, its attname, whether its value is pre_save's
# (auto_now…) rather than the attribute, then its `_JSON_FORMS` entry.
_JsonColumn = tuple[Any, str, bool, type | None, Any, Callable[[Any], Any]]


def _json_row(row: Model, columns: tuple[_JsonColumn, ...], db: Any) -> list[Any]:
    """`row`'s values for the JSON document: each what the compiler takes (pre_save for an
    insert) in the form its column reads back exactly. A value of the type that goes in as it
    is (a str, an int…) skips Django's preparation (per value, as much CPU as the rest of the
    insert); one `convert` takes is converted (a UUID to its text…); another (a str in a
    UUIDField, an int in a FloatField, a naive datetime) goes through get_db_prep_save
    first, as the compiler sends it."""
    attributes = row.__dict__
    values: list[Any] = []
    for model_field, attname, computed, plain, exact, convert in columns:
        if computed:
            value: Any = model_field.pre_save(row, True)
        elif attname in attributes:
            value = attributes[attname]
        else:
            value = getattr(row, attname)
        if value is None or type(value) is plain:
            values.append(value)
            continue
        if not isinstance(value, exact) or (exact is datetime and value.tzinfo is None):
            value = model_field.get_db_prep_save(value, db)
            if value is None:
                values.append(None)
                continue
        values.append(convert(value))
    return values


@functools.cache
def _json_insert(
    model: type[Model], fields: tuple[Any, ...]
) -> tuple[str, tuple[_JsonColumn, ...]] | None:
    """The INSERT … SELECT that reads `fields` of each row from the JSON document (a
    parameter), and its columns for `_json_row`. None when a field is of a kind the document
    has no form for."""
    read = _json_columns(fields, insert=True)
    if read is None:
        return None
    selected, columns = read
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    targets = ", ".join(quote(f.column) for f in fields)
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({targets})"  # noqa: S608 (names from the model)
        f" SELECT {', '.join(selected)} FROM jsonb_array_elements(%s::jsonb) AS e"
    )
    return sql, columns


def _json_columns(
    fields: tuple[Any, ...], *, insert: bool
) -> tuple[list[str], tuple[_JsonColumn, ...]] | None:
    """Per field, the expression that reads its value from a row `e` of the JSON document,
    and its column for `_json_row` (with `insert`, a field whose pre_save computes its value,
    auto_now…, takes it from there, as an INSERT does); None when a field is of a kind the
    document has no form for."""
    db = connections[DEFAULT_DB_ALIAS]
    columns: list[_JsonColumn] = []
    selected: list[str] = []
    for n, f in enumerate(fields):
        kind = (f.target_field if f.is_relation else f).get_internal_type()
        form = _JSON_FORMS.get(kind)
        if form is None or hasattr(f, "get_placeholder"):
            return None
        if kind == "JSONField":
            if f.encoder is not None:
                return None
            # JSON null is how the document says SQL NULL: a JSONField stores None as NULL.
            selected.append(f"NULLIF(e->{n}, 'null')")
        else:
            # The type without its parameters, as Django's UNNEST insert casts: a value too
            # long for varchar(n) then fails on assignment instead of being cut.
            base = f.db_type(db).split("(")[0]
            selected.append(f"CAST(e->>{n} AS {base})")
        computed = (
            insert
            and type(f).pre_save is not Field.pre_save
            and (getattr(f, "auto_now", True) or getattr(f, "auto_now_add", True))
        )
        columns.append((f, f.attname, computed, *form))
    return selected, tuple(columns)


@functools.cache
def _json_update(
    model: type[Model], fields: tuple[Any, ...]
) -> tuple[str, tuple[_JsonColumn, ...]] | None:
    """The UPDATE of `fields` of many rows, each row's values (its primary key first) read
    from the JSON document, and its columns for `_json_row`; None as `_json_columns`."""
    pk = model._meta.pk
    read = _json_columns((pk, *fields), insert=False)
    if read is None:
        return None
    selected, columns = read
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    table, key = quote(model._meta.db_table), quote(pk.column)  # type: ignore[union-attr]
    names = [quote(f.column) for f in (pk, *fields)]
    reads = ", ".join(f"{expr} AS {name}" for expr, name in zip(selected, names, strict=True))
    assignments = ", ".join(f"{name} = v.{name}" for name in names[1:])
    sql = (
        f"WITH v AS (SELECT {reads} FROM jsonb_array_elements(%s::jsonb) AS e)"  # noqa: S608 (names from the model)
        f" UPDATE {table} SET {assignments} FROM v WHERE {table}.{key} = v.{key}"
    )
    return sql, columns


def _same(value: Any) -> Any:
    return value


def _float_form(value: float) -> str:
    # repr round-trips a float exactly (psycopg sends its repr too), and JSON has no NaN.
    return float.__repr__(value)


def _iso(value: Any) -> str:
    return str(value.isoformat())


# Per column kind (Django's internal type): the type whose values go into the JSON document
# as they are (None: none do), the type `convert` takes, and `convert`, which puts a value in
# the form the column reads back as the compiler would have sent it (psycopg's text of it).
_INTEGERS = (
    "AutoField",
    "BigAutoField",
    "SmallAutoField",
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveBigIntegerField",
    "PositiveSmallIntegerField",
)
_JSON_FORMS: dict[str, tuple[type | None, type, Callable[[Any], Any]]] = {
    # A str subclass (a TextChoices member) is encoded as its text, as psycopg sends it.
    **dict.fromkeys(("CharField", "TextField", "SlugField"), (str, str, _same)),
    # int() of a bool or an IntEnum member: the number the compiler sends.
    **dict.fromkeys(_INTEGERS, (int, int, int)),
    "BooleanField": (bool, bool, _same),
    "FloatField": (None, float, _float_form),
    "DecimalField": (None, Decimal, str),
    "DateTimeField": (None, datetime, _iso),
    "UUIDField": (None, uuid.UUID, str),
    # Any value as it is: Django prepares none, it hands it to json.dumps as here (only a
    # field with an encoder of its own would differ, and those take Django's compiler).
    "JSONField": (None, object, _same),
}


def _history_values(row: Model, history_type: str) -> list[Any]:
    """What simple_history's post_save writes into `row`'s history row beside its fields:
    date, type, user, change reason."""
    user = _HISTORY_DEFAULTS.get_history_user(row)
    return [
        getattr(row, "_history_date", timezone.now()),
        history_type,
        user.pk if user is not None else None,
        _HISTORY_DEFAULTS.get_change_reason_for_object(row, history_type, None),
    ]


def _history_from(row: Model, source: str, history_type: str) -> tuple[str, list[Any]]:
    """INSERT … SELECT of the history row simple_history's post_save writes for `row` (every
    tracked field, as stored; its user, date and change reason), from `source`: the row as
    an INSERT or UPDATE … RETURNING * just wrote it."""
    sql, extra = _history_insert(type(row), source)
    values = _history_values(row, history_type)
    return sql, [
        slot.get_db_prep_save(value, connection) for slot, value in zip(extra, values, strict=True)
    ]


@functools.cache
def _history_insert(model: type[Model], source: str) -> tuple[str, tuple[Any, ...]]:
    """The statement _history_from fills in, per model (`Model.history` builds a manager
    class at every access), and the history fields its parameters go to, in order."""
    quote = connection.ops.quote_name
    history = model.history.model  # type: ignore[attr-defined]
    meta = history._meta
    extra = tuple(
        meta.get_field(name)
        for name in ("history_date", "history_type", "history_user", "history_change_reason")
    )
    columns = ", ".join(quote(field.column) for field in history.tracked_fields)
    slots = ", ".join(f"CAST(%s AS {slot.db_type(connection)})" for slot in extra)
    targets = ", ".join(quote(slot.column) for slot in extra)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}, {targets})"  # noqa: S608 (names from the models)
        f" SELECT {columns}, {slots} FROM {source}"
    )
    return sql, extra


def _update_by_pk(row: Model, fields: list[str]) -> tuple[str, list[Any]]:
    """The UPDATE that save(update_fields=fields) sends for `row`, and its parameters. Its
    text is built once per model and fields (`_update_sql`): building it through Django's
    UpdateQuery and compiler for every transition (its WHERE alone: Q, add_q, lookups) cost
    more CPU than everything else a transition does. The values are prepared as the compiler
    prepares them; one the text cannot carry (an expression, a field with a placeholder of
    its own) sends the whole UPDATE through the compiler."""
    db = connections[DEFAULT_DB_ALIAS]
    names = tuple(fields)
    sql, columns = _update_sql(type(row), names)
    values = [field.pre_save(row, False) for field in columns]
    if sql is None or any(hasattr(value, "resolve_expression") for value in values):
        query = UpdateQuery(type(row))
        query.add_update_fields(list(zip(columns, [None] * len(columns), values, strict=True)))
        query.add_q(Q(pk=row.pk))
        compiled, params = query.get_compiler(connection=db).as_sql()
        return compiled, list(params)
    params = [
        field.get_db_prep_save(value, db) for field, value in zip(columns, values, strict=True)
    ]
    params.append(row._meta.pk.get_db_prep_value(row.pk, db))  # type: ignore[union-attr]
    return sql, params


@functools.cache
def _update_sql(model: type[Model], names: tuple[str, ...]) -> tuple[str | None, list[Any]]:
    """`_update_by_pk`'s text for `model` and the fields `names` (the fields, in the model's
    order, as save(update_fields=…) writes them); None when a field has a placeholder of its
    own."""
    meta = model._meta
    wanted = set(names)
    columns = [
        field
        for field in meta.local_concrete_fields
        if field.name in wanted or field.attname in wanted
    ]
    db = connections[DEFAULT_DB_ALIAS]
    if any(hasattr(field, "get_placeholder") for field in columns):
        return None, columns
    quote = db.ops.quote_name
    table = quote(meta.db_table)
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in columns)
    pk = quote(meta.pk.column)  # type: ignore[union-attr]
    return f"UPDATE {table} SET {assignments} WHERE {table}.{pk} = %s", columns  # noqa: S608


def _update_with_history_lead(
    row: Model, fields: list[str], *, plain: Sequence[Model] = ()
) -> Lead | None:
    """save(update_fields=fields), the history row simple_history's post_save writes for it
    ("~") and the INSERT of the `plain` rows (of a model without history: the outbox row
    announcing the change), as one statement on PostgreSQL (UPDATE … RETURNING * feeding the
    history INSERT … SELECT), for the caller to send (audit_record(lead=…)); None elsewhere."""
    if connection.vendor != "postgresql":
        return None
    update_sql, update_params = _update_by_pk(row, fields)
    history_sql, history_params = _history_from(row, "u", "~")
    parts = [f"u AS ({update_sql} RETURNING *)", f"h AS ({history_sql})"]
    params = [*update_params, *history_params]
    keys, inserted = "", None
    if plain:
        more, more_params, keys, inserted = _group_parts([(list(plain), None)])
        parts += more
        params += more_params
        keys = f", {keys}"

    def updated(cursor: Any) -> None:
        returned = cursor.fetchone()
        if returned[0] != 1:  # what save() says of a row that is not there
            raise DatabaseError("Save with update_fields did not affect any rows.")
        if inserted is not None:
            inserted(returned[1:])

    sql = f"WITH {', '.join(parts)} SELECT (SELECT count(*) FROM u){keys}"  # noqa: S608 (names from the models)
    return Lead(sql, params, updated)


def _check_submission(access: Access, checkpoint: Checkpoint, data: ProposalInput) -> None:
    """Everything a submission must pass before anything is written."""
    if not access.has(SUBMIT, checkpoint.pk):
        raise PermissionDenied(f"You may not submit to checkpoint {checkpoint.slug!r}.")
    _check_bounds(data.payload)
    if data.payload_schema is not None:
        problem = policy.schema_problem(data.payload_schema)
        if problem is not None:
            raise InvalidSchema(problem, details={"payload_schema": problem})
    problem = policy.timeout_problem(
        requested=data.timeout_seconds, checkpoint_timeout=checkpoint.timeout_seconds
    )
    if problem is not None:
        raise InvalidInput(problem, details={"timeout_seconds": [problem]})
    schema = data.payload_schema or checkpoint.payload_schema or None
    _check_schema(data.payload, schema)
    _validate_options(data.options, schema)


def _new_proposal(
    submitter: User,
    checkpoint: Checkpoint,
    data: ProposalInput,
    idempotency_key: str | None,
    eligible: int,
    now: Any,
) -> Proposal:
    due = policy.deadlines(
        start=now,
        priority=data.priority,
        timeout_seconds=(
            data.timeout_seconds if data.timeout_seconds is not None else checkpoint.timeout_seconds
        ),
        sla_seconds=checkpoint.sla_seconds,
        remind_after_seconds=checkpoint.remind_after_seconds,
        escalate_after_seconds=checkpoint.escalate_after_seconds,
    )
    return Proposal(
        id=uuid.uuid4(),
        checkpoint=checkpoint,
        title=data.title,
        summary=data.summary,
        payload=data.payload,
        options=data.options,
        context=data.context,
        confidence=data.confidence,
        priority=data.priority,
        impact=data.impact,
        region=data.region,
        labels=data.labels,
        external_id=data.external_id,
        callback_url=data.callback_url,
        payload_schema=data.payload_schema,
        timeout_seconds=data.timeout_seconds,
        submitted_by=submitter,
        idempotency_key=idempotency_key,
        status=Status.PENDING,
        revision=1,
        eligible_reviewers=eligible,
        quorum_required=policy.required_approvals(
            checkpoint.quorum_rule, checkpoint.quorum_count, eligible
        ),
        due_at=due.due_at,
        sla_due_at=due.sla_due_at,
        remind_at=due.remind_at,
        escalate_at=due.escalate_at,
        created_at=now,
        updated_at=now,
    )


def _first_revision(proposal: Proposal, data: ProposalInput, submitter: User, now: Any) -> Revision:
    return Revision(
        proposal=proposal,
        number=1,
        kind=RevisionKind.SUBMITTED,
        payload=data.payload,
        payload_hash=payload_hash(data.payload),
        summary=data.summary,
        author=submitter,
        created_at=now,
    )


def _route(
    proposal: Proposal, checkpoint: Checkpoint, data: ProposalInput, now: Any
) -> policy.Route:
    return policy.route(
        proposal_id=str(proposal.pk),
        payload=data.payload,
        confidence=data.confidence,
        enabled=checkpoint.enabled,
        bypass_active=bypass_active(checkpoint, now),
        auto_approve_at=checkpoint.auto_approve_at,
        auto_reject_below=checkpoint.auto_reject_below,
        review_when=checkpoint.review_when,
        sample_rate=checkpoint.sample_rate,
    )


def _submitted_data(decision: policy.Route, first: Revision) -> dict[str, Any]:
    """What the submitted event says: the routing, and the hash of the payload (its first
    revision's, computed once)."""
    return {
        "routing": decision.outcome,
        "routing_reason": decision.reason,
        "payload_hash": first.payload_hash,
    }


def _apply_route(proposal: Proposal, decision: policy.Route, data: ProposalInput) -> None:
    """A policy's decision, through `transition` like any other."""
    if decision.outcome == "approve":
        transition(
            proposal,
            Action.APPROVE,
            actor=None,
            resolution=decision.resolution,
            reason=decision.reason,
            **_approval(proposal, policy.policy_option(data.options)),
        )
    elif decision.outcome == "reject":
        transition(
            proposal,
            Action.REJECT,
            actor=None,
            resolution=decision.resolution,
            reason=decision.reason,
        )


def _as_prefetched(proposal: Proposal, **related: list[Any]) -> None:
    """Fill the prefetch cache of `proposal`'s reverse relations with rows already in hand, as
    prefetch_related would: `proposal.revisions.all()` then reads no rows."""
    cache = proposal.__dict__.setdefault("_prefetched_objects_cache", {})
    for name, rows in related.items():
        queryset = getattr(proposal, name).all()
        queryset._result_cache = rows
        queryset._prefetch_done = True
        cache[name] = queryset


# --- votes ---------------------------------------------------------------------------------


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _edited_payload(
    payload: dict[str, Any], patch: list[dict[str, Any]] | None, adjustments: dict[str, Any] | None
) -> dict[str, Any]:
    if patch is not None and adjustments is not None:
        raise Unprocessable("Send either `patch` or `adjustments`, not both.")
    if adjustments is not None:
        # A merge cannot outgrow its two bounded inputs: checked once, after.
        edited = _merge(payload, adjustments)
    else:
        try:
            edited = policy.apply_bounded_patch(
                payload,
                patch or [],
                max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
                max_depth=policy.MAX_PAYLOAD_DEPTH,
            )
        except policy.PayloadBoundExceeded as exc:
            details = {"field": "patch", **exc.details}
            raise PayloadLimitExceeded(str(exc), details=details) from None
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
            raise Unprocessable(
                f"The patch does not apply: {exc}", details={"patch": patch}
            ) from None
    if not isinstance(edited, dict):
        raise Unprocessable("The edited payload must stay a JSON object.")
    _check_bounds(edited)
    return edited


def _refuse_if_timed_out(proposal: Proposal) -> None:
    """Late votes and revisions lose to the timeout even before a sweep has applied it."""
    if policy.past_deadline(due_at=proposal.due_at, now=timezone.now()):
        assert proposal.due_at is not None
        raise InvalidTransition(
            "The proposal's deadline has passed; the timeout decides it.",
            details={"status": proposal.status, "due_at": proposal.due_at.isoformat()},
        )


@dataclass(frozen=True)
class _VoteRequest:
    decision: str
    revision: int
    comment: str
    selected_option: str
    patch: list[dict[str, Any]] | None
    adjustments: dict[str, Any] | None

    @property
    def edits(self) -> bool:
        return self.patch is not None or self.adjustments is not None


def vote_cast(
    *,
    proposal_id: Any,
    reviewer: User,
    decision: str,
    revision: int,
    comment: str = "",
    selected_option: str = "",
    patch: list[dict[str, Any]] | None = None,
    adjustments: dict[str, Any] | None = None,
    access: Access | None = None,
) -> tuple[Proposal, Vote]:
    """Record one reviewer's vote on the revision they saw, then settle the quorum.

    Everything happens under the proposal's row lock, so of any number of racing votes
    exactly one causes the terminal transition; later ones get 409 (decided, or stale).
    """
    access = access or access_for(reviewer)
    request = _VoteRequest(decision, revision, comment, selected_option, patch, adjustments)
    with transaction.atomic():
        proposal = lock_proposal(proposal_id)
        _authorize_vote(access, proposal)
        _check_round_open(proposal, request.revision)
        _check_ballot(proposal, request)
        # The round's votes, read once: under the row lock nobody else adds one, so they are
        # both the double-vote check and, with this vote, what the quorum counts.
        cast = _round_votes(proposal)
        if any(reviewer_id == reviewer.pk for reviewer_id, _ballot in cast):
            raise AlreadyVoted("You have already voted on this revision.")
        now = timezone.now()
        if request.edits:
            _apply_reviewer_edit(proposal, reviewer, patch, adjustments, comment, now)
            cast = []  # a new revision: the round starts again with this vote
        vote = _record_vote(proposal, reviewer, request, now)
        ballots = [ballot for _reviewer_id, ballot in cast]
        ballots.append(policy.Ballot(vote.decision, vote.selected_option))
        _settle(proposal, reviewer, comment, ballots)
    return proposal, vote


def _authorize_vote(access: Access, proposal: Proposal) -> None:
    if access.is_submitter(proposal):
        raise PermissionDenied("The submitter cannot vote on its own proposal.")
    _authorize(
        access,
        proposal,
        access.may_review(proposal),
        "You are not an eligible reviewer of this proposal.",
    )


def _check_round_open(proposal: Proposal, revision: int) -> None:
    """Pending, before the deadline, and the revision the reviewer saw is still current."""
    if proposal.status != Status.PENDING:
        raise InvalidTransition(
            f"The proposal is {proposal.status}; votes are closed.",
            details={"status": proposal.status},
        )
    _refuse_if_timed_out(proposal)
    if revision != proposal.revision:
        raise StaleRevision(
            f"You reviewed revision {revision}; the current revision is {proposal.revision}.",
            details={"revision": proposal.revision},
        )


def _check_ballot(proposal: Proposal, request: _VoteRequest) -> None:
    """A reason where the checkpoint wants one; options and edits only as policy allows."""
    if policy.reason_missing(
        decision=request.decision,
        require_reason_on=proposal.checkpoint.require_reason_on,
        comment=request.comment,
    ):
        raise Unprocessable(
            f"A reason is required to {request.decision.replace('_', ' ')} at this checkpoint.",
            details={"comment": "required"},
        )
    option_keys = [str(o.get("key")) for o in proposal.options if isinstance(o, dict)]
    problem = policy.ballot_problem(
        decision=request.decision,
        option_keys=option_keys,
        selected_option=request.selected_option,
        edits=request.edits,
    )
    if problem is not None:
        raise Unprocessable(problem, details={"selected_option": option_keys})


def _round_votes(proposal: Proposal) -> list[tuple[int, policy.Ballot]]:
    """(reviewer id, ballot) of each vote on the current revision."""
    rows = Vote.objects.filter(proposal=proposal, revision=proposal.revision).values_list(
        "reviewer_id", "decision", "selected_option"
    )
    return [
        (reviewer_id, policy.Ballot(decision, option)) for reviewer_id, decision, option in rows
    ]


def _record_vote(proposal: Proposal, reviewer: User, request: _VoteRequest, now: Any) -> Vote:
    # No savepoint: under the proposal's row lock a twin vote waits for this one's commit and
    # then meets it among the round's votes. Should the constraint ever fire anyway, the error
    # leaves the transaction unusable and AlreadyVoted rolls all of it back.
    vote = Vote(
        proposal=proposal,
        revision=proposal.revision,
        reviewer=reviewer,
        decision=request.decision,
        comment=request.comment,
        selected_option=request.selected_option,
        created_at=now,
        # What Vote.save() fills in (the row is written here without it).
        checkpoint_id=proposal.checkpoint_id,
        review_seconds=(now - proposal.created_at).total_seconds(),
    )
    try:
        _insert_with_history(vote)  # the vote and its history row, one statement
    except IntegrityError:  # the constraint is the backstop for the round's votes read
        raise AlreadyVoted("You have already voted on this revision.") from None
    _record(
        proposal,
        "proposal.vote_cast",
        actor=reviewer,
        data={
            "decision": request.decision,
            "selected_option": request.selected_option,
            "vote_id": vote.pk,
        },
        reason=request.comment,
    )
    return vote


def proposal_cast_current(
    *,
    proposal_id: Any,
    reviewer: User,
    decision: str,
    comment: str,
    selected_option: str = "",
    access: Access | None = None,
) -> Proposal:
    """A vote on whatever revision is current: for operators deciding by command, who see
    the proposal as it is now (the API and email links bind the revision the reviewer saw)."""
    try:
        current = (
            Proposal.objects.filter(pk=uuid.UUID(str(proposal_id)))
            .values_list("revision", flat=True)
            .first()
        )
    except ValueError:
        current = None
    if current is None:
        raise NotFound("Proposal not found.")
    proposal, _ = vote_cast(
        proposal_id=proposal_id,
        reviewer=reviewer,
        decision=decision,
        revision=current,
        comment=comment,
        selected_option=selected_option,
        access=access,
    )
    return proposal


def _apply_reviewer_edit(
    proposal: Proposal,
    reviewer: User,
    patch: list[dict[str, Any]] | None,
    adjustments: dict[str, Any] | None,
    comment: str,
    now: Any,
) -> None:
    """Edit-then-approve: a reviewer-authored revision with the diff. The other reviewers'
    votes were for the old revision, so they stop counting (reset) by construction."""
    before = proposal.payload
    after = _edited_payload(before, patch, adjustments)
    _check_schema(after, _schema_of(proposal))
    diff = jsonpatch.make_patch(before, after).patch
    if not diff:
        raise Unprocessable("The edit changes nothing; approve without a patch instead.")
    proposal.revision += 1
    proposal.payload = after
    proposal.updated_at = now
    proposal._history_user = reviewer  # type: ignore[attr-defined]
    proposal.save(update_fields=["revision", "payload", "updated_at"])
    Revision.objects.create(
        proposal=proposal,
        number=proposal.revision,
        kind=RevisionKind.EDITED,
        payload=after,
        payload_hash=payload_hash(after),
        author=reviewer,
        patch=diff,
        reason=comment,
        created_at=now,
    )
    _record(proposal, "proposal.edited", actor=reviewer, data={"patch": diff}, reason=comment)


def _settle(proposal: Proposal, reviewer: User, comment: str, ballots: list[policy.Ballot]) -> None:
    """Apply policy.evaluate_round to the current revision's votes (`ballots`)."""
    result = policy.evaluate_round(
        ballots=ballots,
        required=proposal.quorum_required,
        veto=proposal.checkpoint.veto,
        eligible=proposal.eligible_reviewers,
    )
    if result.outcome == "approved":
        transition(
            proposal,
            Action.APPROVE,
            actor=reviewer,
            resolution=Resolution.REVIEWERS,
            reason=comment,
            **_approval(proposal, result.option),
        )
    elif result.outcome == "rejected":
        transition(
            proposal,
            Action.REJECT,
            actor=reviewer,
            resolution=Resolution.REVIEWERS,
            reason=comment or result.reason,
            data={"quorum": result.reason},
        )
    elif result.outcome == "changes_requested":
        resubmissions = Revision.objects.filter(
            proposal=proposal, kind=RevisionKind.RESUBMITTED
        ).count()
        if resubmissions >= proposal.checkpoint.max_revisions:
            transition(
                proposal,
                Action.REJECT,
                actor=reviewer,
                resolution=Resolution.REVIEWERS,
                reason=comment,
                data={"max_revisions_reached": True},
            )
        else:
            transition(proposal, Action.REQUEST_CHANGES, actor=reviewer, reason=comment)


# --- the submitter's side ------------------------------------------------------------------


def proposal_revise(
    *,
    proposal_id: Any,
    actor: User,
    payload: dict[str, Any],
    summary: str = "",
    comment: str = "",
    access: Access | None = None,
) -> Proposal:
    """A new revision from the submitter while `changes_requested`; back to `pending` with a
    fresh timeout. Votes on earlier revisions no longer count."""
    access = access or access_for(actor)
    with transaction.atomic():
        proposal = lock_proposal(proposal_id)
        _authorize(
            access,
            proposal,
            may_revise(access, proposal),
            "Only the submitter can revise a proposal.",
        )
        if proposal.status != Status.CHANGES_REQUESTED:
            raise InvalidTransition(
                f"Cannot revise a proposal that is {proposal.status}.",
                details={"status": proposal.status},
            )
        _refuse_if_timed_out(proposal)
        _check_bounds(payload)
        _check_schema(payload, _schema_of(proposal))
        now = timezone.now()
        diff = jsonpatch.make_patch(proposal.payload, payload).patch
        number = proposal.revision + 1
        Revision.objects.create(
            proposal=proposal,
            number=number,
            kind=RevisionKind.RESUBMITTED,
            payload=payload,
            payload_hash=payload_hash(payload),
            summary=summary,
            author=actor,
            patch=diff,
            reason=comment,
            created_at=now,
        )
        checkpoint = proposal.checkpoint
        due = policy.deadlines(
            start=now,
            priority=proposal.priority,
            timeout_seconds=_timeout_of(proposal),
            sla_seconds=checkpoint.sla_seconds,
            remind_after_seconds=checkpoint.remind_after_seconds,
        )
        # A new round: a fresh timeout and reminder. SLA and escalation keep running from
        # the original submission.
        changes: dict[str, Any] = {
            "payload": payload,
            "revision": number,
            "due_at": due.due_at,
            "remind_at": due.remind_at,
            "reminded_at": None,
        }
        if summary:
            changes["summary"] = summary
        transition(
            proposal, Action.REVISE, actor=actor, reason=comment, data={"patch": diff}, **changes
        )
    return proposal


def proposal_cancel(
    *, proposal_id: Any, actor: User, reason: str = "", access: Access | None = None
) -> Proposal:
    """Withdraw an open proposal: its submitter or a manager."""
    access = access or access_for(actor)
    with transaction.atomic():
        proposal = lock_proposal(proposal_id)
        _authorize(
            access,
            proposal,
            may_cancel(access, proposal),
            "Only the submitter or a manager can cancel.",
        )
        transition(
            proposal, Action.CANCEL, actor=actor, resolution=Resolution.CANCELLED, reason=reason
        )
    return proposal


def proposal_revoke(
    *, proposal_id: Any, actor: User, reason: str, access: Access | None = None
) -> Proposal:
    """Turn an approval into a rejection inside the checkpoint's revocation window: a manager,
    or a reviewer who approved it."""
    access = access or access_for(actor)
    if not reason.strip():
        raise Unprocessable("A reason is required to revoke.", details={"reason": "required"})
    with transaction.atomic():
        proposal = lock_proposal(proposal_id)
        own_votes = Vote.objects.filter(proposal=proposal, reviewer_id=access.user_id)
        _authorize(
            access,
            proposal,
            may_revoke(access, proposal, votes=own_votes),
            "Only a manager or an approver can revoke.",
        )
        if proposal.status == Status.APPROVED and not policy.revocable(
            decided_at=proposal.decided_at,
            window_seconds=proposal.checkpoint.revocation_window_seconds,
            now=timezone.now(),
        ):
            raise Conflict(
                "The revocation window has closed.",
                details={"window_seconds": proposal.checkpoint.revocation_window_seconds},
            )
        transition(
            proposal, Action.REVOKE, actor=actor, resolution=Resolution.REVOKED, reason=reason
        )
    return proposal


# --- claims --------------------------------------------------------------------------------


def proposal_claim(*, proposal_id: Any, actor: User, access: Access | None = None) -> Proposal:
    """Take (or extend) a soft lease on an open proposal so two reviewers don't both work it.
    A lease held by someone else and not yet expired is a 409."""
    access = access or access_for(actor)
    with transaction.atomic():
        proposal = lock_proposal(proposal_id)
        _authorize(
            access,
            proposal,
            access.may_review(proposal),
            "Only an eligible reviewer can claim this proposal.",
        )
        if not proposal.is_open:
            raise InvalidTransition(f"The proposal is {proposal.status}; nothing to claim.")
        now = timezone.now()
        if (
            proposal.claimed_by_id not in (None, actor.pk)
            and proposal.claimed_until is not None
            and proposal.claimed_until > now
        ):
            raise ClaimedByOther(
                "Another reviewer holds this proposal.",
                details={"claimed_until": proposal.claimed_until.isoformat()},
            )
        proposal.claimed_by = actor
        proposal.claimed_until = now + timedelta(seconds=settings.HITL_CLAIM_SECONDS)
        proposal.updated_at = now
        proposal._history_user = actor  # type: ignore[attr-defined]
        proposal.save(update_fields=["claimed_by", "claimed_until", "updated_at"])
        _record(
            proposal,
            "proposal.claimed",
            actor=actor,
            data={"claimed_until": proposal.claimed_until.isoformat()},
        )
    return proposal


def proposal_release(*, proposal_id: Any, actor: User, access: Access | None = None) -> Proposal:
    """Give up a lease: its holder or a manager. Releasing what is not held is a no-op."""
    access = access or access_for(actor)
    with transaction.atomic():
        proposal = lock_proposal(proposal_id)
        if not access.may_view(proposal):
            raise NotFound("Proposal not found.")
        if proposal.claimed_by_id is None:
            return proposal
        if proposal.claimed_by_id != actor.pk and not access.may_manage(proposal):
            raise PermissionDenied("Only the holder or a manager can release a claim.")
        proposal.claimed_by = None
        proposal.claimed_until = None
        proposal.updated_at = timezone.now()
        proposal._history_user = actor  # type: ignore[attr-defined]
        proposal.save(update_fields=["claimed_by", "claimed_until", "updated_at"])
        _record(proposal, "proposal.released", actor=actor, data={})
    return proposal


# --- timers (run by the sweeps in proposals.sweeps on rows they locked) --------------------
#
# Each timer is planned for a list of locked rows at once (`*_changes`): it re-checks its
# condition under the row lock and changes in memory only the rows it acts on. A sweep chunk
# then writes the changes set-based (write_changes); the services below (`proposal_expire`,
# …) apply a timer to one row the way every other change is written, and say whether it
# acted. Either way a sweep that runs twice, or two sweepers at once, change every proposal
# at most once.

Plan = Callable[[list[Proposal], Any], list[Change]]


def _apply_one(plan: Plan, proposal: Proposal, now: Any) -> bool:
    changes = plan([proposal], now)
    for change in changes:
        _write(change)
    return bool(changes)


def expire_changes(proposals: list[Proposal], now: Any) -> list[Change]:
    """Once `due_at` has passed, apply policy.timeout_outcome (resolution `timeout`): the
    checkpoint's timeout_action, but never an approval of content a reviewer asked to change
    or an option no reviewer chose."""
    due = [p for p in proposals if p.is_open and p.due_at is not None and p.due_at <= now]
    # Only an approving timeout of a pending round looks at the votes: no query at all for
    # the common case, which sweeps by the thousand, and one for a chunk of the others.
    ballots = _round_ballots(
        [
            p
            for p in due
            if p.checkpoint.timeout_action == TimeoutAction.APPROVE and p.status == Status.PENDING
        ]
    )
    decided_at = timezone.now()
    changes = []
    for proposal in due:
        result = policy.timeout_outcome(
            timeout_action=proposal.checkpoint.timeout_action,
            status=proposal.status,
            has_options=bool(proposal.options),
            ballots=ballots.get(proposal.pk, []),
        )
        approved = result.outcome == "approved"
        changes.append(
            _transitioned(
                proposal,
                Action.APPROVE if approved else Action.REJECT,
                actor=None,
                resolution=Resolution.TIMEOUT,
                reason=f"no decision within {_timeout_of(proposal)} s",
                data=None if approved else {"timeout": result.reason},
                now=decided_at,
                changes=_approval(proposal, result.option) if approved else {},
            )
        )
    return changes


def proposal_expire(proposal: Proposal, now: Any) -> bool:
    return _apply_one(expire_changes, proposal, now)


def _round_ballots(proposals: list[Proposal]) -> dict[Any, list[policy.Ballot]]:
    """{proposal id: its current revision's votes} for several proposals, in one query."""
    if not proposals:
        return {}
    rounds = Q()
    for proposal in proposals:
        rounds |= Q(proposal_id=proposal.pk, revision=proposal.revision)
    ballots: dict[Any, list[policy.Ballot]] = {}
    for proposal_id, decision, option in Vote.objects.filter(rounds).values_list(
        "proposal_id", "decision", "selected_option"
    ):
        ballots.setdefault(proposal_id, []).append(policy.Ballot(decision, option))
    return ballots


def _marked(
    proposal: Proposal,
    now: Any,
    verb: str,
    data: dict[str, Any],
    **values: Any,
) -> Change:
    """A timer's mark on an open proposal (no status change): `values` set, updated_at now."""
    for name, value in values.items():
        setattr(proposal, name, value)
    proposal.updated_at = now
    return Change(proposal, fields=[*values, "updated_at"], verb=verb, data=data, announce=data)


def remind_changes(proposals: list[Proposal], now: Any) -> list[Change]:
    """`proposal.reminder`, once per round, when remind_at has passed."""
    return [
        _marked(
            proposal,
            now,
            "proposal.reminder",
            {"due_at": proposal.due_at.isoformat() if proposal.due_at else None},
            reminded_at=now,
        )
        for proposal in proposals
        if proposal.is_open
        and proposal.reminded_at is None
        and proposal.remind_at is not None
        and proposal.remind_at <= now
    ]


def proposal_remind(proposal: Proposal, now: Any) -> bool:
    return _apply_one(remind_changes, proposal, now)


def escalate_changes(proposals: list[Proposal], now: Any) -> list[Change]:
    """From now on the checkpoint's escalation groups may review (permissions read
    `escalated_at`); `proposal.escalated`, once. The electorate is recounted with them (so a
    round that can no longer reach quorum is judged against everyone who may vote), once
    per checkpoint and submitter in a chunk; the number of approvals required stays what it
    was at submission."""
    counted: dict[tuple[int, int], int] = {}
    changes = []
    for proposal in proposals:
        if (
            not proposal.is_open
            or proposal.escalated_at is not None
            or proposal.escalate_at is None
            or proposal.escalate_at > now
        ):
            continue
        key = (proposal.checkpoint_id, proposal.submitted_by_id)
        if key not in counted:
            counted[key] = electorate(
                proposal.checkpoint, submitter_id=proposal.submitted_by_id, escalated=True
            ).count()
        eligible = counted[key]
        changes.append(
            _marked(
                proposal,
                now,
                "proposal.escalated",
                {"eligible_reviewers": eligible},
                eligible_reviewers=eligible,
                escalated_at=now,
            )
        )
    return changes


def proposal_escalate(proposal: Proposal, now: Any) -> bool:
    return _apply_one(escalate_changes, proposal, now)


def sla_breach_changes(proposals: list[Proposal], now: Any) -> list[Change]:
    """`proposal.sla_breached` for the managers, once, when sla_due_at passes while open."""
    return [
        _marked(
            proposal,
            now,
            "proposal.sla_breached",
            {"sla_due_at": proposal.sla_due_at.isoformat(), "priority": proposal.priority},
            sla_breached_at=now,
        )
        for proposal in proposals
        if proposal.is_open and proposal.sla_breached_at is None and proposal.sla_due_at <= now
    ]


def proposal_flag_sla_breach(proposal: Proposal, now: Any) -> bool:
    return _apply_one(sla_breach_changes, proposal, now)


def release_expired_claim_changes(proposals: list[Proposal], now: Any) -> list[Change]:
    return [
        _marked(
            proposal,
            now,
            "proposal.released",
            {"expired": True, "holder": proposal.claimed_by_id},
            claimed_by=None,
            claimed_until=None,
        )
        for proposal in proposals
        if proposal.claimed_until is not None and proposal.claimed_until <= now
    ]


def proposal_release_expired_claim(proposal: Proposal, now: Any) -> bool:
    return _apply_one(release_expired_claim_changes, proposal, now)


def dev_auto_approve_changes(
    proposals: list[Proposal], now: Any, after_seconds: int
) -> list[Change]:
    """Development mode: approve review items left `after_seconds`. Settings refuse this
    unless DEBUG is on; the resolution says so on every record."""
    decided_at = timezone.now()
    return [
        _transitioned(
            proposal,
            Action.APPROVE,
            actor=None,
            resolution=Resolution.DEV_AUTO_APPROVE,
            reason=f"development auto-approve after {after_seconds} s (not a human decision)",
            data={"development_auto_approve": True},
            now=decided_at,
            changes={},
        )
        for proposal in proposals
        if proposal.status == Status.PENDING
        and proposal.created_at <= now - timedelta(seconds=after_seconds)
    ]


def proposal_dev_auto_approve(proposal: Proposal, now: Any, after_seconds: int) -> bool:
    return _apply_one(
        lambda rows, now_: dev_auto_approve_changes(rows, now_, after_seconds), proposal, now
    )


# --- emergency bypass ---------------------------------------------------------------------


def _lock_checkpoint(checkpoint_id: int) -> Checkpoint:
    try:
        return Checkpoint.objects.select_for_update(no_key=True).get(pk=checkpoint_id)
    except Checkpoint.DoesNotExist:
        raise NotFound("Checkpoint not found.") from None


def checkpoint_bypass_start(
    *, checkpoint_id: int, actor: User | None, until: Any, reason: str
) -> Checkpoint:
    """Until `until`, new proposals are approved with resolution `bypass`. Audited, and
    announced as `checkpoint.bypassed`."""
    if not reason.strip():
        raise Unprocessable("A bypass needs a reason.", details={"reason": "required"})
    if until <= timezone.now():
        raise Unprocessable("A bypass must end in the future.", details={"until": "past"})
    with transaction.atomic():
        checkpoint = _lock_checkpoint(checkpoint_id)
        checkpoint.bypass_until = until
        checkpoint.bypass_reason = reason
        checkpoint._history_user = actor  # type: ignore[attr-defined]
        checkpoint.save(update_fields=["bypass_until", "bypass_reason", "updated_at"])
        data = {"active": True, "until": until.isoformat(), "checkpoint": checkpoint.slug}
        outbox_emit("checkpoint.bypassed", checkpoint=checkpoint, data=data)
        audit_record(
            verb="checkpoint.bypassed",
            actor=actor,
            checkpoint=checkpoint,
            data=data,
            reason=reason,
        )
    return checkpoint


def checkpoint_bypass_end(
    *,
    checkpoint_id: int,
    actor: User | None,
    reason: str = "",
    expired: bool = False,
    now: Any = None,
) -> bool:
    """End a bypass (by hand, or when it ran out: `expired`). False when none was recorded."""
    with transaction.atomic():
        checkpoint = _lock_checkpoint(checkpoint_id)
        if checkpoint.bypass_until is None:
            return False
        if expired and checkpoint.bypass_until > (now or timezone.now()):
            return False  # extended meanwhile
        ended = checkpoint.bypass_until
        checkpoint.bypass_until = None
        checkpoint.bypass_reason = ""
        checkpoint._history_user = actor  # type: ignore[attr-defined]
        checkpoint.save(update_fields=["bypass_until", "bypass_reason", "updated_at"])
        data = {
            "active": False,
            "expired": expired,
            "was_until": ended.isoformat(),
            "checkpoint": checkpoint.slug,
        }
        outbox_emit("checkpoint.bypassed", checkpoint=checkpoint, data=data)
        audit_record(
            verb="checkpoint.bypass_ended",
            actor=actor,
            checkpoint=checkpoint,
            data=data,
            reason=reason or ("expired" if expired else ""),
        )
    return True


# --- routing thresholds -------------------------------------------------------------------


def checkpoint_set_auto_approve_at(
    *, checkpoint_id: int, actor: User | None, value: float | None, reason: str = ""
) -> Checkpoint:
    """Set a checkpoint's `auto_approve_at` (None: off), e.g. from the dashboard's calibration
    suggestion. Validated like the admin form; audited as `checkpoint.threshold_changed` with
    the old and new values. The caller authorizes (managers of the checkpoint)."""
    if value is not None and not 0 <= value <= 1:
        raise Unprocessable("auto_approve_at must be between 0 and 1.", details={"value": value})
    with transaction.atomic():
        checkpoint = _lock_checkpoint(checkpoint_id)
        before = checkpoint.auto_approve_at
        try:
            policy.validate_checkpoint_policy(
                review_when=checkpoint.review_when,
                sla_seconds=checkpoint.sla_seconds,
                require_reason_on=checkpoint.require_reason_on,
                auto_approve_at=value,
                auto_reject_below=checkpoint.auto_reject_below,
            )
        except DjangoValidationError as exc:
            raise Unprocessable(" ".join(exc.messages), details={"value": value}) from None
        checkpoint.auto_approve_at = value
        checkpoint._history_user = actor  # type: ignore[attr-defined]
        checkpoint.save(update_fields=["auto_approve_at", "updated_at"])
        audit_record(
            verb="checkpoint.threshold_changed",
            actor=actor,
            checkpoint=checkpoint,
            data={"field": "auto_approve_at", "from": before, "to": value},
            reason=reason,
        )
    return checkpoint
