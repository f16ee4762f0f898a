"""Who may do what, from django-guardian object permissions on checkpoints.

One rule serves lists, details, services, the admin, the pages and the commands alike:
- submit: `submit_to_checkpoint`;
- vote: `review_checkpoint`, or `review_escalated_checkpoint` once a proposal is escalated;
  never on one's own proposal (separation of duties). `may_vote_with` is THE rule: `Access`
  applies it to one user's grants, `electorate` to every user's grants on a checkpoint, so the
  number of approvers counted for `all`/`majority` is exactly the set of people who may vote;
- manage: `manage_checkpoint` (object or model-level), superusers;
- see a proposal: its submitter, anyone who may review or manage it.
A grant lives in one of four places: on the user or on one of its groups, for one checkpoint
(guardian object permission) or for every checkpoint (Django model-level permission).
Superusers manage and submit everywhere but vote only where granted a review permission like
anyone else: being an administrator does not make one an approver of every `all` quorum.
`allowed_actions` combines these with the state rules of proposals.policy for every screen.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import reduce
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, Q, QuerySet, Value
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm, get_groups_with_perms, remove_perm

from proposals import policy
from proposals.models import Checkpoint, Decision, Proposal, Vote

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    AnyUser = User | AnonymousUser

SUBMIT = "submit_to_checkpoint"
REVIEW = "review_checkpoint"
REVIEW_ESCALATED = "review_escalated_checkpoint"
MANAGE = "manage_checkpoint"
CODENAMES = (SUBMIT, REVIEW, REVIEW_ESCALATED, MANAGE)
# What being a superuser grants on every checkpoint. Not the review codenames: see above.
SUPERUSER_CODENAMES = (SUBMIT, MANAGE)


def voting_codenames(*, escalated: bool) -> tuple[str, ...]:
    return (REVIEW, REVIEW_ESCALATED) if escalated else (REVIEW,)


# voting_codenames as sets: may_vote_with is asked for every row of a list page.
_VOTING = frozenset(voting_codenames(escalated=False))
_VOTING_ESCALATED = frozenset(voting_codenames(escalated=True))


def may_vote_with(grants: Collection[str], *, is_submitter: bool, escalated: bool) -> bool:
    """THE rule of who may vote on a proposal, given the codenames the user holds on its
    checkpoint. Used for one user (Access.may_review) and for the electorate (electorate)."""
    voting = _VOTING_ESCALATED if escalated else _VOTING
    return not is_submitter and not voting.isdisjoint(grants)


@dataclass(frozen=True)
class Access:
    """The checkpoint ids a user holds each permission on. Built once per request."""

    user_id: int | None
    by_perm: dict[str, frozenset[int]] = field(default_factory=dict)
    # The rights version (notifications.live) read before these grants were, when known:
    # what is derived from grants may be remembered under it (RightsCache). None: unknown.
    rights_version: str | None = field(default=None, compare=False)
    # codenames_on's answers: a list page asks it twice per row, mostly for one checkpoint.
    # The grants never change after construction, so an answer never goes stale.
    _codenames: dict[int, frozenset[str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def has(self, codename: str, checkpoint_id: int) -> bool:
        return checkpoint_id in self.by_perm.get(codename, frozenset())

    def codenames_on(self, checkpoint_id: int) -> frozenset[str]:
        found = self._codenames.get(checkpoint_id)
        if found is None:
            found = frozenset(c for c, ids in self.by_perm.items() if checkpoint_id in ids)
            self._codenames[checkpoint_id] = found
        return found

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
        return may_vote_with(
            self.codenames_on(proposal.checkpoint_id),
            is_submitter=False,
            escalated=proposal.escalated_at is not None,
        )

    def may_review(self, proposal: Proposal) -> bool:
        """May vote (and claim): the same rule as `electorate`."""
        return may_vote_with(
            self.codenames_on(proposal.checkpoint_id),
            is_submitter=self.is_submitter(proposal),
            escalated=proposal.escalated_at is not None,
        )

    def may_view(self, proposal: Proposal) -> bool:
        return (
            self.is_submitter(proposal) or self.reviewer_role(proposal) or self.may_manage(proposal)
        )


NO_ACCESS = Access(user_id=None)


def _grant_rows(
    *,
    user_id: int | None = None,
    checkpoint_id: int | None = None,
    codenames: Iterable[str] = CODENAMES,
) -> Iterator[tuple[int, str, int | None]]:
    """(user id, codename, checkpoint id, or None for every checkpoint) for each grant held by
    an active user, from the four places a grant can live. One UNION query; both directions
    (a user's checkpoints, a checkpoint's users) read grants only through here."""
    content_type = ContentType.objects.get_for_model(Checkpoint)
    codenames = list(codenames)
    on_object = Q(content_type=content_type, permission__codename__in=codenames)
    if checkpoint_id is not None:
        on_object &= Q(object_pk=str(checkpoint_id))
    on_model = Q(permission__content_type=content_type, permission__codename__in=codenames)
    by_user = Q(user_id=user_id) if user_id is not None else Q()
    by_member = Q(group__user=user_id) if user_id is not None else Q()
    everywhere = Value(None, output_field=CharField())
    user_model = get_user_model()
    rows = (
        UserObjectPermission.objects.filter(on_object, by_user, user__is_active=True)
        .values_list("user_id", "permission__codename", "object_pk")
        .union(
            GroupObjectPermission.objects.filter(
                on_object, by_member, group__user__is_active=True
            ).values_list("group__user", "permission__codename", "object_pk"),
            user_model.user_permissions.through.objects.filter(
                on_model, by_user, user__is_active=True
            ).values_list("user_id", "permission__codename", everywhere),
            Group.permissions.through.objects.filter(
                on_model, by_member, group__user__is_active=True
            ).values_list("group__user", "permission__codename", everywhere),
            all=True,
        )
    )
    for uid, codename, object_pk in rows:
        yield uid, codename, (int(object_pk) if object_pk is not None else None)


def access_for(user: AnyUser | None, *, rights_version: str | None = None) -> Access:
    """One query for the grants, plus one when a grant (or superuser status) covers every
    checkpoint. `rights_version`: the version the caller read before calling, if any."""
    if user is None or not user.is_authenticated or not user.is_active:
        return NO_ACCESS
    found: dict[str, set[int]] = {codename: set() for codename in CODENAMES}
    everywhere: set[str] = set(SUPERUSER_CODENAMES) if user.is_superuser else set()
    for _uid, codename, checkpoint_id in _grant_rows(user_id=user.pk):
        if checkpoint_id is None:
            everywhere.add(codename)
        else:
            found[codename].add(checkpoint_id)
    if everywhere:
        every_id = set(Checkpoint.objects.values_list("pk", flat=True))
        for codename in everywhere:
            found[codename] = every_id
    return Access(
        user_id=user.pk,
        by_perm={codename: frozenset(ids) for codename, ids in found.items()},
        rights_version=rights_version,
    )


# --- facts derived from grants, remembered while they hold -----------------------------------

K = TypeVar("K")
V = TypeVar("V")
DEFAULT_CACHE_SECONDS = 5.0
MAX_ENTRIES = 10_000  # a bound on memory, not a working set: past it a cache starts over


@dataclass(frozen=True)
class _Remembered(Generic[V]):
    value: V
    rights: str
    expires: float  # time.monotonic()


class RightsCache(Generic[K, V]):
    """Values derived from who may do what (a key's user and grants, a checkpoint's
    electorate), remembered in this process under the rights version read before them. An
    entry is dropped:
    - at once, in this process, by any change to who may do what (`forget_rights`, called by
      the one rights hook, notifications.live.rights_changed), before the change commits;
    - in every other process, when the rights version (bumped after the commit of those
      same changes) has moved: the caller reads it once per request;
    - after HITL_AUTH_CACHE_SECONDS in any case (changes no signal sees: a raw UPDATE).
    Without a known version (None: Redis unreadable, or a caller outside a request) nothing
    is remembered or served."""

    _all: list[RightsCache[Any, Any]] = []

    def __init__(self) -> None:
        self._entries: dict[K, _Remembered[V]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        RightsCache._all.append(self)

    @staticmethod
    def ttl() -> float:
        return float(getattr(settings, "HITL_AUTH_CACHE_SECONDS", DEFAULT_CACHE_SECONDS))

    def get(self, key: K, rights: str | None) -> V | None:
        entry = self._entries.get(key)
        if (
            rights is None
            or entry is None
            or entry.rights != rights
            or entry.expires <= time.monotonic()
        ):
            return None
        return entry.value

    def generation(self) -> int:
        """Read before the value is: `put` refuses it if the rights changed in between."""
        return self._generation

    def put(self, key: K, value: V, rights: str | None, generation: int) -> None:
        if rights is None:
            return
        with self._lock:
            if generation != self._generation:
                return  # read before a change that has since dropped the cache
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = _Remembered(value, rights, time.monotonic() + self.ttl())

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()


def forget_rights(**_: Any) -> None:
    """A signal receiver: every remembered fact may rest on rights that just changed."""
    for cache in RightsCache._all:
        cache.clear()


def _others_arms(access: Access, checkpoint_ids: frozenset[int]) -> list[Q]:
    """Others' proposals on these checkpoints, and others' escalated proposals where I review
    escalations only: two disjoint filters, each one index's condition."""
    mine = Q(submitted_by_id=access.user_id)
    escalations_only = access.ids(REVIEW_ESCALATED) - checkpoint_ids
    arms = []
    if checkpoint_ids:
        arms.append(Q(checkpoint_id__in=sorted(checkpoint_ids)) & ~mine)
    if escalations_only:
        arms.append(
            Q(checkpoint_id__in=sorted(escalations_only), escalated_at__isnull=False) & ~mine
        )
    return arms


