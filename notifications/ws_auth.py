"""Websocket authentication: an API key (`?token=` or `Authorization: Bearer`) wins; otherwise
the session cookie, accepted only from an Origin on ALLOWED_HOSTS (browsers send cookies
cross-site, so the Origin check is the websocket's CSRF protection)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import validate_host

from hitl.keys import api_key_authenticate


def _token(scope: dict[str, Any]) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
    if query.get("token"):
        return query["token"][0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode(errors="replace").partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


def _origin_allowed(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            host = urlsplit(value.decode(errors="replace")).hostname or ""
            return validate_host(host, settings.ALLOWED_HOSTS)
    return False


@database_sync_to_async
def _user_for_token(token: str) -> Any:
    api_key = api_key_authenticate(token)
    return api_key.user if api_key is not None else AnonymousUser()


class TokenOrSessionAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session_stack = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = _token(scope)
        if token is not None:
            return await self.inner({**scope, "user": await _user_for_token(token)}, receive, send)
        if not _origin_allowed(scope):
            return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
        return await self.session_stack(scope, receive, send)
