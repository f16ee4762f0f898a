"""Writing to and checking the audit chain."""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import JSONField, Max, Model
from django.utils import timezone

from audit.canonical import jcs_bytes
from audit.models import AuditEvent

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    from proposals.models import Checkpoint, Proposal

GENESIS_HASH = "0" * 64
# pg_advisory_xact_lock(class, object) namespace for the chain; other locks use other classes.
AUDIT_LOCK_CLASS = 7301


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def jsonable(value: Any) -> Any:
    """What the JSONField will hand back after a round trip (Decimals, dates and UUIDs as
    strings), so the hash computed now matches the hash recomputed from the stored row."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


# How `hash` was computed, stored per row (AuditEvent.hash_version) so rows written by older
# code keep verifying under the rule they were written with. Rows are never re-hashed: the
# table is append-only, and re-hashing would bless whatever had been edited before.
HASH_V1_PYTHON_JSON = 1  # sha256 over Python's json.dumps text: jsonb rewrites some numbers
HASH_V2_JCS = 2  # sha256 over RFC 8785 (JCS): survives jsonb and SQLite round trips
HASH_V3_CHAINS = 3  # as 2, with the event's chain and position in it (audit chains below)
HASH_VERSION = HASH_V3_CHAINS

# jsonb hands integral floats from 1e16 up back as ints ("1e+16" -> 10000000000000000):
# below that Python writes them with ".0", which jsonb keeps.
_V1_JSONB_INT_FROM = 10**16


def _event_body(
    *,
    seq: int,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    verb: str,
    proposal_id: Any,
    checkpoint_id: int | None,
    revision: int | None,
    data: Any,
    reason: str,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "created_at": created_at.isoformat(),
        "actor_id": actor_id,
        "actor_label": actor_label,
        "verb": verb,
        "proposal_id": str(proposal_id) if proposal_id is not None else None,
        "checkpoint_id": checkpoint_id,
        "revision": revision,
        "data": data,
        "reason": reason,
    }


def event_hash(
    *,
    prev_hash: str,
    hash_version: int = HASH_VERSION,
    chain: int = 0,
    chain_seq: int | None = None,
    **fields: Any,
) -> str:
    """`chain` and `chain_seq` are hashed from version 3 on; rows from before chains are chain
    0 at position seq, and their hash stays what it was."""
    body = _event_body(**fields)
    if hash_version == HASH_V1_PYTHON_JSON:
        text = canonical_json(body).encode()
    elif hash_version in (HASH_V2_JCS, HASH_V3_CHAINS):
        # The version is hashed too: relabelling a row as v1 cannot dodge the v2 check.
        body["hash_version"] = hash_version
        if hash_version == HASH_V3_CHAINS:
            # Moving a row to another chain or position breaks its hash, not only a link.
            body["chain"] = chain
            body["chain_seq"] = chain_seq
        text = jcs_bytes(body)
    else:
        raise ValueError(f"unknown audit hash version {hash_version}")
    return hashlib.sha256(text + prev_hash.encode()).hexdigest()


def _fields_of(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "created_at": event.created_at,
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "verb": event.verb,
        "proposal_id": event.proposal_id,
        "checkpoint_id": event.checkpoint_id,
        "revision": event.revision,
        "data": event.data,
        "reason": event.reason,
        "prev_hash": event.prev_hash,
        "chain": event.chain,
        "chain_seq": event.chain_seq,
    }


def _big_ints(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return 1 if abs(value) >= _V1_JSONB_INT_FROM else 0
    if isinstance(value, dict):
        return sum(_big_ints(item) for item in value.values())
    if isinstance(value, list):
        return sum(_big_ints(item) for item in value)
    return 0


def _with_floats(value: Any, mask: int, counter: list[int]) -> Any:
    """`value` with the big ints whose position (in walk order) is set in `mask` as floats."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _V1_JSONB_INT_FROM:
        position = counter[0]
        counter[0] += 1
        if mask >> position & 1:
            try:
                return float(value)
            except OverflowError:
                return value
        return value
    if isinstance(value, dict):
        return {key: _with_floats(item, mask, counter) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_floats(item, mask, counter) for item in value]
    return value


# Version-1 rows with more big numbers than this are checked as read and all as floats only.
_V1_MAX_SPELLINGS = 10


