"""`Idempotency-Key` for POSTs that create things.

Same caller + same key + same body -> the first response again (header `Idempotent-Replayed`);
same key with another body -> 422; the same key while the first request is still running ->
409. The key's record is written in the same transaction as the work, so a failed request
leaves nothing behind and may be retried with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, cast

from django.db import connection, transaction
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


def run_idempotent(
    request: Request, scope: str, work: Callable[[str | None], tuple[int, dict[str, Any]]]
) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        code, body = work(None)
        return Response(body, status=code)
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            details={"Idempotency-Key": "invalid"},
        )
    owner_id = cast(int, request.user.pk)  # the views require authentication
    request_hash = hashlib.sha256(canonical_json([scope, request.data]).encode()).hexdigest()
    with transaction.atomic():
        if not _try_lock(owner_id, key):
            raise IdempotencyInFlight("A request with this Idempotency-Key is still in flight.")
        record = IdempotencyRecord.objects.filter(owner_id=owner_id, key=key).first()
        if record is not None:
            if record.request_hash != request_hash or record.scope != scope:
                raise IdempotencyMismatch(
                    "This Idempotency-Key was used with a different request body."
                )
            return Response(
                record.response_body,
                status=record.response_status,
                headers={"Idempotent-Replayed": "true"},
            )
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
