"""The checkpoint admin's forms for granting to single users and onboarding an agent.

They validate input only; writes go through hitl.grants (and proposals.permissions for
groups, saved by the admin).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.contrib.auth import get_user_model

from hitl.forms import CheckpointAdminForm, ServiceAccountCreateForm
from hitl.grants import users_with
from proposals.permissions import MANAGE, REVIEW, REVIEW_ESCALATED, SUBMIT

USER_FIELDS: dict[str, str] = {
    "approver_users": REVIEW,
    "escalation_users": REVIEW_ESCALATED,
    "manager_users": MANAGE,
    "submitter_users": SUBMIT,
}


def _users_field(label: str, help_text: str) -> forms.ModelMultipleChoiceField:
    return forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        required=False,
        label=label,
        help_text=help_text,
        widget=FilteredSelectMultiple(label, is_stacked=False),
    )


class CheckpointGrantsForm(CheckpointAdminForm):
    """The checkpoint's policy and group grants, plus the same grants to single users (a
    service account that submits, a person who reviews) with no group to create first."""

    approver_users = _users_field("approver users", "These users review this checkpoint.")
    escalation_users = _users_field(
        "escalation users", "These users may review once a proposal is escalated."
    )
    manager_users = _users_field("manager users", "These users manage the checkpoint.")
    submitter_users = _users_field(
        "submitter users", "These users (typically service accounts) may submit proposals."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            for name, codename in USER_FIELDS.items():
                if name in self.fields:
                    self.fields[name].initial = list(users_with(self.instance, codename))


class CheckpointAgentForm(ServiceAccountCreateForm):
    """A new service account allowed to submit to one checkpoint, and its first API key."""

    key_name = forms.CharField(
        max_length=100, initial="default", help_text="What the key is for, e.g. 'production'."
    )