def _hash_matches(event: AuditEvent) -> bool:
    fields = _fields_of(event)
    if event.hash_version != HASH_V1_PYTHON_JSON:
        return event_hash(hash_version=event.hash_version, **fields) == event.hash
    # A v1 row written as 1e+16 reads back from jsonb as 10000000000000000: the text it was
    # hashed over is gone, so also accept each big int spelled as the float that may have been
    # written. Only the int/float spelling is forgiven; any change of value still fails.
    count = _big_ints(event.data)
    masks = range(2**count) if count <= _V1_MAX_SPELLINGS else (0, 2**count - 1)
    for mask in masks:
        fields["data"] = _with_floats(event.data, mask, [0])
        if event_hash(hash_version=HASH_V1_PYTHON_JSON, **fields) == event.hash:
            return True
    return False


# --- chains --------------------------------------------------------------------------------
#
# One chain would make every audited write in the system queue behind one lock. There are
# HITL_AUDIT_CHAINS of them instead, each with its own advisory lock, positions (chain_seq) and
# links (prev_hash). A transaction appends to one chain only: the one its first event picks
# (a stable hash of the proposal id; chain 0 for events without a proposal), and every later
# event of that transaction joins it. So a transaction holds at most one chain lock, taken
# after every row lock it needs, exactly as with the single chain before: appenders cannot
# deadlock, and two transactions wait for each other only when they picked the same chain.
# (The one exception, anchors, take chain 0 last; nothing that holds chain 0 waits for another.)
#
# Chain 0 also carries anchors (audit_anchor): an event naming every other chain's head, so
# rows cut from the end of a chain, which its own links cannot show, are caught by
# audit_verify against the last anchor.

DEFAULT_CHAINS = 16
ANCHOR_VERB = "audit.anchored"
GLOBAL_SEQUENCE = "audit_auditevent_global_seq"  # migration 0004


def chain_count() -> int:
    """HITL_AUDIT_CHAINS, from the settings or else the environment. Lowering it is safe:
    chains above it stop growing and are still walked and anchored."""
    configured = getattr(settings, "HITL_AUDIT_CHAINS", None)
    if configured is None:
        configured = os.environ.get("HITL_AUDIT_CHAINS") or DEFAULT_CHAINS
    return max(1, int(configured))


def chain_of(proposal_id: Any) -> int:
    """Stable across processes and restarts (crc32, not Python's salted hash())."""
    if proposal_id is None:
        return 0
    return zlib.crc32(str(proposal_id).encode()) % chain_count()


def _lock_chain(chain: int) -> None:
    """Serialize appends to one chain, to the end of the transaction. SQLite already
    serializes writers."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_SQL, [AUDIT_LOCK_CLASS, chain])
    _hold(chain)


_LOCK_SQL = "SELECT pg_advisory_xact_lock(%s, %s)"
_HEAD_SQL = (
    "SELECT nextval(%s), head.chain_seq, head.hash"
    " FROM (SELECT 1) AS one LEFT JOIN LATERAL ("
    "  SELECT chain_seq, hash FROM audit_auditevent WHERE chain = %s"
    "  ORDER BY chain_seq DESC LIMIT 1) AS head ON true"
)
_LOCK_THEN_HEAD_SQL = f"{_LOCK_SQL}; {_HEAD_SQL}"


class _ChainHold:
    """Marks, in the transaction's on-commit list, that it holds a chain lock. Django drops
    the entry when the transaction ends and when the savepoint it was added in rolls back;
    PostgreSQL releases the advisory lock in exactly the same cases, so "the entry is still
    there" means "the lock is still held" (a roundtrip to pg_locks would say the same)."""

    __slots__ = ("chain",)

    def __init__(self, chain: int) -> None:
        self.chain = chain

    def __call__(self) -> None:  # run on commit: nothing to do
        pass


def _held_chain() -> int | None:
    hold = getattr(connection, "_audit_chain_hold", None)
    if hold is None:
        return None
    for entry in connection.run_on_commit:
        if entry[1] is hold:
            return cast(int, hold.chain)
    return None


def _hold(chain: int) -> None:
    """Note that the transaction holds `chain`'s lock, just taken, unless it held one already
    (an anchor's chain 0 is locked on top of the transaction's own chain)."""
    if _held_chain() is None:
        hold = _ChainHold(chain)
        transaction.on_commit(hold)
        connection._audit_chain_hold = hold  # type: ignore[attr-defined]


def _enter_chain(wanted: int, *, force: bool, lock: bool = True) -> tuple[int, bool]:
    """The chain this transaction appends to, and whether it is still to be locked: it is on
    first use, and with `force` (anchors: always chain 0, even if the transaction holds
    another). With `lock` that is done here; without, the caller locks it with its head read
    (_next_position(..., lock=True)), one round trip instead of two."""
    held = _held_chain()
    if held is not None and (held == wanted or not force):
        return held, False
    if lock:
        _lock_chain(wanted)
        return wanted, False
    return wanted, True