def visible_proposals_arms(access: Access) -> list[Q]:
    """`Access.may_view` as disjoint filters (a proposal matches at most one): my submissions,
    then `_others_arms` of the checkpoints I review or manage. A list reads them as a UNION ALL
    of index scans (proposals.selectors.proposal_page): their OR was misestimated and, for a
    reviewer with few items, filtered the whole open queue."""
    if access.user_id is None:
        return []
    return [Q(submitted_by_id=access.user_id), *_others_arms(access, access.ids(REVIEW, MANAGE))]


def reviewable_proposals_arms(access: Access) -> list[Q]:
    """`Access.may_review` as disjoint filters, the same way (never my own submissions)."""
    if access.user_id is None:
        return []
    return _others_arms(access, access.ids(REVIEW))


def _any_of(arms: list[Q]) -> Q:
    return reduce(operator.or_, arms) if arms else Q(pk__in=[])


def visible_proposals_q(access: Access) -> Q:
    """The list filter, the same rule as `Access.may_view`: there is no IDOR gap between them."""
    return _any_of(visible_proposals_arms(access))


def reviewable_proposals_q(access: Access) -> Q:
    return _any_of(reviewable_proposals_arms(access))


def _grants_on(checkpoint: Checkpoint, codenames: Iterable[str]) -> dict[int, set[str]]:
    """user id -> the given codenames that user holds on the checkpoint."""
    held: dict[int, set[str]] = {}
    for uid, codename, checkpoint_id in _grant_rows(
        checkpoint_id=checkpoint.pk, codenames=codenames
    ):
        if checkpoint_id in (None, checkpoint.pk):
            held.setdefault(uid, set()).add(codename)
    return held


