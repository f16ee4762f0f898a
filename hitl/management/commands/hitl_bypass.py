from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from hitl.management.progress import refuse
from proposals import services
from proposals.errors import ApplicationError
from proposals.models import Checkpoint

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '1h', '2d', or '1h30m'."""
    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or parts is None or not any(parts.groups()):
        raise refuse(f"Cannot read duration {text!r}: use e.g. 30m, 1h, 2d, 1h30m.")
    days, hours, minutes, seconds = (int(p) if p else 0 for p in parts.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class Command(BaseCommand):
    help = (
        "Emergency bypass: until it ends, new proposals at CHECKPOINT are approved with "
        "resolution 'bypass'. Audited. Ends by itself after --duration, or with --end. "
        "Exit codes: 0 started or ended, 2 refused (unknown checkpoint, bad or missing "
        "--duration, no --reason, or the checkpoint refuses a bypass)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("checkpoint", help="checkpoint slug")
        parser.add_argument("--duration", help="e.g. 30m, 1h, 1h30m")
        parser.add_argument("--reason", default="", help="why (required to start)")
        parser.add_argument("--end", action="store_true", help="end the bypass now")
        parser.add_argument(
            "--json",
            action="store_true",
            help="print {checkpoint, active, until, changed} instead of a sentence",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint = Checkpoint.objects.filter(slug=options["checkpoint"]).first()
        if checkpoint is None:
            raise refuse(f"No checkpoint {options['checkpoint']!r}.")
        if options["end"]:
            if options["duration"]:
                raise refuse("--end and --duration exclude each other.")
            ended = services.checkpoint_bypass_end(
                checkpoint_id=checkpoint.pk, actor=None, reason=options["reason"]
            )
            if options["json"]:
                self._json(checkpoint.slug, active=False, until=None, changed=bool(ended))
                return
            verdict = "ended" if ended else "was not active"
            self.stdout.write(f"Bypass on {checkpoint.slug} {verdict}.")
            return
        if not options["duration"]:
            raise refuse("Give --duration (e.g. --duration 1h) or --end.")
        try:
            until = timezone.now() + parse_duration(options["duration"])
        except OverflowError:
            duration = options["duration"]
            raise refuse(f"--duration {duration} is beyond the calendar.") from None
        try:
            services.checkpoint_bypass_start(
                checkpoint_id=checkpoint.pk, actor=None, until=until, reason=options["reason"]
            )
        except ApplicationError as exc:
            raise refuse(exc.message) from None
        if options["json"]:
            self._json(checkpoint.slug, active=True, until=until.isoformat(), changed=True)
            return
        self.stdout.write(
            self.style.WARNING(
                f"BYPASS ACTIVE on {checkpoint.slug} until {until.isoformat()}: new proposals "
                "are approved without review."
            )
        )

    def _json(self, slug: str, **fields: Any) -> None:
        self.stdout.write(json.dumps({"checkpoint": slug, **fields}, sort_keys=True))
