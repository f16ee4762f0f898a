"""Input and output shapes of the API. Validation only: no logic, no saves."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.utils import timezone
from django.utils.functional import cached_property
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import Field, SkipField
from rest_framework.relations import PKOnlyObject

from audit.models import AuditEvent
from hitl.api.fields import (
    AnyJSONField,
    InputSerializer,
    JSONObjectField,
    OptionalURLField,
    StrictCharField,
    StrictChoiceField,
    StrictDecimalField,
    StrictDictField,
    StrictFloatField,
    StrictIntegerField,
    StrictListField,
    StrictSlugField,
    StrictURLField,
)
from notifications.models import WEBHOOK_EVENTS
from notifications.webhooks import webhook_url_validator
from proposals.models import Checkpoint, Decision, Priority, Proposal, Revision, Status, Vote
from proposals.permissions import Access, allowed_actions


@cache
def _shared_fields(serializer_class: type[serializers.Serializer[Any]]) -> Any:
    """The class's fields, built and bound once per process (see `_readable_fields`)."""
    return serializers.Serializer.fields.real_func(serializer_class())  # type: ignore[attr-defined]


class SharedFields:
    """A serializer whose fields are built once per class: DRF builds and deep-copies every
    field of a serializer per instance, which cost a list call more than rendering its JSON
    and a submit more than its idempotency and response put together. Validating keeps no
    state in a field (errors and values are returned, not stored), and no field here reads
    the serializer's context or `partial` (a field finds them through its first parent)."""

    @cached_property
    def fields(self) -> Any:
        return _shared_fields(type(self))  # type: ignore[arg-type]


# --- input: request bodies (InputSerializer refuses any field that coerces JSON types) ---------


class OptionSerializer(SharedFields, InputSerializer):
    key = StrictCharField(max_length=100)
    label = StrictCharField(  # type: ignore[assignment]  # shadows Field.label
        max_length=300, required=False, allow_blank=True, default=""
    )
    payload = JSONObjectField()
    confidence = StrictFloatField(min_value=0, max_value=1, required=False, allow_null=True)


class ProposalInputSerializer(SharedFields, InputSerializer):
    checkpoint = StrictSlugField(max_length=100)
    title = StrictCharField(max_length=300)
    summary = StrictCharField(required=False, allow_blank=True, default="", max_length=20000)
    payload = JSONObjectField()
    options = StrictListField(child=OptionSerializer(), required=False, default=list, max_length=50)
    context = JSONObjectField(required=False, default=dict)  # type: ignore[assignment]
    confidence = StrictFloatField(min_value=0, max_value=1, required=False, allow_null=True)
    priority = StrictChoiceField(choices=Priority.choices, default=Priority.MEDIUM)
    impact = StrictDecimalField(max_digits=20, decimal_places=4, required=False, allow_null=True)
    region = StrictCharField(max_length=100, required=False, allow_blank=True, default="")
    labels = StrictDictField(
        child=StrictCharField(max_length=200, allow_blank=True), required=False, default=dict
    )
    external_id = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    callback_url = OptionalURLField(
        max_length=500,
        required=False,
        allow_blank=True,
        default="",
        validators=[webhook_url_validator],
    )
    # DESIGN §6: the proposal's own JSON Schema (wins over the checkpoint's; checked by the
    # service) and its own timeout (at most the checkpoint's).
    payload_schema = JSONObjectField(required=False, allow_null=True, default=None)
    timeout_seconds = StrictIntegerField(
        min_value=1, max_value=2**31 - 1, required=False, allow_null=True, default=None
    )


class BulkInputSerializer(InputSerializer):
    proposals = StrictListField(
        child=AnyJSONField(), min_length=1, max_length=500, allow_empty=False
    )


class BulkItemResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.IntegerField(help_text="HTTP status this item would have had alone")
    proposal = serializers.DictField(required=False, help_text="present on 201")
    error = serializers.DictField(required=False, help_text="present on errors")


class BulkOutputSerializer(serializers.Serializer):
    results = BulkItemResultSerializer(many=True)


class VoteInputSerializer(SharedFields, InputSerializer):
    decision = StrictChoiceField(choices=Decision.choices)
    revision = StrictIntegerField(min_value=1, max_value=2**31 - 1)
    comment = StrictCharField(required=False, allow_blank=True, default="", max_length=10000)
    selected_option = StrictCharField(required=False, allow_blank=True, default="", max_length=100)
    patch = StrictListField(
        child=JSONObjectField(), required=False, allow_null=True, default=None, max_length=1000
    )
    adjustments = JSONObjectField(required=False, allow_null=True, default=None)


class ReviseInputSerializer(SharedFields, InputSerializer):
    payload = JSONObjectField()
    summary = StrictCharField(required=False, allow_blank=True, default="", max_length=20000)
    comment = StrictCharField(required=False, allow_blank=True, default="", max_length=10000)


class ReasonInputSerializer(SharedFields, InputSerializer):
    reason = StrictCharField(required=False, allow_blank=True, default="", max_length=10000)


