"""The OpenAPI schema says what the API answers: the error shape on every operation, and list
pages as they are (`{"results": [...], "next": ...}`), never bare arrays.

tests/hitl/test_api_schemathesis.py drives a live server from this schema and fails on any
response the schema does not describe."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="machine-readable, e.g. `invalid`, `not_found`")
    message = serializers.CharField()
    details = serializers.DictField(
        help_text="per field for `invalid`: `{field: [messages]}`; otherwise context"
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# What any authenticated operation can answer besides its success: malformed input or query
# (400), no or bad credentials (401), not allowed (403), unseen or unknown (404), rate limited
# (429). Bodies can also be too large (413), not JSON (415), in conflict with the state (409:
# stale revision, already voted, Idempotency-Key in flight) or well-formed but impossible
# (422: Idempotency-Key reused with another body, duplicate option keys, ...).
READ_ERRORS = (400, 401, 403, 404, 429)
WRITE_ERRORS = (*READ_ERRORS, 409, 413, 415, 422)


class APIAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        codes = READ_ERRORS if self.method in ("GET", "HEAD") else WRITE_ERRORS
        for code in codes:
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(
                    ErrorSerializer, str(code), direction=direction
                )
        return responses


def page_of(item: serializers.Serializer, name: str, *, paginated: bool) -> Any:
    """The envelope a list view answers: `results`, and `next` (a URL or null) when keyset
    paginated."""
    fields: dict[str, serializers.Field] = {"results": item.__class__(many=True)}
    if paginated:
        fields["next"] = serializers.URLField(
            allow_null=True, help_text="the next page, or null on the last one"
        )
    return inline_serializer(name=name, fields=fields)
