"""The Django admin as a review queue.

Thin, like every other entry point: the admin validates, fetches through the selectors (which
authorize with the same guardian rule as the API), calls one service per proposal and shows
ApplicationError messages. It never writes a proposal itself: `status` and everything else on
the proposal page are read-only, and the change form refuses POSTs (no change permission).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from simple_history.admin import SimpleHistoryAdmin

from hitl.checkpoint_forms import USER_FIELDS, CheckpointAgentForm, CheckpointGrantsForm
from hitl.forms import (
    GROUP_FIELDS,
    BulkReasonForm,
    BypassForm,
    ManageForm,
    ReviewForm,
)
from hitl.grants import service_account_onboard, set_users, users_with
from proposals import policy, selectors, services
from proposals.errors import ApplicationError, NotFound
from proposals.models import OPEN_STATUSES, Checkpoint, Decision, Proposal, Status
from proposals.permissions import (
    MANAGE,
    REVIEW,
    REVIEW_ESCALATED,
    SUBMIT,
    Access,
    access_for,
    allowed_actions,
    groups_with,
    set_groups,
    visible_proposals_q,
)

if TYPE_CHECKING:
    from django.contrib.admin.views.main import ChangeList
    from django.contrib.auth.models import User
    from django.forms import ModelForm

# --- helpers shared by the project's admins ------------------------------------------------

_ACCESS_ATTR = "_hitl_access"


def request_access(request: HttpRequest) -> Access:
    """The caller's guardian grants, computed once per request (two or three queries)."""
    access = getattr(request, _ACCESS_ATTR, None)
    if access is None:
        access = access_for(request.user)
        setattr(request, _ACCESS_ATTR, access)
    return access


def request_user(request: HttpRequest) -> User:
    user = request.user
    if isinstance(user, AnonymousUser):  # admin_view() lets only active staff through
        raise PermissionDenied
    return user


def visible_proposals(request: HttpRequest) -> QuerySet[Proposal]:
    """Proposals the caller may see, for admins that list rows hanging off proposals."""
    return Proposal.objects.filter(visible_proposals_q(request_access(request)))


def pretty_json(value: Any) -> SafeString:
    """JSON in a <pre>, escaped by format_html: payloads are written by agents, not by us."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)
    return format_html('<pre class="hitl-json">{}</pre>', text)


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)


class ReadOnlyAdminMixin:
    """For records only the services write (audit events, outbox rows): no add, no change,
    no delete, so no bulk delete either."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class VisibleHistoryMixin:
    """simple-history's views, closed where they are too open for us.

    - history_view falls back to the historical rows when the object is not in get_queryset,
      so an object the caller may not see must 404 first;
    - history_form_view saves a POSTed old version with only a *view* permission check, which
      would rewrite any field (a proposal's status included) outside the services: POSTs need
      the change permission, which the proposal admin never grants.
    """

    def _visible_or_404(self, request: HttpRequest, object_id: str) -> Any:
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        if obj is None:
            raise Http404("Not found.")
        return obj

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self._visible_or_404(request, object_id)
        return super().history_view(request, object_id, extra_context)  # type: ignore[misc]

    def history_form_view(
        self,
        request: HttpRequest,
        object_id: str,
        version_id: str,
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self._visible_or_404(request, object_id)
        if request.method != "GET" and not self.has_change_permission(request, obj):  # type: ignore[attr-defined]
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)  # type: ignore[misc]


# --- proposals -----------------------------------------------------------------------------


