from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from hitl.keys import api_key_create, service_account_create
from hitl.management.progress import refuse
from hitl.models import ServiceAccount


class Command(BaseCommand):
    help = (
        "Create an API key for a user or service account and print it once. "
        "With --service-account, the account is created when missing (and the secret that "
        "signs its webhooks is shown once). The key goes to standard output, notes to "
        "standard error. Exit codes: 0 created, 2 refused (unknown user without "
        "--service-account, a human user given --service-account, a bad lifetime)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the user or service account the key is for")
        parser.add_argument("--name", default="cli", help="label for the key")
        parser.add_argument(
            "--service-account", action="store_true", help="create the service account if needed"
        )
        parser.add_argument("--expires-in-days", type=int, help="key lifetime (default: none)")
        parser.add_argument(
            "--json",
            action="store_true",
            help="print {username, name, token, prefix, expires_at, service_account_created, "
            "signing_secret}",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        signing_secret: str | None = None
        user: Any = get_user_model().objects.filter(username=username).first()
        if user is None:
            if not options["service_account"]:
                raise refuse(
                    f"No user {username!r}. Pass --service-account to create a service account."
                )
            user = service_account_create(username=username)
            signing_secret = user.service_account.signing_secret
            if not options["json"]:
                self.stderr.write(
                    f"Created service account {username}. Secret that signs its callback_url "
                    f"webhooks (shown once): {signing_secret}"
                )
        elif options["service_account"] and not ServiceAccount.objects.filter(user=user).exists():
            raise refuse(f"{username!r} exists and is a human user, not a service account.")
        expires_at = None
        if options["expires_in_days"] is not None:
            if options["expires_in_days"] <= 0:
                raise refuse("--expires-in-days must be positive.")
            expires_at = timezone.now() + timedelta(days=options["expires_in_days"])
        issued = api_key_create(user=user, name=options["name"], expires_at=expires_at)
        if options["json"]:
            record = {
                "username": username,
                "name": options["name"],
                "token": issued.token,
                "prefix": issued.api_key.prefix,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "service_account_created": signing_secret is not None,
                "signing_secret": signing_secret,
            }
            self.stdout.write(json.dumps(record, sort_keys=True))
            return
        self.stderr.write(f"API key for {username} (shown once; only its hash is stored):")
        self.stdout.write(issued.token)
