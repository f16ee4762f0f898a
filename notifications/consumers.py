"""Websockets: a reviewer's live queue and a single proposal's updates.

Both authenticate (session cookie, or an API key as `?token=` / `Authorization: Bearer`) and
authorize with the same rule as the REST API (proposals.permissions); see notifications.live
for the groups. Messages are small: the client refetches what it needs over REST.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from notifications import live
from proposals import selectors
from proposals.errors import NotFound
from proposals.permissions import MANAGE, REVIEW, REVIEW_ESCALATED, Access, access_for

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class _Base(AsyncJsonWebsocketConsumer):
    groups_joined: list[str]

    async def _authorized_access(self) -> Access | None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return None
        access: Access = await database_sync_to_async(access_for)(user)
        return access

    async def _join(self, groups: list[str]) -> None:
        self.groups_joined = groups
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def proposal_update(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {key: value for key, value in message.items() if key != "type"}
            | {"type": message["event"]}
        )


class QueueConsumer(_Base):
    """/ws/queue/: everything the user may see, as it happens."""

    async def connect(self) -> None:
        access = await self._authorized_access()
        if access is None:
            return
        assert access.user_id is not None
        groups = [live.checkpoint_group(cp) for cp in sorted(access.ids(REVIEW, MANAGE))]
        groups += [live.escalated_group(cp) for cp in sorted(access.ids(REVIEW_ESCALATED))]
        groups.append(live.user_group(access.user_id))
        await self._join(groups)
        await self.accept()
        await self.send_json({"type": "hello", "user": self.scope["user"].get_username()})


class ProposalConsumer(_Base):
    """/ws/proposals/{id}/: one proposal, for its submitter waiting on a decision (or anyone
    who may see it)."""

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
