"""The override-rate alert: are humans disagreeing with the AI?

Definition (README "For operators"). For one checkpoint, take its last HITL_OVERRIDE_WINDOW
human decisions: proposals whose resolution is `reviewers` (decided by votes) or `revoked`
(approved by humans, then withdrawn by a human), newest `decided_at` first. The AI recommends
exactly what it submitted: its first revision's payload, or, when it offered options, its most
confident option. A decision is an *override* unless the proposal ended approved with that
recommendation unchanged, i.e. an override is a rejection, a revocation, an approval of another
option, or an approval of a payload that differs from the first revision (a reviewer's edit, or
a revision the reviewers asked for). The rate is overrides / decisions. Timeouts, policy,
bypass and cancellations are no human decision and are left out.

The alert is high while the rate is above the threshold (the checkpoint's OverrideAlert
threshold, else HITL_OVERRIDE_THRESHOLD) and the window holds at least
HITL_OVERRIDE_MIN_DECISIONS decisions. Each change of side is announced once: an audit event,
an outbox event (so webhooks carry it), an e-mail to the checkpoint's managers and a counter;
the current state is a gauge. Evaluations run after the commit of the relay that saw a human
decision, with the checkpoint's alert row locked, so concurrent relays announce a crossing
once between them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from hitl.ops.models import OverrideAlert
from notifications.services import outbox_emit
from proposals.models import Checkpoint, Proposal, Resolution, Revision, Status
from proposals.permissions import MANAGE, holders

logger = logging.getLogger(__name__)

HIGH = "checkpoint.override_rate_high"
NORMAL = "checkpoint.override_rate_normal"
HUMAN_RESOLUTIONS = (Resolution.REVIEWERS, Resolution.REVOKED)


def recommended_option(options: list[dict[str, Any]]) -> str:
    """The AI's pick among its options: the most confident (the first on a tie)."""
    best = max(options, key=lambda o: o.get("confidence") or 0)
    return str(best.get("key", ""))


def is_override(
    *,
    status: str,
    options: list[dict[str, Any]],
    selected_option: str,
    approved_payload: Any,
    proposed_payload: Any,
) -> bool:
    """Did the humans end somewhere other than the AI's recommendation? (module docstring)"""
    if status != Status.APPROVED:
        return True
    if options:
        return selected_option != recommended_option(options)
    return bool(approved_payload != proposed_payload)


@dataclass(frozen=True)
class Window:
    decisions: int
    overrides: int

    @property
    def rate(self) -> float | None:
        return self.overrides / self.decisions if self.decisions else None


def window(checkpoint_id: int, size: int | None = None) -> Window:
    """The last `size` human decisions of a checkpoint (ops migration 0001 indexes them by
    checkpoint and decided_at, so this reads `size` rows whatever the history's length)."""
    size = size or settings.HITL_OVERRIDE_WINDOW
    rows = list(
        Proposal.objects.filter(checkpoint_id=checkpoint_id, resolution__in=HUMAN_RESOLUTIONS)
        .order_by("-decided_at", "-id")
        .values("id", "status", "options", "selected_option", "approved_payload")[:size]
    )
    proposed = dict(
        Revision.objects.filter(proposal_id__in=[r["id"] for r in rows], number=1).values_list(
            "proposal_id", "payload"
        )
    )
    overrides = sum(
        is_override(
            status=row["status"],
            options=row["options"] or [],
            selected_option=row["selected_option"],
            approved_payload=row["approved_payload"],
            proposed_payload=proposed.get(row["id"]),
        )
        for row in rows
    )
    return Window(decisions=len(rows), overrides=overrides)


def threshold_of(alert: OverrideAlert) -> float:
    return alert.threshold if alert.threshold is not None else settings.HITL_OVERRIDE_THRESHOLD


