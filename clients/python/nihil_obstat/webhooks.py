"""Verifying the server's Standard Webhooks, and knowing which ones mean "resume now".

Verification goes through the `standardwebhooks` reference library (the `[webhooks]` extra),
imported when first used so that the core package still depends on httpx alone.

Resuming from a webhook instead of blocking a process on `wait`:

    event = verify_webhook(request.headers, request.body, secret)
    if event["type"] in DECISION_EVENTS:
        resume(event["data"]["proposal_id"])   # e.g. LangGraphApprovals.resume(...)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nihil_obstat.errors import NihilObstatError

# Events after which the agent has something to act on (a decision or feedback).
DECISION_EVENTS = frozenset(
    {
        "proposal.approved",
        "proposal.rejected",
        "proposal.cancelled",
        "proposal.changes_requested",
        "proposal.revoked",
    }
)


class WebhookVerificationError(NihilObstatError):
    """Bad signature, stale or missing timestamp, or a body that is not the signed one."""


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str) -> dict[str, Any]:
    """Check `webhook-id`, `webhook-timestamp` (within five minutes) and `webhook-signature`
    against `secret` (`whsec_…`); return the parsed body `{"type", "timestamp", "data"}`."""
    try:
        from standardwebhooks import Webhook
        from standardwebhooks.webhooks import WebhookVerificationError as LibraryError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "verify_webhook needs the webhooks extra: pip install 'nihil-obstat-client[webhooks]'"
        ) from exc
    lowered = {key.lower(): value for key, value in headers.items()}
    raw = body if isinstance(body, bytes) else body.encode()
    try:
        event = Webhook(secret).verify(raw, lowered)
    except LibraryError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    if not isinstance(event, dict):
        raise WebhookVerificationError("webhook body is not a JSON object")
    return event
