"""`Authorization: Bearer <key>` for service accounts and humans' personal keys.

A verified key is remembered in this process for a few seconds (HITL_AUTH_CACHE_SECONDS),
together with its user's grants (`Access`), so an agent's stream of calls costs one dictionary
lookup instead of a key, user and grants read on every call. It is a
`proposals.permissions.RightsCache`, dropped:
- at once, in this process, by any change to who may do what (a key saved or deleted, a user
  saved, a grant or group membership changed, a checkpoint created or deleted): the receivers
  below fire inside the changing transaction, before anyone could use the old rights again;
- in every other process, when the rights version (notifications.live, bumped after the commit
  of those same changes) has moved: one small Redis read per request;
- after HITL_AUTH_CACHE_SECONDS in any case (changes no signal sees: a raw UPDATE).
The `Access` carries the version it was read under, so facts derived from it later in the
request (a checkpoint's electorate) are remembered under the same rules.
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

from hitl.keys import api_key_authenticate, api_key_touch
from proposals.permissions import Access, RightsCache, access_for, forget_rights

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from hitl.models import ApiKey


@dataclass(frozen=True)
class _Entry:
    user: User
    api_key: ApiKey
    access: Access


key_cache: RightsCache[str, _Entry] = RightsCache()


def _rights_version() -> str | None:
    """The rights version to read cached entries under; None when it cannot be trusted."""
    from hitl.api.throttling import breaker, cache_failed
    from notifications import live

    if breaker.open():
        return None
    version = live.rights_version()
    if isinstance(version, live.RightsUnknown):
        cache_failed()  # one timeout on a frozen Redis, then none for a while
        return None
    return version or ""  # "": no change published yet, a version like any other


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
        rights = _rights_version()
        entry = key_cache.get(token_id, rights)
        expires_at = entry.api_key.expires_at if entry is not None else None
        if entry is not None and (expires_at is None or expires_at > timezone.now()):
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


def connect_cache_signals() -> None:
    """The changes that drop the caches: the ones that move the rights version
    (notifications.live), plus checkpoints (a grant on every checkpoint covers new ones, and
    the intake remembers checkpoint rows: hitl.api.views)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db.models.signals import m2m_changed, post_delete, post_save
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from hitl.models import ApiKey
    from notifications import live
    from proposals.models import Checkpoint

    User = get_user_model()
    uid = "hitl-auth-cache"
    for model in (UserObjectPermission, GroupObjectPermission, ApiKey, User, Group, Checkpoint):
        post_save.connect(forget_rights, sender=model, dispatch_uid=f"{uid}-s-{model}")
        post_delete.connect(forget_rights, sender=model, dispatch_uid=f"{uid}-d-{model}")
    for through in (
        User.groups.through,  # type: ignore[attr-defined]
        User.user_permissions.through,  # type: ignore[attr-defined]
        Group.permissions.through,
    ):
        m2m_changed.connect(forget_rights, sender=through, dispatch_uid=f"{uid}-m-{through}")

    def checkpoint_changed(**kwargs: Any) -> None:
        # Other processes' entries too: a new checkpoint is "every checkpoint" for some users,
        # and a changed one (policy, bypass) must not be served from a remembered row.
        live.rights_changed()

    post_save.connect(checkpoint_changed, sender=Checkpoint, dispatch_uid=f"{uid}-cp")
    post_delete.connect(checkpoint_changed, sender=Checkpoint, dispatch_uid=f"{uid}-cpd")


# Connected when the cache comes into being: before this module is imported it holds nothing.
connect_cache_signals()


class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Documents the bearer scheme in the OpenAPI schema (drf-spectacular finds subclasses)."""

    target_class = "hitl.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "nok_<prefix>_<secret>"}
