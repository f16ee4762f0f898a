"""Input and output shapes of the API. Validation only: no logic, no saves."""

from __future__ import annotations

import math
from typing import Any

from rest_framework import serializers

from audit.models import AuditEvent
from notifications.models import WEBHOOK_EVENTS
from proposals.models import Checkpoint, Decision, Priority, Proposal, Revision, Vote
from proposals.permissions import Access

MAX_JSON_DEPTH = 32


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


class JSONObjectField(serializers.JSONField):
    """A JSON object (not a list or scalar), bounded in depth."""

    default_error_messages = {
        "not_object": "Must be a JSON object.",
        "too_deep": f"Nested deeper than {MAX_JSON_DEPTH} levels.",
    }

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_object")
        if _depth(value) > MAX_JSON_DEPTH:
            self.fail("too_deep")
        return value


class FiniteFloatField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        try:
            value = super().to_internal_value(data)
        except OverflowError:  # float(10**400): DRF only catches TypeError/ValueError
            raise serializers.ValidationError("Must be a finite number.") from None
        if not math.isfinite(value):
            raise serializers.ValidationError("Must be a finite number.")
        return value


class OptionSerializer(serializers.Serializer):
    key = serializers.CharField(max_length=100)
    label = serializers.CharField(  # type: ignore[assignment]  # shadows Field.label
        max_length=300, required=False, allow_blank=True, default=""
    )
    payload = JSONObjectField()
    confidence = FiniteFloatField(min_value=0, max_value=1, required=False, allow_null=True)


class ProposalInputSerializer(serializers.Serializer):
    checkpoint = serializers.SlugField(max_length=100)
    title = serializers.CharField(max_length=300)
    summary = serializers.CharField(required=False, allow_blank=True, default="", max_length=20000)
    payload = JSONObjectField()
    options = serializers.ListField(
        child=OptionSerializer(), required=False, default=list, max_length=50
    )
    context = JSONObjectField(required=False, default=dict)  # type: ignore[assignment]
    confidence = FiniteFloatField(min_value=0, max_value=1, required=False, allow_null=True)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.MEDIUM)
    impact = serializers.DecimalField(
        max_digits=20, decimal_places=4, required=False, allow_null=True
    )
    region = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    labels = serializers.DictField(
        child=serializers.CharField(max_length=200, allow_blank=True), required=False, default=dict
    )
    external_id = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default=""
    )
    callback_url = serializers.URLField(
        max_length=500, required=False, allow_blank=True, default=""
    )


class BulkInputSerializer(serializers.Serializer):
    proposals = serializers.ListField(
        child=serializers.JSONField(), min_length=1, max_length=500, allow_empty=False
    )


class BulkItemResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.IntegerField(help_text="HTTP status this item would have had alone")
    proposal = serializers.DictField(required=False, help_text="present on 201")
    error = serializers.DictField(required=False, help_text="present on errors")


class BulkOutputSerializer(serializers.Serializer):
    results = BulkItemResultSerializer(many=True)


class VoteInputSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=Decision.choices)
    revision = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)
    selected_option = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=100
    )
    patch = serializers.ListField(
        child=JSONObjectField(), required=False, allow_null=True, default=None, max_length=1000
    )
    adjustments = JSONObjectField(required=False, allow_null=True, default=None)


class ReviseInputSerializer(serializers.Serializer):
    payload = JSONObjectField()
    summary = serializers.CharField(required=False, allow_blank=True, default="", max_length=20000)
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)


class ReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)


class ProposalListQuerySerializer(serializers.Serializer):
    status = serializers.CharField(required=False)
    checkpoint = serializers.SlugField(required=False)
    region = serializers.CharField(required=False, max_length=100)
    priority = serializers.CharField(required=False)
    label = serializers.ListField(  # type: ignore[assignment]
        child=serializers.CharField(max_length=300), required=False
    )
    reviewable = serializers.ChoiceField(choices=["me"], required=False)
    submitted = serializers.ChoiceField(choices=["me"], required=False)
    external_id = serializers.CharField(required=False, max_length=200)
    cursor = serializers.CharField(required=False, max_length=500)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=200)


