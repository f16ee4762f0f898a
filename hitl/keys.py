"""API keys: creation (shown once), lookup, revocation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from hitl.models import ApiKey, ServiceAccount
from notifications.crypto import encrypt, new_webhook_secret

if TYPE_CHECKING:
    from django.contrib.auth.models import User

KEY_SCHEME = "nok"  # "nihil obstat key"; a recognisable prefix lets secret scanners find leaks
_PREFIX = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{20,100}")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    token: str  # the only time the full key exists outside the caller's hands


def api_key_create(
    *,
    user: User,
    name: str,
    created_by: User | None = None,
    expires_at: datetime | None = None,
) -> IssuedKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        api_key = ApiKey.objects.create(
            user=user, name=name, prefix=prefix, key_hash=_digest(secret), expires_at=expires_at
        )
        audit_record(
            verb="api_key.created",
            actor=created_by,
            data={"api_key_id": api_key.pk, "prefix": prefix, "user": user.get_username()},
        )
    return IssuedKey(api_key=api_key, token=f"{KEY_SCHEME}_{prefix}_{secret}")


def api_key_revoke(*, api_key: ApiKey, revoked_by: User | None) -> ApiKey:
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
            audit_record(
                verb="api_key.revoked",
                actor=revoked_by,
                data={"api_key_id": locked.pk, "prefix": locked.prefix},
            )
    return locked


def api_key_authenticate(token: str) -> ApiKey | None:
    """The live key for this token, or None. Constant-time on the secret part."""
    api_key = api_key_find(token)
    if api_key is None:
        return None
    api_key_touch(api_key)
    return api_key


def api_key_touch(api_key: ApiKey) -> None:
    """Record a use. Written at most once a minute per key, so busy agents don't turn reads
    into writes; `api_key` (which may be a cached copy) is updated too."""
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        api_key.last_used_at = now
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)


def api_key_find(token: str) -> ApiKey | None:
    """The live key for this token, or None, without recording a use."""
    scheme, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != KEY_SCHEME or not _PREFIX.fullmatch(prefix) or not _SECRET.fullmatch(secret):
        return None  # malformed: never reaches the database (NUL bytes and friends)
    api_key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, _digest(secret)):
        return None
    now = timezone.now()
    if api_key.revoked_at is not None or (api_key.expires_at and api_key.expires_at <= now):
        return None
    if not api_key.user.is_active:
        return None
    return api_key


def service_account_create(*, username: str, description: str = "") -> User:
    User = get_user_model()
    with transaction.atomic():
        user = User.objects.create_user(username=username)  # type: ignore[attr-defined]
        user.set_unusable_password()
        user.save(update_fields=["password"])
        ServiceAccount.objects.create(
            user=user,
            description=description,
            signing_secret_encrypted=encrypt(new_webhook_secret()),
        )
    return user


def service_account_rotate_secret(
    *, account: ServiceAccount, rotated_by: User | None = None
) -> str:
    """A new secret for signing this account's callback_url webhooks; returned once."""
    secret = new_webhook_secret()
    with transaction.atomic():
        account.signing_secret_encrypted = encrypt(secret)
        account.save(update_fields=["signing_secret_encrypted"])
        audit_record(
            verb="service_account.secret_rotated",
            actor=rotated_by,
            data={"service_account": account.user.get_username()},
        )
    return secret
