"""Server-rendered pages: the reviewer's desk (queue and proposal page), the manager's
dashboard, "connect an agent", and the landing page of one-click email links.

Thin, like the API: read through selectors (which authorize), write through one service of
proposals.services, render. Every state change is a POST (CSRF-protected); GETs change nothing.
"""

from __future__ import annotations

import json
import secrets
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

import jsonpatch
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core import signing
from django.db import transaction
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from hitl import dashboard as dash
from hitl import review_ui
from hitl.keys import api_key_create, service_account_create
from notifications import emails
from notifications.models import UsedEmailLink
from proposals import selectors, services
from proposals.errors import ApplicationError, NotFound, StaleRevision
from proposals.models import (
    OPEN_STATUSES,
    Checkpoint,
    Decision,
    Priority,
    Proposal,
    Revision,
    Status,
    Vote,
)
from proposals.permissions import (
    MANAGE,
    SUBMIT,
    Access,
    access_for,
    allowed_actions,
    reviewable_proposals_q,
)

QUEUE_PAGE_SIZE = 50
# Context keys the proposal page shows in their own sections; the rest is listed as is.
KNOWN_CONTEXT = frozenset(
    {"explanation", "rationale", "feature_importances", "features", "input_data", "inputs"}
    | {"similar_cases", "similar"}
)


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _proposal_or_404(access: Access, proposal_id: str, **kwargs: Any) -> Proposal:
    try:
        return selectors.proposal_get(access, proposal_id, **kwargs)
    except NotFound:
        raise Http404 from None


# --- the queue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueQuery:
    """The queue's filters, read from (and written back to) the URL."""

    scope: str  # "mine": what I may decide; "all": open work of checkpoints I manage, too
    status: str
    checkpoint: str
    priority: str
    region: str
    label: str  # "key:value"
    claimed: str  # "me" or ""
    q: str
    after: str  # keyset cursor "<sla_due_at iso>|<id>"

    @classmethod
    def from_request(cls, request: HttpRequest, access: Access) -> QueueQuery:
        get = request.GET
        manages = bool(access.ids(MANAGE))
        default_scope = "mine" if access.ids(*_reviewing()) or not manages else "all"
        scope = get.get("scope") or default_scope
        if scope not in ("mine", "all") or (scope == "all" and not manages):
            scope = "mine"
        status = get.get("status", Status.PENDING)
        if status not in (*OPEN_STATUSES, "open"):
            status = Status.PENDING
        return cls(
            scope=scope,
            status=status,
            checkpoint=get.get("checkpoint", "").strip(),
            priority=get.get("priority", "") if get.get("priority") in Priority.values else "",
            region=get.get("region", "").strip(),
            label=get.get("label", "").strip(),
            claimed="me" if get.get("claimed") == "me" else "",
            q=get.get("q", "").strip()[:200],
            after=get.get("after", ""),
        )

    def params(self, **override: str) -> str:
        values = {
            "scope": self.scope,
            "status": self.status,
            "checkpoint": self.checkpoint,
            "priority": self.priority,
            "region": self.region,
            "label": self.label,
            "claimed": self.claimed,
            "q": self.q,
        } | override
        return urlencode({k: v for k, v in values.items() if v})


def _reviewing() -> tuple[str, ...]:
    from proposals.permissions import REVIEW, REVIEW_ESCALATED

    return (REVIEW, REVIEW_ESCALATED)


# What a queue row shows (templates/hitl/_queue_rows.html), read as `.values()`: a page is
# one query of plain rows, no model instances.
QUEUE_ROW_FIELDS = (
    "id",
    "revision",
    "title",
    "summary",
    "options",
    "priority",
    "confidence",
    "impact",
    "created_at",
    "sla_due_at",
    "due_at",
    "quorum_required",
    "claimed_by_id",
    "claimed_by__username",
    "checkpoint__slug",
    "checkpoint__require_reason_on",
    "approvals",
)


