"""Websockets: a reviewer's live queue and a single proposal's updates.

Both authenticate (session cookie, or an API key as `?token=` / `Authorization: Bearer`) and
authorize with the same rule as the REST API (proposals.permissions); see notifications.live
for the groups. Messages are small: the client refetches what it needs over REST.

Rights are re-checked while the socket is open: before each message (and pong) it reads the
rights version (notifications.live) and, when that moved, re-reads the user, the API key and
the grants. A user deactivated, logged out or whose key was revoked is closed 4401; a detail
socket whose proposal is no longer visible is closed 4403; the queue socket moves to the
groups its user has now and drops what it heard through a group it left.
"""

from __future__ import annotations

from datetime import datetime
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from notifications import live, ws_auth
from proposals import selectors
from proposals.errors import NotFound
from proposals.permissions import MANAGE, REVIEW, REVIEW_ESCALATED, Access, access_for

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403  # an open socket whose user may no longer see what it follows
CLOSE_NOT_FOUND = 4404


def _still_signed_in(user_id: int, api_key_id: int | None) -> Access | None:
    """The socket's user, re-read: active, its API key (if it came with one) neither revoked
    nor expired; then their rights as they are now. None: close the socket."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return None
    if api_key_id is not None and not ws_auth.api_key_is_live(api_key_id):
        return None
    return access_for(user)


class _Base(AsyncJsonWebsocketConsumer):
    groups_joined: list[str]
    rights_seen: str | None | live.RightsUnknown = live.RIGHTS_UNKNOWN
    key_expires_at: datetime | None = None

    async def _authorized_access(self) -> Access | None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return None
        # Read before the rights are: a change from here on makes the first message re-check.
        self.rights_seen = await sync_to_async(live.rights_version)()
        self.key_expires_at = self.scope.get("api_key_expires_at")
        access: Access = await database_sync_to_async(access_for)(user)
        return access

    async def _join(self, groups: list[str]) -> None:
        self.groups_joined = groups
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _move_to(self, groups: list[str]) -> None:
        joined = set(getattr(self, "groups_joined", []))
        for group in joined - set(groups):
            await self.channel_layer.group_discard(group, self.channel_name)
        for group in set(groups) - joined:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _current_access(self) -> Access | None | bool:
        """True when nothing changed since the last check (one cache read); otherwise the
        socket's access re-read from the database, or None (closed: signed out)."""
        expired = self.key_expires_at is not None and self.key_expires_at <= timezone.now()
        version = await sync_to_async(live.rights_version)()
        if not expired and version == self.rights_seen and version is not live.RIGHTS_UNKNOWN:
            return True
        self.rights_seen = version  # read before the state it vouches for
        user_id = self.scope["user"].pk
        session_key = getattr(self.scope.get("session"), "session_key", None)
        if self.scope.get("api_key_id") is None and session_key is not None:
            # Logged out, or the password changed: the session no longer names this user.
            engine = import_module(settings.SESSION_ENGINE)
            fresh = await get_user({"session": engine.SessionStore(session_key)})
            if fresh.pk != user_id:
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return None
        access = await database_sync_to_async(_still_signed_in)(
            user_id, self.scope.get("api_key_id")
        )
        if access is None or expired:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return None
        return await self._rights_changed(access)

    async def _rights_changed(self, access: Access) -> Access | None:
        """Re-authorize with fresh rights; None if the socket was closed."""
        return access

    async def _may_see(self, access: Access, proposal_id: str) -> bool:
        try:
            await database_sync_to_async(selectors.proposal_get)(access, proposal_id)
        except NotFound:
            return False
        return True

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Keep-alive pings re-check too, so a socket that only idles still gets closed.
        is_ping = isinstance(content, dict) and content.get("type") == "ping"
        if is_ping and await self._current_access() is not None:
            await self.send_json({"type": "pong"})

    async def proposal_update(self, message: dict[str, Any]) -> None:
        access = await self._current_access()
        if access is None:
            return
        if isinstance(access, Access) and not await self._may_see(access, message["proposal"]):
            return  # heard through a group this socket has just left
        await self.send_json(
            {key: value for key, value in message.items() if key != "type"}
            | {"type": message["event"]}
        )


class QueueConsumer(_Base):
    """/ws/queue/: everything the user may see, as it happens."""

    @staticmethod
    def _groups(access: Access) -> list[str]:
        assert access.user_id is not None
        groups = [live.checkpoint_group(cp) for cp in sorted(access.ids(REVIEW, MANAGE))]
        groups += [live.escalated_group(cp) for cp in sorted(access.ids(REVIEW_ESCALATED))]
        groups.append(live.user_group(access.user_id))
        return groups

    async def _rights_changed(self, access: Access) -> Access | None:
        await self._move_to(self._groups(access))  # gained checkpoints too, not only lost
        return access

    async def connect(self) -> None:
        access = await self._authorized_access()
        if access is None:
            return
        assert access.user_id is not None
        await self._join(self._groups(access))
        await self.accept()
        await self.send_json({"type": "hello", "user": self.scope["user"].get_username()})


class ProposalConsumer(_Base):
    """/ws/proposals/{id}/: one proposal, for its submitter waiting on a decision (or anyone
    who may see it)."""

    proposal_id: str

    async def _rights_changed(self, access: Access) -> Access | None:
        if not await self._may_see(access, self.proposal_id):
            await self.close(code=CLOSE_FORBIDDEN)
            return None
        return access

    async def connect(self) -> None:
        access = await self._authorized_access()
        if access is None:
            return
        proposal_id = self.scope["url_route"]["kwargs"]["proposal_id"]
        try:
            proposal = await database_sync_to_async(selectors.proposal_get)(access, proposal_id)
        except NotFound:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.proposal_id = str(proposal.pk)
        await self._join([live.proposal_group(proposal.pk)])
        await self.accept()
        await self.send_json(
            {
                "type": "snapshot",
                "proposal": str(proposal.pk),
                "status": proposal.status,
                "revision": proposal.revision,
                "version": proposal.updated_at.isoformat(),
            }
        )
