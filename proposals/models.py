"""The domain: checkpoints, proposals, their revisions and the votes cast on them.

Nothing here changes a proposal's status: that is `proposals.services.transition`'s job alone.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from simple_history.models import HistoricalRecords


class Status(models.TextChoices):
    PENDING = "pending"
    CHANGES_REQUESTED = "changes_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class Action(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CHANGES = "request_changes"
    REVISE = "revise"
    CANCEL = "cancel"
    REVOKE = "revoke"


# The whole state machine. A (status, action) pair missing here is refused with 409.
# changes_requested -> reject exists for timeouts; there is no changes_requested -> approve:
# content a reviewer asked to change is never approved without a new revision and a vote.
# Reviewers can only vote on `pending` (see services.vote_cast).
TRANSITIONS: dict[str, dict[str, str]] = {
    Status.PENDING: {
        Action.APPROVE: Status.APPROVED,
        Action.REJECT: Status.REJECTED,
        Action.REQUEST_CHANGES: Status.CHANGES_REQUESTED,
        Action.CANCEL: Status.CANCELLED,
    },
    Status.CHANGES_REQUESTED: {
        Action.REVISE: Status.PENDING,
        Action.REJECT: Status.REJECTED,
        Action.CANCEL: Status.CANCELLED,
    },
    Status.APPROVED: {Action.REVOKE: Status.REJECTED},
    Status.REJECTED: {},
    Status.CANCELLED: {},
}

OPEN_STATUSES = (Status.PENDING, Status.CHANGES_REQUESTED)


class Resolution(models.TextChoices):
    REVIEWERS = "reviewers"
    POLICY = "policy"
    TIMEOUT = "timeout"
    BYPASS = "bypass"
    CANCELLED = "cancelled"
    REVOKED = "revoked"
    # Development mode only (HITL_DEV_AUTO_APPROVE_SECONDS, refused unless DEBUG): never a
    # human decision, and labelled as such everywhere it shows.
    DEV_AUTO_APPROVE = "dev_auto_approve"


class Decision(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CHANGES = "request_changes"


class Priority(models.TextChoices):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class QuorumRule(models.TextChoices):
    ANY = "any"
    ALL = "all"
    MAJORITY = "majority"
    COUNT = "count"


class Mode(models.TextChoices):
    PRE = "pre"
    POST = "post"


class TimeoutAction(models.TextChoices):
    REJECT = "reject"
    APPROVE = "approve"


def default_sla_seconds() -> dict[str, int]:
    return {"critical": 3600, "high": 14400, "medium": 86400, "low": 259200}


def default_require_reason_on() -> list[str]:
    return [Decision.REJECT, Decision.REQUEST_CHANGES]


class Checkpoint(models.Model):
    """A named gate and its policy. Who may submit, review and manage is held in
    django-guardian object permissions (see proposals.permissions), not in fields here."""

    # What a manager configures (admin form, API output). The bypass fields are not here:
    # they change only through the audited bypass services.
    POLICY_FIELDS = (
        "slug",
        "name",
        "description",
        "enabled",
        "mode",
        "quorum_rule",
        "quorum_count",
        "veto",
        "auto_approve_at",
        "auto_reject_below",
        "review_when",
        "sample_rate",
        "timeout_seconds",
        "timeout_action",
        "escalate_after_seconds",
        "remind_after_seconds",
        "sla_seconds",
        "revocation_window_seconds",
        "max_revisions",
        "require_reason_on",
        "payload_schema",
    )

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(
        default=True, help_text="Off: proposals pass without review, recorded as policy."
    )
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.PRE)

    quorum_rule = models.CharField(
        max_length=10, choices=QuorumRule.choices, default=QuorumRule.ANY
    )
    quorum_count = models.PositiveSmallIntegerField(default=1)
    veto = models.BooleanField(default=True, help_text="One reject ends the review.")

    auto_approve_at = models.FloatField(null=True, blank=True)
    auto_reject_below = models.FloatField(null=True, blank=True)
    review_when = models.JSONField(default=list, blank=True)
    sample_rate = models.FloatField(default=0.0)

    timeout_seconds = models.PositiveIntegerField(null=True, blank=True, default=86400)
    timeout_action = models.CharField(
        max_length=10, choices=TimeoutAction.choices, default=TimeoutAction.REJECT
    )
    escalate_after_seconds = models.PositiveIntegerField(null=True, blank=True)
    remind_after_seconds = models.PositiveIntegerField(null=True, blank=True)
    sla_seconds = models.JSONField(default=default_sla_seconds)
    revocation_window_seconds = models.PositiveIntegerField(default=300)
    max_revisions = models.PositiveSmallIntegerField(default=3)
    require_reason_on = models.JSONField(default=default_require_reason_on, blank=True)
    payload_schema = models.JSONField(
        null=True,
        blank=True,
        help_text="JSON Schema (2020-12) every payload must satisfy: submitted, an option's, "
        "revised, or edited by a reviewer. A proposal may bring its own, which wins.",
    )

    bypass_until = models.DateTimeField(null=True, blank=True)
    bypass_reason = models.TextField(blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["slug"]
        permissions = [
            ("submit_to_checkpoint", "Can submit proposals to the checkpoint"),
            ("review_checkpoint", "Can review the checkpoint's proposals"),
            ("review_escalated_checkpoint", "Can review the checkpoint's escalated proposals"),
            ("manage_checkpoint", "Can manage the checkpoint and its proposals"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(sample_rate__gte=0) & Q(sample_rate__lte=1),
                name="checkpoint_sample_rate_range",
            ),
            models.CheckConstraint(
                condition=Q(quorum_count__gte=1), name="checkpoint_quorum_count_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from proposals.policy import schema_problem, validate_checkpoint_policy

        validate_checkpoint_policy(
            review_when=self.review_when,
            sla_seconds=self.sla_seconds,
            require_reason_on=self.require_reason_on,
            auto_approve_at=self.auto_approve_at,
            auto_reject_below=self.auto_reject_below,
        )
        if self.payload_schema is not None:
            problem = schema_problem(self.payload_schema)
            if problem is not None:
                raise ValidationError({"payload_schema": problem})


class Proposal(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="proposals")
    title = models.CharField(max_length=300)
    summary = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    options = models.JSONField(default=list, blank=True)
    context = models.JSONField(default=dict, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.MEDIUM)
    impact = models.DecimalField(max_digits=20, decimal_places=4, null=True, blank=True)
    region = models.CharField(max_length=100, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    # The schema its payloads must satisfy, when the agent brought one (it wins over the
    # checkpoint's), and its own timeout, at most the checkpoint's; NULL = the checkpoint's.
    payload_schema = models.JSONField(null=True, blank=True)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    external_id = models.CharField(max_length=200, blank=True)
    callback_url = models.URLField(max_length=500, blank=True)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="submitted_proposals"
    )
    # NULL (not "") when absent: the unique constraint must ignore proposals without a key.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    resolution = models.CharField(max_length=20, choices=Resolution.choices, blank=True)
    revision = models.PositiveIntegerField(default=1)
    approved_payload = models.JSONField(null=True, blank=True)
    selected_option = models.CharField(max_length=100, blank=True)
    # Quorum snapshot at submission: "all"/"majority" count the approvers eligible then.
    eligible_reviewers = models.PositiveIntegerField(default=0)
    quorum_required = models.PositiveIntegerField(default=1)

    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="claimed_proposals",
    )
    claimed_until = models.DateTimeField(null=True, blank=True)

    due_at = models.DateTimeField(null=True, blank=True)
    sla_due_at = models.DateTimeField()
    # Timer targets are stored, not derived, so each sweep is one indexed range scan.
    remind_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    escalate_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    sla_breached_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    history = HistoricalRecords()

    class Meta:
        ordering = ["sla_due_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=Status.values), name="proposal_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(resolution__in=[*Resolution.values, ""]),
                name="proposal_resolution_valid",
            ),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True)
                | (Q(confidence__gte=0) & Q(confidence__lte=1)),
                name="proposal_confidence_range",
            ),
            # Terminal statuses always say how they got there; open ones never do.
            models.CheckConstraint(
                condition=Q(status__in=OPEN_STATUSES, resolution="")
                | (~Q(status__in=OPEN_STATUSES) & ~Q(resolution="")),
                name="proposal_resolution_matches_status",
            ),
            models.UniqueConstraint(
                fields=["submitted_by", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="proposal_idempotency_key_per_submitter",
            ),
        ]
        indexes = [
            # The review queue: open work ordered by SLA deadline, kept small by the condition.
            models.Index(
                fields=["sla_due_at", "id"],
                condition=Q(status__in=OPEN_STATUSES),
                name="proposal_open_queue_idx",
            ),
            models.Index(
                fields=["checkpoint", "sla_due_at", "id"],
                condition=Q(status__in=OPEN_STATUSES),
                name="proposal_open_by_cp_idx",
            ),
            # Timer sweeps find due work without touching decided or already-handled rows.
            models.Index(
                fields=["due_at"],
                condition=Q(status__in=OPEN_STATUSES),
                name="proposal_open_due_idx",
            ),
            models.Index(
                fields=["remind_at"],
                condition=Q(status__in=OPEN_STATUSES, reminded_at__isnull=True),
                name="proposal_remind_due_idx",
            ),
            models.Index(
                fields=["escalate_at"],
                condition=Q(status__in=OPEN_STATUSES, escalated_at__isnull=True),
                name="proposal_escalate_due_idx",
            ),
            models.Index(
                fields=["sla_due_at"],
                condition=Q(status__in=OPEN_STATUSES, sla_breached_at__isnull=True),
                name="proposal_sla_due_idx",
            ),
            models.Index(
                fields=["claimed_until"],
                condition=Q(claimed_until__isnull=False),
                name="proposal_claimed_idx",
            ),
            # The other arms of a list page (selectors.proposal_page): a submitter's open work,
            # and escalated open work for those who review escalations only, each in queue
            # order on its own, however little of the open queue it is.
            models.Index(
                fields=["submitted_by", "sla_due_at", "id"],
                condition=Q(status__in=OPEN_STATUSES),
                name="proposal_open_by_sub_idx",
            ),
            models.Index(
                fields=["checkpoint", "sla_due_at", "id"],
                condition=Q(status__in=OPEN_STATUSES, escalated_at__isnull=False),
                name="proposal_open_escalated_idx",
            ),
            models.Index(fields=["checkpoint", "sla_due_at", "id"], name="proposal_cp_sla_idx"),
            models.Index(fields=["submitted_by", "sla_due_at", "id"], name="proposal_sub_sla_idx"),
            # The dashboard (hitl.dashboard): a period's proposals of some checkpoints, read from
            # the index alone, in checkpoint order. Key columns rather than INCLUDE, which SQLite
            # lacks (it reads a covering index alone as well).
            models.Index(
                fields=[
                    "checkpoint",
                    "created_at",
                    "id",
                    "status",
                    "resolution",
                    "priority",
                    "confidence",
                    "decided_at",
                    "sla_due_at",
                    "escalated_at",
                ],
                name="proposal_dashboard_idx",
            ),
            # ...and the few of them with options, where an override may be a choice of option.
            models.Index(
                fields=["checkpoint", "created_at"],
                condition=~Q(options=[]),
                name="proposal_with_options_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class RevisionKind(models.TextChoices):
    SUBMITTED = "submitted"
    RESUBMITTED = "resubmitted"
    EDITED = "edited"


class Revision(models.Model):
    proposal = models.ForeignKey(Proposal, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=RevisionKind.choices)
    payload = models.JSONField()
    payload_hash = models.CharField(max_length=64)
    summary = models.TextField(blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="authored_revisions"
    )
    patch = models.JSONField(default=list, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField()

    history = HistoricalRecords()

    class Meta:
        ordering = ["proposal", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["proposal", "number"], name="revision_number_unique_per_proposal"
            ),
        ]
        indexes = [
            # The dashboard's modification and override rates: the few edited proposals.
            models.Index(
                fields=["proposal"], condition=Q(kind="edited"), name="revision_edited_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.proposal_id} r{self.number}"


class Vote(models.Model):
    proposal = models.ForeignKey(Proposal, on_delete=models.CASCADE, related_name="votes")
    revision = models.PositiveIntegerField()
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="votes"
    )
    decision = models.CharField(max_length=20, choices=Decision.choices)
    comment = models.TextField(blank=True)
    selected_option = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField()
    # Copies of what the dashboard's reviewer figures read, fixed when the vote is cast (a
    # proposal's checkpoint and submission time never change), so they are counted from the
    # votes' own index without joining proposals: the proposal's checkpoint, and the seconds
    # from its submission to this vote. save() fills them; bulk writers set them themselves.
    checkpoint = models.ForeignKey(
        Checkpoint, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    review_seconds = models.FloatField()

    history = HistoricalRecords()

    class Meta:
        ordering = ["proposal", "revision", "created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["proposal", "revision", "reviewer"], name="vote_one_per_reviewer_revision"
            ),
            models.CheckConstraint(
                condition=Q(decision__in=Decision.values), name="vote_decision_valid"
            ),
        ]
        indexes = [
            # The dashboard: votes cast in a period, per reviewer, read from the index alone...
            models.Index(
                fields=["created_at", "checkpoint", "reviewer", "decision", "review_seconds"],
                name="vote_cast_idx",
            ),
            # ...and the few proposals sent back for changes (its override rate).
            models.Index(
                fields=["proposal"],
                condition=Q(decision="request_changes"),
                name="vote_changes_requested_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer_id} {self.decision} r{self.revision}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.checkpoint_id is None:
            self.checkpoint_id = self.proposal.checkpoint_id
        if self.review_seconds is None:
            self.review_seconds = (self.created_at - self.proposal.created_at).total_seconds()
        super().save(*args, **kwargs)
