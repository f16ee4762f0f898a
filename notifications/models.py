"""The transactional outbox: event rows written in the same transaction as the change they
announce. Delivery (webhooks, email, websockets) reads from here, so a crash between commit and
send loses nothing; `id` is the stable event id consumers dedupe on."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

# Every event type the outbox carries (DESIGN §3 plus edited/claimed/released).
WEBHOOK_EVENTS = (
    "proposal.submitted",
    "proposal.vote_cast",
    "proposal.changes_requested",
    "proposal.revised",
    "proposal.approved",
    "proposal.rejected",
    "proposal.cancelled",
    "proposal.revoked",
    "proposal.escalated",
    "proposal.reminder",
    "proposal.sla_breached",
    "checkpoint.bypassed",
    "proposal.edited",
    "proposal.claimed",
    "proposal.released",
    "checkpoint.override_rate_high",
    "checkpoint.override_rate_normal",
)


class OutboxEvent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=60)
    proposal = models.ForeignKey(
        "proposals.Proposal", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    checkpoint = models.ForeignKey(
        "proposals.Checkpoint", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    dispatched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=Q(dispatched_at__isnull=True),
                name="outbox_undispatched_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.id}"


class WebhookEndpoint(models.Model):
    """A receiver of Standard Webhooks. `events` empty = every event; `checkpoint` empty =
    every checkpoint. The signing secret is stored encrypted (notifications.crypto)."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    secret_encrypted = models.TextField(editable=False)
    events = models.JSONField(default=list, blank=True)
    checkpoint = models.ForeignKey(
        "proposals.Checkpoint",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="webhook_endpoints",
    )
    active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} → {self.url}"

    @property
    def secret(self) -> str:
        from notifications.crypto import decrypt

        return decrypt(self.secret_encrypted)

    def wants(self, topic: str, checkpoint_id: int | None) -> bool:
        return (
            self.active
            and (not self.events or topic in self.events)
            and (self.checkpoint_id is None or self.checkpoint_id == checkpoint_id)
        )


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the retry schedule
    CANCELLED = "cancelled"  # endpoint gone (410) or disabled


class WebhookDelivery(models.Model):
    """One event to one target. Its webhook-id is the event id: the same on every retry and
    for every target, so receivers dedupe on it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    url = models.URLField(max_length=500)
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # The relay may run twice for one event; it must never plan a target twice.
            models.UniqueConstraint(
                fields=["event", "endpoint"],
                condition=Q(endpoint__isnull=False),
                name="delivery_once_per_endpoint",
            ),
            models.UniqueConstraint(
                fields=["event", "url"],
                condition=Q(endpoint__isnull=True),
                name="delivery_once_per_callback",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="delivery_due_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event.topic} → {self.url} ({self.status})"


class DeliveryAttempt(models.Model):
    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"#{self.number} {self.status_code or self.error[:40]}"


class EmailNotice(models.Model):
    """New work waiting for a reviewer's next digest mail (at most one mail per window)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    proposal = models.ForeignKey("proposals.Proposal", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "proposal"],
                condition=Q(sent_at__isnull=True),
                name="notice_once_while_unsent",
            )
        ]
        indexes = [
            models.Index(
                fields=["user"], condition=Q(sent_at__isnull=True), name="notice_unsent_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user_id} ← {self.proposal_id}"


class DigestLog(models.Model):
    """When each reviewer last got a digest: the flood guard."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", primary_key=True
    )
    last_sent_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.user_id} @ {self.last_sent_at}"


class UsedEmailLink(models.Model):
    """Nonces of one-click links already used: each link acts once."""

    nonce = models.CharField(max_length=32, primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    used_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.nonce
