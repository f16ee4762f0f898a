"""Who calls the API: service accounts for integrators, API keys for them and for humans, and
the record that makes `Idempotency-Key` replay the first response."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ServiceAccount(models.Model):
    """Marks a user as a machine (an agent or pipeline). It authenticates only with API keys."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="service_account"
    )
    description = models.TextField(blank=True)
    # Signs this account's per-proposal callback_url webhooks (Standard Webhooks, encrypted
    # at rest: it must be read back to sign).
    signing_secret_encrypted = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.user.get_username()

    @property
    def signing_secret(self) -> str:
        from notifications.crypto import decrypt

        return decrypt(self.signing_secret_encrypted)


class ApiKey(models.Model):
    """A bearer token. Only its sha256 is stored: the key is shown once, at creation.

    Keys are 256-bit random, so a fast hash is enough (no dictionary to attack); `prefix` is
    the public part used to find the row, the compare is constant-time.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        indexes = [
            models.Index(
                fields=["user"], condition=Q(revoked_at__isnull=True), name="apikey_live_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class IdempotencyRecord(models.Model):
    """The first response to a (caller, Idempotency-Key) pair, replayed for retries."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    scope = models.CharField(max_length=60)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "key"], name="idempotency_key_per_owner")
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.owner_id}:{self.key}"