def evaluate(checkpoint_id: int) -> str | None:
    """Recompute one checkpoint's rate; announce a crossing. Returns the topic announced, or
    None. Precondition: not inside a transaction that holds decisions still uncommitted (the
    relay calls it after its commit)."""
    with transaction.atomic():
        OverrideAlert.objects.get_or_create(checkpoint_id=checkpoint_id)
        # The lock makes evaluations of one checkpoint take turns; each then reads the
        # decisions committed before it got the lock, so the later one sees the newer window
        # and the state the earlier one left, and a crossing is announced once.
        alert = (
            OverrideAlert.objects.select_for_update()
            .select_related("checkpoint")
            .get(pk=checkpoint_id)
        )
        stats = window(checkpoint_id)
        threshold = threshold_of(alert)
        rate = stats.rate
        high = (
            rate is not None
            and stats.decisions >= settings.HITL_OVERRIDE_MIN_DECISIONS
            and rate > threshold
        )
        now = timezone.now()
        fields = ["rate", "decisions", "overrides", "evaluated_at"]
        alert.rate, alert.decisions, alert.overrides = rate, stats.decisions, stats.overrides
        alert.evaluated_at = now
        topic = None
        if high != alert.active:
            alert.active = high
            alert.changed_at = now
            fields += ["active", "changed_at"]
            topic = HIGH if high else NORMAL
            _announce(alert.checkpoint, topic, stats, threshold)
        alert.save(update_fields=fields)
    return topic


def _announce(checkpoint: Checkpoint, topic: str, stats: Window, threshold: float) -> None:
    data = {
        "checkpoint": checkpoint.slug,
        "rate": round(stats.rate or 0.0, 4),
        "threshold": threshold,
        "decisions": stats.decisions,
        "overrides": stats.overrides,
        "window": settings.HITL_OVERRIDE_WINDOW,
    }
    outbox_emit(topic, checkpoint=checkpoint, data=data)
    audit_record(verb=topic, actor=None, checkpoint=checkpoint, data=data)
    transaction.on_commit(partial(_after_commit, checkpoint.pk, topic, data), robust=True)


def _after_commit(checkpoint_id: int, topic: str, data: dict[str, Any]) -> None:
    from hitl.ops.metrics import OVERRIDE_CROSSINGS, never_raise

    state = "high" if topic == HIGH else "normal"
    never_raise(topic, lambda: OVERRIDE_CROSSINGS.labels(data["checkpoint"], state).inc())
    checkpoint = Checkpoint.objects.get(pk=checkpoint_id)
    recipients = [u.email for u in holders(checkpoint, MANAGE) if u.email]
    if not recipients:
        return
    percent, limit = data["rate"] * 100, data["threshold"] * 100
    if topic == HIGH:
        subject = (
            f"[Nihil Obstat] {checkpoint.slug}: humans override the AI {percent:.0f} % of the time"
        )
        body = (
            f"Over the last {data['decisions']} human decisions on checkpoint "
            f"{checkpoint.slug}, {data['overrides']} differed from the AI's recommendation "
            f"({percent:.1f} %, above the {limit:.1f} % threshold).\n\n"
            "Reviewers reject, edit or pick another option more often than usual: the model "
            "or its prompt may need attention (export_feedback --only-overrides lists them).\n"
        )
    else:
        subject = (
            f"[Nihil Obstat] {checkpoint.slug}: override rate back to normal ({percent:.0f} %)"
        )
        body = (
            f"Over the last {data['decisions']} human decisions on checkpoint "
            f"{checkpoint.slug}, {data['overrides']} differed from the AI's recommendation "
            f"({percent:.1f} %, at or below the {limit:.1f} % threshold).\n"
        )
    body += f"\n{settings.HITL_PUBLIC_URL}/dashboard/\n"
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:  # the audit event and webhook are the record; mail is best effort
        logger.exception("could not e-mail the managers of %s about %s", checkpoint.slug, topic)


def status_rows() -> list[dict[str, Any]]:
    """Per checkpoint with an evaluation: for hitl_status."""
    return [
        {
            "checkpoint": alert.checkpoint.slug,
            "active": alert.active,
            "rate": round(alert.rate, 4) if alert.rate is not None else None,
            "threshold": threshold_of(alert),
            "decisions": alert.decisions,
            "overrides": alert.overrides,
            "changed_at": alert.changed_at.isoformat() if alert.changed_at else None,
        }
        for alert in OverrideAlert.objects.select_related("checkpoint").order_by("checkpoint__slug")
    ]