# --- output --------------------------------------------------------------------------------


class CheckpointOutputSerializer(serializers.ModelSerializer[Checkpoint]):
    class Meta:
        model = Checkpoint
        fields = [*Checkpoint.POLICY_FIELDS, "bypass_until", "bypass_reason"]


class ProposalOutputSerializer(serializers.ModelSerializer[Proposal]):
    checkpoint: serializers.SlugRelatedField[Checkpoint] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    submitted_by = serializers.CharField(source="submitted_by.username", read_only=True)
    claimed_by = serializers.CharField(
        source="claimed_by.username", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = Proposal
        fields = [
            "id",
            "checkpoint",
            "title",
            "summary",
            "payload",
            "options",
            "context",
            "confidence",
            "priority",
            "impact",
            "region",
            "labels",
            "external_id",
            "callback_url",
            "submitted_by",
            "status",
            "resolution",
            "revision",
            "approved_payload",
            "selected_option",
            "quorum_required",
            "eligible_reviewers",
            "claimed_by",
            "claimed_until",
            "due_at",
            "sla_due_at",
            "remind_at",
            "reminded_at",
            "escalate_at",
            "escalated_at",
            "sla_breached_at",
            "decided_at",
            "created_at",
            "updated_at",
        ]


class RevisionOutputSerializer(serializers.ModelSerializer[Revision]):
    author = serializers.CharField(source="author.username", read_only=True)

    class Meta:
        model = Revision
        fields = [
            "number",
            "kind",
            "payload",
            "payload_hash",
            "summary",
            "author",
            "patch",
            "reason",
            "created_at",
        ]


class VoteOutputSerializer(serializers.ModelSerializer[Vote]):
    reviewer = serializers.CharField(source="reviewer.username", read_only=True)

    class Meta:
        model = Vote
        fields = [
            "id",
            "revision",
            "reviewer",
            "decision",
            "comment",
            "selected_option",
            "created_at",
        ]


class ProposalDetailOutputSerializer(ProposalOutputSerializer):
    revisions = RevisionOutputSerializer(many=True, read_only=True)
    votes = VoteOutputSerializer(many=True, read_only=True)
    quorum = serializers.SerializerMethodField()
    permissions = serializers.SerializerMethodField()

    class Meta(ProposalOutputSerializer.Meta):
        fields = [
            *ProposalOutputSerializer.Meta.fields,
            "revisions",
            "votes",
            "quorum",
            "permissions",
        ]

    def get_quorum(self, proposal: Proposal) -> dict[str, Any]:
        current = [v for v in proposal.votes.all() if v.revision == proposal.revision]
        return {
            "rule": proposal.checkpoint.quorum_rule,
            "required": proposal.quorum_required,
            "approvals": sum(v.decision == Decision.APPROVE for v in current),
            "rejections": sum(v.decision == Decision.REJECT for v in current),
            "veto": proposal.checkpoint.veto,
        }

    def get_permissions(self, proposal: Proposal) -> dict[str, bool]:
        access: Access | None = self.context.get("access")
        if access is None:
            return {}
        return {
            "vote": access.may_review(proposal) and proposal.status == "pending",
            "revise": access.is_submitter(proposal) and proposal.status == "changes_requested",
            "cancel": (access.is_submitter(proposal) or access.may_manage(proposal))
            and proposal.is_open,
            "manage": access.may_manage(proposal),
        }


class AuditEventOutputSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_label", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "created_at",
            "actor",
            "verb",
            "revision",
            "data",
            "reason",
            "prev_hash",
            "hash",
        ]


class WebhookEndpointInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    url = serializers.URLField(max_length=500)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WEBHOOK_EVENTS), required=False, default=list
    )
    checkpoint = serializers.SlugField(required=False, allow_null=True, default=None)


class WebhookEndpointOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.URLField()
    events = serializers.ListField(child=serializers.CharField())
    checkpoint = serializers.CharField(source="checkpoint.slug", allow_null=True, default=None)
    active = serializers.BooleanField()
    disabled_reason = serializers.CharField()
    created_at = serializers.DateTimeField()
