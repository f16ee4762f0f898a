"""Live updates over Channels: group names and the broadcast the relay makes after commit.

Groups mirror the visibility rule (proposals.permissions): a socket joins the group of each
checkpoint its user may review or manage, the `.escalated` group of checkpoints it reviews only
once escalated, its own user group (as a submitter), and for the detail socket the proposal's
group. A message therefore only reaches people who may see that proposal.

Broadcasting is best effort with a bounded timeout: a channel-layer or Redis failure is logged
and never fails anything; the outbox row stays the source of truth.

Nothing is lost silently. Every broadcast event is first appended to one Redis stream
(STREAM_KEY, the last HITL_LIVE_REPLAY_MESSAGES events) with the groups it goes to; the
stream id is the message's `seq`, increasing in the order events were broadcast. A socket
that missed messages (its backlog overflowed, or the client reconnected) is replayed what it
may see after a given `seq` (`replay`). The channel layer is `LiveChannelLayer`: Redis
pub/sub (one publish per group, fanned out inside each web process, so a group of 500
sockets costs Redis one message, not 500 in one capacity-bound list as with the core layer)
with a bounded backlog per socket whose overflow is logged, counted
(nihil_live_messages_dropped_total) and recovered by the consumer from the stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, NotRequired, TypedDict, TypeVar

import orjson
import redis
from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from channels.db import DatabaseSyncToAsync
from channels.layers import get_channel_layer
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close, decode_hosts
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)
T = TypeVar("T")


class LiveMessage(TypedDict):
    type: str  # the consumer handler: "proposal.update"
    event: str
    id: str  # the outbox event id: clients dedupe on it
    proposal: str
    checkpoint: str
    status: str
    revision: int
    version: str
    seq: NotRequired[str]  # the live stream's id: resume after it (see `replay`)


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


# --- the live stream: sequence numbers and replay ------------------------------------------

STREAM_KEY = "hitl:live"
OVERFLOW_TYPE = "live.overflow"  # put in a socket's backlog in place of what was dropped


def _layer_host() -> dict[str, Any]:
    host: dict[str, Any] = decode_hosts(settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"])[0]
    return host


@functools.cache
def _client(address: str, connect_timeout: float, socket_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        address, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout
    )


def stream_client() -> redis.Redis:
    """The channel layer's Redis (tests point the layer elsewhere), with the bounded timeouts
    every Redis client of the project has."""
    host = _layer_host()
    return _client(
        host["address"],
        float(host.get("socket_connect_timeout", settings.REDIS_CONNECT_TIMEOUT)),
        float(settings.REDIS_SOCKET_TIMEOUT),
    )


def _seq_key(seq: str) -> tuple[int, int]:
    millis, _, number = seq.partition("-")
    return int(millis), int(number or 0)


def seq_after(seq: str, other: str) -> bool:
    return _seq_key(seq) > _seq_key(other)


def parse_seq(value: Any) -> str | None:
    """A client's `after`, validated (a stream id "<ms>-<n>"), or None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        millis, number = _seq_key(value)
    except ValueError:
        return None
    return f"{millis}-{number}" if millis >= 0 and number >= 0 else None


def _append(messages: list[tuple[str, LiveMessage]]) -> None:
    """Number each event by appending it, with its groups, to the stream (one command)."""
    by_id: dict[int, tuple[LiveMessage, list[str]]] = {}
    for group, message in messages:
        by_id.setdefault(id(message), (message, []))[1].append(group)
    # One argument for the whole batch, one line per part (JSON text holds no raw newline):
    # an argument per part cost the client an encoding each, a reply per event a parse each.
    # orjson: the same JSON values as json.dumps (compact, UTF-8), at a fraction of its CPU.
    entries = b"".join(
        b"%b\n%b\n" % (orjson.dumps(groups), orjson.dumps(message))
        for message, groups in by_id.values()
    )
    seqs: bytes = stream_client().eval(  # type: ignore[assignment]
        _APPEND_ALL,
        1,
        STREAM_KEY,
        str(settings.HITL_LIVE_REPLAY_MESSAGES),
        entries,  # type: ignore[arg-type]  # (redis-py sends bytes as they are; stubs say str)
    )
    for (message, _), seq in zip(by_id.values(), seqs.decode().split(), strict=True):
        message["seq"] = seq


