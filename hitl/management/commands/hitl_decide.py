from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from hitl.management.progress import Progress, add_progress_argument, problem, refuse
from proposals import services
from proposals.errors import ApplicationError
from proposals.models import Checkpoint, Proposal, Status
from proposals.permissions import access_for

DECISIONS = ("approve", "reject", "request_changes", "cancel")
CHUNK = 500


class DryRun(Exception):
    """Raised inside the transaction to roll back a rehearsal."""


def pending_ids(checkpoint: Checkpoint, chunk_size: int | None = None) -> Iterator[str]:
    """Every pending proposal of `checkpoint`, by keyset over the primary key, `chunk_size`
    ids at a time: constant memory whatever the backlog, and no cursor held open across the
    decisions (each commits on its own). Decided proposals leave the filter; with --dry-run
    they stay, and the keyset still moves past them."""
    size = chunk_size or CHUNK
    after = None
    while True:
        page = Proposal.objects.filter(checkpoint=checkpoint, status=Status.PENDING)
        if after is not None:
            page = page.filter(pk__gt=after)
        ids = list(page.order_by("pk").values_list("pk", flat=True)[:size])
        if not ids:
            return
        yield from (str(pk) for pk in ids)
        after = ids[-1]


class Command(BaseCommand):
    help = (
        "Decide one or many proposals as a named user, through the same services and "
        "permission checks as the API (so separation of duties still holds). A reason is "
        "required; --dry-run rehearses inside a transaction that is rolled back. Filter mode "
        "(--checkpoint SLUG --all-pending) streams the pending proposals in chunks with "
        "constant memory, each decided in its own transaction, with a progress bar on a "
        "terminal. Exit codes: 0 every proposal decided, 1 some were refused (each is "
        "listed), 2 refused to run (bad arguments, unknown user or checkpoint)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", help="proposal ids")
        parser.add_argument(
            "--decision",
            required=True,
            choices=DECISIONS,
            help="a vote on the current revision (approve, reject, request_changes) or cancel "
            "(managers)",
        )
        parser.add_argument("--as", dest="username", required=True, help="the deciding user")
        parser.add_argument("--reason", required=True, help="recorded as the vote's comment")
        parser.add_argument(
            "--checkpoint", help="with --all-pending: every pending proposal of this checkpoint"
        )
        parser.add_argument(
            "--all-pending",
            action="store_true",
            help="filter mode: decide every pending proposal of --checkpoint",
        )
        parser.add_argument("--option", default="", help="the option key, when approving one")
        parser.add_argument("--dry-run", action="store_true", help="check, change nothing")
        parser.add_argument(
            "--json",
            action="store_true",
            help="JSON Lines: one {id, outcome, error} per proposal, then one summary "
            "{decided, refused, dry_run}",
        )
        add_progress_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["reason"].strip():
            raise refuse("--reason must not be empty.")
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise refuse(f"No user {options['username']!r}.")
        ids: Iterator[str] = iter(options["ids"])
        total = len(options["ids"])
        if options["all_pending"]:
            if not options["checkpoint"]:
                raise refuse("--all-pending needs --checkpoint.")
            checkpoint = Checkpoint.objects.filter(slug=options["checkpoint"]).first()
            if checkpoint is None:
                raise refuse(f"No checkpoint {options['checkpoint']!r}.")
            total += Proposal.objects.filter(checkpoint=checkpoint, status=Status.PENDING).count()
            ids = itertools.chain(ids, pending_ids(checkpoint))
        elif not options["ids"]:
            raise refuse("Name proposal ids, or --checkpoint SLUG --all-pending.")

        access = access_for(user)
        decided = failures = 0
        as_json = options["json"]
        with Progress(self, options, total=total, desc="proposals") as bar:
            for proposal_id in ids:
                bar.update()
                try:
                    outcome = self._decide(proposal_id, user, access, options)
                except ApplicationError as exc:
                    failures += 1
                    if as_json:
                        self._json(id=proposal_id, outcome=None, error=exc.message)
                    else:
                        self.stdout.write(
                            self.style.ERROR(f"{proposal_id}  refused: {exc.message}")
                        )
                    continue
                decided += 1
                if as_json:
                    self._json(id=proposal_id, outcome=outcome, error=None)
                else:
                    verb = "would be" if options["dry_run"] else "is now"
                    self.stdout.write(f"{proposal_id}  {verb} {outcome}")
        if as_json:
            self._json(decided=decided, refused=failures, dry_run=options["dry_run"])
        else:
            summary = f"{decided} decided, {failures} refused"
            if options["dry_run"]:
                summary += " (dry run: nothing was changed)"
            self.stdout.write(summary)
        if failures:
            raise problem(f"{failures} of {decided + failures} refused.")

    def _json(self, **fields: Any) -> None:
        self.stdout.write(json.dumps(fields, sort_keys=True))

    def _decide(self, proposal_id: str, user: Any, access: Any, options: Any) -> str:
        outcome = ""
        try:
            with transaction.atomic():
                if options["decision"] == "cancel":
                    proposal = services.proposal_cancel(
                        proposal_id=proposal_id,
                        actor=user,
                        reason=options["reason"],
                        access=access,
                    )
                else:
                    proposal = services.proposal_cast_current(
                        proposal_id=proposal_id,
                        reviewer=user,
                        decision=options["decision"],
                        comment=options["reason"],
                        selected_option=options["option"],
                        access=access,
                    )
                outcome = proposal.status
                if options["dry_run"]:
                    raise DryRun
        except DryRun:
            pass
        return outcome
