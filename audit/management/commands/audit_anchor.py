from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.models import AuditEvent
from audit.services import audit_anchor


class Command(BaseCommand):
    help = (
        "Anchor every audit chain's head into chain 0 now (each sweep does it too); print the "
        "anchor's position and hash, the value to record beside a backup."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if audit_anchor() is None:
            self.stderr.write("Nothing appended since the last anchor; its head stands.")
        head = (
            AuditEvent.objects.filter(chain=0)
            .order_by("-chain_seq")
            .values_list("chain_seq", "hash")
            .first()
        )
        if head is None:
            self.stderr.write("The audit trail is empty.")
            return
        # What to keep beside a backup: a restored copy's chain 0 must end here (or later).
        self.stdout.write(f"chain 0 position {head[0]} hash {head[1]}")