def holders(checkpoint: Checkpoint, *codenames: str, exclude_user_id: int | None = None) -> Any:
    """Active users granted any of `codenames` on this checkpoint, in any of the four ways
    (superusers only when granted like anyone else)."""
    ids = [uid for uid in _grants_on(checkpoint, codenames) if uid != exclude_user_id]
    return get_user_model().objects.filter(pk__in=ids, is_active=True)


def electorate(checkpoint: Checkpoint, *, submitter_id: int | None, escalated: bool) -> Any:
    """The users who may vote on a proposal of this checkpoint, by `may_vote_with`: the
    approvers `all` and `majority` count. Counted at submission and again at escalation
    (escalation groups join the electorate; the required number of approvals stays)."""
    ids = electorate_ids(checkpoint, submitter_id=submitter_id, escalated=escalated)
    return get_user_model().objects.filter(pk__in=ids, is_active=True)


def electorate_ids(
    checkpoint: Checkpoint, *, submitter_id: int | None, escalated: bool
) -> set[int]:
    """The ids of `electorate`, in one query: `_grant_rows` counts active users only, so the
    size of this set is the electorate's size without reading the users."""
    held = _grants_on(checkpoint, voting_codenames(escalated=True))
    return {
        uid
        for uid, grants in held.items()
        if may_vote_with(grants, is_submitter=uid == submitter_id, escalated=escalated)
    }


