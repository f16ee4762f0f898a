"""Reads that authorize: every query for proposals or checkpoints goes through these, so lists
and details apply the same visibility rule (proposals.permissions)."""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from typing import Any

from django.db import connections, router
from django.db.models import Prefetch, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import Exact

from audit.models import AuditEvent
from proposals.errors import NotFound
from proposals.models import Checkpoint, Proposal, Vote
from proposals.permissions import (
    Access,
    reviewable_proposals_arms,
    reviewable_proposals_q,
    visible_proposals_arms,
    visible_proposals_q,
)


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


# The lists' order: the SLA deadline, ties by id (keyset pagination, `after_cursor`).
PAGE_ORDER = ("sla_due_at", "id")


def proposal_list(access: Access, filters: ProposalFilters) -> QuerySet[Proposal]:
    """Visible proposals, filtered, ordered by PAGE_ORDER. A page of it in that order is
    `proposal_page`, which reads the same set on indexes."""
    visible = reviewable_proposals_q if filters.reviewable_by_me else visible_proposals_q
    qs = Proposal.objects.filter(visible(access), *_conditions(access, filters))
    return qs.select_related("checkpoint", "submitted_by", "claimed_by").order_by(*PAGE_ORDER)


def proposal_page(
    access: Access,
    filters: ProposalFilters,
    *,
    size: int,
    after: tuple[datetime, uuid.UUID] | None = None,
    shape: Callable[[QuerySet[Proposal]], QuerySet[Any]] | None = None,
) -> list[Any]:
    """The first `size` rows of `proposal_list` after the cursor, in PAGE_ORDER, as one UNION
    ALL of the visibility rule's disjoint arms (permissions.visible_proposals_arms), each
    ordered and limited on its own: each arm is an index scan in order (the open queue's when
    it holds most of it, a checkpoint's or a submitter's partial index when it holds few rows)
    and PostgreSQL merges them (Merge Append) without sorting the table, so page 1,000 costs
    what page 1 does, for a reviewer with three items as for one with the whole queue. Their OR
    was misestimated and filtered the whole open queue for a reviewer with few items. `shape`
    refines every arm alike (more filters, annotations, `.values()`); rows are what it selects.
    """
    arms = (
        reviewable_proposals_arms(access)
        if filters.reviewable_by_me
        else visible_proposals_arms(access)
    )
    db = router.db_for_read(Proposal)
    if len(arms) > 1 and not connections[db].features.supports_slicing_ordering_in_compound:
        # SQLite (the embedded mode) takes no ORDER BY or LIMIT inside a UNION: one arm, their
        # OR, the same rows.
        arms = [reduce(operator.or_, arms)]
    conditions = _conditions(access, filters)
    pages = []
    for arm in arms:
        qs = Proposal.objects.filter(arm, *conditions)
        if after is not None:
            qs = after_cursor(qs, *after)
        if shape is not None:
            qs = shape(qs)
        pages.append(qs.order_by(*PAGE_ORDER)[:size])
    if not pages:
        return []
    if len(pages) == 1:
        return list(pages[0])
    return list(pages[0].union(*pages[1:], all=True).order_by(*PAGE_ORDER)[:size])


def _conditions(access: Access, filters: ProposalFilters) -> list[Q | Exact]:
    """The filters besides visibility, as conditions on the proposal row."""
    conditions: list[Q | Exact] = []
    if filters.submitted_by_me:
        conditions.append(Q(submitted_by_id=access.user_id))
    if filters.status:
        # On open work this lets PostgreSQL use the partial queue indexes.
        conditions.append(Q(status__in=filters.status))
    if filters.checkpoint:
        # Resolve the slug first: filtering on checkpoint_id lets the per-checkpoint partial
        # index serve the query (a join on slug would not).
        checkpoint_id = (
            Checkpoint.objects.filter(slug=filters.checkpoint).values_list("pk", flat=True).first()
        )
        conditions.append(Q(checkpoint_id=checkpoint_id) if checkpoint_id else Q(pk__in=[]))
    if filters.region:
        conditions.append(Q(region=filters.region))
    if filters.priority:
        conditions.append(Q(priority__in=filters.priority))
    if filters.external_id:
        conditions.append(Q(external_id=filters.external_id))
    db = router.db_for_read(Proposal)
    conditions.extend(_label_is(db, key, value) for key, value in (filters.labels or {}).items())
    return conditions


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
