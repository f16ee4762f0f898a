"""Websocket authentication: an API key (`?token=` or `Authorization: Bearer`) wins; otherwise
the session cookie, accepted only from an Origin on ALLOWED_HOSTS (browsers send cookies
cross-site, so the Origin check is the websocket's CSRF protection)."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db.models import Q
from django.http.request import validate_host
from django.utils import timezone

from hitl.keys import api_key_authenticate
from hitl.models import ApiKey
from notifications import live


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


def _token_scope_sync(token: str) -> dict[str, Any]:
    """The user, and which key (the socket re-checks that key while it stays open)."""
    api_key = api_key_authenticate(token)
    if api_key is None:
        return {"user": AnonymousUser(), "api_key_id": None}
    return {
        "user": api_key.user,
        "api_key_id": api_key.pk,
        "api_key_expires_at": api_key.expires_at,
    }


async def _token_scope(token: str) -> dict[str, Any]:
    """The key's scope, read once per rights version for every socket of this process that
    comes with the same token (live.handshakes): revoking, expiring or deactivating moves it."""
    async with live.connecting():
        rights = await live.rights_version_async()
        digest = hashlib.sha256(token.encode()).hexdigest()
        found: dict[str, Any] = await live.handshakes.get(
            ("token", digest), rights, lambda: live.db_async(_token_scope_sync)(token)
        )
    expires_at = found.get("api_key_expires_at")
    if expires_at is not None and expires_at <= timezone.now():
        return {"user": AnonymousUser(), "api_key_id": None}
    return found


class TokenOrSessionAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session_stack = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = _token(scope)
        if token is not None:
            return await self.inner({**scope, **await _token_scope(token)}, receive, send)
        if not _origin_allowed(scope):
            return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
        return await self.session_stack(scope, receive, send)


def api_key_is_live(api_key_id: int) -> bool:
    """Neither revoked nor expired (the user's own state is checked by the caller)."""
    now = timezone.now()
    return (
        ApiKey.objects.filter(pk=api_key_id, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .exists()
    )
