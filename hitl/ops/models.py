"""The override-rate alert's state, one row per checkpoint.

The row is the alert's memory: `active` says which side of the threshold the last evaluation
found, so a crossing is announced once, not on every decision. Evaluations lock the row
(select_for_update), so two workers relaying decisions at once never both announce the same
crossing (hitl.ops.override).
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class OverrideAlert(models.Model):
    checkpoint = models.OneToOneField(
        "proposals.Checkpoint",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="override_alert",
    )
    threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of human decisions that differ from the AI's recommendation above "
        "which the alert fires, from 0 to 1 (0.15 = 15 %). Empty: HITL_OVERRIDE_THRESHOLD.",
    )
    active = models.BooleanField(
        default=False, help_text="The rate was above the threshold at the last evaluation."
    )
    rate = models.FloatField(null=True, blank=True, help_text="At the last evaluation.")
    decisions = models.PositiveIntegerField(default=0, help_text="Human decisions in the window.")
    overrides = models.PositiveIntegerField(default=0)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(
        null=True, blank=True, help_text="When `active` last changed (the last crossing)."
    )

    class Meta:
        verbose_name = "override-rate alert"

    def __str__(self) -> str:
        return f"{self.checkpoint_id}: {'HIGH' if self.active else 'normal'}"