_electorate_sizes: RightsCache[tuple[int, int | None], int] = RightsCache()


def electorate_size(checkpoint: Checkpoint, *, submitter_id: int | None, access: Access) -> int:
    """len(electorate_ids(escalated=False)), the `eligible_reviewers` a new proposal records,
    remembered under the rights version `access` was read with: an agent's stream of submits
    to one checkpoint counts its electorate once, not once per proposal."""
    key = (checkpoint.pk, submitter_id)
    size = _electorate_sizes.get(key, access.rights_version)
    if size is None:
        generation = _electorate_sizes.generation()
        size = len(electorate_ids(checkpoint, submitter_id=submitter_id, escalated=False))
        _electorate_sizes.put(key, size, access.rights_version, generation)
    return size


def eligible_reviewers(checkpoint: Checkpoint, *, exclude_user_id: int | None) -> Any:
    """Who may vote before any escalation (new-work notices, reminders)."""
    return electorate(checkpoint, submitter_id=exclude_user_id, escalated=False)


# --- what a user may do with a proposal now -------------------------------------------------


def approved_current_revision(access: Access, proposal: Proposal, votes: Iterable[Vote]) -> bool:
    """An approver is someone whose approve counted: a vote on the approved revision."""
    return any(
        v.reviewer_id == access.user_id
        and v.revision == proposal.revision
        and v.decision == Decision.APPROVE
        for v in votes
    )


def may_cancel(access: Access, proposal: Proposal) -> bool:
    return access.is_submitter(proposal) or access.may_manage(proposal)


def may_revoke(access: Access, proposal: Proposal, *, votes: Iterable[Vote]) -> bool:
    """A manager, or a reviewer who approved the current (approved) revision."""
    return access.may_manage(proposal) or (
        access.may_review(proposal) and approved_current_revision(access, proposal, votes)
    )


def may_revise(access: Access, proposal: Proposal) -> bool:
    return access.is_submitter(proposal)


@dataclass(frozen=True)
class Allowed:
    vote: bool
    revise: bool
    cancel: bool
    revoke: bool
    claim: bool
    manage: bool

    def as_dict(self) -> dict[str, bool]:
        # Not dataclasses.asdict: it deep-copies, and a list page calls this once per row.
        return dict(self.__dict__)


def allowed_actions(
    access: Access, proposal: Proposal, *, votes: Iterable[Vote], now: datetime
) -> Allowed:
    """What this user may do with the proposal right now: who (the rules above) and when
    (proposals.policy). The API's `permissions`, the admin and the pages all show this, and
    the services refuse exactly what it denies."""
    # Each rule asked once (a list page asks for every row): they read no clock and change
    # nothing, so asking one that a short-circuit would have skipped changes no answer.
    status = proposal.status
    is_open = policy.is_open(status=status)
    reviews = access.may_review(proposal)
    return Allowed(
        vote=policy.voting_open(status=status, due_at=proposal.due_at, now=now) and reviews,
        revise=policy.revising_open(status=status, due_at=proposal.due_at, now=now)
        and may_revise(access, proposal),
        cancel=is_open and may_cancel(access, proposal),
        revoke=status == "approved"
        and policy.revocable(
            decided_at=proposal.decided_at,
            window_seconds=proposal.checkpoint.revocation_window_seconds,
            now=now,
        )
        and may_revoke(access, proposal, votes=votes),
        claim=is_open and reviews,
        manage=access.may_manage(proposal),
    )


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
