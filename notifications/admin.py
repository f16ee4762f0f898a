"""The outbox in the admin: read-only. Rows are written by the services in the transaction they
announce and marked dispatched by the relay; nobody edits them by hand."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from notifications.models import OutboxEvent
from proposals.admin import pretty_json, request_user, visible_proposals


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = ("topic", "proposal", "checkpoint", "created_at", "dispatched_at")
    list_filter = ("topic", ("dispatched_at", admin.EmptyFieldListFilter))
    search_fields = ("topic", "proposal__title")
    list_select_related = ("proposal", "checkpoint")
    ordering = ("-created_at",)
    list_per_page = 100
    show_full_result_count = False
    fields = (
        "id",
        "topic",
        "proposal",
        "checkpoint",
        "created_at",
        "dispatched_at",
        "payload_json",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxEvent]:
        qs = super().get_queryset(request)
        if request_user(request).is_superuser:
            return qs
        return qs.filter(proposal__in=visible_proposals(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="payload")
    def payload_json(self, obj: OutboxEvent) -> SafeString:
        return pretty_json(obj.payload)
