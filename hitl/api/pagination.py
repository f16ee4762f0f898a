"""Keyset (cursor) pagination over (sla_due_at, id). No OFFSET, no COUNT: each page is an index
seek from the last row the client saw, whatever the table's size."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from rest_framework.request import Request

from proposals.errors import InvalidInput
from proposals.models import Proposal


def encode_cursor(proposal: Proposal | dict[str, Any]) -> str:
    """The cursor after this row: a Proposal or a `.values()` row with sla_due_at and id."""
    if isinstance(proposal, dict):
        sla_due_at, pk = proposal["sla_due_at"], proposal["id"]
    else:
        sla_due_at, pk = proposal.sla_due_at, proposal.pk
    raw = json.dumps([sla_due_at.isoformat(), str(pk)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sla, pk = json.loads(raw)
        moment = datetime.fromisoformat(sla)
        if moment.tzinfo is None:
            raise ValueError("naive")
        # In UTC, as the database compares it: 0001-01-01T00:00:00+14:00 is before year 1 and
        # 9999-12-31T23:59:59-14:00 after 9999, which overflow there (OverflowError, a 500).
        return moment.astimezone(UTC), uuid.UUID(pk)
    except (ValueError, TypeError, OverflowError, json.JSONDecodeError):
        raise InvalidInput("Invalid cursor.", details={"cursor": "invalid"}) from None


def paginate(
    request: Request,
    fetch: Callable[[tuple[datetime, uuid.UUID] | None, int], list[Any]],
    page_size: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """`fetch(after, limit)` reads up to `limit` rows after the decoded cursor (None: from the
    top), e.g. `proposals.selectors.proposal_page`."""
    # One extra row says whether a next page exists.
    rows = fetch(decode_cursor(cursor) if cursor else None, page_size + 1)
    page = rows[:page_size]
    next_url = None
    if len(rows) > page_size:
        params: dict[str, Any] = {k: request.query_params.getlist(k) for k in request.query_params}
        params["cursor"] = [encode_cursor(page[-1])]
        next_url = request.build_absolute_uri(request.path) + "?" + urlencode(params, doseq=True)
    return page, next_url
