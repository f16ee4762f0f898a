"""Typed domain errors. The API's exception handler maps each to its HTTP status and code;
the admin and the commands show the message."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    code = "error"
    status_code = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(ApplicationError):
    code = "invalid"
    status_code = 400


class NotFound(ApplicationError):
    code = "not_found"
    status_code = 404


class PermissionDenied(ApplicationError):
    code = "permission_denied"
    status_code = 403


class InvalidPayload(InvalidInput):
    """The payload does not satisfy its JSON Schema; details list every error path."""

    code = "invalid_payload"


class InvalidSchema(InvalidInput):
    code = "invalid_payload_schema"


class Conflict(ApplicationError):
    """The request is valid but the resource's state forbids it (stale revision, decided...)."""

    code = "conflict"
    status_code = 409


class InvalidTransition(Conflict):
    code = "invalid_transition"


class StaleRevision(Conflict):
    code = "stale_revision"


class AlreadyVoted(Conflict):
    code = "already_voted"


class ClaimedByOther(Conflict):
    code = "claimed"


class IdempotencyInFlight(Conflict):
    code = "idempotency_in_flight"


class Unprocessable(ApplicationError):
    """Well-formed but semantically unacceptable (patch does not apply, reason missing...)."""

    code = "unprocessable"
    status_code = 422


class PayloadLimitExceeded(Unprocessable):
    """A payload past the bounds of a submitted one (size, depth, patch operations)."""

    code = "payload_limit_exceeded"


class IdempotencyMismatch(Unprocessable):
    code = "idempotency_key_reused"
