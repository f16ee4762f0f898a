"""django-csp's middleware, for documents only.

A JSON response (the API's, /healthz's) is never rendered by a browser: Django sends every
response with `X-Content-Type-Options: nosniff`, so a browser opening one shows it as data and
runs nothing in it. Its policy header protected nothing, and django-csp rebuilt it from the
settings on every response, about 3 % of an API list call's CPU. Every other response (pages,
error pages, redirects) gets the policy exactly as before.
"""

from __future__ import annotations

from csp.middleware import CSPMiddleware
from django.http import HttpRequest, HttpResponseBase


class DocumentCSPMiddleware(CSPMiddleware):
    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        return super().process_response(request, response)
