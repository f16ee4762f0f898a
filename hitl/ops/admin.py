from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from hitl.ops.models import OverrideAlert


@admin.register(OverrideAlert)
class OverrideAlertAdmin(admin.ModelAdmin[OverrideAlert]):
    """Only the threshold is an operator's choice; the rest is the alert's own state, which
    only an evaluation (hitl.ops.override) may change."""

    list_display = ("checkpoint", "threshold", "active", "rate", "decisions", "evaluated_at")
    list_filter = ("active",)
    fields = (
        "checkpoint",
        "threshold",
        "active",
        "rate",
        "decisions",
        "overrides",
        "evaluated_at",
        "changed_at",
    )
    readonly_fields = ("active", "rate", "decisions", "overrides", "evaluated_at", "changed_at")

    def get_readonly_fields(
        self, request: HttpRequest, obj: OverrideAlert | None = None
    ) -> tuple[str, ...]:
        if obj is not None:
            return ("checkpoint", *self.readonly_fields)
        return tuple(self.readonly_fields)
