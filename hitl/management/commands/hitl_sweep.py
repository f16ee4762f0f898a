from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from proposals import sweeps


class Command(BaseCommand):
    help = "Run every timer sweep once (timeouts, escalations, reminders, SLA, claims, bypasses)."

    def handle(self, *args: Any, **options: Any) -> None:
        report = sweeps.run_all()
        for phase, count in report.counts.items():
            self.stdout.write(f"{phase:>18}: {count}")
        self.stdout.write(self.style.SUCCESS(f"{report.total} changes."))