class ProposalListQuerySerializer(SharedFields, serializers.Serializer):
    """A list call's query string."""

    status = serializers.CharField(
        required=False,
        help_text="one status or several, comma-separated: " + ", ".join(Status.values),
    )
    checkpoint = serializers.SlugField(required=False)
    region = serializers.CharField(required=False, max_length=100)
    priority = serializers.CharField(
        required=False,
        help_text="one priority or several, comma-separated: " + ", ".join(Priority.values),
    )
    label = serializers.ListField(  # type: ignore[assignment]
        child=serializers.CharField(max_length=300), required=False
    )
    reviewable = serializers.ChoiceField(choices=["me"], required=False)
    submitted = serializers.ChoiceField(choices=["me"], required=False)
    external_id = serializers.CharField(required=False, max_length=200)
    cursor = serializers.CharField(required=False, max_length=500)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=200)

    # A misspelt status or priority would list nothing and look like an empty queue.
    def validate_status(self, value: str) -> str:
        return _known_values(value, Status.values, "status")

    def validate_priority(self, value: str) -> str:
        return _known_values(value, Priority.values, "priority")


def _known_values(value: str, known: list[str], name: str) -> str:
    """`value`, a comma-separated list of `known` values, or a ValidationError naming them."""
    unknown = sorted({part for part in value.split(",") if part} - set(known))
    if unknown:
        raise serializers.ValidationError(
            f"Unknown {name} {', '.join(unknown)}; one of {', '.join(known)}."
        )
    return value


# --- output --------------------------------------------------------------------------------


@cache
def _readable_fields(serializer_class: type[serializers.Serializer[Any]]) -> tuple[Field, ...]:
    """The class's fields, built once per process. Every field object keeps no state between
    calls of get_attribute/to_representation, so one set serves every instance and thread."""
    return tuple(f for f in serializer_class().fields.values() if not f.write_only)


class OutputSerializer(serializers.ModelSerializer[Any]):
    """A ModelSerializer whose output is DRF's own (`Serializer.to_representation`, line by
    line), from field objects built once per class rather than per instance: a
    ModelSerializer builds and deep-copies every field each time it renders, which cost more
    than the rest of a submit. Method fields still run on this instance (its context)."""

    def to_representation(self, instance: Any) -> dict[str, Any]:
        ret: dict[str, Any] = {}
        for field in _readable_fields(type(self)):
            name = str(field.field_name)  # set by binding, always
            if isinstance(field, serializers.SerializerMethodField):
                ret[name] = getattr(self, field.method_name)(instance)
                continue
            try:
                attribute = field.get_attribute(instance)
            except SkipField:
                continue
            check_for_none = attribute.pk if isinstance(attribute, PKOnlyObject) else attribute
            ret[name] = None if check_for_none is None else field.to_representation(attribute)
        return ret


class CheckpointOutputSerializer(OutputSerializer):
    class Meta:
        model = Checkpoint
        fields = [*Checkpoint.POLICY_FIELDS, "bypass_until", "bypass_reason"]


class ProposalOutputSerializer(OutputSerializer):
    checkpoint: serializers.SlugRelatedField[Checkpoint] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    submitted_by = serializers.CharField(source="submitted_by.username", read_only=True)
    claimed_by = serializers.CharField(
        source="claimed_by.username", read_only=True, allow_null=True, default=None
    )
    callback_url = OptionalURLField(read_only=True)

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
            "payload_schema",
            "timeout_seconds",
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


class RevisionOutputSerializer(OutputSerializer):
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


class VoteOutputSerializer(OutputSerializer):
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


class PermissionsOutputSerializer(serializers.Serializer[Any]):
    """What the caller may do with the proposal now: `proposals.permissions.allowed_actions`,
    the rule the services enforce (who, and when: deadlines, the revocation window)."""

    vote = serializers.BooleanField()
    revise = serializers.BooleanField()
    cancel = serializers.BooleanField()
    revoke = serializers.BooleanField()
    claim = serializers.BooleanField()
    manage = serializers.BooleanField()


class ProposalListItemSerializer(ProposalOutputSerializer):
    """A row of `GET /proposals/` (the schema's; hitl.api.rows renders it)."""

    permissions = PermissionsOutputSerializer(read_only=True)

    class Meta(ProposalOutputSerializer.Meta):
        fields = [*ProposalOutputSerializer.Meta.fields, "permissions"]


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

    @extend_schema_field(PermissionsOutputSerializer)
    def get_permissions(self, proposal: Proposal) -> dict[str, bool]:
        access: Access | None = self.context.get("access")
        if access is None:
            return {}
        # The one rule the services enforce (deadline included), not a copy of it.
        votes = proposal.votes.all()  # prefetched by the selector
        return allowed_actions(access, proposal, votes=votes, now=timezone.now()).as_dict()


class AuditEventOutputSerializer(OutputSerializer):
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


class WebhookEndpointInputSerializer(InputSerializer):
    name = StrictCharField(max_length=100)
    url = StrictURLField(max_length=500, validators=[webhook_url_validator])
    events = StrictListField(
        child=StrictChoiceField(choices=WEBHOOK_EVENTS), required=False, default=list
    )
    checkpoint = StrictSlugField(required=False, allow_null=True, default=None)


class WebhookEndpointOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.URLField()
    events = serializers.ListField(child=serializers.CharField())
    checkpoint = serializers.CharField(source="checkpoint.slug", allow_null=True, default=None)
    active = serializers.BooleanField()
    disabled_reason = serializers.CharField()
    created_at = serializers.DateTimeField()
