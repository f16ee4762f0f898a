from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Count, Min, Q
from django.utils import timezone

from hitl import heartbeat
from proposals.models import OPEN_STATUSES, Checkpoint, Proposal, Status


def collect() -> dict[str, Any]:
    now = timezone.now()
    open_work = Q(status__in=OPEN_STATUSES)
    per_checkpoint = {
        row["checkpoint_id"]: row
        for row in Proposal.objects.filter(open_work)
        .values("checkpoint_id")
        .annotate(
            pending=Count("id", filter=Q(status=Status.PENDING)),
            changes_requested=Count("id", filter=Q(status=Status.CHANGES_REQUESTED)),
            oldest=Min("created_at", filter=Q(status=Status.PENDING)),
            overdue=Count("id", filter=Q(due_at__lte=now)),
            sla_breached=Count("id", filter=Q(sla_due_at__lte=now)),
        )
    }
    checkpoints = []
    for checkpoint in Checkpoint.objects.order_by("slug"):
        row = per_checkpoint.get(checkpoint.pk, {})
        oldest = row.get("oldest")
        bypass_until = checkpoint.bypass_until
        active_bypass = bypass_until.isoformat() if bypass_until and bypass_until > now else None
        checkpoints.append(
            {
                "slug": checkpoint.slug,
                "enabled": checkpoint.enabled,
                "bypass_until": active_bypass,
                "pending": row.get("pending", 0),
                "changes_requested": row.get("changes_requested", 0),
                "oldest_pending_age_seconds": (
                    int((now - oldest).total_seconds()) if oldest else None
                ),
                "overdue": row.get("overdue", 0),
                "sla_breached": row.get("sla_breached", 0),
            }
        )
    beats = heartbeat.read()
    return {
        "checked_at": now.isoformat(),
        "checkpoints": checkpoints,
        "heartbeats": {
            b.name: {
                "age_seconds": round(b.age_seconds, 1) if b.age_seconds is not None else None,
                "host": b.host,
                "stale": b.stale,
            }
            for b in beats
        },
        "healthy": not any(b.stale for b in beats),
    }


class Command(BaseCommand):
    help = (
        "Per checkpoint: enabled, bypass, pending, changes requested, oldest pending age, "
        "overdue, SLA breaches; worker and beat heartbeats. Exit 1 when a heartbeat is stale."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        status = collect()
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
        else:
            self._print(status)
        if not status["healthy"]:
            sys.exit(1)

    def _print(self, status: dict[str, Any]) -> None:
        header = f"{'checkpoint':<24}{'on':<5}{'bypass':<8}{'pending':>8}{'changes':>8}"
        header += f"{'oldest':>10}{'overdue':>8}{'sla':>6}"
        self.stdout.write(header)
        for c in status["checkpoints"]:
            age = c["oldest_pending_age_seconds"]
            self.stdout.write(
                f"{c['slug']:<24}{'yes' if c['enabled'] else 'no':<5}"
                f"{'ACTIVE' if c['bypass_until'] else '-':<8}{c['pending']:>8}"
                f"{c['changes_requested']:>8}{_age(age):>10}{c['overdue']:>8}{c['sla_breached']:>6}"
            )
        self.stdout.write("")
        for name, beat in status["heartbeats"].items():
            age = beat["age_seconds"]
            text = "never seen" if age is None else f"{age:.0f}s ago on {beat['host']}"
            style = self.style.ERROR if beat["stale"] else self.style.SUCCESS
            self.stdout.write(style(f"{name:<7}{'STALE' if beat['stale'] else 'ok':<7}{text}"))


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
