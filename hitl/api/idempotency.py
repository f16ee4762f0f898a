"""`Idempotency-Key` for POSTs that create things.

Same caller + same key + same body -> the first response again (header `Idempotent-Replayed`);
same key with another body -> 422; the same key while the first request is still running ->
409. The key's record is written in the same transaction as the work, so a failed request
leaves nothing behind and may be retried with the same key.

A bulk submit is the exception (`run_idempotent_steps`): one transaction around hundreds of
submits would hold the audit chain's lock from the first item to the last and stop every other
write for the whole batch. There each item commits on its own under a key derived from the
request's key and its index, the request's record is claimed first ("in progress") and
completed at the end: a replay returns the stored response, a retry after a crash resumes,
finding the items already created instead of creating them twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from django.db import IntegrityError, connection, transaction
from rest_framework.request import Request
from rest_framework.response import Response

from audit.services import canonical_json
from hitl.models import IdempotencyRecord
from proposals.errors import IdempotencyInFlight, IdempotencyMismatch, InvalidInput

IDEMPOTENCY_LOCK_CLASS = 7302
MAX_KEY_LENGTH = 200


def _lock_key(owner_id: int, key: str) -> int:
    digest = hashlib.sha256(f"{owner_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def _try_lock(owner_id: int, key: str) -> bool:
    """PostgreSQL: a transaction-scoped advisory lock per (caller, key); taken without waiting
    so a concurrent duplicate is told 409 at once. SQLite serializes writers already."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s)",
            [IDEMPOTENCY_LOCK_CLASS, _lock_key(owner_id, key)],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


@contextmanager
def _session_lock(owner_id: int, key: str) -> Iterator[bool]:
    """The same advisory lock as `_try_lock`, held by the connection across the transactions
    of a bulk request (session level), released at the end whatever happens. A crash ends the
    session, which releases it too."""
    if connection.vendor != "postgresql":
        yield True
        return
    args = [IDEMPOTENCY_LOCK_CLASS, _lock_key(owner_id, key)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", args)
        row = cursor.fetchone()
    acquired = bool(row and row[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", args)


IN_PROGRESS = 0  # response_status of a bulk request's record until its response is stored


def step_key(key: str, index: int) -> str:
    """The idempotency key of a bulk request's item `index`. It starts with U+001F, which no
    Idempotency-Key header may hold (printable only), so it never collides with a single
    submit's key; hashed so any header length fits the column."""
    return f"\x1fbulk:{hashlib.sha256(key.encode()).hexdigest()[:40]}:{index}"


def _key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not key or len(key) > MAX_KEY_LENGTH or not key.isprintable()):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            details={"Idempotency-Key": "invalid"},
        )
    return key


def _owner_and_hash(request: Request, scope: str) -> tuple[int, str]:
    """Only with a key: without one nothing is stored, so the body is never hashed."""
    owner_id = cast(int, request.user.pk)  # the views require authentication
    request_hash = hashlib.sha256(canonical_json([scope, request.data]).encode()).hexdigest()
    return owner_id, request_hash


def _replay(record: IdempotencyRecord, scope: str, request_hash: str) -> Response | None:
    if record.request_hash != request_hash or record.scope != scope:
        raise IdempotencyMismatch("This Idempotency-Key was used with a different request body.")
    if record.response_status == IN_PROGRESS:
        return None  # a bulk request that died midway: resume it
    return Response(
        record.response_body,
        status=record.response_status,
        headers={"Idempotent-Replayed": "true"},
    )


def run_idempotent_steps(
    request: Request,
    scope: str,
    count: int,
    step: Callable[[int, str | None], dict[str, Any]],
) -> Response:
    """Answer `{"results": [step(0, key0), ...]}` with 200. Each `step(index, item_key)` runs
    and commits on its own; with an Idempotency-Key, `item_key` is `step_key(key, index)` and
    the step must return the item it created under that key before, if any."""
    key = _key(request)
    if key is None:
        return Response({"results": [step(index, None) for index in range(count)]})
    owner_id, request_hash = _owner_and_hash(request, scope)
    with _session_lock(owner_id, key) as acquired:
        if not acquired:
            raise IdempotencyInFlight("A request with this Idempotency-Key is still in flight.")
        record = IdempotencyRecord.objects.filter(owner_id=owner_id, key=key).first()
        if record is not None:
            replayed = _replay(record, scope, request_hash)
            if replayed is not None:
                return replayed
        else:
            try:
                with transaction.atomic():
                    record = IdempotencyRecord.objects.create(
                        owner_id=owner_id,
                        key=key,
                        scope=scope,
                        request_hash=request_hash,
                        response_status=IN_PROGRESS,
                        response_body={},
                    )
            except IntegrityError:  # SQLite has no advisory lock: the twin request won
                raise IdempotencyInFlight(
                    "A request with this Idempotency-Key is still in flight."
                ) from None
        body = {"results": [step(index, step_key(key, index)) for index in range(count)]}
        IdempotencyRecord.objects.filter(pk=record.pk).update(
            response_status=200, response_body=body
        )
    return Response(body)


def run_idempotent_chunks(
    request: Request,
    scope: str,
    count: int,
    chunk_size: int,
    run: Callable[[list[int], list[str | None]], list[dict[str, Any]]],
) -> Response:
    """`run_idempotent_steps` a chunk of items at a time: `run(indexes, item_keys)` answers
    for each index, commits its chunk on its own (so a lock it takes is held for one chunk,
    never for the batch), and must return the items it created under those keys before."""
    done: dict[int, dict[str, Any]] = {}

    def step(index: int, item_key: str | None) -> dict[str, Any]:
        if index not in done:
            indexes = list(range(index, min(index + chunk_size, count)))
            keys = [None if item_key is None else step_key_of(item_key, i) for i in indexes]
            done.update(zip(indexes, run(indexes, keys), strict=True))
        return done.pop(index)

    return run_idempotent_steps(request, scope, count, step)


def step_key_of(first_key: str, index: int) -> str:
    """The key of item `index` of the request whose item keys include `first_key`."""
    return first_key.rsplit(":", 1)[0] + f":{index}"


def run_idempotent(
    request: Request, scope: str, work: Callable[[str | None], tuple[int, dict[str, Any]]]
) -> Response:
    key = _key(request)
    if key is None:
        code, body = work(None)
        return Response(body, status=code)
    owner_id, request_hash = _owner_and_hash(request, scope)
    with transaction.atomic():
        if not _try_lock(owner_id, key):
            raise IdempotencyInFlight("A request with this Idempotency-Key is still in flight.")
        record = IdempotencyRecord.objects.filter(owner_id=owner_id, key=key).first()
        if record is not None:
            replayed = _replay(record, scope, request_hash)
            if replayed is None:  # only bulk requests leave records in progress
                raise IdempotencyInFlight("A request with this Idempotency-Key is in flight.")
            return replayed
        code, body = work(key)
        IdempotencyRecord.objects.create(
            owner_id=owner_id,
            key=key,
            scope=scope,
            request_hash=request_hash,
            response_status=code,
            response_body=body,
        )
    return Response(body, status=code)