class StatusFilter(admin.SimpleListFilter):
    """Open work by default (the review queue); every status, and all, one click away."""

    title = "status"
    parameter_name = "status"
    default = "open"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        return [
            ("open", "Open (pending, changes requested)"),
            *((str(value), str(label)) for value, label in Status.choices),
            ("all", "All"),
        ]

    def current(self) -> str:
        value = self.value()
        return value if value else self.default

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        current = self.current()
        for lookup, title in self.lookup_choices:
            yield {
                "selected": current == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        current = self.current()
        if current == "open":
            # The same condition as the partial queue indexes.
            return queryset.filter(status__in=OPEN_STATUSES)
        if current in Status.values:
            return queryset.filter(status=current)
        return queryset


# The bulk kinds: the three votes (bound to the revision the confirmation page showed), cancel
# and revoke.
BULK_LABELS = {
    Decision.APPROVE: "Approve",
    Decision.REJECT: "Reject",
    Decision.REQUEST_CHANGES: "Request changes",
    "cancel": "Cancel",
    "revoke": "Revoke",
}


def run_decision(
    kind: str,
    proposal: Proposal,
    *,
    user: User,
    reason: str,
    revision: int,
    access: Access,
) -> Proposal:
    """One service call for one proposal (bulk actions and the proposal page share this)."""
    if kind in Decision.values:
        decided, _vote = services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=user,
            decision=kind,
            revision=revision,
            comment=reason,
            access=access,
        )
        return decided
    if kind == "cancel":
        return services.proposal_cancel(
            proposal_id=proposal.pk, actor=user, reason=reason, access=access
        )
    if kind == "revoke":
        return services.proposal_revoke(
            proposal_id=proposal.pk, actor=user, reason=reason, access=access
        )
    raise ValueError(f"Unknown decision {kind!r}.")


def reason_required(kind: str, proposals: Iterable[Proposal]) -> bool:
    if kind == "revoke":
        return True
    return any(kind in (p.checkpoint.require_reason_on or []) for p in proposals)


