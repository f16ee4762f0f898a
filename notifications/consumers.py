"""Websockets: a reviewer's live queue and a single proposal's updates.

Both authenticate (session cookie, or an API key as `?token=` / `Authorization: Bearer`) and
authorize with the same rule as the REST API (proposals.permissions); see notifications.live
for the groups. Messages are small: the client refetches what it needs over REST.

Rights are re-checked while the socket is open: before each message (and pong) it reads the
rights version (notifications.live) and, when that moved, re-reads the user, the API key and
the grants. A user deactivated, logged out or whose key was revoked is closed 4401; a detail
socket whose proposal is no longer visible is closed 4403; the queue socket moves to the
groups its user has now and drops what it heard through a group it left.

Nothing is lost silently: every message carries `seq` (notifications.live's stream id), the
first message (`hello` / `snapshot`) the stream's head. A client that reconnects passes
`?after=<seq>` (or sends `{"type": "resume", "after": <seq>}`) and is replayed what it may see
since, then `{"type": "resumed", "seq": ...}`; `{"type": "resync"}` means the stream no longer
reaches back that far: refetch everything. A socket whose backlog overflowed in this process
is replayed the same way, by the server, without the client doing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from datetime import datetime
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.auth import get_user
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from notifications import live, ws_auth
from proposals import selectors
from proposals.errors import NotFound
from proposals.permissions import MANAGE, REVIEW, REVIEW_ESCALATED, Access, access_for

logger = logging.getLogger(__name__)

RECENT_IDS = 2000  # event ids a socket remembers, so a replay does not repeat them
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


class RecentIds:
    """The last `size` event ids a socket sent (a set for lookups, a deque for eviction): a
    replay overlaps what was sent live, and live messages still queued overlap the replay."""

    def __init__(self, size: int = RECENT_IDS) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._size = size

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        if event_id in self._ids:
            return
        self._order.append(event_id)
        self._ids.add(event_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())


class _Base(AsyncJsonWebsocketConsumer):
    groups_joined: list[str]
    rights_seen: str | None | live.RightsUnknown = live.RIGHTS_UNKNOWN
    key_expires_at: datetime | None = None
    last_seq: str | None = None  # of the newest message this socket sent
    recent_ids: RecentIds

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """channels' AsyncConsumer.__call__, with `_pump` for its await_many_dispatch."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        self.recent_ids = RecentIds()
        with contextlib.suppress(StopConsumer):
            await self._pump(receive)

    async def _pump(self, receive: Any) -> None:
        """Dispatch what the client and the channel layer send, one message at a time as
        channels does, but from two loops, one per source, that take turns: channels waits on
        both sources again for every message (two tasks and a wait per message per socket, a
        third of a 500-socket fan-out), here a socket's live messages are one queue read each."""
        turn = asyncio.Lock()

        async def from_client() -> None:
            while True:
                message = await receive()
                async with turn:
                    await self.dispatch(message)  # a disconnect raises StopConsumer

        async def from_layer() -> None:
            while True:
                message = await self.channel_receive()
                async with turn:
                    await self.dispatch(message)

        loops = [asyncio.ensure_future(from_client()), asyncio.ensure_future(from_layer())]
        done: set[asyncio.Future[None]] = set()
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop in done:
                loop.result()  # StopConsumer, or what a handler raised
        finally:
            # Both end here, whatever ended the first. Awaiting the finished one re-raised its
            # StopConsumer and skipped the other: every closed socket left its layer loop
            # waiting on the channel, and a message still on its way ran on a gone consumer.
            for loop in loops:
                loop.cancel()
            outcomes = await asyncio.gather(*loops, return_exceptions=True)
            for loop, outcome in zip(loops, outcomes, strict=True):
                # What the first loop to end raised goes on from here; the other's, if it
                # failed too before it was cancelled, is logged.
                failed = isinstance(outcome, Exception) and not isinstance(outcome, StopConsumer)
                if failed and loop not in done:
                    logger.error("live socket loop failed", exc_info=outcome)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """channels' dispatch, without its `aclose_old_connections()` before every handler:
        that is a hop to the one database thread per message per socket (a fan-out of one
        event to 500 sockets queued 500 hops, and the sockets fell seconds behind). Every
        database access here goes through live.db_async, which closes stale
        connections around itself in that thread, so nothing is left open."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def _authorized_access(self) -> Access | None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return None
        # Read before the rights are: a change from here on makes the first message re-check.
        self.rights_seen = await live.rights_version_async()
        self.key_expires_at = self.scope.get("api_key_expires_at")
        access: Access = await live.handshakes.get(
            ("access", user.pk), self.rights_seen, lambda: live.db_async(access_for)(user)
        )
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

    async def _current_access(self, version: Any = live.NOT_READ) -> Access | None | bool:
        """True when nothing changed since the last check (one cache read, or `version`: the
        one the fan-out read for every socket after the message arrived); otherwise the
        socket's access re-read from the database, or None (closed: signed out)."""
        expired = self.key_expires_at is not None and self.key_expires_at <= timezone.now()
        if version is live.NOT_READ:
            version = await live.rights_version_async()
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
        access = await live.db_async(_still_signed_in)(user_id, self.scope.get("api_key_id"))
        if access is None or expired:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return None
        return await self._rights_changed(access)

    async def _rights_changed(self, access: Access) -> Access | None:
        """Re-authorize with fresh rights; None if the socket was closed."""
        return access

    async def _may_see(self, access: Access, proposal_id: str) -> bool:
        try:
            await live.db_async(selectors.proposal_get)(access, proposal_id)
        except NotFound:
            return False
        return True

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        # Keep-alive pings re-check too, so a socket that only idles still gets closed.
        if kind == "ping" and await self._current_access() is not None:
            await self.send_json({"type": "pong"})
        elif kind == "resume":
            after = live.parse_seq(content.get("after"))
            if after is None:
                await self.send_json({"type": "error", "detail": "resume needs a valid `after`"})
            else:
                await self._replay(after)

    async def _head(self) -> str | None:
        """The stream's newest seq: where a client resumes from if it has heard nothing."""
        try:
            return await live.stream_head_async()
        except Exception:  # no seq: the client refetches on reconnect, as without one
            logger.warning("live stream unreadable at connect", exc_info=True)
            return None

    async def _start_live(self) -> None:
        """After accept: replay from `?after=` if given (`recent_ids` remembers what is sent)."""
        query = parse_qs(self.scope.get("query_string", b"").decode())
        after = query.get("after")
        if after:
            seq = live.parse_seq(after[0])
            if seq is not None:
                await self._replay(seq)

    async def _send_event(self, message: dict[str, Any]) -> None:
        await self.base_send({"type": "websocket.send", "text": live.wire_text(message)})
        if message.get("id"):
            self.recent_ids.add(str(message["id"]))
        seq = live.parse_seq(message.get("seq"))
        if seq is not None and (self.last_seq is None or live.seq_after(seq, self.last_seq)):
            self.last_seq = seq

    async def _replay(self, after: str) -> None:
        """Send what this socket may see after `after` from the live stream, skipping what it
        already sent; `resync` if the stream does not reach back that far or is unreadable."""
        access = await self._current_access()
        if access is None:
            return
        groups = set(getattr(self, "groups_joined", []))
        try:
            found = await sync_to_async(live.replay, thread_sensitive=False)(after, groups)
        except Exception:
            logger.warning("live stream unreadable: asking the client to refetch", exc_info=True)
            await self.send_json({"type": "resync"})
            return
        if not found["complete"]:
            await self.send_json({"type": "resync", "seq": found["head"]})
        for message in found["messages"]:
            if str(message.get("id")) in self.recent_ids:
                continue
            if isinstance(access, Access) and not await self._may_see(access, message["proposal"]):
                continue
            await self._send_event(message)
        if self.last_seq is None or live.seq_after(found["head"], self.last_seq):
            self.last_seq = found["head"]
        await self.send_json({"type": "resumed", "seq": self.last_seq})

    async def live_overflow(self, message: dict[str, Any]) -> None:
        """This process dropped messages meant for this socket (a full backlog): replay."""
        if self.last_seq is None:
            await self.send_json({"type": "resync"})
        else:
            await self._replay(self.last_seq)

    async def proposal_update(self, message: dict[str, Any]) -> None:
        if str(message.get("id")) in self.recent_ids:
            return  # already replayed
        access = await self._current_access(message.get(live.RIGHTS_KEY, live.NOT_READ))
        if access is None:
            return
        if isinstance(access, Access) and not await self._may_see(access, message["proposal"]):
            return  # heard through a group this socket has just left
        await self._send_event(message)


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
        async with live.connecting():  # in arrival order (live._Admission)
            await self._connect()

    async def _connect(self) -> None:
        access = await self._authorized_access()
        if access is None:
            return
        assert access.user_id is not None
        await self._join(self._groups(access))
        await self.accept()
        self.last_seq = await self._head()
        await self.send_json(
            {"type": "hello", "user": self.scope["user"].get_username(), "seq": self.last_seq}
        )
        await self._start_live()


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
        async with live.connecting():  # in arrival order (live._Admission)
            await self._connect()

    async def _connect(self) -> None:
        access = await self._authorized_access()
        if access is None:
            return
        proposal_id = self.scope["url_route"]["kwargs"]["proposal_id"]
        try:
            proposal = await live.db_async(selectors.proposal_get)(access, proposal_id)
        except NotFound:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.proposal_id = str(proposal.pk)
        await self._join([live.proposal_group(proposal.pk)])
        await self.accept()
        self.last_seq = await self._head()
        await self.send_json(
            {
                "type": "snapshot",
                "proposal": str(proposal.pk),
                "status": proposal.status,
                "revision": proposal.revision,
                "version": proposal.updated_at.isoformat(),
                "seq": self.last_seq,
            }
        )
        await self._start_live()
