"""Human sign-off for AI actions: the Nihil Obstat client.

    from nihil_obstat import require_approval

    @require_approval(checkpoint="data-purchase")
    def buy_leads(cost: int, businesses: int) -> str: ...

Adapters live in `nihil_obstat.langgraph`, `nihil_obstat.openai_agents` and the MCP server
`python -m nihil_obstat.mcp`; each needs its extra.
"""

from nihil_obstat.client import AsyncClient, Client, RetryPolicy, outcome
from nihil_obstat.decorator import require_approval
from nihil_obstat.errors import (
    APIError,
    Cancelled,
    ChangesRequested,
    Decided,
    NihilObstatError,
    Rejected,
    TimedOut,
    WaitTimeout,
)
from nihil_obstat.keys import idempotency_key
from nihil_obstat.models import Checkpoint, Event, Proposal, Revision, Vote
from nihil_obstat.webhooks import DECISION_EVENTS, WebhookVerificationError, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "DECISION_EVENTS",
    "APIError",
    "AsyncClient",
    "Cancelled",
    "ChangesRequested",
    "Checkpoint",
    "Client",
    "Decided",
    "Event",
    "NihilObstatError",
    "Proposal",
    "Rejected",
    "RetryPolicy",
    "Revision",
    "TimedOut",
    "Vote",
    "WaitTimeout",
    "WebhookVerificationError",
    "idempotency_key",
    "outcome",
    "require_approval",
    "verify_webhook",
]
