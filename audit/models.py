"""The append-only, hash-chained audit trail.

Each event's `hash` is sha256 over its canonical content (RFC 8785, so the numbers PostgreSQL's
jsonb rewrites still verify; `hash_version` keeps older rows on the rule they were written with)
plus the previous event's hash in its chain, so editing, deleting or reordering any row breaks
its chain there (`manage.py audit_verify` names every broken link).

There are HITL_AUDIT_CHAINS chains (audit.services), each with its own lock, positions and
links, so writers on different chains never wait for each other; chain 0 also carries anchors,
events naming every other chain's head, so a chain cut at its end is caught. Rows written
before chains existed are chain 0, position = seq, unchanged.
On PostgreSQL a trigger also refuses UPDATE and DELETE on the table (migration 0002).
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models


class AppendOnlyError(Exception):
    pass


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Audit events cannot be updated.")

    def delete(self) -> NoReturn:  # type: ignore[override]
        raise AppendOnlyError("Audit events cannot be deleted.")


class AuditEvent(models.Model):
    seq = models.BigIntegerField(
        unique=True,
        help_text="Order of appends over all chains (a database sequence: increasing, with gaps "
        "where a transaction rolled back). Within a chain it increases with chain_seq.",
    )
    chain = models.PositiveSmallIntegerField(
        default=0, help_text="Which hash chain (0 for rows from before chains, and anchors)."
    )
    chain_seq = models.BigIntegerField(help_text="Position in its chain, from 1, no gaps.")
    created_at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_label = models.CharField(max_length=150, help_text="Username, or 'system'.")
    verb = models.CharField(max_length=60)
    proposal = models.ForeignKey(
        "proposals.Proposal",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="audit_events",
        # audit_proposal_seq_idx (proposal, seq) serves every lookup by proposal: one index
        # less to maintain per appended event.
        db_index=False,
    )
    checkpoint = models.ForeignKey(
        "proposals.Checkpoint", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    revision = models.PositiveIntegerField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    hash_version = models.PositiveSmallIntegerField(
        help_text="How `hash` was computed: 1 Python JSON text (before RFC 8785), 2 RFC 8785, "
        "3 RFC 8785 with chain and chain_seq."
    )

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        indexes = [models.Index(fields=["proposal", "seq"], name="audit_proposal_seq_idx")]
        constraints = [
            # Also the index the head of each chain is read from.
            models.UniqueConstraint(fields=["chain", "chain_seq"], name="audit_chain_position"),
        ]

    def __str__(self) -> str:
        return f"#{self.chain}.{self.chain_seq} {self.verb} by {self.actor_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Audit events cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Audit events cannot be deleted.")
