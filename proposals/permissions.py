"""Who may do what, from django-guardian object permissions on checkpoints.

One rule serves lists, details, services and the admin alike:
- submit: `submit_to_checkpoint`;
- review: `review_checkpoint`, or `review_escalated_checkpoint` once a proposal is escalated;
  never on one's own proposal (separation of duties);
- manage: `manage_checkpoint` (object or model-level), superusers;
- see a proposal: its submitter, anyone who may review or manage it.
Model-level (global) grants of the same codenames apply to every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q, QuerySet
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm, get_groups_with_perms, remove_perm

from proposals.models import Checkpoint, Proposal

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    AnyUser = User | AnonymousUser

SUBMIT = "submit_to_checkpoint"
REVIEW = "review_checkpoint"
REVIEW_ESCALATED = "review_escalated_checkpoint"
MANAGE = "manage_checkpoint"
CODENAMES = (SUBMIT, REVIEW, REVIEW_ESCALATED, MANAGE)


@dataclass(frozen=True)
class Access:
    """The checkpoint ids a user holds each permission on. Built once per request."""

    user_id: int | None
    by_perm: dict[str, frozenset[int]] = field(default_factory=dict)

    def has(self, codename: str, checkpoint_id: int) -> bool:
        return checkpoint_id in self.by_perm.get(codename, frozenset())

    def ids(self, *codenames: str) -> frozenset[int]:
        result: frozenset[int] = frozenset()
        for codename in codenames:
            result |= self.by_perm.get(codename, frozenset())
        return result

    @property
    def visible_checkpoint_ids(self) -> frozenset[int]:
        return self.ids(*CODENAMES)

    # -- proposals ---------------------------------------------------------------------------

    def is_submitter(self, proposal: Proposal) -> bool:
        return self.user_id is not None and proposal.submitted_by_id == self.user_id

    def may_manage(self, proposal: Proposal) -> bool:
        return self.has(MANAGE, proposal.checkpoint_id)

    def reviewer_role(self, proposal: Proposal) -> bool:
        """Holds a reviewing permission for this proposal (ignoring separation of duties)."""
        return self.has(REVIEW, proposal.checkpoint_id) or (
            proposal.escalated_at is not None and self.has(REVIEW_ESCALATED, proposal.checkpoint_id)
        )

    def may_review(self, proposal: Proposal) -> bool:
        return self.reviewer_role(proposal) and not self.is_submitter(proposal)

    def may_view(self, proposal: Proposal) -> bool:
        return (
            self.is_submitter(proposal) or self.reviewer_role(proposal) or self.may_manage(proposal)
        )


NO_ACCESS = Access(user_id=None)


def access_for(user: AnyUser | None) -> Access:
    """Two queries (user grants, group grants), plus one when a model-level grant applies."""
    if user is None or not user.is_authenticated or not user.is_active:
        return NO_ACCESS
    if user.is_superuser:
        every = frozenset(Checkpoint.objects.values_list("pk", flat=True))
        return Access(user_id=user.pk, by_perm=dict.fromkeys(CODENAMES, every))

    content_type = ContentType.objects.get_for_model(Checkpoint)
    found: dict[str, set[int]] = {codename: set() for codename in CODENAMES}
    for model, user_filter in (
        (UserObjectPermission, Q(user=user)),
        (GroupObjectPermission, Q(group__user=user)),
    ):
        rows = model.objects.filter(
            user_filter, content_type=content_type, permission__codename__in=CODENAMES
        ).values_list("permission__codename", "object_pk")
        for codename, object_pk in rows:
            found[codename].add(int(object_pk))

    global_codenames = [c for c in CODENAMES if user.has_perm(f"proposals.{c}")]
    if global_codenames:
        every_id = set(Checkpoint.objects.values_list("pk", flat=True))
        for codename in global_codenames:
            found[codename] = every_id
    return Access(
        user_id=user.pk, by_perm={codename: frozenset(ids) for codename, ids in found.items()}
    )


def visible_proposals_q(access: Access) -> Q:
    """The list filter, the same rule as `Access.may_view`: there is no IDOR gap between them."""
    if access.user_id is None:
        return Q(pk__in=[])
    return (
        Q(submitted_by_id=access.user_id)
        | Q(checkpoint_id__in=access.ids(REVIEW, MANAGE))
        | Q(checkpoint_id__in=access.ids(REVIEW_ESCALATED), escalated_at__isnull=False)
    )


def reviewable_proposals_q(access: Access) -> Q:
    if access.user_id is None:
        return Q(pk__in=[])
    return (
        Q(checkpoint_id__in=access.ids(REVIEW))
        | Q(checkpoint_id__in=access.ids(REVIEW_ESCALATED), escalated_at__isnull=False)
    ) & ~Q(submitted_by_id=access.user_id)


def holders(checkpoint: Checkpoint, codename: str, *, exclude_user_id: int | None = None) -> Any:
    """Active users holding `codename` on this checkpoint, directly or through a group;
    superusers only count when granted explicitly."""
    content_type = ContentType.objects.get_for_model(Checkpoint)
    direct = UserObjectPermission.objects.filter(
        content_type=content_type, object_pk=str(checkpoint.pk), permission__codename=codename
    ).values("user_id")
    via_group = GroupObjectPermission.objects.filter(
        content_type=content_type, object_pk=str(checkpoint.pk), permission__codename=codename
    ).values("group_id")
    users = (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(pk__in=direct) | Q(groups__in=via_group))
    )
    if exclude_user_id is not None:
        users = users.exclude(pk=exclude_user_id)
    return users.distinct()


def eligible_reviewers(checkpoint: Checkpoint, *, exclude_user_id: int | None) -> Any:
    return holders(checkpoint, REVIEW, exclude_user_id=exclude_user_id)


# --- granting ------------------------------------------------------------------------------


def groups_with(checkpoint: Checkpoint, codename: str) -> QuerySet[Group]:
    groups: dict[Group, list[str]] = get_groups_with_perms(  # type: ignore[assignment]
        checkpoint, attach_perms=True
    )
    return Group.objects.filter(pk__in=[g.pk for g, perms in groups.items() if codename in perms])


def set_groups(
    checkpoint: Checkpoint, codename: str, groups: list[Group] | QuerySet[Group]
) -> None:
    """Make exactly these groups hold `codename` on the checkpoint."""
    wanted = {g.pk: g for g in groups}
    current = {g.pk: g for g in groups_with(checkpoint, codename)}
    for pk, group in wanted.items():
        if pk not in current:
            assign_perm(codename, group, checkpoint)
    for pk, group in current.items():
        if pk not in wanted:
            remove_perm(codename, group, checkpoint)
