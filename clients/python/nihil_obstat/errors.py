"""What can go wrong, as types an agent can route on.

`Rejected`, `ChangesRequested`, `TimedOut` and `Cancelled` are decisions, not failures: they
carry the proposal so the caller can read the reviewers' comments. `APIError` is the server
refusing a request; `WaitTimeout` is the caller's own deadline passing while humans are
still deciding (the proposal stays open: wait again later, or resume from a webhook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nihil_obstat.models import Proposal


class NihilObstatError(Exception):
    """Base of everything this package raises."""


class APIError(NihilObstatError):
    """The server answered with an error body `{"error": {"code", "message", "details"}}`."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, body: Any = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.body = body


class WaitTimeout(NihilObstatError, TimeoutError):
    """The caller's deadline passed with the proposal still undecided."""

    def __init__(self, proposal: Proposal) -> None:
        super().__init__(f"proposal {proposal.id} still {proposal.status} at the deadline")
        self.proposal = proposal


class Decided(NihilObstatError):
    """A human (or the checkpoint's policy) said no; `proposal` has the whole story."""

    def __init__(self, proposal: Proposal, message: str) -> None:
        super().__init__(message)
        self.proposal = proposal


class Rejected(Decided):
    def __init__(self, proposal: Proposal) -> None:
        self.reason = proposal.reason
        super().__init__(proposal, f"rejected: {self.reason or proposal.resolution}")


class TimedOut(Decided):
    """Nobody decided in time and the checkpoint's `timeout_action` was to reject."""

    def __init__(self, proposal: Proposal) -> None:
        self.resolution = proposal.resolution
        super().__init__(proposal, f"timed out ({self.resolution}): {proposal.reason}")


class Cancelled(Decided):
    def __init__(self, proposal: Proposal) -> None:
        self.reason = proposal.reason
        super().__init__(proposal, f"cancelled: {self.reason}")


class ChangesRequested(Decided):
    """A reviewer asked for a new revision. Answer with `revise(payload)` (a client bound to
    the proposal is attached by the client that raised it), then wait again."""

    def __init__(self, proposal: Proposal, reviser: Any = None) -> None:
        self.feedback = proposal.reason
        self._reviser = reviser
        super().__init__(proposal, f"changes requested: {self.feedback}")

    def revise(self, payload: dict[str, Any], *, summary: str = "", comment: str = "") -> Any:
        """Submit the new revision (returns the updated `Proposal`, or an awaitable of it
        for an `AsyncClient`)."""
        if self._reviser is None:
            raise NihilObstatError("no client attached to answer this change request")
        return self._reviser.revise(self.proposal.id, payload, summary=summary, comment=comment)
