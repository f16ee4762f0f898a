"""`Authorization: Bearer <key>` for service accounts and humans' personal keys.

A verified key is remembered in this process for a few seconds (HITL_AUTH_CACHE_SECONDS),
together with its user's grants (`Access`), so an agent's stream of calls costs one dictionary
lookup instead of a key, user and grants read on every call. It is a
`proposals.permissions.RightsCache`, dropped:
- at once, in this process, by any change to who may do what (notifications.live
  `rights_changed`, fired inside the changing transaction, before anyone could use the old
  rights again);
- in every other process, when the rights version (bumped by the same hook after the commit of
  those changes) has moved: read once per request;
- after HITL_AUTH_CACHE_SECONDS in any case (changes no signal sees: a raw UPDATE).
The `Access` carries the version it was read under, so facts derived from it later in the
request (a checkpoint's electorate) are remembered under the same rules.

The per-request Redis work is one round trip: the rights-version read, and, when the key is
remembered under the version this process last saw, the rate limit's count
(hitl.api.throttling), in one Lua script that counts only if that version still holds.
When Redis cannot be read, nothing is trusted and every call authenticates against the
database, as before (the rate limit's breaker keeps a frozen Redis from costing a timeout on
every request).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from hitl.cache import cached_value, read_then_count
from hitl.keys import api_key_authenticate, api_key_touch
from proposals.permissions import Access, RightsCache, access_for

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from hitl.models import ApiKey


@dataclass(frozen=True)
class _Entry:
    user: User
    api_key: ApiKey
    access: Access


key_cache: RightsCache[str, _Entry] = RightsCache()


# The rights version this process read last, raw (as Redis holds it) and as a cache key.
_last_seen: tuple[bytes, str] = (b"", "")


def _rights_and_entry(request: Request, token_id: str) -> tuple[str | None, _Entry | None]:
    """The rights version to read cached entries under (None when it cannot be trusted), and
    the entry remembered for this token if it still holds, its request counted already."""
    global _last_seen
    from hitl.api import throttling
    from notifications import live

    if throttling.breaker.open():
        return None, None
    raw, rights = _last_seen
    entry = key_cache.get(token_id, rights)
    expires_at = entry.api_key.expires_at if entry is not None else None
    if expires_at is not None and expires_at <= timezone.now():
        entry = None  # expired since it was remembered: the database says so, as for any key
    counters = throttling.counters_for(request, entry.user) if entry is not None else []
    try:
        current, counts = read_then_count(
            live.RIGHTS_VERSION_KEY, raw, [(c.name, c.seconds) for c in counters]
        )
    except Exception:  # the cache backend's connection errors vary by client library
        throttling.cache_failed()  # one timeout on a frozen Redis, then none for a while
        return None, None
    if counts is None:  # the version moved: nothing remembered under the old one holds
        version = cached_value(current)
        _last_seen = (current, "" if version is None else str(version))  # "": none published
        return _last_seen[1], None
    if entry is not None:
        throttling.counted(request, counters, counts)
    return rights, entry


class BearerTokenAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        try:
            token = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Malformed token.") from None
        token_id = hashlib.sha256(token.encode()).hexdigest()
        rights, entry = _rights_and_entry(request, token_id)
        if entry is not None:
            api_key_touch(entry.api_key)
            # Copies: a request may set attributes on its user; the cached one stays clean.
            return self._authenticated(
                request, copy.copy(entry.user), copy.copy(entry.api_key), entry.access
            )
        generation = key_cache.generation()
        api_key = api_key_authenticate(token)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        access = access_for(api_key.user, rights_version=rights)
        entry = _Entry(user=copy.copy(api_key.user), api_key=copy.copy(api_key), access=access)
        key_cache.put(token_id, entry, rights, generation)
        return self._authenticated(request, api_key.user, api_key, access)

    @staticmethod
    def _authenticated(
        request: Request, user: User, api_key: ApiKey, access: Access
    ) -> tuple[User, ApiKey]:
        # The grants read with the key: the views use them (hitl.api.views.BaseView.access)
        # instead of reading them again.
        request._request.hitl_access = access  # type: ignore[attr-defined]
        return user, api_key

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Documents the bearer scheme in the OpenAPI schema (drf-spectacular finds subclasses)."""

    target_class = "hitl.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "nok_<prefix>_<secret>"}
