"""The audit trail in the admin: a read-only list. Rows are append-only (the model, the queryset
and a database trigger refuse updates and deletes), so the admin offers no add, change or
delete at all, and no bulk delete action."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from audit.models import AuditEvent
from proposals.admin import (
    ReadOnlyAdminMixin,
    pretty_json,
    request_access,
    request_user,
    visible_proposals,
)
from proposals.permissions import MANAGE


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("seq", "created_at", "actor_label", "verb", "proposal", "reason")
    list_filter = ("verb",)
    search_fields = ("verb", "actor_label", "reason", "proposal__title")
    list_select_related = ("proposal",)
    ordering = ("-seq",)
    list_per_page = 100
    show_full_result_count = False  # the chain only grows
    fields = (
        "seq",
        "created_at",
        "actor",
        "actor_label",
        "verb",
        "proposal",
        "checkpoint",
        "revision",
        "reason",
        "data_json",
        "prev_hash",
        "hash",
        "hash_version",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        qs = super().get_queryset(request)
        if request_user(request).is_superuser:
            return qs
        # Events of proposals the caller may see, and checkpoint-level events (bypass...) of
        # the checkpoints it manages; key and account events are for superusers only.
        access = request_access(request)
        return qs.filter(
            Q(proposal__in=visible_proposals(request))
            | Q(proposal__isnull=True, checkpoint_id__in=access.ids(MANAGE))
        )

    @admin.display(description="data")
    def data_json(self, obj: AuditEvent) -> SafeString:
        return pretty_json(obj.data)
