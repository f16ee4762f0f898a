from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from proposals import sweeps


class Command(BaseCommand):
    help = (
        "Run every timer sweep once (timeouts, escalations, reminders, SLA, claims, "
        "bypasses), as beat does every few seconds; prints how many proposals each phase "
        "changed. Safe beside a running beat (each change locks its row). Exit code 0."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="print {counts: {phase: n}, total: n}"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = sweeps.run_all()
        if options["json"]:
            payload = {"counts": dict(report.counts), "total": report.total}
            self.stdout.write(json.dumps(payload, sort_keys=True))
            return
        for phase, count in report.counts.items():
            self.stdout.write(f"{phase:>18}: {count}")
        self.stdout.write(self.style.SUCCESS(f"{report.total} changes."))