def _next_position(chain: int, *, lock: bool = False) -> tuple[int, int, str]:
    """(seq, chain_seq, prev_hash) for the next event of `chain`; its lock is held, or with
    `lock` taken first. The head is read by a statement of its own after the lock statement:
    a statement's snapshot is taken when it starts, so a head read in the locking statement
    could miss the previous holder's row. With `lock` both statements go in one round trip
    (psycopg's client-side binding sends them as one simple query; under READ COMMITTED each
    statement of it still takes its own snapshot, after the one before has finished)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                _LOCK_THEN_HEAD_SQL if lock else _HEAD_SQL,
                ([AUDIT_LOCK_CLASS, chain] if lock else []) + [GLOBAL_SEQUENCE, chain],
            )
            if lock:
                cursor.nextset()  # past the lock's result, to the head's
            seq, last_position, last_hash = cursor.fetchone()
    else:
        head = (
            AuditEvent.objects.filter(chain=chain)
            .order_by("-chain_seq")
            .values_list("chain_seq", "hash")
            .first()
        )
        last_position, last_hash = head if head else (None, None)
        seq = (AuditEvent.objects.aggregate(top=Max("seq"))["top"] or 0) + 1
    if lock:
        _hold(chain)
    if last_position is None:
        return int(seq), 1, GENESIS_HASH
    return int(seq), int(last_position) + 1, str(last_hash)


def audit_record(
    *,
    verb: str,
    actor: User | AnonymousUser | None,
    proposal: Proposal | None = None,
    checkpoint: Checkpoint | None = None,
    revision: int | None = None,
    data: dict[str, Any] | None = None,
    reason: str = "",
    chain: int | None = None,
    lead: Lead | None = None,
) -> AuditEvent:
    """Append one event. Precondition: inside the transaction that makes the change it records.
    `chain` is for anchors only; every other event goes where its transaction appends. `lead`
    is a statement to run first (on PostgreSQL in the same round trip). Inside
    audit_round_trip() the append is sent at the block's end (its positions and hash are set
    then)."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction it records.")
    forced = chain is not None
    wanted = chain if chain is not None else chain_of(proposal.pk if proposal is not None else None)
    authenticated = actor is not None and actor.is_authenticated
    actor_user = cast("User | None", actor if authenticated else None)
    if checkpoint is None and proposal is not None:
        checkpoint = proposal.checkpoint
    event = AuditEvent(
        actor=actor_user,
        actor_label=actor_user.get_username() if actor_user is not None else "system",
        verb=verb,
        proposal=proposal,
        checkpoint=checkpoint,
        revision=revision,
        data=jsonable(data or {}),
        reason=reason,
        hash_version=HASH_VERSION,
    )
    pending: _RoundTrip | None = getattr(connection, "_audit_round_trip", None)
    if pending is not None:
        if forced:
            raise RuntimeError("audit_round_trip: anchors are appended on their own.")
        return pending.add(event, wanted, lead)
    # Built before the chain is entered, so nothing that can fail (an unserializable `data`)
    # comes between entering it and locking it. The time is the application's clock, as for
    # every other timestamp; a first append reads it just before the round trip that locks,
    # so along a chain created_at can precede its predecessor's by as long as the lock was
    # waited for (seq and chain_seq are the order).
    event.chain, unlocked = _enter_chain(wanted, force=forced, lock=False)
    batch: _Batch | None = getattr(connection, "_audit_batch", None)
    if lead is not None and (batch is not None or connection.vendor != "postgresql"):
        lead.run_alone()
        lead = None
    if batch is not None:
        if unlocked:
            _lock_chain(event.chain)
            unlocked = False
        if event.chain == _held_chain():  # not a forced anchor: batch it
            event.created_at = timezone.now()
            return batch.add(event)
    if connection.vendor == "postgresql":
        _insert_linked([(event, lead)], lock=unlocked)
        return event
    event.seq, event.chain_seq, event.prev_hash = _next_position(event.chain, lock=unlocked)
    event.created_at = timezone.now()
    event.hash = event_hash(hash_version=HASH_VERSION, **_fields_of(event))
    event.save(force_insert=True)
    return event


