from __future__ import annotations

import csv
import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils.dateparse import parse_datetime

from audit.models import AuditEvent
from audit.services import event_as_dict

FIELDS = [
    "seq",
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
    help = "Export audit events as JSON Lines or CSV, streamed in chain order."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")
        parser.add_argument("--proposal", help="only this proposal's events")
        parser.add_argument("--since", help="ISO timestamp: only events at or after it")

    def handle(self, *args: Any, **options: Any) -> None:
        events = AuditEvent.objects.order_by("seq")
        if options["proposal"]:
            events = events.filter(proposal_id=options["proposal"])
        if options["since"]:
            since = parse_datetime(options["since"])
            if since is None:
                self.stderr.write("--since must be an ISO 8601 timestamp")
                sys.exit(2)
            events = events.filter(created_at__gte=since)
        out = open(options["output"], "w", newline="") if options["output"] else self.stdout  # noqa: SIM115
        try:
            if options["format"] == "csv":
                writer = csv.DictWriter(out, fieldnames=FIELDS)
                writer.writeheader()
                for event in events.iterator(chunk_size=2000):
                    row = event_as_dict(event)
                    row["data"] = json.dumps(row["data"], sort_keys=True)
                    writer.writerow(row)
            else:
                for event in events.iterator(chunk_size=2000):
                    out.write(json.dumps(event_as_dict(event), sort_keys=True) + "\n")
        finally:
            if out is not self.stdout:
                out.close()
