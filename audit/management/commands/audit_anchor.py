from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import audit_anchor


class Command(BaseCommand):
    help = (
        "Anchor every audit chain's head into chain 0 now (each sweep does it too); print the "
        "anchor's position and hash, the value to record beside a backup."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        anchor = audit_anchor()
        if anchor is None:
            self.stdout.write("Nothing appended since the last anchor.")
            return
        self.stdout.write(f"chain 0 position {anchor.chain_seq} hash {anchor.hash}")
