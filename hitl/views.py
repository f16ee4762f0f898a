"""Server-rendered pages: the reviewer's live queue, a proposal page, and the landing page of
one-click email links. Thin: fetch through selectors (which authorize), call one service."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core import signing
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from notifications import emails
from notifications.models import UsedEmailLink
from proposals import selectors, services
from proposals.errors import ApplicationError, NotFound
from proposals.models import Decision, Proposal, Status
from proposals.permissions import access_for


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    access = access_for(_user(request))
    filters = selectors.ProposalFilters(
        status=[Status.PENDING], reviewable_by_me=True, region=request.GET.get("region") or None
    )
    proposals = list(selectors.proposal_list(access, filters)[:200])
    template = "hitl/_queue_rows.html" if request.GET.get("partial") else "hitl/queue.html"
    return render(request, template, {"proposals": proposals})


@login_required
@require_http_methods(["GET", "POST"])
def proposal_page(request: HttpRequest, proposal_id: str) -> HttpResponse:
    access = access_for(_user(request))
    try:
        proposal = selectors.proposal_get(access, proposal_id, with_children=True)
    except NotFound:
        raise Http404 from None
    if request.method == "POST":
        try:
            services.vote_cast(
                proposal_id=proposal.pk,
                reviewer=_user(request),
                decision=request.POST.get("decision", ""),
                revision=int(request.POST.get("revision") or 0),
                comment=request.POST.get("comment", ""),
                selected_option=request.POST.get("selected_option", ""),
                access=access,
            )
            messages.success(request, "Your vote is recorded.")
        except ApplicationError as exc:
            messages.error(request, exc.message)
        except ValueError:
            messages.error(request, "Invalid form.")
        return redirect("proposal-page", proposal_id=proposal.pk)
    current = [v for v in proposal.votes.all() if v.revision == proposal.revision]
    return render(
        request,
        "hitl/proposal.html",
        {
            "proposal": proposal,
            "may_vote": access.may_review(proposal) and proposal.status == Status.PENDING,
            "approvals": sum(v.decision == Decision.APPROVE for v in current),
            "decisions": Decision.choices,
        },
    )


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
