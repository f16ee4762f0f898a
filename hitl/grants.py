"""Granting a checkpoint's permissions to single users, and onboarding a service account.

The group side lives in proposals.permissions (`groups_with` / `set_groups`); this is the same
for users, so a manager can grant submit or review to one service account or one person
without a superuser creating a group for it. Who may *use* a grant is still decided by
proposals.permissions alone (it reads user and group grants alike).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import transaction
from guardian.shortcuts import assign_perm, get_users_with_perms, remove_perm

from audit.services import audit_record
from hitl.keys import IssuedKey, api_key_create, service_account_create
from proposals.models import Checkpoint
from proposals.permissions import SUBMIT

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def users_with(checkpoint: Checkpoint, codename: str) -> Any:
    """Users holding `codename` on this checkpoint directly (not through a group)."""
    holders: Any = get_users_with_perms(  # a User queryset (attach_perms is off)
        checkpoint, only_with_perms_in=[codename], with_group_users=False, with_superusers=False
    )
    return get_user_model().objects.filter(pk__in=holders.values("pk")).order_by("username")


def set_users(
    checkpoint: Checkpoint, codename: str, users: Iterable[User], *, actor: User | None
) -> None:
    """Make exactly these users hold `codename` on the checkpoint directly; audited."""
    wanted = {u.pk: u for u in users}
    current = {u.pk: u for u in users_with(checkpoint, codename)}
    added = [u for pk, u in wanted.items() if pk not in current]
    removed = [u for pk, u in current.items() if pk not in wanted]
    if not added and not removed:
        return
    with transaction.atomic():
        for user in added:
            assign_perm(codename, user, checkpoint)
        for user in removed:
            remove_perm(codename, user, checkpoint)
        audit_record(
            verb="checkpoint.grants_changed",
            actor=actor,
            checkpoint=checkpoint,
            data={
                "checkpoint": checkpoint.slug,
                "permission": codename,
                "granted": sorted(u.get_username() for u in added),
                "removed": sorted(u.get_username() for u in removed),
            },
        )


@dataclass(frozen=True)
class OnboardedAgent:
    user: User
    key: IssuedKey
    signing_secret: str


def service_account_onboard(
    *,
    checkpoint: Checkpoint,
    username: str,
    description: str,
    key_name: str,
    created_by: User | None,
) -> OnboardedAgent:
    """A service account that may submit to `checkpoint`, and its first API key, at once:
    what a manager needs to connect a new agent, without a superuser's help."""
    with transaction.atomic():
        user = service_account_create(username=username, description=description)
        assign_perm(SUBMIT, user, checkpoint)
        audit_record(
            verb="checkpoint.grants_changed",
            actor=created_by,
            checkpoint=checkpoint,
            data={
                "checkpoint": checkpoint.slug,
                "permission": SUBMIT,
                "granted": [user.get_username()],
                "removed": [],
            },
        )
        key = api_key_create(user=user, name=key_name, created_by=created_by)
    return OnboardedAgent(user=user, key=key, signing_secret=user.service_account.signing_secret)
