from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from proposals import services
from proposals.errors import ApplicationError
from proposals.models import Proposal, Status
from proposals.permissions import access_for

DECISIONS = ("approve", "reject", "request_changes", "cancel")


class DryRun(Exception):
    """Raised inside the transaction to roll back a rehearsal."""


class Command(BaseCommand):
    help = (
        "Decide one or many proposals as a named user, through the same services and "
        "permission checks as the API (so separation of duties still holds). A reason is "
        "required; --dry-run rehearses inside a transaction that is rolled back."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", help="proposal ids")
        parser.add_argument("--decision", required=True, choices=DECISIONS)
        parser.add_argument("--as", dest="username", required=True, help="the deciding user")
        parser.add_argument("--reason", required=True, help="recorded as the vote's comment")
        parser.add_argument(
            "--checkpoint", help="with --all-pending: every pending proposal of this checkpoint"
        )
        parser.add_argument("--all-pending", action="store_true")
        parser.add_argument("--option", default="", help="the option key, when approving one")
        parser.add_argument("--dry-run", action="store_true", help="check, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["reason"].strip():
            raise CommandError("--reason must not be empty.")
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}.")
        ids = list(options["ids"])
        if options["all_pending"]:
            if not options["checkpoint"]:
                raise CommandError("--all-pending needs --checkpoint.")
            ids += [
                str(pk)
                for pk in Proposal.objects.filter(
                    checkpoint__slug=options["checkpoint"], status=Status.PENDING
                ).values_list("pk", flat=True)
            ]
        if not ids:
            raise CommandError("Name proposal ids, or --checkpoint SLUG --all-pending.")

        access = access_for(user)
        failures = 0
        for proposal_id in ids:
            try:
                outcome = self._decide(proposal_id, user, access, options)
            except ApplicationError as exc:
                failures += 1
                self.stdout.write(self.style.ERROR(f"{proposal_id}  refused: {exc.message}"))
                continue
            verb = "would be" if options["dry_run"] else "is now"
            self.stdout.write(f"{proposal_id}  {verb} {outcome}")
        summary = f"{len(ids) - failures} decided, {failures} refused"
        if options["dry_run"]:
            summary += " (dry run: nothing was changed)"
        self.stdout.write(summary)
        if failures:
            raise CommandError(f"{failures} of {len(ids)} refused.")

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