def queue_page(
    access: Access, query: QueueQuery, *, size: int, exclude: Any = None
) -> list[dict[str, Any]]:
    """The desk's rows, most urgent first: `size` of them after the URL's cursor, as dicts
    of QUEUE_ROW_FIELDS (plus `exclude`: a proposal id to leave out).

    Urgency is one score: the SLA deadline (`sla_due_at`), earliest first, ties by id. The
    deadline is the submission time plus the checkpoint's SLA for the proposal's priority, so
    it already folds in priority and age: a critical item submitted now outranks a low one
    submitted yesterday exactly when its deadline is sooner. Ordering by a stored column keeps
    every page on the open-queue indexes (selectors.proposal_page), whatever the page."""
    statuses: list[str] = (
        [str(s) for s in OPEN_STATUSES] if query.status == "open" else [query.status]
    )
    filters = selectors.ProposalFilters(
        status=statuses,
        checkpoint=query.checkpoint or None,
        region=query.region or None,
        priority=[query.priority] if query.priority else None,
        labels=dict([query.label.split(":", 1)]) if ":" in query.label else None,
        reviewable_by_me=query.scope == "mine",
    )
    approvals = (
        Vote.objects.filter(
            proposal=OuterRef("pk"), revision=OuterRef("revision"), decision=Decision.APPROVE
        )
        .order_by()
        .values("proposal")
        .annotate(n=Count("id"))
        .values("n")
    )

    def shape(qs: QuerySet[Proposal]) -> QuerySet[Any]:
        if query.scope == "all":
            qs = qs.filter(reviewable_proposals_q(access) | Q(checkpoint_id__in=access.ids(MANAGE)))
        else:
            # What I already voted on (a quorum above one) waits for others, not for me.
            qs = qs.exclude(
                Exists(
                    Vote.objects.filter(
                        proposal=OuterRef("pk"),
                        revision=OuterRef("revision"),
                        reviewer=access.user_id,
                    )
                )
            )
        if query.claimed == "me":
            qs = qs.filter(claimed_by_id=access.user_id)
        if query.q:
            qs = qs.filter(Q(title__icontains=query.q) | Q(summary__icontains=query.q))
        if exclude is not None:
            qs = qs.exclude(pk=exclude)
        return qs.annotate(
            approvals=Coalesce(Subquery(approvals, output_field=IntegerField()), Value(0))
        ).values(*QUEUE_ROW_FIELDS)

    after = None
    if query.after:
        stamp, _, pk = query.after.partition("|")
        when = parse_datetime(stamp)
        with suppress(ValueError):  # a mangled cursor starts from the top
            after = (when, uuid.UUID(pk)) if when else None
    return selectors.proposal_page(access, filters, size=size, after=after, shape=shape)


def _queue_context(request: HttpRequest, access: Access) -> dict[str, Any]:
    query = QueueQuery.from_request(request, access)
    rows = queue_page(access, query, size=QUEUE_PAGE_SIZE + 1)
    more = len(rows) > QUEUE_PAGE_SIZE
    rows = rows[:QUEUE_PAGE_SIZE]
    next_url = ""
    if more:
        last = rows[-1]
        cursor = f"{last['sla_due_at'].isoformat()}|{last['id']}"
        next_url = "?" + query.params(after=cursor)
    return {
        "proposals": rows,
        "query": query,
        "next_url": next_url,
        "is_manager": bool(access.ids(MANAGE)),
        "checkpoints": selectors.checkpoint_list(access).only("slug"),
        "priorities": Priority.values,
        "user_id": access.user_id,
    }


@login_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    access = access_for(_user(request))
    request.hitl_access = access  # type: ignore[attr-defined]  # the menu's, see manages_any
    context = _queue_context(request, access)
    template = "hitl/_queue_rows.html" if request.GET.get("partial") else "hitl/queue.html"
    return render(request, template, context)


def _next_item(access: Access, after: Proposal) -> Any:
    """The desk's next item after a decision (its id): the most urgent one left for this
    reviewer, or None."""
    query = QueueQuery(
        scope="mine", status=Status.PENDING, checkpoint="", priority="", region="", label="",
        claimed="", q="", after="",
    )  # fmt: skip
    rows = queue_page(access, query, size=1, exclude=after.pk)
    return rows[0]["id"] if rows else None