class _RoundTrip:
    """The appends of an audit_round_trip() block, with their leads, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[AuditEvent, Lead | None]] = []
        self.chain: int | None = None
        self.lock = False

    def add(self, event: AuditEvent, wanted: int, lead: Lead | None) -> AuditEvent:
        if self.chain is None:
            self.chain, self.lock = _enter_chain(wanted, force=False, lock=False)
        event.chain = self.chain
        self.entries.append((event, lead))
        return event


def _refuse_inside_round_trip(execute: Any, sql: str, *args: Any) -> Any:
    raise RuntimeError(
        "A statement inside audit_round_trip() would run before the writes queued there: "
        f"{sql[:80]!r}"
    )


@contextmanager
def audit_round_trip(*, final: bool = False) -> Iterator[None]:
    """On PostgreSQL, send every append recorded in this block, each after its lead, in one
    round trip at its end (the chain's lock with the first): a policy-approved submit's rows
    and event, then its decision's, together. What is written inside is built from memory;
    a statement run inside the block is refused (it would run before the queued writes), and
    a later lead may only write rows this transaction holds (created or locked), since it
    runs with the chain's lock held. With `final` the block is the transaction's last write
    and nothing after it in the atomic block can raise: in Django's outermost block its
    COMMIT goes in the same round trip. Elsewhere (SQLite, inside audit_batch) appends run
    as they are recorded."""
    if (
        connection.vendor != "postgresql"
        or getattr(connection, "_audit_batch", None) is not None
        or getattr(connection, "_audit_round_trip", None) is not None
    ):
        yield
        return
    if not connection.in_atomic_block:
        raise RuntimeError("audit_round_trip must run inside the transaction it records.")
    pending = _RoundTrip()
    connection._audit_round_trip = pending  # type: ignore[attr-defined]
    try:
        with connection.execute_wrapper(_refuse_inside_round_trip):
            yield
    finally:
        connection._audit_round_trip = None  # type: ignore[attr-defined]
    if pending.entries:
        commit = final and _may_commit_with_append()
        _insert_linked(pending.entries, lock=pending.lock, commit=commit)


# One event appended in one statement (and, when the chain is still to be locked, one round
# trip with the lock): the INSERT itself reads the head, takes the position and the order
# number, and computes the hash. Python hands it the event's canonical text cut where the two
# values only the database knows go (_hash_text_parts); sha256 over those bytes and the
# previous hash is exactly event_hash(), and is checked against it on return. The head is read
# by a statement after the lock's, as in _next_position.
# Every parameter is cast to its column's type: the statement can then be prepared once per
# connection (config/postgresql), where a bare parameter in a SELECT list has no type.
_INSERT_LINKED_SQL = (
    "WITH head AS ("
    "  SELECT chain_seq, hash FROM audit_auditevent WHERE chain = %s::smallint"
    "  ORDER BY chain_seq DESC LIMIT 1),"
    " pos AS (SELECT nextval(%s::regclass) AS seq,"
    "  coalesce((SELECT chain_seq FROM head), 0) + 1 AS chain_seq,"
    "  coalesce((SELECT hash FROM head), %s::varchar) AS prev_hash)"
    " INSERT INTO audit_auditevent (seq, chain, chain_seq, created_at, actor_id, actor_label,"
    "  verb, proposal_id, checkpoint_id, revision, data, reason, prev_hash, hash, hash_version)"
    " SELECT pos.seq, %s::smallint, pos.chain_seq, %s::timestamptz, %s::integer, %s::varchar,"
    "  %s::varchar, %s::uuid, %s::bigint, %s::integer, %s::jsonb, %s::text,"
    "  pos.prev_hash, encode(sha256(convert_to(%s::text || pos.chain_seq::text || %s::text"
    "  || pos.seq::text || %s::text || pos.prev_hash, 'UTF8')), 'hex'), %s::smallint"
    " FROM pos RETURNING id, seq, chain_seq, prev_hash, hash"
)


@dataclass(frozen=True)
class Lead:
    """A statement of the caller's to send ahead of an event's append, in the same round trip
    (PostgreSQL; elsewhere it runs on its own first): the INSERT of the rows the event
    records, say. `on_result` gets the cursor on the statement's result."""

    sql: str
    params: Sequence[Any]
    on_result: Callable[[Any], None]

    def run_alone(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, self.params)
            self.on_result(cursor)


def _hash_text_parts(event: AuditEvent) -> tuple[str, str, str]:
    """The event's hashed text (event_hash, version 3) in three pieces, to be joined with its
    chain_seq and seq between them. JCS sorts the keys: the first `"chain_seq":` is the body's
    own (only an int, a string and an int come before it), and so is the last `"seq":` (only
    the verb, a string, follows it); an unescaped quote cannot occur inside a string."""
    body = _event_body(
        seq=0,
        created_at=event.created_at,
        actor_id=event.actor_id,
        actor_label=event.actor_label,
        verb=event.verb,
        proposal_id=event.proposal_id,
        checkpoint_id=event.checkpoint_id,
        revision=event.revision,
        data=event.data,
        reason=event.reason,
    )
    body.update(hash_version=HASH_V3_CHAINS, chain=event.chain, chain_seq=0)
    text = jcs_bytes(body).decode()
    at = text.index('"chain_seq":0,') + len('"chain_seq":')
    part0, rest = text[:at], text[at + 1 :]
    at = rest.rindex('"seq":0,') + len('"seq":')
    return part0, rest[:at], rest[at + 1 :]


# Text whose sha256 the server must compute exactly as Python does before an append may go
# out with its transaction's COMMIT: every kind of character an event's text can hold.
_HASH_PROBE = 'a"\\\u00e9\u20ac\u2028\U0001f600\x01 \t'


def _may_commit_with_append() -> bool:
    """Whether an append may carry its transaction's COMMIT (config/postgresql's backend says
    when the block allows it). Then the hash the database computed is checked only after the
    commit; so first, once per connection, the server must show that it hashes text exactly
    as event_hash() does (a database in another encoding would not), or appends on that
    connection are checked before they commit, as always."""
    allowed = getattr(connection, "commit_may_go_with_statement", None)
    if allowed is None or not allowed():
        return False
    raw = connection.connection
    verdict: bool | None = getattr(raw, "_nihil_hashes_as_python", None)
    if verdict is None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('server_encoding'),"
                " encode(sha256(convert_to(%s, 'UTF8')), 'hex')",
                [_HASH_PROBE],
            )
            encoding, digest = cursor.fetchone()
        expected = hashlib.sha256(_HASH_PROBE.encode()).hexdigest()
        verdict = encoding == "UTF8" and digest == expected
        raw._nihil_hashes_as_python = verdict
    return verdict


