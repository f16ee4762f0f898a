"""One exception handler: every API error is `{"error": {"code", "message", "details"}}`.

In every mode: Django answers its own HTML pages when DEBUG is on (the technical 404 and 500
pages never reach handler404/handler500), so the API answers its 404s from a catch-all route
and its unexpected exceptions from this handler, whatever DEBUG says."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from proposals.errors import ApplicationError

logger = logging.getLogger(__name__)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        details = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        return Response(
            error_body("invalid", "Invalid input.", details), status=status.HTTP_400_BAD_REQUEST
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        # A real bug. Logged with its traceback as Django would, answered in the documented
        # shape (Django's DEBUG page would be HTML, and would show settings to the caller).
        request = context.get("request")
        logger.error(
            "Internal Server Error: %s",
            getattr(request, "path", "?"),
            exc_info=exc,
            extra={"status_code": 500, "request": getattr(request, "_request", request)},
        )
        set_rollback()
        return Response(
            error_body("server_error", "Internal server error."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, exceptions.ValidationError):
        body = error_body("invalid", "Invalid input.", _details(exc.detail))
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        message = str(detail) if not isinstance(detail, dict | list) else "Request failed."
        body = error_body(_code(exc), message, {} if isinstance(detail, str) else _details(detail))
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            body["error"]["details"] = {"retry_after_seconds": int(wait)}
    else:  # pragma: no cover - DRF only returns responses for APIException
        body = error_body("error", "Request failed.")
    response.data = body
    return response


def _code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else "error"


def _details(detail: Any) -> Any:
    # DRF details are already JSON-shaped (ErrorDetail is a str); a bare list gets a key.
    return {"non_field_errors": detail} if isinstance(detail, list) else detail


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


@csrf_exempt  # a POST to an unknown path is a 404, not a CSRF failure page
def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """The API's last route: an unknown /api/ path is a JSON 404 with DEBUG on as well (no
    redirect to an added slash either: a client should fix its URL, not follow HTML)."""
    details = {}
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.url_name != "api-not-found":
            details = {"hint": f"API paths end with a slash: {request.path}/"}
    return JsonResponse(error_body("not_found", "Not found.", details), status=404)


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return defaults.server_error(request)