# XADD each groups line and message line of ARGV[2], in order, after the stream's approximate
# length ARGV[1], in one command; the ids come back in one space-separated string.
_APPEND_ALL = """
local seqs, text, at = {}, ARGV[2], 1
while at <= #text do
    local groups_end = string.find(text, '\\n', at, true)
    local message_end = string.find(text, '\\n', groups_end + 1, true)
    seqs[#seqs + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
        'g', string.sub(text, at, groups_end - 1),
        'm', string.sub(text, groups_end + 1, message_end - 1))
    at = message_end + 1
end
return table.concat(seqs, ' ')
"""


def stream_head() -> str:
    """The newest seq (a socket that connects now has missed nothing up to it)."""
    newest: list[Any] = stream_client().xrevrange(STREAM_KEY, count=1)  # type: ignore[assignment]
    return newest[0][0].decode() if newest else "0-0"


class Replay(TypedDict):
    complete: bool  # False: the stream no longer reaches back to `after` (refetch everything)
    messages: list[dict[str, Any]]
    head: str


def replay(after: str, groups: set[str]) -> Replay:
    """Events after `after` sent to any of `groups`, oldest first (at most the stream's length).

    Starts HITL_LIVE_SEND_TIMEOUT_SECONDS before `after`: two relays may number events in one
    order and publish them in the other, but every event numbered that much earlier was
    published before `after` was numbered, so the client had it already. What comes twice the
    client drops by `id` (as with every at-least-once delivery here).
    """
    client = stream_client()
    millis, _ = _seq_key(after)
    start = max(millis - settings.HITL_LIVE_SEND_TIMEOUT_SECONDS * 1000, 0)
    oldest: list[Any] = client.xrange(STREAM_KEY, count=1)  # type: ignore[assignment]
    complete = not oldest or _seq_key(oldest[0][0].decode()) <= _seq_key(after) or millis == 0
    messages: list[dict[str, Any]] = []
    head = after
    entries: list[Any] = client.xrange(STREAM_KEY, min=f"{start}-0", max="+")  # type: ignore[assignment]
    for raw_id, fields in entries:
        seq = raw_id.decode()
        head = max(head, seq, key=_seq_key)
        if groups.isdisjoint(json.loads(fields[b"g"])):
            continue
        message = json.loads(fields[b"m"])
        message["seq"] = seq
        messages.append(message)
    return {"complete": complete, "messages": messages, "head": head}


