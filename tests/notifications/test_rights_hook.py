"""One hook for every change to who may do what (notifications.live `rights_changed`): this
process forgets what it derived from rights at once, and the rights version, which other
processes' caches and every open socket watch, moves after the commit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.utils import timezone
from guardian.shortcuts import remove_perm

from hitl.keys import api_key_create, api_key_revoke
from notifications import live
from proposals.permissions import REVIEW, RightsCache
from tests.factories import CheckpointFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def remembered(private_rights_version: None) -> Iterator[RightsCache[str, str]]:
    """A fact remembered under "no rights change published yet" (this test's version)."""
    facts = RightsCache[str, str]()
    facts.put("fact", "derived from rights", "", facts.generation())
    yield facts
    RightsCache._all.remove(facts)


def deactivate(user: Any) -> None:
    user.is_active = False
    user.save()


def changes(world: Any) -> dict[str, Any]:
    approvers = Group.objects.get(name="approvers")
    key = api_key_create(user=world.reviewer, name="k").api_key
    return {
        "grant removed": lambda: remove_perm(REVIEW, approvers, world.checkpoint),
        "group left": lambda: world.reviewer2.groups.clear(),
        "user deactivated": lambda: deactivate(world.reviewer),
        "key revoked": lambda: api_key_revoke(api_key=key, revoked_by=None),
        "checkpoint created": lambda: CheckpointFactory(slug="new-one"),
        "checkpoint changed": lambda: world.checkpoint.save(),
        "user deleted": lambda: world.outsider.delete(),
    }


@pytest.mark.parametrize(
    "change",
    [
        "grant removed",
        "group left",
        "user deactivated",
        "key revoked",
        "checkpoint created",
        "checkpoint changed",
        "user deleted",
    ],
)
def test_a_rights_change_forgets_at_once_and_moves_the_version_after_commit(
    world: Any,
    remembered: RightsCache[str, str],
    change: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_change = changes(world)[change]
    with django_capture_on_commit_callbacks(execute=True):
        make_change()
        assert remembered.get("fact", "") is None  # before the commit, in this process
        assert cache.get(live.RIGHTS_VERSION_KEY) is None  # others: only after it
    assert cache.get(live.RIGHTS_VERSION_KEY) is not None


def test_a_login_a_new_key_and_a_group_rename_change_nobodys_rights(
    world: Any, remembered: RightsCache[str, str], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        world.reviewer.last_login = timezone.now()
        world.reviewer.save(update_fields=["last_login"])
        api_key_create(user=world.reviewer, name="new")
        approvers = Group.objects.get(name="approvers")
        approvers.name = "approvers-renamed"
        approvers.save()
    assert remembered.get("fact", "") == "derived from rights"
    assert cache.get(live.RIGHTS_VERSION_KEY) is None