def _prepared(sql: str, count: int) -> str:
    """`sql`, or on config/postgresql's backend the EXECUTE of the statement prepared from it
    on this connection (parsed and planned once, not at every append)."""
    prepare = getattr(connection, "prepared", None)
    return sql if prepare is None else cast(str, prepare(sql, count))


def _insert_linked(
    entries: Sequence[tuple[AuditEvent, Lead | None]], *, lock: bool, commit: bool = False
) -> None:
    """Append each event (its chain set, the chain's lock held or, with `lock`, taken here
    before the first), each after its lead, in one round trip; PostgreSQL only. Statements
    sent together still run one after the other, each with its own snapshot: the head is read
    after the lock is granted, and each event's after the one before it. With `commit`
    (_may_commit_with_append) the transaction's COMMIT goes last in that round trip."""
    assert HASH_VERSION == HASH_V3_CHAINS  # what _hash_text_parts cuts
    sql: list[str] = []
    params: list[Any] = []
    for n, (event, lead) in enumerate(entries):
        event.created_at = timezone.now()
        text0, text1, text2 = _hash_text_parts(event)
        if lead is not None:
            sql.append(_prepared(lead.sql, len(lead.params)))
            params += lead.params
        if lock and n == 0:
            sql.append(_LOCK_SQL)
            params += [AUDIT_LOCK_CLASS, event.chain]
        appended = [
            event.chain,
            GLOBAL_SEQUENCE,
            GENESIS_HASH,
            event.chain,
            event.created_at,
            event.actor_id,
            event.actor_label,
            event.verb,
            event.proposal_id,
            event.checkpoint_id,
            event.revision,
            json.dumps(event.data),
            event.reason,
            text0,
            text1,
            text2,
            HASH_VERSION,
        ]
        sql.append(_prepared(_INSERT_LINKED_SQL, len(appended)))
        params += appended
    if commit:
        sql.append("COMMIT")
    rows = []
    with connection.cursor() as cursor:
        cursor.execute("; ".join(sql), params)
        for n, (_event, lead) in enumerate(entries):
            if n:
                cursor.nextset()  # past the previous event's insert
            if lead is not None:
                lead.on_result(cursor)
                cursor.nextset()
            if lock and n == 0:
                cursor.nextset()  # past the lock's result, to the insert's
            rows.append(cursor.fetchone())
    if commit:
        connection.committed_by_statement()  # type: ignore[attr-defined]  # config/postgresql
    if lock:
        _hold(entries[0][0].chain)
    for (event, _lead), row in zip(entries, rows, strict=True):
        event.pk, event.seq, event.chain_seq, event.prev_hash, event.hash = row
        event._state.adding = False
        event._state.db = connection.alias
        # The database's hash is the one event_hash() gives, or nothing is appended: a
        # mismatch (a server that encodes text differently, say) fails the transaction, never
        # the chain. After a commit (which a server that hashes as Python does allows) it can
        # only be said.
        if event_hash(hash_version=HASH_VERSION, **_fields_of(event)) != event.hash:
            raise RuntimeError(
                f"audit: the database hashed event seq {event.seq} differently"
                + (" (committed: audit_verify will report it)" if commit else "")
            )


