from __future__ import annotations

import csv
import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils.dateparse import parse_datetime

from audit.models import AuditEvent
from audit.services import event_as_dict
from hitl.management.progress import (
    Progress,
    add_progress_argument,
    progress_enabled,
    refuse,
)

FIELDS = [
    "seq",
    "chain",
    "chain_seq",
    "created_at",
    "actor",
    "actor_id",
    "verb",
    "proposal_id",
    "checkpoint_id",
    "revision",
    "data",
    "reason",
    "prev_hash",
    "hash",
    "hash_version",
]


class Command(BaseCommand):
    help = (
        "Export audit events as JSON Lines or CSV, streamed in append order (seq); each row "
        "names its chain and position (chain, chain_seq). Constant memory whatever the "
        "trail's length (a server-side cursor on PostgreSQL); a progress bar on standard "
        "error when it is a terminal. Exit codes: 0 exported, 2 refused (bad arguments)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--format",
            choices=["jsonl", "csv"],
            default="jsonl",
            help="JSON Lines (one event per line, the default) or CSV (data as JSON text)",
        )
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")
        parser.add_argument("--proposal", help="only this proposal's events (its id)")
        parser.add_argument("--since", help="ISO timestamp: only events at or after it")
        add_progress_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        events = AuditEvent.objects.order_by("seq")
        if options["proposal"]:
            try:
                uuid.UUID(options["proposal"])
            except ValueError:
                raise refuse(f"--proposal {options['proposal']!r} is not a proposal id.") from None
            events = events.filter(proposal_id=options["proposal"])
        if options["since"]:
            since = parse_datetime(options["since"])
            if since is None:
                raise refuse("--since must be an ISO 8601 timestamp.")
            events = events.filter(created_at__gte=since)
        # The count is one index scan; the bar then knows how far the export is.
        total = events.count() if progress_enabled(self, options) else None
        out = open(options["output"], "w", newline="") if options["output"] else self.stdout  # noqa: SIM115
        try:
            with Progress(self, options, total=total, desc="audit events") as bar:
                rows = bar.wrap(events.iterator(chunk_size=2000))
                if options["format"] == "csv":
                    writer = csv.DictWriter(out, fieldnames=FIELDS)
                    writer.writeheader()
                    for event in rows:
                        row = event_as_dict(event)
                        row["data"] = json.dumps(row["data"], sort_keys=True)
                        writer.writerow(row)
                else:
                    for event in rows:
                        out.write(json.dumps(event_as_dict(event), sort_keys=True) + "\n")
        finally:
            if out is not self.stdout:
                out.close()
