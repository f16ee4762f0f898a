from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from hitl.keys import api_key_create, service_account_create
from hitl.models import ServiceAccount


class Command(BaseCommand):
    help = (
        "Create an API key for a user or service account and print it once. "
        "With --service-account, the account is created when missing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="label for the key")
        parser.add_argument(
            "--service-account", action="store_true", help="create the service account if needed"
        )
        parser.add_argument("--expires-in-days", type=int, help="key lifetime (default: none)")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        user: Any = get_user_model().objects.filter(username=username).first()
        if user is None:
            if not options["service_account"]:
                raise CommandError(
                    f"No user {username!r}. Pass --service-account to create a service account."
                )
            user = service_account_create(username=username)
            self.stderr.write(
                f"Created service account {username}. Secret that signs its callback_url "
                f"webhooks (shown once): {user.service_account.signing_secret}"
            )
        elif options["service_account"] and not ServiceAccount.objects.filter(user=user).exists():
            raise CommandError(f"{username!r} exists and is a human user, not a service account.")
        expires_at = None
        if options["expires_in_days"] is not None:
            if options["expires_in_days"] <= 0:
                raise CommandError("--expires-in-days must be positive.")
            expires_at = timezone.now() + timedelta(days=options["expires_in_days"])
        issued = api_key_create(user=user, name=options["name"], expires_at=expires_at)
        self.stderr.write(f"API key for {username} (shown once; only its hash is stored):")
        self.stdout.write(issued.token)