class _Batch:
    """Events of an audit_batch() block, inserted at its end. Each is paired with an entry in
    the transaction's on-commit list (as _ChainHold): if the savepoint it was recorded in
    rolls back, Django drops the entry, and the event is dropped with the change it recorded."""

    def __init__(self) -> None:
        self.events: list[tuple[AuditEvent, _ChainHold]] = []

    def add(self, event: AuditEvent) -> AuditEvent:
        mark = _ChainHold(event.chain)
        transaction.on_commit(mark)
        self.events.append((event, mark))
        return event

    def flush(self) -> None:
        alive = {id(entry[1]) for entry in connection.run_on_commit}
        events = [event for event, mark in self.events if id(mark) in alive]
        self.events = []
        if not events:
            return
        # Every surviving event was recorded while its chain's lock was held, and a lock only
        # goes with a rolled-back savepoint that drops the events recorded under it: so they
        # share the chain still held. Checked, never assumed: nothing is appended unlocked.
        chain = events[0].chain
        if {event.chain for event in events} != {chain} or _held_chain() != chain:
            raise RuntimeError("audit batch: events outside the chain this transaction holds")
        seq, position, prev_hash = _next_position(chain)
        seqs = [seq, *_more_seqs(len(events) - 1)]
        rows = []
        for event, seq_ in zip(events, seqs, strict=True):
            event.seq, event.chain_seq, event.prev_hash = seq_, position, prev_hash
            fields = _fields_of(event)
            event.hash = prev_hash = event_hash(hash_version=HASH_VERSION, **fields)
            rows.append({**fields, "hash": event.hash, "hash_version": event.hash_version})
            position += 1
        if connection.vendor == "postgresql":
            # COPY, as audit_append_rows: a multi-row INSERT costs Django a compile step and
            # psycopg a quoted literal per field and row, more than the hashing itself.
            _copy_rows(rows)
        else:
            AuditEvent.objects.bulk_create(events)


def _more_seqs(n: int) -> list[int]:
    """Append-order numbers after the one _next_position just took (chain lock held, so they
    still increase along the chain)."""
    if n <= 0:
        return []
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval(%s) FROM generate_series(1, %s)", [GLOBAL_SEQUENCE, n])
            return sorted(int(row[0]) for row in cursor.fetchall())
    top = AuditEvent.objects.aggregate(top=Max("seq"))["top"] or 0
    return list(range(top + 2, top + 2 + n))  # SQLite: writers are serialized


