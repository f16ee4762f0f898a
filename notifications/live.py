"""Live updates over Channels: group names and the broadcast the relay makes after commit.

Groups mirror the visibility rule (proposals.permissions): a socket joins the group of each
checkpoint its user may review or manage, the `.escalated` group of checkpoints it reviews only
once escalated, its own user group (as a submitter), and for the detail socket the proposal's
group. A message therefore only reaches people who may see that proposal.

Broadcasting is best effort with a bounded timeout: a channel-layer or Redis failure is logged
and never fails anything; the outbox row stays the source of truth.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)


class LiveMessage(TypedDict):
    type: str  # the consumer handler: "proposal.update"
    event: str
    id: str  # the outbox event id: clients dedupe on it
    proposal: str
    checkpoint: str
    status: str
    revision: int
    version: str


def checkpoint_group(checkpoint_id: int) -> str:
    return f"checkpoint.{checkpoint_id}"


def escalated_group(checkpoint_id: int) -> str:
    return f"checkpoint.{checkpoint_id}.escalated"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def proposal_group(proposal_id: Any) -> str:
    return f"proposal.{proposal_id}"


def groups_for(
    *, checkpoint_id: int, submitter_id: int, proposal_id: Any, escalated: bool
) -> list[str]:
    groups = [
        checkpoint_group(checkpoint_id),
        user_group(submitter_id),
        proposal_group(proposal_id),
    ]
    if escalated:
        groups.append(escalated_group(checkpoint_id))
    return groups


async def _send_all(messages: list[tuple[str, LiveMessage]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    by_group: dict[str, list[LiveMessage]] = {}
    for group, message in messages:
        by_group.setdefault(group, []).append(message)

    async def in_order(group: str, batch: list[LiveMessage]) -> None:
        for message in batch:  # a group hears its events in the order they happened
            await layer.group_send(group, dict(message))

    await asyncio.wait_for(
        asyncio.gather(*(in_order(group, batch) for group, batch in by_group.items())),
        timeout=settings.HITL_LIVE_SEND_TIMEOUT_SECONDS,
    )


def broadcast(messages: list[tuple[str, LiveMessage]]) -> bool:
    """Send (group, message) pairs; False (logged) when the layer is unreachable."""
    if not messages:
        return True
    try:
        async_to_sync(_send_all)(messages)
    except Exception:  # a live update must never break the caller; the outbox catches up
        logger.warning("live update failed for %d message(s)", len(messages), exc_info=True)
        return False
    return True


# --- rights changes reach open sockets -------------------------------------------------------
#
# A socket is authorized once, at connect; what its user may see can shrink while it stays
# open (a grant removed, the user deactivated, the API key revoked, a session logged out).
# Every change to who-may-see-what writes a new token under one cache key, after its commit;
# consumers read that key before each message they send (one Redis GET) and, when it moved,
# re-check the socket against the database before sending anything. Rights change rarely, so
# a single global version costs one re-check per socket per change, and no change site can
# forget to call anything: the signals below cover the admin, guardian, the ORM and the shell.

RIGHTS_VERSION_KEY = "hitl:ws-rights-version"


class RightsUnknown:
    """The cache could not be read: the caller must re-check against the database."""


RIGHTS_UNKNOWN = RightsUnknown()


def rights_version() -> str | None | RightsUnknown:
    from django.core.cache import cache

    try:
        value = cache.get(RIGHTS_VERSION_KEY)
    except Exception:  # a down or hung Redis: fall back to checking every message
        logger.warning("rights version unreadable; re-checking sockets", exc_info=True)
        return RIGHTS_UNKNOWN
    return None if value is None else str(value)


def _write_rights_version() -> None:
    from django.core.cache import cache

    try:
        cache.set(RIGHTS_VERSION_KEY, uuid.uuid4().hex, timeout=None)
    except Exception:  # sockets then re-check when they cannot read it either
        logger.warning("could not publish a rights change to open sockets", exc_info=True)


def rights_changed(**_: Any) -> None:
    """A signal receiver: publish after commit, so a socket that re-checks at once reads the
    new state, never the old one under the new version."""
    transaction.on_commit(_write_rights_version)


def _user_saved(update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a login: nobody's rights changed
    rights_changed()


def _key_saved(created: bool = False, **kwargs: Any) -> None:
    if not created:  # a new key takes nothing from any open socket
        rights_changed()


def connect_rights_signals() -> None:
    from django.contrib.auth import get_user_model, user_logged_out
    from django.contrib.auth.models import Group
    from django.db.models.signals import m2m_changed, post_delete, post_save
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from hitl.models import ApiKey

    User = get_user_model()
    uid = "hitl-ws-rights"
    saved: list[type[Any]] = [UserObjectPermission, GroupObjectPermission, ApiKey]
    for model in saved[:2]:
        post_save.connect(rights_changed, sender=model, dispatch_uid=f"{uid}-save-{model}")
    post_save.connect(_key_saved, sender=ApiKey, dispatch_uid=f"{uid}-key")
    deleted: list[type[Any]] = [*saved, User, Group]
    for model in deleted:
        post_delete.connect(rights_changed, sender=model, dispatch_uid=f"{uid}-del-{model}")
    post_save.connect(_user_saved, sender=User, dispatch_uid=f"{uid}-user")
    for through in (
        User.groups.through,  # type: ignore[attr-defined]
        User.user_permissions.through,  # type: ignore[attr-defined]
        Group.permissions.through,
    ):
        m2m_changed.connect(rights_changed, sender=through, dispatch_uid=f"{uid}-m2m-{through}")
    user_logged_out.connect(rights_changed, dispatch_uid=f"{uid}-logout")