# --- the proposal page ---------------------------------------------------------------------


def _feature_importances(context: dict[str, Any]) -> list[tuple[str, float]]:
    """{"name": weight} or [{"name"/"feature": ..., "importance"/"value"/"weight": ...}]."""
    raw = context.get("feature_importances") or context.get("features") or {}
    pairs: list[tuple[str, float]] = []
    if isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items() if isinstance(v, int | float)]
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                name = item.get("name") or item.get("feature")
                value = next(
                    (item[k] for k in ("importance", "value", "weight") if k in item), None
                )
                if name is not None and isinstance(value, int | float):
                    pairs.append((str(name), float(value)))
    return sorted(pairs, key=lambda kv: -abs(kv[1]))[:20]


def _recommendation(proposal: Proposal) -> dict[str, Any]:
    """What the AI recommends: its most confident option, or its payload as submitted."""
    if proposal.options:
        top = max(proposal.options, key=lambda o: o.get("confidence") or 0)
        return {
            "kind": "option",
            "key": top.get("key"),
            "label": top.get("label") or top.get("key"),
            "confidence": top.get("confidence"),
        }
    return {"kind": "payload", "confidence": proposal.confidence}


def _revision_pair(
    revisions: list[Revision], request: HttpRequest
) -> tuple[Revision | None, Revision | None]:
    by_number = {r.number: r for r in revisions}
    try:
        left = by_number.get(int(request.GET.get("from", "")))
        right = by_number.get(int(request.GET.get("to", "")))
    except ValueError:
        left = right = None
    if left is None or right is None:
        if len(revisions) < 2:
            return None, None
        left, right = revisions[-2], revisions[-1]
    return left, right


@login_required
@require_GET
def proposal_page(request: HttpRequest, proposal_id: str) -> HttpResponse:
    access = access_for(_user(request))
    proposal = _proposal_or_404(access, proposal_id, with_children=True)
    revisions = list(proposal.revisions.all())
    votes = list(proposal.votes.all())
    current = [v for v in votes if v.revision == proposal.revision]
    left, right = _revision_pair(revisions, request)
    stale_from = request.GET.get("stale")
    stale_rows: list[review_ui.DiffRow] = []
    if stale_from and stale_from.isdigit():
        old = next((r for r in revisions if r.number == int(stale_from)), None)
        if old is not None and old.number != proposal.revision:
            stale_rows = [
                row
                for row in review_ui.diff_rows(old.payload, proposal.payload)
                if row.state != "same"
            ]
    similar = list(
        selectors.proposal_list(
            access, selectors.ProposalFilters(checkpoint=proposal.checkpoint.slug)
        )
        .exclude(pk=proposal.pk)
        .exclude(status__in=OPEN_STATUSES)
        .order_by("-decided_at")[:5]
    )
    context = proposal.context if isinstance(proposal.context, dict) else {}
    features = _feature_importances(context)
    # The one rule the services enforce (deadline included): proposals.permissions.
    allowed = allowed_actions(access, proposal, votes=votes, now=timezone.now())
    may_vote = allowed.vote
    voted = any(v.reviewer_id == access.user_id for v in current)
    checkpoint = proposal.checkpoint
    return render(
        request,
        "hitl/proposal.html",
        {
            "proposal": proposal,
            "checkpoint": checkpoint,
            "revisions": [
                {"revision": r, "changed": review_ui.changed_paths(r.patch)} for r in revisions
            ],
            "votes": votes,
            "current_votes": current,
            "approvals": sum(v.decision == Decision.APPROVE for v in current),
            "may_vote": may_vote and not voted,
            "voted": voted,
            "may_claim": allowed.claim,
            "may_cancel": allowed.cancel,
            "may_revoke": allowed.revoke,
            "claimed_by_me": proposal.claimed_by_id == access.user_id,
            "reason_on": [str(d) for d in checkpoint.require_reason_on or []],
            "reason_on_text": " or ".join(
                str(d).replace("_", " ") for d in checkpoint.require_reason_on or []
            ),
            "recommendation": _recommendation(proposal),
            "options": sorted(
                [o for o in proposal.options or [] if isinstance(o, dict)],
                key=lambda o: -(o.get("confidence") or 0),
            ),
            "explanation": context.get("explanation") or context.get("rationale") or "",
            "features": features,
            "features_chart": {
                "labels": [k for k, _ in features],
                "values": [v for _, v in features],
            },
            "input_data": context.get("input_data") or context.get("inputs"),
            "similar_cases": context.get("similar_cases") or context.get("similar"),
            "extra_context": {k: v for k, v in context.items() if k not in KNOWN_CONTEXT},
            "similar": similar,
            "diff_left": left,
            "diff_right": right,
            "diff_rows": review_ui.diff_rows(left.payload, right.payload) if left and right else [],
            "diff_left_label": f"r{left.number}" if left else "",
            "diff_right_label": f"r{right.number}" if right else "",
            "stale_from": stale_from if stale_rows else "",
            "stale_label": f"r{stale_from} (what you saw)",
            "current_label": f"r{proposal.revision} (now)",
            "stale_rows": stale_rows,
            "events": list(
                AuditEvent.objects.filter(proposal=proposal)
                .order_by("seq")
                .select_related(None)[:300]
            ),
            "editable": may_vote and not voted and not proposal.options,
        },
    )