@contextmanager
def audit_batch() -> Iterator[None]:
    """Defer the audit appends of this block to its end: one head read and one COPY (an
    INSERT off PostgreSQL) for all of them instead of two statements each (a sweep chunk).
    Events are hashed, chained and positioned exactly as one by one. The block is a savepoint
    of its own, so a failure in it never leaves its changes without their events. Events
    recorded inside come back unsaved; at the block's end they get their positions and hash,
    but no pk on PostgreSQL (COPY returns none)."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_batch must run inside the transaction it records.")
    outer = getattr(connection, "_audit_batch", None)
    if outer is not None:  # already batching: one flush, at the outer end
        yield
        return
    batch = _Batch()
    try:
        with transaction.atomic():
            connection._audit_batch = batch  # type: ignore[attr-defined]
            try:
                yield
            finally:
                connection._audit_batch = None  # type: ignore[attr-defined]
            batch.flush()
    finally:
        connection._audit_batch = None  # type: ignore[attr-defined]


def chain_heads() -> dict[int, tuple[int, str]]:
    """{chain: (chain_seq, hash)} of every chain but 0 that has events: one index lookup each."""
    last = AuditEvent.objects.aggregate(top=Max("chain"))["top"] or 0
    heads: dict[int, tuple[int, str]] = {}
    for chain in range(1, max(chain_count() - 1, last) + 1):
        head = (
            AuditEvent.objects.filter(chain=chain)
            .order_by("-chain_seq")
            .values_list("chain_seq", "hash")
            .first()
        )
        if head is not None:
            heads[chain] = (int(head[0]), str(head[1]))
    return heads


def _anchored_heads(event: AuditEvent) -> dict[int, tuple[int, str]]:
    heads = event.data.get("heads") if isinstance(event.data, dict) else None
    out: dict[int, tuple[int, str]] = {}
    for head in heads if isinstance(heads, list) else []:
        try:
            out[int(head["chain"])] = (int(head["chain_seq"]), str(head["hash"]))
        except (KeyError, TypeError, ValueError):
            continue  # an edited anchor: its own hash check reports it
    return out


def audit_anchor() -> AuditEvent | None:
    """Write every other chain's head into chain 0, unless nothing moved since the last
    anchor. Run periodically (each sweep): a chain cut below its last anchored position is
    caught; only what was appended since the last anchor could go unnoticed, as the end of
    a single chain always could."""
    with transaction.atomic():
        _enter_chain(0, force=True)  # one anchorer at a time; heads read after the lock
        heads = chain_heads()
        last = AuditEvent.objects.filter(chain=0, verb=ANCHOR_VERB).order_by("-chain_seq").first()
        if not heads or (last is not None and _anchored_heads(last) == heads):
            return None
        listed = [
            {"chain": chain, "chain_seq": position, "hash": hash_}
            for chain, (position, hash_) in sorted(heads.items())
        ]
        return audit_record(verb=ANCHOR_VERB, actor=None, data={"heads": listed}, chain=0)


@dataclass(frozen=True)
class BrokenLink:
    """`seq` and `event_id` name the row (for a chain cut at its end: the anchor that shows
    it); `chain` and `position` where in which chain the break is."""

    seq: int
    event_id: int
    problem: str
    chain: int = 0
    position: int = 0


class ChainWalk:
    """One pass over every chain in position order, in chunks (constant memory whatever their
    length: what is kept is one anchored head per chain). Chain 0 goes first, so its anchors
    are known before the chains they name are walked (and, walked later, those chains hold at
    least what the anchors saw). Iterating yields every problem, not just the first: a false
    alarm must not hide real breaks after it. `checked` counts the events seen so far."""

    def __init__(self, chunk_size: int = 2000) -> None:
        self.chunk_size = chunk_size
        self.checked = 0
        self.broken = 0

    def __iter__(self) -> Generator[BrokenLink, None, None]:
        # Highest anchored (chain_seq, hash) per chain, and the anchor that named it.
        anchors: dict[int, tuple[int, str, AuditEvent]] = {}
        with transaction.atomic():
            last = AuditEvent.objects.aggregate(top=Max("chain"))["top"] or 0
            for chain in range(0, max(chain_count() - 1, last) + 1):
                yield from self._walk(chain, anchors)

    def _walk(
        self, chain: int, anchors: dict[int, tuple[int, str, AuditEvent]]
    ) -> Generator[BrokenLink, None, None]:
        expected = 1
        prev_hash = GENESIS_HASH
        anchored = anchors.get(chain)
        # One statement, one snapshot (a server-side cursor on PostgreSQL): appends during
        # the walk are not half-seen.
        events = cast(
            "Generator[AuditEvent, None, None]",  # what QuerySet.iterator() really returns
            AuditEvent.objects.filter(chain=chain)
            .order_by("chain_seq")
            .iterator(chunk_size=self.chunk_size),
        )
        # closing(): a walk abandoned early closes its cursor before its transaction ends.
        with closing(events):
            for event in events:
                self.checked += 1
                problems = []
                if event.chain_seq != expected:
                    problems.append(f"expected position {expected} (row missing)")
                if event.prev_hash != prev_hash:
                    problems.append("prev_hash does not match the previous event")
                if not _hash_matches(event):
                    problems.append("content does not match its hash (edited)")
                if (
                    anchored is not None
                    and event.chain_seq == anchored[0]
                    and event.hash != anchored[1]
                ):
                    problems.append(
                        f"hash differs from the one anchored at chain 0 position "
                        f"{anchored[2].chain_seq}"
                    )
                if chain == 0 and event.verb == ANCHOR_VERB:
                    for other, (position, hash_) in _anchored_heads(event).items():
                        if other in anchors and position < anchors[other][0]:
                            problems.append(
                                f"anchors chain {other} at position {position}, behind "
                                f"{anchors[other][0]} anchored before"
                            )
                        else:
                            anchors[other] = (position, hash_, event)
                for problem in problems:
                    self.broken += 1
                    yield BrokenLink(event.seq, event.pk, problem, chain, event.chain_seq)
                expected = event.chain_seq + 1
                prev_hash = event.hash
        if anchored is not None and expected <= anchored[0]:
            anchor = anchored[2]
            self.broken += 1
            yield BrokenLink(
                anchor.seq,
                anchor.pk,
                f"chain {chain} ends at position {expected - 1}, but the anchor at chain 0 "
                f"position {anchor.chain_seq} names position {anchored[0]} (rows cut from its "
                "end)",
                chain,
                expected,
            )


def audit_verify() -> tuple[int, BrokenLink | None]:
    """Return (events checked, first broken link or None); with a break, the count is of the
    events checked before it. `manage.py audit_verify` reports every break."""
    walk = ChainWalk()
    with closing(iter(walk)) as problems:
        for problem in problems:
            return walk.checked - 1, problem
    return walk.checked, None


def event_as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "chain": event.chain,
        "chain_seq": event.chain_seq,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_label,
        "actor_id": event.actor_id,
        "verb": event.verb,
        "proposal_id": str(event.proposal_id) if event.proposal_id else None,
        "checkpoint_id": event.checkpoint_id,
        "revision": event.revision,
        "data": event.data,
        "reason": event.reason,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "hash_version": event.hash_version,
    }


def audit_append_rows(rows: list[dict[str, Any]]) -> None:
    """Append events given as column dicts, in this order, as audit_record would one by one,
    set-based: the chain the transaction appends to (the first row's proposal picks it, as
    audit_record does; locked until the transaction ends), one head read, one batch of order
    numbers, one COPY on PostgreSQL (bulk_create elsewhere). Each event is positioned, linked
    and hashed exactly as if recorded alone, so `audit_verify` checks each on its own. For
    writers that build events by the hundred thousand (seed_demo --proposals), where a model
    instance and an INSERT parameter per field cost more than the hashing. Each row holds
    created_at, actor_id, actor_label, verb, proposal_id, checkpoint_id, revision, reason and
    `data` as the database will hand it back (`jsonable`); the rest is filled in here."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_append_rows must run inside the transaction it records.")
    if not rows:
        return
    chain, unlocked = _enter_chain(chain_of(rows[0]["proposal_id"]), force=False, lock=False)
    seq, position, prev_hash = _next_position(chain, lock=unlocked)
    seqs = [seq, *_more_seqs(len(rows) - 1)]
    for row, seq_ in zip(rows, seqs, strict=True):
        row.update(seq=seq_, chain=chain, chain_seq=position, prev_hash=prev_hash)
        row["hash"] = prev_hash = event_hash(
            hash_version=HASH_VERSION,
            **{name: row[name] for name in _APPENDED_FIELDS},
        )
        row["hash_version"] = HASH_VERSION
        position += 1
    if connection.vendor != "postgresql":
        AuditEvent.objects.bulk_create([AuditEvent(**row) for row in rows])
        return
    _copy_rows(rows)


