"""Forms for the Django admin: they validate input and nothing else. Every write they lead to
goes through a service (proposals.services, proposals.permissions.set_groups, hitl.keys)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.admin.widgets import AdminSplitDateTime, FilteredSelectMultiple
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from proposals import policy
from proposals.models import Checkpoint, Decision, Proposal
from proposals.permissions import MANAGE, REVIEW, REVIEW_ESCALATED, SUBMIT, groups_with

# --- proposals -----------------------------------------------------------------------------


class ReviewForm(forms.Form):
    """One reviewer's vote from the proposal page, bound to the revision the page showed."""

    decision = forms.ChoiceField(choices=Decision.choices)
    revision = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    comment = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Sent to the submitter and recorded in the audit trail.",
    )
    selected_option = forms.ChoiceField(required=False, label="Option")
    # A CharField parsed by hand: forms.JSONField would render an empty value as "null".
    adjustments = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        label="Adjustments (edit, then approve)",
        help_text='A JSON object merged into the payload (RFC 7386): {"cost": 90}; '
        "null deletes a key. Only with Approve; it creates a new revision.",
    )

    def __init__(self, *args: Any, proposal: Proposal, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proposal = proposal
        self.fields["revision"].initial = proposal.revision
        options = [o for o in proposal.options or [] if isinstance(o, dict) and "key" in o]
        if options:
            # Proposals with options are approved by picking one; they cannot be edited.
            field = self.fields["selected_option"]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [("", "---------")] + [
                (str(o["key"]), str(o.get("label") or o["key"])) for o in options
            ]
            del self.fields["adjustments"]
        else:
            del self.fields["selected_option"]
        required_on = proposal.checkpoint.require_reason_on or []
        if required_on:
            labels = ", ".join(str(d).replace("_", " ") for d in required_on)
            self.fields["comment"].help_text = f"Required to {labels}. " + str(
                self.fields["comment"].help_text
            )

    def clean(self) -> dict[str, Any]:
        """The same ballot rules as the service (proposals.policy), shown next to the form."""
        data = super().clean() or {}
        decision = data.get("decision")
        if decision:
            options = [o for o in self.proposal.options or [] if isinstance(o, dict)]
            problem = policy.ballot_problem(
                decision=decision,
                option_keys=[str(o.get("key")) for o in options],
                selected_option=data.get("selected_option") or "",
                edits=data.get("adjustments") is not None,
            )
            if problem is not None:
                raise forms.ValidationError(problem)
            if policy.reason_missing(
                decision=decision,
                require_reason_on=self.proposal.checkpoint.require_reason_on,
                comment=data.get("comment") or "",
            ):
                self.add_error(
                    "comment",
                    f"A reason is required to {decision.replace('_', ' ')} at this checkpoint.",
                )
        return data

    def clean_adjustments(self) -> dict[str, Any] | None:
        text = str(self.cleaned_data.get("adjustments") or "").strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            raise forms.ValidationError("Adjustments must be valid JSON.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Adjustments must be a JSON object.")
        return value or None


class ManageForm(forms.Form):
    """Cancel an open proposal or revoke an approval, from the proposal page."""

    action = forms.ChoiceField(choices=[("cancel", "Cancel"), ("revoke", "Revoke")])
    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))


class BulkReasonForm(forms.Form):
    """The intermediate page of the bulk actions: one reason for every selected proposal."""

    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))

    def __init__(self, *args: Any, reason_required: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = reason_required


# --- checkpoints ---------------------------------------------------------------------------

# form field -> the guardian permission its groups hold on the checkpoint
GROUP_FIELDS: dict[str, str] = {
    "approver_groups": REVIEW,
    "escalation_groups": REVIEW_ESCALATED,
    "manager_groups": MANAGE,
    "submitter_groups": SUBMIT,
}


def _groups_field(label: str, help_text: str) -> forms.ModelMultipleChoiceField:
    return forms.ModelMultipleChoiceField(
        queryset=Group.objects.order_by("name"),
        required=False,
        label=label,
        help_text=help_text,
        widget=FilteredSelectMultiple(label, is_stacked=False),
    )


class CheckpointAdminForm(forms.ModelForm):
    """The checkpoint's policy fields plus who holds which guardian permission on it. The group
    fields are saved by the admin's save_related through permissions.set_groups."""

    approver_groups = _groups_field("approver groups", "Members review this checkpoint.")
    escalation_groups = _groups_field(
        "escalation groups", "Members may review once a proposal is escalated."
    )
    manager_groups = _groups_field(
        "manager groups", "Members manage the checkpoint: cancel, revoke, see everything."
    )
    submitter_groups = _groups_field("submitter groups", "Members may submit proposals.")

    class Meta:
        model = Checkpoint
        fields = Checkpoint.POLICY_FIELDS  # the bypass changes only through its services

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            for name, codename in GROUP_FIELDS.items():
                if name in self.fields:
                    self.fields[name].initial = list(groups_with(self.instance, codename))


class BypassForm(forms.Form):
    """The intermediate page of the checkpoint admin's "start emergency bypass" action."""

    until = forms.SplitDateTimeField(widget=AdminSplitDateTime, label="Bypass until")
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))

    def clean_until(self) -> Any:
        value = self.cleaned_data["until"]
        if value <= timezone.now():
            raise forms.ValidationError("The bypass must end in the future.")
        return value


# --- API keys and service accounts ---------------------------------------------------------


class ApiKeyCreateForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        help_text="The service account (or person) the key authenticates as.",
    )
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. 'ci pipeline'.")
    expires_at = forms.SplitDateTimeField(
        required=False, widget=AdminSplitDateTime, help_text="Optional; empty = never expires."
    )

    def clean_expires_at(self) -> Any:
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value


class ServiceAccountCreateForm(forms.Form):
    username = forms.CharField(max_length=150)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))

    def clean_username(self) -> str:
        username = str(self.cleaned_data["username"]).strip()
        User = get_user_model()
        field = User._meta.get_field(User.USERNAME_FIELD)
        for validator in getattr(field, "validators", []):
            validator(username)
        if User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists():
            raise forms.ValidationError("A user with that username already exists.")
        return username
