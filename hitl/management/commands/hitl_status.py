"""`manage.py hitl_status`: the queue per checkpoint and the liveness of worker and beat.

Monitoring parses `--json`, so it always prints a report, also when Redis is down, frozen or
the install's `up` is not running: `healthy` is false and `problems` says why (exit 1).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Count, Min, Q
from django.utils import timezone

from hitl import embedded, heartbeat
from hitl.ops import health, override
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
    problems: list[str] = []
    heartbeats: dict[str, Any] = {}
    up_state = os.environ.get(embedded.UP_STATE_ENV)  # set by manage.py beside an `up` install
    if up_state == "stopped":
        # Its Redis is gone with it; any other Redis would show another install's processes.
        problems.append(
            f"`manage.py up` is not running (run dir {embedded.run_dir()}): its worker and "
            "beat are stopped"
        )
    else:
        try:
            beats = heartbeat.read()
        except Exception as exc:  # the cache client's errors vary; all mean "no answer"
            problems.append(f"Redis unreachable at {_redacted(settings.REDIS_URL)}: {exc}")
        else:
            for b in beats:
                heartbeats[b.name] = {
                    "age_seconds": round(b.age_seconds, 1) if b.age_seconds is not None else None,
                    "host": b.host,
                    "stale": b.stale,
                }
                if b.stale:
                    seen = "never seen" if b.age_seconds is None else "heartbeat is stale"
                    problems.append(f"{b.name}: {seen}")
    # The checks /readyz runs (one function); Redis trouble is already reported above.
    readiness = health.run_checks()
    problems += [
        f"not ready: {name}: {check['error']}"
        for name, check in readiness["checks"].items()
        if not check["ok"] and name != "redis"
    ]
    return {
        "checked_at": now.isoformat(),
        "up": up_state,
        "checkpoints": checkpoints,
        "heartbeats": heartbeats,
        "readiness": readiness,
        "override_alerts": override.status_rows(),
        "problems": problems,
        "healthy": not problems,
    }


def _redacted(url: str) -> str:
    """The Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


class Command(BaseCommand):
    help = (
        "Per checkpoint: enabled, bypass, pending, changes requested, oldest pending age, "
        "overdue, SLA breaches; worker and beat heartbeats. Exit 1 when unhealthy (a stale "
        "heartbeat, Redis unreachable, the install's `up` not running, a failed readiness check). "
        "Also the readiness checks of GET /readyz and the override-rate alert per checkpoint."
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
        checks = status["readiness"]["checks"]
        self.stdout.write(
            "ready: "
            + ", ".join(
                f"{name} {'ok' if c['ok'] else 'FAILED'} ({c['latency_ms']:.0f} ms)"
                for name, c in checks.items()
            )
        )
        for alert in status["override_alerts"]:
            rate = f"{alert['rate'] * 100:.1f} %" if alert["rate"] is not None else "-"
            text = (
                f"{alert['checkpoint']}: {rate} (threshold {alert['threshold'] * 100:.1f} %, "
                f"{alert['overrides']} of the last {alert['decisions']} human decisions)"
            )
            if alert["active"]:
                self.stdout.write(self.style.WARNING(f"override rate HIGH on {text}"))
            else:
                self.stdout.write(f"override rate ok on {text}")
        for problem in status["problems"]:
            self.stdout.write(self.style.ERROR(f"unhealthy: {problem}"))


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
