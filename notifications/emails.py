"""Email: digests of new work, reminders, escalations, SLA breaches, decisions; and the signed
one-click links they carry.

A link is bound to recipient + proposal + revision + action, expires
(HITL_EMAIL_LINK_MAX_AGE_HOURS) and works once (its nonce is recorded in the same transaction
as the vote it casts). Following it with GET only shows a confirmation page: mail scanners
follow links, so nothing changes until the recipient POSTs.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, connection, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from notifications.models import DigestLog, EmailNotice, UsedEmailLink
from proposals.errors import Conflict, PermissionDenied
from proposals.models import Proposal

logger = logging.getLogger(__name__)

LINK_SALT = "nihil-obstat.email-action.v1"
ACTIONS = ("approve", "reject", "request_changes")


# --- links --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionLink:
    user_id: int
    proposal_id: str
    revision: int
    action: str
    nonce: str


def make_action_token(user_id: int, proposal_id: Any, revision: int, action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(action)
    return signing.dumps(
        {
            "u": user_id,
            "p": str(proposal_id),
            "r": revision,
            "a": action,
            "n": secrets.token_hex(12),
        },
        salt=LINK_SALT,
        compress=True,
    )


def read_action_token(token: str) -> ActionLink:
    """Raises signing.BadSignature (tampered or foreign) or signing.SignatureExpired."""
    data = signing.loads(
        token, salt=LINK_SALT, max_age=timedelta(hours=settings.HITL_EMAIL_LINK_MAX_AGE_HOURS)
    )
    return ActionLink(data["u"], data["p"], int(data["r"]), data["a"], data["n"])


def action_url(token: str) -> str:
    return settings.HITL_PUBLIC_URL + reverse("email-action", args=[token])


def use_link(link: ActionLink, *, acting_user: Any) -> None:
    """Burn the link's nonce. Call inside the transaction that casts the vote, so a vote that
    fails (missing reason, say) leaves the link usable and a used link never acts twice."""
    if acting_user.pk != link.user_id:
        raise PermissionDenied("This link was sent to someone else.")
    try:
        with transaction.atomic():
            UsedEmailLink.objects.create(
                nonce=link.nonce, user_id=link.user_id, used_at=timezone.now()
            )
    except IntegrityError:
        raise Conflict("This link has already been used.") from None


# --- sending ------------------------------------------------------------------------------


def _send(to: Any, template: str, subject: str, context: dict[str, Any]) -> None:
    if not to.email:
        return
    context = {**context, "user": to, "site_url": settings.HITL_PUBLIC_URL}
    text = render_to_string(f"email/{template}.txt", context)
    html = render_to_string(f"email/{template}.html", context)
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, [to.email])
    message.attach_alternative(html, "text/html")
    message.send()


def _links(user: Any, proposal: Proposal) -> dict[str, str]:
    return {
        action: action_url(make_action_token(user.pk, proposal.pk, proposal.revision, action))
        for action in ACTIONS
    }


def _item(user: Any, proposal: Proposal) -> dict[str, Any]:
    return {
        "proposal": proposal,
        "links": _links(user, proposal),
        "url": f"{settings.HITL_PUBLIC_URL}/queue/{proposal.pk}/",
    }


def queue_new_work(work: Sequence[tuple[Proposal, Iterable[int]]]) -> int:
    """Note new work for each reviewer's next digest: (proposal, its reviewers' ids) pairs, a
    relay batch's worth, in one INSERT. A notice already waiting in that reviewer's next
    digest stays as it is (ON CONFLICT DO NOTHING, as bulk_create's ignore_conflicts)."""
    now = timezone.now()
    pairs = [(user_id, proposal.pk) for proposal, user_ids in work for user_id in user_ids]
    if not pairs:
        return 0
    if connection.vendor != "postgresql":
        EmailNotice.objects.bulk_create(
            [EmailNotice(user_id=u, proposal_id=p, created_at=now) for u, p in pairs],
            ignore_conflicts=True,
        )
        return len(pairs)
    user_ids, proposal_ids = zip(*pairs, strict=True)
    with connection.cursor() as cursor:
        cursor.execute(_queue_new_work_sql(), [now, list(user_ids), list(proposal_ids)])
    return len(pairs)


@functools.cache
def _queue_new_work_sql() -> str:
    """The INSERT ... SELECT FROM unnest that bulk_create builds, written once: building it
    from 200 model instances (a prepare per field per row) was half the relay's CPU for a
    batch of submits."""
    quote = connection.ops.quote_name
    meta = EmailNotice._meta
    user, proposal = meta.get_field("user"), meta.get_field("proposal")
    created_at = meta.get_field("created_at")
    return f"""
        INSERT INTO {quote(meta.db_table)}
            ({quote(user.column)}, {quote(proposal.column)}, {quote(created_at.column)})
        SELECT u, p, %s
        FROM unnest(%s::{user.db_type(connection)}[], %s::{proposal.db_type(connection)}[])
            AS t(u, p)
        ON CONFLICT DO NOTHING
    """  # noqa: S608 (names and types from the model, values as parameters)


def send_due_digests() -> int:
    """One mail per reviewer with unsent notices whose last digest is older than the window."""
    window = timedelta(minutes=settings.HITL_EMAIL_DIGEST_MINUTES)
    now = timezone.now()
    sent = 0
    user_ids = (
        EmailNotice.objects.filter(sent_at__isnull=True)
        .values_list("user_id", flat=True)
        .distinct()
    )
    for user_id in list(user_ids):
        with transaction.atomic():
            log = DigestLog.objects.select_for_update().filter(user_id=user_id).first()
            if log is not None and log.last_sent_at > now - window:
                continue
            notices = list(
                EmailNotice.objects.select_for_update(skip_locked=True)
                .filter(user_id=user_id, sent_at__isnull=True)
                .select_related("proposal__checkpoint", "user")
                .order_by("proposal__sla_due_at")
            )
            if not notices:
                continue
            user = notices[0].user
            still_open = [n.proposal for n in notices if n.proposal.status == "pending"]
            if still_open:
                _send(
                    user,
                    "digest",
                    f"{len(still_open)} proposal(s) waiting for your review",
                    {"items": [_item(user, p) for p in still_open]},
                )
                sent += 1
                # Only a mail that went out starts the reviewer's quiet window.
                DigestLog.objects.update_or_create(user_id=user_id, defaults={"last_sent_at": now})
            EmailNotice.objects.filter(pk__in=[n.pk for n in notices]).update(sent_at=now)
    return sent


def send_reminder(proposal: Proposal, users: list[Any]) -> None:
    for user in users:
        _send(user, "reminder", f"Reminder: {proposal.title}", {**_item(user, proposal)})


def send_escalation(proposal: Proposal, users: list[Any]) -> None:
    for user in users:
        _send(user, "escalated", f"Escalated to you: {proposal.title}", {**_item(user, proposal)})


def send_sla_breach(proposal: Proposal, managers: list[Any]) -> None:
    for user in managers:
        _send(
            user,
            "sla_breached",
            f"SLA breached: {proposal.title}",
            {"proposal": proposal, "url": f"{settings.HITL_PUBLIC_URL}/queue/{proposal.pk}/"},
        )


def decision_recipient(proposal: Proposal) -> Any | None:
    """Who is told of a decision or a request for changes: the submitter, when a person with
    an address. A service account learns the outcome from webhooks and the API. Needs
    `submitted_by__service_account` loaded, or it costs a query. The mail task asks when it
    sends; the relay applies the same rule in its batch query (`submitter_mailable` in
    notifications/relay.py) before it queues one, so an event nobody is mailed about costs no
    task at all: a change to the rule changes both."""
    submitter = proposal.submitted_by
    if hasattr(submitter, "service_account") or not submitter.email:
        return None
    return submitter


def send_decision(proposal: Proposal, submitter: Any) -> None:
    _send(
        submitter,
        "decision",
        f"{proposal.title}: {proposal.status.replace('_', ' ')}",
        {"proposal": proposal, "url": f"{settings.HITL_PUBLIC_URL}/queue/{proposal.pk}/"},
    )


def users_by_ids(ids: list[int]) -> list[Any]:
    return list(get_user_model().objects.filter(pk__in=ids, is_active=True))