# --- deciding ------------------------------------------------------------------------------


def _refusal(
    request: HttpRequest, access: Access, proposal_id: str, exc: ApplicationError, revision: int
) -> HttpResponse:
    """A refused decision: JSON for the desk's script, a message and the page otherwise. A
    stale revision links to the new one with what changed since the one the reviewer saw."""
    page = reverse("proposal-page", args=[proposal_id])
    if isinstance(exc, StaleRevision):
        page += "?" + urlencode({"stale": revision})
    if _wants_json(request):
        return JsonResponse(
            {
                "ok": False,
                "code": exc.code,
                "message": exc.message,
                "details": exc.details,
                "url": page,
            },
            status=exc.status_code,
        )
    messages.error(request, exc.message)
    return redirect(page)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@login_required
@require_POST
def decide(request: HttpRequest, proposal_id: str) -> HttpResponse:
    """Approve / reject / request changes on the revision the reviewer saw, through the
    same service as the API. `advance=1`: go on to the next item of the desk."""
    user = _user(request)
    access = access_for(user)
    proposal = _proposal_or_404(access, proposal_id)
    revision = _int(request.POST.get("revision"))
    decision = request.POST.get("decision", "")
    try:
        proposal, _ = services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=user,
            decision=decision,
            revision=revision,
            comment=request.POST.get("comment", ""),
            selected_option=request.POST.get("selected_option", "")
            if decision == Decision.APPROVE
            else "",
            access=access,
        )
    except ApplicationError as exc:
        return _refusal(request, access, str(proposal.pk), exc, revision)
    verb = {"approve": "Approved", "reject": "Rejected", "request_changes": "Changes requested:"}
    text = f"{verb.get(decision, 'Voted')} “{proposal.title}”. Your vote is recorded"
    text += f"; the proposal is now {proposal.get_status_display().lower()}."
    if _wants_json(request):
        return JsonResponse({"ok": True, "status": proposal.status, "message": text})
    messages.success(request, text)
    if request.POST.get("advance"):
        following = _next_item(access, proposal)
        if following is not None:
            return redirect("proposal-page", proposal_id=following)
        return redirect("queue")
    return redirect("proposal-page", proposal_id=proposal.pk)


