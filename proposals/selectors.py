"""Reads that authorize: every query for proposals or checkpoints goes through these, so lists
and details apply the same visibility rule (proposals.permissions)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import Prefetch, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import Exact

from audit.models import AuditEvent
from proposals.errors import NotFound
from proposals.models import Checkpoint, Proposal, Vote
from proposals.permissions import Access, reviewable_proposals_q, visible_proposals_q


def checkpoint_list(access: Access) -> QuerySet[Checkpoint]:
    return Checkpoint.objects.filter(pk__in=access.visible_checkpoint_ids).order_by("slug")


def checkpoint_get(access: Access, slug: str) -> Checkpoint:
    checkpoint = checkpoint_list(access).filter(slug=slug).first()
    if checkpoint is None:
        raise NotFound(f"Checkpoint {slug!r} not found.")
    return checkpoint


@dataclass(frozen=True)
class ProposalFilters:
    status: list[str] | None = None
    checkpoint: str | None = None
    region: str | None = None
    priority: list[str] | None = None
    labels: dict[str, str] | None = None
    reviewable_by_me: bool = False
    submitted_by_me: bool = False
    external_id: str | None = None


def proposal_list(access: Access, filters: ProposalFilters) -> QuerySet[Proposal]:
    """Visible proposals, filtered, ordered by (sla_due_at, id) for keyset pagination. The
    status filter on open work lets PostgreSQL use the partial queue index."""
    qs = Proposal.objects.filter(visible_proposals_q(access))
    if filters.reviewable_by_me:
        qs = qs.filter(reviewable_proposals_q(access))
    if filters.submitted_by_me:
        qs = qs.filter(submitted_by_id=access.user_id)
    if filters.status:
        qs = qs.filter(status__in=filters.status)
    if filters.checkpoint:
        # Resolve the slug first: filtering on checkpoint_id lets the per-checkpoint partial
        # index serve the query (a join on slug would not).
        checkpoint_id = (
            Checkpoint.objects.filter(slug=filters.checkpoint).values_list("pk", flat=True).first()
        )
        qs = qs.filter(checkpoint_id=checkpoint_id) if checkpoint_id else qs.none()
    if filters.region:
        qs = qs.filter(region=filters.region)
    if filters.priority:
        qs = qs.filter(priority__in=filters.priority)
    if filters.external_id:
        qs = qs.filter(external_id=filters.external_id)
    for key, value in (filters.labels or {}).items():
        qs = qs.filter(_label_is(qs.db, key, value))
    return qs.select_related("checkpoint", "submitted_by", "claimed_by").order_by(
        "sla_due_at", "id"
    )


def _label_is(db: str, key: str, value: str) -> Q | Exact:
    """labels[key] == value. PostgreSQL: jsonb containment (`@>`), the form a GIN index on
    labels serves. SQLite has no containment lookup (NotSupportedError): compare the key's text."""
    if connections[db].vendor == "postgresql":
        return Q(labels__contains={key: value})
    # KeyTextTransform quotes the key into the JSON path itself, so any key is just a key.
    return Exact(KeyTextTransform(key, "labels"), value)


def after_cursor(qs: QuerySet[Proposal], sla_due_at: datetime, pk: uuid.UUID) -> QuerySet[Proposal]:
    """Rows strictly after (sla_due_at, id). The leading range predicate lets the index seek."""
    return qs.filter(sla_due_at__gte=sla_due_at).filter(Q(sla_due_at__gt=sla_due_at) | Q(id__gt=pk))


def proposal_get(access: Access, proposal_id: Any, *, with_children: bool = False) -> Proposal:
    """A proposal the caller may see, or NotFound (never 403: no existence leak)."""
    try:
        uuid.UUID(str(proposal_id))
    except ValueError:
        raise NotFound("Proposal not found.") from None
    qs = Proposal.objects.select_related("checkpoint", "submitted_by", "claimed_by")
    if with_children:
        qs = qs.prefetch_related(
            "revisions__author",
            Prefetch("votes", queryset=Vote.objects.select_related("reviewer")),
        )
    proposal = qs.filter(pk=proposal_id).first()
    if proposal is None or not access.may_view(proposal):
        raise NotFound("Proposal not found.")
    return proposal


def proposal_events(access: Access, proposal_id: Any) -> QuerySet[AuditEvent]:
    proposal = proposal_get(access, proposal_id)
    return AuditEvent.objects.filter(proposal=proposal).order_by("seq")