async def _send_all(messages: list[tuple[str, LiveMessage]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, LiveChannelLayer):
        await asyncio.wait_for(
            layer.group_send_many(messages), timeout=settings.HITL_LIVE_SEND_TIMEOUT_SECONDS
        )
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
        _append(messages)
        _send_from_sync(messages)
    except Exception:  # a live update must never break the caller; the outbox catches up
        logger.warning("live update failed for %d message(s)", len(messages), exc_info=True)
        return False
    return True


class _SendLoop:
    """One event loop per process, on a thread of its own, for broadcasts from plain sync code
    (the relay, in a worker). async_to_sync there starts a thread and a loop per call, and
    LiveChannelLayer keeps its Redis connection per loop: a connection opened and closed per
    relay run, about a third of a small run's CPU. Recreated after a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="live-send", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_send_loop = _SendLoop()


def _send_from_sync(messages: list[tuple[str, LiveMessage]]) -> None:
    """_send_all from sync code. On the process's send loop when the layer is the pub/sub
    one (what it publishes reaches every loop's subscribers through Redis); otherwise, or
    when called under an event loop that async_to_sync would use (sync code run by
    sync_to_async), as before."""
    outer = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    outer_here = getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) == os.getpid()
    if (outer is not None and outer_here) or not isinstance(get_channel_layer(), LiveChannelLayer):
        async_to_sync(_send_all)(messages)
        return
    future = asyncio.run_coroutine_threadsafe(_send_all(messages), _send_loop.get())
    try:
        # _send_all gives up after HITL_LIVE_SEND_TIMEOUT_SECONDS itself; this only bounds
        # the wait for a loop that could not run it at all.
        future.result(timeout=settings.HITL_LIVE_SEND_TIMEOUT_SECONDS + 1)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise


# --- the channel layer ------------------------------------------------------------------------
#
# channels_redis's pub/sub layer (pinned, 4.3.0) keeps an unbounded in-memory queue per socket;
# a client that stops reading would grow it without limit. This subclass bounds it at
# HITL_LIVE_SOCKET_BACKLOG messages: on overflow the queue is emptied and replaced by one
# OVERFLOW_TYPE message, the drop is logged and counted, and the consumer replays the socket
# from the stream after the last `seq` it sent (consumers._Base.live_overflow).
#
# The fan-out of one event to the sockets of a process is in-process and does per-event work
# once: Redis holds one subscription per group per process (a socket's own channel is local:
# nothing sends to one across processes), the message is decoded once and the same dict,
# read-only, is handed to every socket; the rights version the sockets check it against is
# read once (RIGHTS_KEY) and the JSON the sockets send is encoded once (`wire_text`).

RIGHTS_KEY = "_rights"  # the rights version read after the event reached this process
WIRE_KEY = "_wire"  # the event's JSON as the sockets send it, encoded by the first to send
NOT_READ = object()  # no rights version came with the message: the socket reads it itself


def wire_text(message: dict[str, Any]) -> str:
    """The client's JSON of a live message (its `event` as `type`), encoded once per message
    however many sockets send it."""
    text: str | None = message.get(WIRE_KEY)
    if text is None:
        fields = {k: v for k, v in message.items() if k not in ("type", RIGHTS_KEY, WIRE_KEY)}
        text = json.dumps(fields | {"type": message["event"]})
        message[WIRE_KEY] = text  # a memo on the shared message: the same for every socket
    return text


# ARGV: channel, message, channel, message, ... published in that order.
_PUBLISH_ALL = "for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end"


class _Shard(RedisSingleShardConnection):
    channel_layer: _LoopLayer

    async def publish_many(self, items: list[tuple[str, bytes]]) -> None:
        """PUBLISH each, in order, in one round trip (the stock layer awaits one per group)
        and one command: a pipeline of PUBLISHes costs the client a reply to parse per
        message, most of a broadcast's CPU."""
        async with self._lock:
            self._ensure_redis()
            await self._redis.eval(_PUBLISH_ALL, 0, *(part for item in items for part in item))

    def _receive_message(self, message: Any) -> None:
        if message is not None:
            self.channel_layer.arrived(message)


class _LoopLayer(RedisPubSubLoopLayer):
    channels: dict[str, asyncio.Queue[dict[str, Any]]]  # type: ignore[assignment]

    def __init__(self, hosts: Any = None, *, backlog: int = 1000, **kwargs: Any) -> None:
        super().__init__(hosts, **kwargs)
        self.backlog = backlog
        self._shards = [_Shard(host, self) for host in decode_hosts(hosts)]
        self._arrivals: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._fan_out_task: asyncio.Task[None] | None = None

    async def _subscribe_to_channel(self, channel: str) -> None:
        # Local only: no SUBSCRIBE round trip per socket (500 at a reconnect storm).
        self.channels[channel] = asyncio.Queue(maxsize=self.backlog)

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message for a socket of this process, already decoded (shared: read-only)."""
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        try:
            return await self.channels[channel].get()
        except (asyncio.CancelledError, TimeoutError, GeneratorExit):
            self.channels.pop(channel, None)  # the consumer is gone (channels' convention)
            raise

    def arrived(self, message: dict[str, Any]) -> None:
        name = message["channel"]
        self._arrivals.put_nowait(
            (name.decode() if isinstance(name, bytes) else name, message["data"])
        )
        if self._fan_out_task is None or self._fan_out_task.done():
            self._fan_out_task = asyncio.ensure_future(self._fan_out())

    async def _fan_out(self) -> None:
        """Deliver what arrived, in order: per batch one rights-version read, per event one
        decode, then the same dict to every socket of its group."""
        while not self._arrivals.empty():
            batch = []
            while not self._arrivals.empty():
                batch.append(self._arrivals.get_nowait())
            rights = await rights_version_async()
            for name, data in batch:
                try:
                    decoded = self.channel_layer.deserialize(data)
                except Exception:
                    logger.warning("undecodable live message on %s dropped", name, exc_info=True)
                    continue
                decoded[RIGHTS_KEY] = rights
                if name in self.channels:
                    self.deliver(name, decoded)
                else:
                    for channel in list(self.groups.get(name, ())):
                        self.deliver(channel, decoded)

    async def group_send_many(self, pairs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        by_shard: dict[int, tuple[_Shard, list[tuple[str, bytes]]]] = {}
        # An event goes to three or four groups as one dict: serialized once, the same bytes
        # published to each (what a subscriber decodes is what it decoded before).
        encoded: dict[int, bytes] = {}
        for group, message in pairs:
            channel = self._get_group_channel_name(group)
            shard = self._get_shard(channel)
            data = encoded.get(id(message))
            if data is None:
                data = encoded[id(message)] = self.channel_layer.serialize(message)
            by_shard.setdefault(id(shard), (shard, []))[1].append((channel, data))
        await asyncio.gather(*(shard.publish_many(items) for shard, items in by_shard.values()))

    def deliver(self, channel: str, message: dict[str, Any]) -> None:
        queue = self.channels.get(channel)
        if queue is None:
            return
        try:
            queue.put_nowait(message)
            return
        except asyncio.QueueFull:
            pass
        dropped = 1
        while not queue.empty():
            queue.get_nowait()
            dropped += 1
        queue.put_nowait({"type": OVERFLOW_TYPE, "dropped": dropped})
        from hitl.ops import metrics

        metrics.never_raise("live overflow", lambda: metrics.LIVE_OVERFLOW.inc(dropped))
        logger.warning(
            "websocket %s fell %d messages behind (HITL_LIVE_SOCKET_BACKLOG=%d): dropped, "
            "replaying from the live stream",
            channel,
            dropped,
            self.backlog,
        )


class LiveChannelLayer(RedisPubSubChannelLayer):
    """RedisPubSubChannelLayer with a bounded, counted, recoverable backlog per socket and a
    fan-out that does per-event work once per process (see above).
    CONFIG: `hosts` as channels_redis, `backlog` (HITL_LIVE_SOCKET_BACKLOG)."""

    async def group_send_many(self, pairs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """group_send for many (group, message) pairs: each group hears its messages in
        order, and a broadcast of hundreds costs one round trip per Redis shard. The messages
        are only read (one dict may stand for several pairs)."""
        await self._get_layer().group_send_many(pairs)

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        try:
            layer: _LoopLayer = self._layers[loop]
        except KeyError:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer


# --- database work of sockets -------------------------------------------------------------------


def db_async(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """channels' database_sync_to_async, on the thread pool instead of its one database thread:
    a reconnect storm of hundreds of sockets authorizes side by side (each thread takes a pooled
    connection and closes it afterwards) instead of queueing one at a time past uvicorn's 10 s
    handshake limit."""
    return DatabaseSyncToAsync(fn, thread_sensitive=False)  # type: ignore[return-value]


class _Admission:
    """At most `limit` sockets of this process authorize at once, the others wait in arrival
    order. Without it a reconnect storm of 500 sockets advanced all together, step by step
    through the same queues, and every one of them missed uvicorn's 10 s handshake limit;
    in order, the first are live at once and the rest follow at the process's pace."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphores: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def __call__(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.limit)
        return semaphore


connecting = _Admission(limit=8)


# --- reads shared by the sockets of a process: rights version, stream head, handshake -------


class _Coalesced(Generic[T]):
    """One read of `fetch` shared by every socket of this process that asks while it is not yet
    under way. A read joined is one started after the joiner asked, so no socket ever acts on
    a value older than its question: a fan-out to (or a reconnect storm of) 500 sockets costs
    one read, not 500 reads through the thread pool."""

    def __init__(self, fetch: Callable[[], T]) -> None:
        self._fetch = fetch
        self._waiting: dict[asyncio.AbstractEventLoop, asyncio.Future[T]] = {}

    async def read(self) -> T:
        loop = asyncio.get_running_loop()
        future = self._waiting.get(loop)
        if future is None:
            future = loop.create_future()
            self._waiting[loop] = future
            loop.call_soon(lambda: asyncio.ensure_future(self._run(loop, future)))
        return await asyncio.shield(future)

    async def _run(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[T]) -> None:
        self._waiting.pop(loop, None)  # who asks from now on waits for the next read
        try:
            value = await sync_to_async(self._fetch, thread_sensitive=False)()
        except BaseException as exc:  # handed to every waiter, then re-raised by each
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(value)


_rights_reader: _Coalesced[str | None | RightsUnknown] = _Coalesced(lambda: rights_version())
_head_reader: _Coalesced[str] = _Coalesced(lambda: stream_head())


async def rights_version_async() -> str | None | RightsUnknown:
    return await _rights_reader.read()


async def stream_head_async() -> str:
    return await _head_reader.read()


class _HandshakeCache:
    """What a socket's handshake reads from the database (its API key and user, its user's
    access), shared by the sockets of this process that connect under the same rights version
    within `seconds`: one reviewer's 500 sockets reconnecting at once cost one read each, not
    500 through a pool of ten connections. As fresh as an open socket's own re-check: every
    change to who-may-see-what moves the rights version (see below), and a socket reads the
    version before it asks. Concurrent misses share one read; failures are not kept."""

    def __init__(self, seconds: float = 5.0, max_entries: int = 10_000) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[Any, ...], tuple[asyncio.Future[Any], float]]
        ] = weakref.WeakKeyDictionary()

    async def get(
        self, key: tuple[Any, ...], rights: Any, compute: Callable[[], Awaitable[T]]
    ) -> T:
        if isinstance(rights, RightsUnknown):
            return await compute()  # no version to vouch for a remembered answer
        entries = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        full = (*key, rights)
        now = time.monotonic()
        entry = entries.get(full)
        if entry is None or entry[1] <= now:
            if len(entries) >= self.max_entries:
                entries.clear()
            entry = (asyncio.ensure_future(compute()), now + self.seconds)
            entries[full] = entry
        future = entry[0]
        try:
            return await asyncio.shield(future)  # type: ignore[no-any-return]
        except BaseException:
            if future.done() and entries.get(full, (None, 0.0))[0] is future:
                del entries[full]
            raise