@login_required
@require_http_methods(["GET", "POST"])
def edit_and_approve(request: HttpRequest, proposal_id: str) -> HttpResponse:
    """Edit the payload in a form (from the JSON Schema, else inferred from the payload),
    see the diff, confirm: one approve vote carrying the patch, as the API takes it."""
    user = _user(request)
    access = access_for(user)
    proposal = _proposal_or_404(access, proposal_id)
    if proposal.options:
        messages.error(request, "Proposals with options are approved by picking an option.")
        return redirect("proposal-page", proposal_id=proposal.pk)
    if not access.may_review(proposal):
        raise Http404
    schema = review_ui.payload_schema(proposal)
    fields = review_ui.edit_fields(proposal.payload, schema)
    revision = _int(request.POST.get("revision")) or proposal.revision
    context: dict[str, Any] = {
        "proposal": proposal,
        "fields": fields,
        "schema": schema,
        "revision": revision,
        "comment": request.POST.get("comment", ""),
        "reason_on": [str(d) for d in proposal.checkpoint.require_reason_on or []],
    }
    if request.method == "GET":
        return render(request, "hitl/edit.html", context)

    if request.POST.get("step") == "confirm":
        try:
            edited = json.loads(request.POST.get("edited", ""))
        except ValueError:
            edited = None
        if not isinstance(edited, dict):
            messages.error(request, "The edited payload was lost; please edit again.")
            return redirect("proposal-edit", proposal_id=proposal.pk)
        errors = review_ui.schema_errors(schema, edited)
        if errors:
            context.update(errors=errors)
            return render(request, "hitl/edit.html", context, status=422)
        try:
            # The patch is computed against the revision the reviewer edited; the service
            # refuses it when that revision is no longer current (StaleRevision).
            base = Revision.objects.get(proposal=proposal, number=revision).payload
        except Revision.DoesNotExist:
            base = proposal.payload
        patch = jsonpatch.make_patch(base, edited).patch
        try:
            proposal, _ = services.vote_cast(
                proposal_id=proposal.pk,
                reviewer=user,
                decision=Decision.APPROVE,
                revision=revision,
                comment=request.POST.get("comment", ""),
                patch=patch or None,
                access=access,
            )
        except ApplicationError as exc:
            return _refusal(request, access, str(proposal.pk), exc, revision)
        messages.success(
            request,
            f"Approved “{proposal.title}” with your edit (revision {proposal.revision}); "
            f"the proposal is now {proposal.get_status_display().lower()}.",
        )
        return redirect("proposal-page", proposal_id=proposal.pk)

    # Preview: parse the form, validate, show the diff; nothing is written yet.
    edited, ok = review_ui.read_edit(fields, request.POST, proposal.payload)
    errors = review_ui.schema_errors(schema, edited) if ok else []
    context.update(
        fields=fields,
        errors=errors,
        preview=ok and not errors,
        edited_json=json.dumps(edited, ensure_ascii=False),
        diff_rows=[r for r in review_ui.diff_rows(proposal.payload, edited) if r.state != "same"],
    )
    return render(request, "hitl/edit.html", context, status=200 if ok and not errors else 422)


@login_required
@require_POST
def claim(request: HttpRequest, proposal_id: str) -> HttpResponse:
    user = _user(request)
    access = access_for(user)
    proposal = _proposal_or_404(access, proposal_id)
    release = request.POST.get("release") == "1"
    try:
        if release:
            services.proposal_release(proposal_id=proposal.pk, actor=user, access=access)
        else:
            services.proposal_claim(proposal_id=proposal.pk, actor=user, access=access)
    except ApplicationError as exc:
        return _refusal(request, access, str(proposal.pk), exc, proposal.revision)
    text = "Released." if release else "Claimed: other reviewers see that you are on it."
    if _wants_json(request):
        return JsonResponse({"ok": True, "message": text})
    messages.success(request, text)
    return redirect("proposal-page", proposal_id=proposal.pk)


@login_required
@require_POST
def cancel_or_revoke(request: HttpRequest, proposal_id: str) -> HttpResponse:
    """Cancel an open proposal (its submitter or a manager) or revoke an approval inside the
    revocation window (a manager or an approver): the API's services, with a reason."""
    user = _user(request)
    access = access_for(user)
    proposal = _proposal_or_404(access, proposal_id)
    reason = request.POST.get("reason", "")
    action = request.POST.get("action")
    try:
        if action == "revoke":
            services.proposal_revoke(
                proposal_id=proposal.pk, actor=user, reason=reason, access=access
            )
        elif action == "cancel":
            services.proposal_cancel(
                proposal_id=proposal.pk, actor=user, reason=reason, access=access
            )
        else:
            raise Http404
    except ApplicationError as exc:
        return _refusal(request, access, str(proposal.pk), exc, proposal.revision)
    messages.success(request, "Revoked." if action == "revoke" else "Cancelled.")
    return redirect("proposal-page", proposal_id=proposal.pk)