def _copy_rows(rows: list[dict[str, Any]]) -> None:
    """Complete events (every _APPENDED_FIELDS, hash and hash_version), in one COPY."""
    columns = [*_APPENDED_FIELDS, "hash", "hash_version"]
    copy_rows(AuditEvent, columns, ([row[name] for name in columns] for row in rows))


def copy_rows(model: type[Model], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows of `model` (values in the order of `columns`, attnames; JSON fields as Python
    values, encoded here) in one COPY: a multi-row INSERT costs Django a compile step and
    psycopg a quoted literal per field and row. PostgreSQL only."""
    field_of = {field.attname: field for field in model._meta.concrete_fields}
    names = ", ".join(connection.ops.quote_name(field_of[name].column) for name in columns)
    encoded = [n for n, name in enumerate(columns) if isinstance(field_of[name], JSONField)]
    table = connection.ops.quote_name(model._meta.db_table)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
    ):
        for row in rows:
            if encoded:
                row = list(row)
                for n in encoded:
                    row[n] = json.dumps(row[n])
            copy.write_row(row)


# What event_hash reads of an appended row (besides the hash version).
_APPENDED_FIELDS = (
    "seq",
    "created_at",
    "actor_id",
    "actor_label",
    "verb",
    "proposal_id",
    "checkpoint_id",
    "revision",
    "data",
    "reason",
    "prev_hash",
    "chain",
    "chain_seq",
)