handshakes = _HandshakeCache()


# --- rights changes reach open sockets and every process's caches -----------------------------
#
# A socket is authorized once, at connect; what its user may see can shrink while it stays
# open (a grant removed, the user deactivated, the API key revoked, a session logged out).
# Every change to who-may-see-what writes a new token under one cache key, after its commit;
# consumers read that key before each message they send (one Redis GET) and, when it moved,
# re-check the socket against the database before sending anything. The API reads the same
# key once per request (hitl.authentication) to know whether the keys and grants it remembers
# still hold. Rights change rarely, so a single global version costs one re-check per socket
# per change, and no change site can forget to call anything: the signals below cover the
# admin, guardian, the ORM and the shell.

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
    """The one receiver of every change to who may do what (`connect_rights_signals`).

    At once, inside the changing transaction, this process forgets every fact derived from
    rights (proposals.permissions.RightsCache: the API key cache, remembered checkpoints and
    electorates). After commit the rights version moves, so other processes' caches and every
    open socket re-check and read the new state, never the old one under the new version."""
    from proposals.permissions import forget_rights

    forget_rights()
    transaction.on_commit(_write_rights_version)


def _user_saved(update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a login: nobody's rights changed
    rights_changed()


def _key_saved(created: bool = False, **kwargs: Any) -> None:
    if not created:  # a new key is in no cache and takes nothing from any open socket
        rights_changed()


def connect_rights_signals() -> None:
    """The one list of changes to who may do what: grants, keys, users, groups and their
    memberships and permissions, logouts, and checkpoints (a grant on every checkpoint covers
    a new one; the submit path remembers checkpoint rows, policy and bypass included)."""
    from django.contrib.auth import get_user_model, user_logged_out
    from django.contrib.auth.models import Group
    from django.db.models.signals import m2m_changed, post_delete, post_save
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from hitl.models import ApiKey
    from proposals.models import Checkpoint

    User = get_user_model()
    uid = "hitl-rights"
    for model in (UserObjectPermission, GroupObjectPermission, Checkpoint):
        post_save.connect(rights_changed, sender=model, dispatch_uid=f"{uid}-save-{model}")
    post_save.connect(_key_saved, sender=ApiKey, dispatch_uid=f"{uid}-key")
    post_save.connect(_user_saved, sender=User, dispatch_uid=f"{uid}-user")
    for deleted in (UserObjectPermission, GroupObjectPermission, Checkpoint, ApiKey, User, Group):
        post_delete.connect(rights_changed, sender=deleted, dispatch_uid=f"{uid}-del-{deleted}")
    for through in (
        User.groups.through,  # type: ignore[attr-defined]
        User.user_permissions.through,  # type: ignore[attr-defined]
        Group.permissions.through,
    ):
        m2m_changed.connect(rights_changed, sender=through, dispatch_uid=f"{uid}-m2m-{through}")
    user_logged_out.connect(rights_changed, dispatch_uid=f"{uid}-logout")