@admin.register(Proposal)
class ProposalAdmin(VisibleHistoryMixin, SimpleHistoryAdmin):
    # Read-only page, but Django still builds the form: say what Django 6 will assume.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = (
        "title",
        "checkpoint",
        "status",
        "priority",
        "region",
        "sla_due_at",
        "confidence",
        "claimed_by",
    )
    list_filter = (
        ("checkpoint", admin.RelatedOnlyFieldListFilter),
        StatusFilter,
        "priority",
        "region",
    )
    search_fields = ("title", "external_id", "summary")
    list_select_related = ("checkpoint", "claimed_by")
    ordering = ("sla_due_at", "id")
    list_per_page = 50
    # The queue can be large: no second COUNT over every visible row.
    show_full_result_count = False
    change_form_template = "admin/proposals/proposal/change_form.html"
    history_list_display = ["status", "revision"]
    actions = (
        "approve_selected",
        "reject_selected",
        "request_changes_selected",
        "cancel_selected",
        "revoke_selected",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "title",
                    "checkpoint",
                    "status",
                    "resolution",
                    "revision",
                    "summary",
                    "submitted_by",
                )
            },
        ),
        ("Payload", {"fields": ("payload_json", "options_json", "context_json")}),
        (
            "Decision",
            {"fields": ("approved_payload_json", "selected_option", "decided_at")},
        ),
        (
            "Details",
            {
                "classes": ("collapse",),
                "fields": (
                    "id",
                    "confidence",
                    "priority",
                    "impact",
                    "region",
                    "labels_json",
                    "external_id",
                    "callback_url",
                    "eligible_reviewers",
                    "quorum_required",
                    "claimed_by",
                    "claimed_until",
                    "due_at",
                    "sla_due_at",
                    "escalated_at",
                    "created_at",
                    "updated_at",
                ),
            },
        ),
    )

    # -- visibility and permissions: the same rule as the API ------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Proposal]:
        qs = super().get_queryset(request)
        if request_user(request).is_superuser:
            return qs
        return qs.filter(visible_proposals_q(request_access(request)))

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Proposal | None:
        try:
            return selectors.proposal_get(request_access(request), object_id, with_children=True)
        except NotFound:
            return None

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_view_permission(request, obj):
            return False
        return obj is None or request_access(request).may_view(obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # proposals come from agents, through proposal_submit

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the page is a read-only review page; decisions go through services

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_review_permission(self, request: HttpRequest) -> bool:
        return bool(request_access(request).ids(REVIEW, REVIEW_ESCALATED))

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return bool(request_access(request).ids(MANAGE))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return list(flatten_fieldsets(self.get_fieldsets(request, obj)))

    # -- the read-only page ----------------------------------------------------------------

    @admin.display(description="payload")
    def payload_json(self, obj: Proposal) -> SafeString:
        return pretty_json(obj.payload)

    @admin.display(description="options")
    def options_json(self, obj: Proposal) -> SafeString:
        return pretty_json(obj.options)

    @admin.display(description="context")
    def context_json(self, obj: Proposal) -> SafeString:
        return pretty_json(obj.context)

    @admin.display(description="approved payload")
    def approved_payload_json(self, obj: Proposal) -> SafeString:
        return pretty_json(obj.approved_payload)

    @admin.display(description="labels")
    def labels_json(self, obj: Proposal) -> SafeString:
        return pretty_json(obj.labels)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self.review_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def review_context(self, request: HttpRequest, proposal: Proposal) -> dict[str, Any]:
        access = request_access(request)
        votes = list(proposal.votes.all())  # prefetched by the selector
        current = [v for v in votes if v.revision == proposal.revision]
        counts = {d: sum(1 for v in current if v.decision == d) for d in Decision.values}
        # The one rule the services enforce: proposals.permissions.allowed_actions.
        now = timezone.now()
        allowed = allowed_actions(access, proposal, votes=votes, now=now)
        can_cancel, can_revoke = allowed.cancel, allowed.revoke
        # A submitter who also reviews the checkpoint sees the form with the reason it is
        # refused (the template says so), rather than no form at all.
        can_vote = allowed.vote or (
            access.is_submitter(proposal)
            and access.reviewer_role(proposal)
            and policy.voting_open(status=proposal.status, due_at=proposal.due_at, now=now)
        )
        return {
            "revisions": [
                {
                    "revision": r,
                    "patch": [
                        {
                            "op": op.get("op"),
                            "path": op.get("path"),
                            "value": compact_json(op["value"]) if "value" in op else "",
                        }
                        for op in (r.patch or [])
                        if isinstance(op, dict)
                    ],
                    "payload": json.dumps(
                        r.payload, indent=2, sort_keys=True, ensure_ascii=False, default=str
                    ),
                }
                for r in proposal.revisions.all()
            ],
            "votes": votes,
            "quorum": {
                "approvals": counts[Decision.APPROVE],
                "rejections": counts[Decision.REJECT],
                "changes_requested": counts[Decision.REQUEST_CHANGES],
                "required": proposal.quorum_required,
                "eligible": proposal.eligible_reviewers,
                "rule": proposal.checkpoint.quorum_rule,
                "veto": proposal.checkpoint.veto,
                "revision": proposal.revision,
            },
            "audit_events": [
                {"event": e, "data": compact_json(e.data)}
                for e in selectors.proposal_events(access, proposal.pk)
            ],
            "review_form": ReviewForm(proposal=proposal) if can_vote else None,
            "is_submitter": access.is_submitter(proposal),
            "review_url": reverse("admin:proposals_proposal_review", args=[proposal.pk]),
            "manage_form": ManageForm() if (can_cancel or can_revoke) else None,
            "can_cancel": can_cancel,
            "can_revoke": can_revoke,
            "manage_url": reverse("admin:proposals_proposal_manage", args=[proposal.pk]),
        }

    # -- the page's forms: one service call each -------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<path:object_id>/review/",
                self.admin_site.admin_view(self.review_view),
                name="proposals_proposal_review",
            ),
            path(
                "<path:object_id>/manage/",
                self.admin_site.admin_view(self.manage_view),
                name="proposals_proposal_manage",
            ),
        ]
        return own + super().get_urls()

    def _fetch_for_post(self, request: HttpRequest, object_id: str) -> Proposal:
        if request.method != "POST":
            raise PermissionDenied  # GETs never act
        proposal = self.get_object(request, unquote(object_id))
        if proposal is None:
            raise Http404("Proposal not found.")
        if not self.has_view_permission(request, proposal):
            raise PermissionDenied
        return proposal

    def _back(self, proposal: Proposal) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:proposals_proposal_change", args=[proposal.pk]))

    def review_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        proposal = self._fetch_for_post(request, object_id)
        form = ReviewForm(request.POST, proposal=proposal)
        if not form.is_valid():
            for field, errors in form.errors.items():
                for error in errors:
                    text = str(error)
                    messages.error(request, text if field == "__all__" else f"{field}: {text}")
            return self._back(proposal)
        data = form.cleaned_data
        try:
            decided, _vote = services.vote_cast(
                proposal_id=proposal.pk,
                reviewer=request_user(request),
                decision=data["decision"],
                revision=data["revision"],
                comment=data["comment"],
                selected_option=data.get("selected_option") or "",
                adjustments=data.get("adjustments"),
                access=request_access(request),
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                f"Your {data['decision'].replace('_', ' ')} vote was recorded; "
                f"the proposal is {decided.status.replace('_', ' ')}.",
            )
        return self._back(proposal)

    def manage_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        proposal = self._fetch_for_post(request, object_id)
        form = ManageForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Choose cancel or revoke.")
            return self._back(proposal)
        action = form.cleaned_data["action"]
        try:
            decided = run_decision(
                action,
                proposal,
                user=request_user(request),
                reason=form.cleaned_data["reason"],
                revision=proposal.revision,
                access=request_access(request),
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"The proposal is {decided.status.replace('_', ' ')}.")
        return self._back(proposal)

    # -- bulk actions: a confirmation page asking for the reason, then one call per row ----

    def _bulk(
        self, request: HttpRequest, queryset: QuerySet[Proposal], kind: str
    ) -> HttpResponse | None:
        proposals = list(queryset.select_related("checkpoint").order_by("sla_due_at", "id"))
        required = reason_required(kind, proposals)
        if "apply" not in request.POST:
            form = BulkReasonForm(reason_required=required)
        else:
            form = BulkReasonForm(request.POST, reason_required=required)
            if form.is_valid():
                self._apply(request, proposals, kind, form.cleaned_data["reason"])
                return None  # back to the changelist, with one message per row
        context = {
            **self.admin_site.each_context(request),
            "title": f"{BULK_LABELS[kind]} {len(proposals)} proposal(s)",
            "opts": self.model._meta,
            "kind": kind,
            "kind_label": BULK_LABELS[kind],
            "action_name": request.POST.get("action", ""),
            "rows": [{"proposal": p, "payload": compact_json(p.payload)} for p in proposals],
            "form": form,
            "reason_required": required,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/proposals/proposal/bulk_decision.html", context)

    def _apply(
        self, request: HttpRequest, proposals: list[Proposal], kind: str, reason: str
    ) -> None:
        user = request_user(request)
        access = request_access(request)
        for proposal in proposals:
            # Bind the vote to the revision the confirmation page showed, not a newer one.
            seen = request.POST.get(f"revision_{proposal.pk}", "")
            revision = int(seen) if seen.isdigit() else proposal.revision
            try:
                decided = run_decision(
                    kind, proposal, user=user, reason=reason, revision=revision, access=access
                )
            except ApplicationError as exc:
                messages.error(request, f"“{proposal.title}”: {exc.message}")
            else:
                messages.success(
                    request,
                    f"“{proposal.title}”: {BULK_LABELS[kind].lower()} done; "
                    f"now {decided.status.replace('_', ' ')}.",
                )

    @admin.action(description="Approve selected proposals", permissions=["review"])
    def approve_selected(
        self, request: HttpRequest, queryset: QuerySet[Proposal]
    ) -> HttpResponse | None:
        return self._bulk(request, queryset, Decision.APPROVE)

    @admin.action(description="Reject selected proposals", permissions=["review"])
    def reject_selected(
        self, request: HttpRequest, queryset: QuerySet[Proposal]
    ) -> HttpResponse | None:
        return self._bulk(request, queryset, Decision.REJECT)

    @admin.action(description="Request changes on selected proposals", permissions=["review"])
    def request_changes_selected(
        self, request: HttpRequest, queryset: QuerySet[Proposal]
    ) -> HttpResponse | None:
        return self._bulk(request, queryset, Decision.REQUEST_CHANGES)

    @admin.action(description="Cancel selected proposals", permissions=["manage"])
    def cancel_selected(
        self, request: HttpRequest, queryset: QuerySet[Proposal]
    ) -> HttpResponse | None:
        return self._bulk(request, queryset, "cancel")

    @admin.action(description="Revoke selected approvals", permissions=["manage"])
    def revoke_selected(
        self, request: HttpRequest, queryset: QuerySet[Proposal]
    ) -> HttpResponse | None:
        return self._bulk(request, queryset, "revoke")


# --- checkpoints ---------------------------------------------------------------------------


def _group_names(checkpoint: Checkpoint, codename: str) -> str:
    return ", ".join(g.name for g in groups_with(checkpoint, codename).order_by("name")) or "—"


def _user_names(checkpoint: Checkpoint, codename: str) -> str:
    return ", ".join(u.get_username() for u in users_with(checkpoint, codename)) or "—"


@admin.register(Checkpoint)
class CheckpointAdmin(VisibleHistoryMixin, SimpleHistoryAdmin):
    """Checkpoints for their managers: `manage_checkpoint` on a checkpoint (or globally, the
    manager role) is all it takes to edit it, grant its permissions to groups or users, run
    its bypass and connect an agent; adding a checkpoint needs the global role. Django's model
    permissions are not asked for: the guardian grants are the one source of who manages."""

    form = CheckpointGrantsForm
    list_display = ("slug", "name", "enabled", "mode", "quorum_rule", "timeout_seconds", "bypass")
    list_filter = ("enabled", "mode", "quorum_rule")
    search_fields = ("slug", "name", "description")
    prepopulated_fields = {"slug": ("name",)}
    history_list_display = ["enabled", "quorum_rule", "bypass_until"]
    fieldsets = (
        (None, {"fields": ("slug", "name", "description", "enabled", "mode")}),
        (
            "Routing",
            {
                "fields": (
                    "auto_approve_at",
                    "auto_reject_below",
                    "review_when",
                    "sample_rate",
                    "submitter_groups",
                    "submitter_users",
                )
            },
        ),
        (
            "Quorum",
            {
                "fields": (
                    "quorum_rule",
                    "quorum_count",
                    "veto",
                    "approver_groups",
                    "approver_users",
                    "escalation_groups",
                    "escalation_users",
                    "manager_groups",
                    "manager_users",
                )
            },
        ),
        (
            "Typed payloads",
            {
                "fields": ("payload_schema",),
                "description": "A JSON Schema (2020-12) that submitted, revised and edited "
                "payloads must satisfy (DESIGN §6). Empty: any JSON object.",
            },
        ),
        (
            "Timing",
            {
                "fields": (
                    "timeout_seconds",
                    "timeout_action",
                    "escalate_after_seconds",
                    "remind_after_seconds",
                    "sla_seconds",
                    "revocation_window_seconds",
                    "max_revisions",
                    "require_reason_on",
                )
            },
        ),
        (
            "Bypass",
            {
                "fields": ("bypass_until", "bypass_reason"),
                "description": "An emergency bypass approves new proposals without review. "
                "Start or end one with the list's actions: they are audited and announced.",
            },
        ),
    )
    readonly_fields = ("bypass_until", "bypass_reason")
    actions = ("start_bypass", "end_bypass")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Checkpoint]:
        qs = super().get_queryset(request)
        if request_user(request).is_superuser:
            return qs
        return qs.filter(pk__in=request_access(request).visible_checkpoint_ids)

    def _global_manager(self, request: HttpRequest) -> bool:
        """The manager role: manage_checkpoint granted model-wide (e.g. the "managers" group
        seed_demo creates), or a superuser."""
        user = request.user
        return bool(user.is_active and (user.is_superuser or user.has_perm(f"proposals.{MANAGE}")))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or bool(
            request_access(request).visible_checkpoint_ids
        )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        visible = request_access(request).visible_checkpoint_ids
        if obj is None:
            return bool(visible) or super().has_view_permission(request)
        return obj.pk in visible

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._global_manager(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Editing a policy (and who holds it) is for managers of that checkpoint.
        if obj is None:
            return self._global_manager(request) or bool(request_access(request).ids(MANAGE))
        return request_access(request).has(MANAGE, obj.pk)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # proposals and audit events point at it: disable it instead

    def save_related(
        self, request: HttpRequest, form: ModelForm[Any], formsets: Any, change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        for name, codename in GROUP_FIELDS.items():
            if name in form.cleaned_data:
                set_groups(form.instance, codename, form.cleaned_data[name])
        for name, codename in USER_FIELDS.items():
            if name in form.cleaned_data:
                set_users(
                    form.instance, codename, form.cleaned_data[name], actor=request_user(request)
                )

    # -- connecting an agent: a service account, its submit grant and its key at once --------

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/agent/",
                self.admin_site.admin_view(self.agent_view),
                name="proposals_checkpoint_agent",
            ),
            *super().get_urls(),
        ]

    def agent_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        checkpoint = self.get_object(request, unquote(object_id))
        if checkpoint is None:
            raise Http404
        if not self.has_change_permission(request, checkpoint):
            raise PermissionDenied
        form = CheckpointAgentForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            agent = service_account_onboard(
                checkpoint=checkpoint,
                username=form.cleaned_data["username"],
                description=form.cleaned_data["description"],
                key_name=form.cleaned_data["key_name"],
                created_by=request_user(request),
            )
            messages.success(
                request,
                format_html(
                    "Service account “{}” may now submit to {}. Its API key, shown only this "
                    'once: <code class="hitl-token">{}</code>',
                    agent.user.get_username(),
                    checkpoint.slug,
                    agent.key.token,
                ),
            )
            messages.warning(
                request,
                f"Secret that signs its callback_url webhooks (shown once): {agent.signing_secret}",
            )
            return HttpResponseRedirect(
                reverse("admin:proposals_checkpoint_change", args=[checkpoint.pk])
            )
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": f"Connect an agent to {checkpoint.slug}",
            "opts": opts,
            "form": form,
            "help_text": "Creates a service account allowed to submit to this checkpoint, and "
            "its first API key (shown once).",
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/hitl/create_form.html", context)

    # -- emergency bypass: the audited services, never a plain field edit ------------------

    @admin.action(
        description="Start an emergency bypass on selected checkpoints", permissions=["change"]
    )
    def start_bypass(
        self, request: HttpRequest, queryset: QuerySet[Checkpoint]
    ) -> HttpResponse | None:
        checkpoints = list(queryset)
        form = BypassForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            until, reason = form.cleaned_data["until"], form.cleaned_data["reason"]
            self._each_checkpoint(
                request,
                checkpoints,
                lambda cp: services.checkpoint_bypass_start(
                    checkpoint_id=cp.pk, actor=request_user(request), until=until, reason=reason
                ),
                "bypassed until " + until.isoformat(),
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Start an emergency bypass",
            "opts": self.model._meta,
            "checkpoints": checkpoints,
            "form": form,
            "action_name": request.POST.get("action", ""),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/proposals/checkpoint/bypass.html", context)

    @admin.action(description="End the emergency bypass", permissions=["change"])
    def end_bypass(self, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        self._each_checkpoint(
            request,
            list(queryset),
            lambda cp: services.checkpoint_bypass_end(
                checkpoint_id=cp.pk, actor=request_user(request), reason="ended in the admin"
            ),
            "bypass ended",
        )

    def _each_checkpoint(
        self,
        request: HttpRequest,
        checkpoints: list[Checkpoint],
        call: Callable[[Checkpoint], Any],
        done: str,
    ) -> None:
        for checkpoint in checkpoints:
            if not self.has_change_permission(request, checkpoint):
                messages.error(request, f"{checkpoint.slug}: you do not manage this checkpoint.")
                continue
            try:
                call(checkpoint)
            except ApplicationError as exc:
                messages.error(request, f"{checkpoint.slug}: {exc.message}")
            else:
                messages.success(request, f"{checkpoint.slug}: {done}.")

    @admin.display(description="bypass", boolean=True)
    def bypass(self, obj: Checkpoint) -> bool:
        return services.bypass_active(obj, timezone.now())

    # Shown instead of the form fields when the page is read-only (no change permission).
    @admin.display(description="approver groups")
    def approver_groups(self, obj: Checkpoint) -> str:
        return _group_names(obj, REVIEW)

    @admin.display(description="escalation groups")
    def escalation_groups(self, obj: Checkpoint) -> str:
        return _group_names(obj, REVIEW_ESCALATED)

    @admin.display(description="manager groups")
    def manager_groups(self, obj: Checkpoint) -> str:
        return _group_names(obj, MANAGE)

    @admin.display(description="submitter groups")
    def submitter_groups(self, obj: Checkpoint) -> str:
        return _group_names(obj, SUBMIT)

    @admin.display(description="approver users")
    def approver_users(self, obj: Checkpoint) -> str:
        return _user_names(obj, REVIEW)

    @admin.display(description="escalation users")
    def escalation_users(self, obj: Checkpoint) -> str:
        return _user_names(obj, REVIEW_ESCALATED)

    @admin.display(description="manager users")
    def manager_users(self, obj: Checkpoint) -> str:
        return _user_names(obj, MANAGE)

    @admin.display(description="submitter users")
    def submitter_users(self, obj: Checkpoint) -> str:
        return _user_names(obj, SUBMIT)
