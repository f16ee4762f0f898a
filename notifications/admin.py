"""The outbox in the admin: read-only. Rows are written by the services in the transaction they
announce and marked dispatched by the relay; nobody edits them by hand."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from notifications import webhooks
from notifications.models import (
    WEBHOOK_EVENTS,
    DeliveryAttempt,
    OutboxEvent,
    WebhookDelivery,
    WebhookEndpoint,
)
from notifications.tasks import deliver_webhook, enqueue
from proposals.admin import ReadOnlyAdminMixin, pretty_json, request_user, visible_proposals


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
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

    @admin.display(description="payload")
    def payload_json(self, obj: OutboxEvent) -> SafeString:
        return pretty_json(obj.payload)


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(
        max_length=500, assume_scheme="https", validators=[webhooks.webhook_url_validator]
    )
    events = forms.MultipleChoiceField(
        choices=[(e, e) for e in WEBHOOK_EVENTS],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None selected: every event.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("name", "url", "events", "checkpoint", "active")

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        try:
            webhooks.check_target(url)
        except webhooks.UnsafeTarget as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Endpoints are created through notifications.webhooks.endpoint_create, which makes the
    `whsec_` secret; it is shown once, in the success message, and stored encrypted."""

    form = WebhookEndpointForm
    list_display = ("name", "url", "checkpoint", "active", "disabled_reason", "created_at")
    list_filter = ("active", "checkpoint")
    search_fields = ("name", "url")
    readonly_fields = ("disabled_reason", "created_by", "created_at")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = webhooks.endpoint_create(
            name=obj.name,
            url=obj.url,
            events=form.cleaned_data["events"],
            checkpoint=obj.checkpoint,
            created_by=request_user(request),
        )
        obj.pk = created.endpoint.pk
        obj.secret_encrypted = created.endpoint.secret_encrypted
        obj.created_at = created.endpoint.created_at
        if not obj.active:
            WebhookEndpoint.objects.filter(pk=obj.pk).update(active=False)
        messages.warning(
            request,
            f"Signing secret for {obj.name} (shown once; verify webhook-signature with it): "
            f"{created.secret}",
        )


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ("number", "started_at", "status_code", "duration_ms", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "event_topic",
        "url",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("status", "endpoint")
    search_fields = ("url", "event__topic", "event__id")
    list_select_related = ("event", "endpoint")
    ordering = ("-created_at",)
    show_full_result_count = False
    fields = (
        "id",
        "event",
        "endpoint",
        "url",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
    )
    readonly_fields = fields
    inlines = (DeliveryAttemptInline,)
    actions = ("redeliver",)

    @admin.display(description="event")
    def event_topic(self, obj: WebhookDelivery) -> str:
        return obj.event.topic

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Redeliver now (same webhook-id)", permissions=["change"])
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = 0
        for delivery in queryset:
            webhooks.redeliver(delivery)
            enqueue(deliver_webhook, str(delivery.pk))
            count += 1
        messages.success(request, f"{count} deliveries queued again.")
