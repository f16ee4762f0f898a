from __future__ import annotations

import json
from typing import Any

import jsonpatch
from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Prefetch
from django.utils.dateparse import parse_datetime

from hitl.management.progress import (
    Progress,
    add_progress_argument,
    progress_enabled,
    refuse,
)
from proposals.models import Checkpoint, Proposal, Resolution, Revision, Status, Vote


def feedback_record(proposal: Proposal) -> dict[str, Any]:
    """What the AI proposed and what humans made of it, one training example.

    `override` is true when the humans did not simply accept the first proposal: they
    rejected it, asked for changes, edited the payload, or picked another option than the
    model's most confident one."""
    revisions = list(proposal.revisions.all())
    proposed = revisions[0].payload if revisions else proposal.payload
    votes = list(proposal.votes.all())
    model_choice = ""
    if proposal.options:
        model_choice = max(proposal.options, key=lambda o: o.get("confidence") or 0).get("key", "")
    final = proposal.approved_payload if proposal.status == Status.APPROVED else None
    if proposal.status == Status.APPROVED and not proposal.options:
        diff = jsonpatch.make_patch(proposed, final).patch
    else:
        diff = []
    changes_requested = any(v.decision == "request_changes" for v in votes)
    override = (
        proposal.status != Status.APPROVED
        or bool(diff)
        or changes_requested
        or (bool(proposal.options) and proposal.selected_option != model_choice)
    )
    return {
        "proposal_id": str(proposal.pk),
        "checkpoint": proposal.checkpoint.slug,
        "external_id": proposal.external_id,
        "title": proposal.title,
        "confidence": proposal.confidence,
        "context": proposal.context,
        "proposed_payload": proposed,
        "options": proposal.options,
        "model_option": model_choice or None,
        "outcome": proposal.status,
        "resolution": proposal.resolution,
        "approved_payload": final,
        "selected_option": proposal.selected_option or None,
        "human_patch": diff,
        "revisions": len(revisions),
        "override": override,
        "feedback": [
            {"revision": v.revision, "decision": v.decision, "comment": v.comment} for v in votes
        ],
        "decided_at": proposal.decided_at.isoformat() if proposal.decided_at else None,
    }


class Command(BaseCommand):
    help = (
        "Export human decisions on AI proposals as JSON Lines training data: what was "
        "proposed, what humans decided, edits and comments. Only decisions made by reviewers "
        "(resolution 'reviewers'), not by policy, timeout or bypass. One JSON object per "
        "line, streamed in chunks with constant memory; the count goes to standard error, "
        "with a progress bar when it is a terminal. Exit codes: 0 exported, 2 refused (bad "
        "--since, unknown --checkpoint)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--checkpoint", help="one checkpoint's slug")
        parser.add_argument("--since", help="ISO timestamp: decided at or after it")
        parser.add_argument(
            "--only-overrides",
            action="store_true",
            help="only decisions where humans did not simply accept the first proposal",
        )
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")
        add_progress_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        qs = (
            Proposal.objects.filter(resolution__in=[Resolution.REVIEWERS, Resolution.REVOKED])
            .select_related("checkpoint")
            .prefetch_related(
                Prefetch("revisions", queryset=Revision.objects.order_by("number")),
                Prefetch("votes", queryset=Vote.objects.order_by("created_at")),
            )
            .order_by("decided_at", "id")
        )
        if options["checkpoint"]:
            if not Checkpoint.objects.filter(slug=options["checkpoint"]).exists():
                raise refuse(f"No checkpoint {options['checkpoint']!r}.")
            qs = qs.filter(checkpoint__slug=options["checkpoint"])
        if options["since"]:
            since = parse_datetime(options["since"])
            if since is None:
                raise refuse("--since must be an ISO 8601 timestamp.")
            qs = qs.filter(decided_at__gte=since)
        total = qs.count() if progress_enabled(self, options) else None
        out: Any = open(options["output"], "w") if options["output"] else self.stdout  # noqa: SIM115
        written = 0
        try:
            # iterator(chunk_size) with prefetch_related: 500 proposals and their revisions
            # and votes in memory at a time, whatever the total.
            with Progress(self, options, total=total, desc="decisions") as bar:
                for proposal in bar.wrap(qs.iterator(chunk_size=500)):
                    record = feedback_record(proposal)
                    if options["only_overrides"] and not record["override"]:
                        continue
                    out.write(json.dumps(record, sort_keys=True, default=str) + "\n")
                    written += 1
        finally:
            if out is not self.stdout:
                out.close()
        self.stderr.write(f"{written} feedback records.")