@dataclass(frozen=True)
class BulkResult:
    proposal_id: str
    title: str
    ok: bool
    status_code: int
    message: str


@login_required
@require_POST
def bulk_decide(request: HttpRequest) -> HttpResponse:
    """One decision and one reason for several items of one checkpoint, each through the
    service in its own transaction: some may succeed while others get 409."""
    user = _user(request)
    access = access_for(user)
    decision = request.POST.get("decision", "")
    comment = request.POST.get("comment", "")
    wanted: dict[str, int] = {}
    for item in request.POST.getlist("items")[: settings.HITL_BULK_MAX]:
        pk, _, rev = item.partition("@")
        wanted[pk] = _int(rev)
    found = {
        str(p.pk): p
        for p in selectors.proposal_list(access, selectors.ProposalFilters()).filter(
            pk__in=[pk for pk in wanted if _is_uuid(pk)]
        )
    }
    results: list[BulkResult] = []
    error = ""
    if decision not in Decision.values:
        error = "Choose approve, reject or request changes."
    elif not wanted:
        error = "Select at least one proposal (x, or the checkboxes)."
    elif len({p.checkpoint_id for p in found.values()}) > 1:
        error = "Bulk decisions take items of one checkpoint at a time (one reason rule)."
    else:
        for pk, revision in wanted.items():
            proposal = found.get(pk)
            if proposal is None:
                results.append(BulkResult(pk, "?", False, 404, "Proposal not found."))
                continue
            try:
                decided, _ = services.vote_cast(
                    proposal_id=proposal.pk,
                    reviewer=user,
                    decision=decision,
                    revision=revision,
                    comment=comment,
                    access=access,
                )
            except ApplicationError as exc:
                results.append(BulkResult(pk, proposal.title, False, exc.status_code, exc.message))
                continue
            results.append(
                BulkResult(pk, proposal.title, True, 201, f"now {decided.get_status_display()}")
            )
    status = 200 if not error else 422
    template = "hitl/_bulk_result.html" if request.headers.get("HX-Request") else "hitl/bulk.html"
    return render(
        request,
        template,
        {
            "results": results,
            "error": error,
            "decision": decision,
            "succeeded": sum(r.ok for r in results),
            "failed": sum(not r.ok for r in results),
        },
        status=status,
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --- the manager's dashboard ---------------------------------------------------------------


def _managed(access: Access) -> frozenset[int]:
    return access.ids(MANAGE)


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    access = access_for(_user(request))
    if not _managed(access):
        return render(request, "hitl/forbidden.html", {"what": "the dashboard"}, status=403)
    try:
        window = dash.Window.from_params(request.GET)
    except ValueError as exc:
        messages.error(request, str(exc))
        window = dash.Window.from_params({})
    checkpoints = list(Checkpoint.objects.filter(pk__in=_managed(access)).order_by("slug"))
    slug = request.GET.get("checkpoint", "")
    scope = [c for c in checkpoints if c.slug == slug] if slug else checkpoints
    summary = dash.summary(scope, window)
    return render(
        request,
        "hitl/dashboard.html",
        {
            "summary": summary,
            "window": window,
            "checkpoints": checkpoints,
            "selected": slug,
            "periods": dash.PERIODS,
            "chart_data": dash.chart_data(summary),
        },
    )


@login_required
@require_POST
def apply_threshold(request: HttpRequest) -> HttpResponse:
    """The dashboard's "apply": set a checkpoint's auto_approve_at to the suggested value,
    through the audited service."""
    user = _user(request)
    access = access_for(user)
    checkpoint = Checkpoint.objects.filter(
        pk__in=_managed(access), slug=request.POST.get("checkpoint", "")
    ).first()
    if checkpoint is None:
        raise Http404
    raw = request.POST.get("value", "")
    try:
        value: float | None = float(raw) if raw else None
        services.checkpoint_set_auto_approve_at(
            checkpoint_id=checkpoint.pk,
            actor=user,
            value=value,
            reason=f"applied the dashboard's suggestion ({raw or 'none'})",
        )
    except (ValueError, ApplicationError) as exc:
        messages.error(request, getattr(exc, "message", None) or str(exc))
    else:
        messages.success(request, f"{checkpoint.slug}: auto_approve_at is now {raw or 'off'}.")
    return redirect(reverse("dashboard") + "?" + urlencode({"checkpoint": checkpoint.slug}))


# --- connect an agent ----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def connect(request: HttpRequest) -> HttpResponse:
    """Which checkpoints an agent can submit to, a new service-account key, and snippets.

    Managers create a service account with submit rights on one checkpoint they manage; the
    key is shown once, on the page the POST renders (never stored in clear, never in a URL)."""
    user = _user(request)
    access = access_for(user)
    submittable = Checkpoint.objects.filter(pk__in=access.ids(SUBMIT, MANAGE)).order_by("slug")
    managed = [c for c in submittable if c.pk in access.ids(MANAGE)]
    base_url = request.build_absolute_uri("/").rstrip("/")
    token = ""
    account = ""
    chosen: Checkpoint | None = managed[0] if managed else None
    if request.method == "POST":
        chosen = next((c for c in managed if c.slug == request.POST.get("checkpoint")), None)
        if chosen is None:
            raise Http404
        name = (request.POST.get("name") or "").strip()[:60] or f"agent-{chosen.slug}"
        account = f"{name}-{secrets.token_hex(3)}"
        with transaction.atomic():
            agent = service_account_create(
                username=account, description=f"Created on the connect page by {user}."
            )
            assign_perm(SUBMIT, agent, chosen)
            token = api_key_create(user=agent, name="connect page", created_by=user).token
    return render(
        request,
        "hitl/connect.html",
        {
            "submittable": submittable,
            "managed": managed,
            "chosen": chosen,
            "base_url": base_url,
            "token": token,
            "account": account,
            "shown_token": token or "<your API key>",
            "slug": chosen.slug if chosen else (submittable[0].slug if submittable else "my-gate"),
        },
    )


# --- one-click email links -----------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def email_action(request: HttpRequest, token: str) -> HttpResponse:
    """GET: a confirmation page, changing nothing (mail scanners follow links). POST: cast
    the vote as the link's recipient, through the same service and permission checks."""
    try:
        link = emails.read_action_token(token)
    except signing.SignatureExpired:
        return _link_error(request, "This link has expired.", 410)
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return _link_error(request, "This link is not valid.", 400)
    if request.user.is_authenticated and request.user.pk != link.user_id:
        return _link_error(request, "This link was sent to someone else.", 403)
    recipient = get_user_model().objects.filter(pk=link.user_id, is_active=True).first()
    proposal = Proposal.objects.select_related("checkpoint").filter(pk=link.proposal_id).first()
    if recipient is None or proposal is None:
        return _link_error(request, "This link is not valid.", 400)
    if UsedEmailLink.objects.filter(nonce=link.nonce).exists():
        return _link_error(request, "This link has already been used.", 409)
    context: dict[str, Any] = {
        "proposal": proposal,
        "link": link,
        "recipient": recipient,
        "reason_required": link.action in proposal.checkpoint.require_reason_on,
    }
    if request.method == "GET":
        return render(request, "hitl/email_action.html", context)
    try:
        with transaction.atomic():
            emails.use_link(link, acting_user=recipient)
            services.vote_cast(
                proposal_id=link.proposal_id,
                reviewer=cast(User, recipient),
                decision=link.action,
                revision=link.revision,
                comment=request.POST.get("comment", ""),
            )
    except ApplicationError as exc:
        context["error"] = exc.message
        return render(request, "hitl/email_action.html", context, status=exc.status_code)
    proposal.refresh_from_db()
    return render(request, "hitl/email_action_done.html", context)


def _link_error(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return render(request, "hitl/email_action_error.html", {"message": message}, status=status)
