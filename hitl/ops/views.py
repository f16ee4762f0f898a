"""GET /healthz, /readyz and /metrics: plain Django views (no session, no DRF throttles), so
a probe costs no Redis round trip of its own and never counts against an API rate limit."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from hitl.ops import health, metrics


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is alive and serving: no I/O at all."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    checks = health.run_checks()
    return JsonResponse(checks, status=200 if checks["ready"] else 503)


def _metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the scraper may read; else the refusal. Metrics are off (404) until a token
    or an allow-list is configured; with a token, a wrong or missing one is 401; a caller
    outside the allow-list (and without the token) is 403."""
    token = settings.HITL_METRICS_TOKEN
    networks = settings.HITL_METRICS_ALLOWED_NETWORKS
    if not token and not networks:
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
            return None
    if networks:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            address = None
        if address is not None and any(
            address in ipaddress.ip_network(n, strict=False) for n in networks
        ):
            return None
    if token:
        refusal = HttpResponse("Bearer token required.\n", status=401, content_type="text/plain")
        refusal["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refusal
    return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = _metrics_refusal(request)
    if refusal is not None:
        return refusal
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
