"""Bulk submit: many `proposal_submit`s written set-based.

Each item is checked, built, routed and announced by the very functions a single submit uses
(`proposals.services`), so a bulk item ends exactly as the same item submitted alone. What
differs is only how the rows reach the database: the proposals, their revisions, both
history tables (each history row copied from its row as inserted) and the outbox rows in one
statement for the whole call, and their audit events by `audit_append_rows` (one head read
and one COPY for all of them, each event still hashed, chained and positioned as if recorded
one by one), with those routing adds after them in one `audit_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from audit.services import audit_append_rows, audit_batch, jsonable
from notifications.services import outbox_event
from proposals import policy
from proposals.errors import ApplicationError
from proposals.models import Checkpoint, Proposal, Revision
from proposals.permissions import Access, access_for, electorate_size
from proposals.services import (
    ProposalInput,
    _apply_route,
    _check_submission,
    _first_revision,
    _new_proposal,
    _route,
    _submitted_data,
    insert_many_with_history,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class SubmitItem:
    checkpoint: Checkpoint
    data: ProposalInput
    idempotency_key: str | None = None


def proposal_submit_many(
    *, submitter: User, items: list[SubmitItem], access: Access | None = None
) -> list[Proposal | ApplicationError]:
    """`proposal_submit` for each item, in one transaction: one statement for the proposals,
    their revisions, both history tables and the outbox rows, and one audit event per proposal
    (all in the one chain the transaction holds, inserted together at the end). An item that
    fails its checks is answered by its error and written by nobody; the others are written
    together. Routing is the single submit's (`_route`); the few a policy decides then go
    through `transition`, exactly as alone (their audit events join the batch). A database
    error (a reused idempotency key) undoes the whole call: the caller retries item by item."""
    access = access or access_for(submitter)
    now = timezone.now()
    results: list[Proposal | ApplicationError] = []
    written: list[tuple[Proposal, Revision, policy.Route, ProposalInput]] = []
    for item in items:
        try:
            _check_submission(access, item.checkpoint, item.data)
        except ApplicationError as exc:
            results.append(exc)
            continue
        checkpoint = item.checkpoint
        # Counted as a single submit counts it (remembered per checkpoint under the rights
        # version): recounting it per chunk was two queries and a tenth of a chunk's CPU.
        eligible = electorate_size(checkpoint, submitter_id=submitter.pk, access=access)
        proposal = _new_proposal(
            submitter, checkpoint, item.data, item.idempotency_key, eligible, now
        )
        revision = _first_revision(proposal, item.data, submitter, now)
        written.append(
            (proposal, revision, _route(proposal, checkpoint, item.data, now), item.data)
        )
        results.append(proposal)
    if not written:
        return results
    proposals = [w[0] for w in written]
    revisions = [w[1] for w in written]
    submitted = [(p, _submitted_data(d, r)) for p, r, d, _data in written]
    with transaction.atomic(), audit_batch():
        announced = [outbox_event("proposal.submitted", proposal=p, data=e) for p, e in submitted]
        insert_many_with_history(proposals, revisions, user=submitter, when=now, plain=announced)
        # Appended now, ahead of the events routing adds to the batch: as audit_record would
        # append them one by one, without a model instance and a batch entry per event.
        label = submitter.get_username()
        audit_append_rows(
            [
                {
                    "created_at": now,
                    "actor_id": submitter.pk,
                    "actor_label": label,
                    "verb": "proposal.submitted",
                    "proposal_id": proposal.pk,
                    "checkpoint_id": proposal.checkpoint_id,
                    "revision": proposal.revision,
                    "reason": "",
                    "data": jsonable(event),
                }
                for proposal, event in submitted
            ]
        )
        for proposal, _revision, decision, data in written:
            # Created in this transaction: invisible to everyone else, so as good as locked.
            proposal._hitl_locked = True  # type: ignore[attr-defined]
            _apply_route(proposal, decision, data)
    # Unlike `proposal_submit`, no prefetch cache of the revision and votes: the one caller
    # renders list rows, which read neither, and filling it cost 8 % of the request's CPU.
    return results
