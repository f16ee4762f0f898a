"""Service accounts and API keys in the admin.

Creation goes through hitl.keys (the same code as `manage.py create_api_key`): the admin's add
pages are small forms that call the service, so a key's secret is never a model field here.
The token is shown once, in the success message; only its sha256 is stored, and the admin
never displays or edits `key_hash`. Idempotency records are internal and not registered.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms import Form
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from hitl.forms import ApiKeyCreateForm, ServiceAccountCreateForm
from hitl.keys import (
    api_key_create,
    api_key_revoke,
    service_account_create,
    service_account_rotate_secret,
)
from hitl.models import ApiKey, ServiceAccount
from proposals.admin import request_user


def render_create_form(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, form: Form, help_text: str
) -> TemplateResponse:
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Add {opts.verbose_name}",
        "opts": opts,
        "form": form,
        "help_text": help_text,
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, "admin/hitl/create_form.html", context)


@admin.register(ServiceAccount)
class ServiceAccountAdmin(admin.ModelAdmin):
    list_display = ("user", "description", "created_at")
    search_fields = ("user__username", "description")
    list_select_related = ("user",)
    fields = ("user", "description", "created_at")
    readonly_fields = ("user", "created_at")
    actions = ("rotate_signing_secret",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deactivate the user instead: its proposals and audit events stay

    @admin.action(description="Rotate the callback signing secret", permissions=["change"])
    def rotate_signing_secret(
        self, request: HttpRequest, queryset: QuerySet[ServiceAccount]
    ) -> None:
        for account in queryset.select_related("user"):
            secret = service_account_rotate_secret(
                account=account, rotated_by=request_user(request)
            )
            messages.warning(
                request,
                f"New callback signing secret for {account.user.get_username()} "
                f"(shown once): {secret}",
            )

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ServiceAccountCreateForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            user = service_account_create(
                username=form.cleaned_data["username"],
                description=form.cleaned_data["description"],
            )
            messages.success(
                request,
                f"Service account {user.get_username()!r} created. It signs in with API keys "
                "only: add one under API keys, and grant it submit on its checkpoints.",
            )
            messages.warning(
                request,
                "Secret that signs its callback_url webhooks (shown once): "
                f"{user.service_account.signing_secret}",
            )
            return HttpResponseRedirect(reverse("admin:hitl_serviceaccount_changelist"))
        return render_create_form(
            self, request, form, "A user that authenticates with API keys only (no password)."
        )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "prefix",
        "user",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    # key_hash is deliberately absent: not shown, not editable.
    fields = ("name", "prefix", "user", "created_at", "last_used_at", "expires_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke_selected",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a key is created and revoked, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the audit trail refers to the key

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiKeyCreateForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            issued = api_key_create(
                user=form.cleaned_data["user"],
                name=form.cleaned_data["name"],
                created_by=request_user(request),
                expires_at=form.cleaned_data["expires_at"],
            )
            messages.success(
                request,
                format_html(
                    "API key “{}” created for {}. Copy it now: it is shown only this once. "
                    '<code class="hitl-token">{}</code>',
                    issued.api_key.name,
                    issued.api_key.user,
                    issued.token,
                ),
            )
            return HttpResponseRedirect(reverse("admin:hitl_apikey_changelist"))
        return render_create_form(
            self, request, form, "The key is shown once after creation; only its hash is kept."
        )

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        by = request_user(request)
        revoked = 0
        for api_key in queryset:
            if api_key.revoked_at is None:
                api_key_revoke(api_key=api_key, revoked_by=by)
                revoked += 1
        messages.success(request, f"Revoked {revoked} API key(s).")
