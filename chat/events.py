"""Answer events through Redis: one stream per assistant message is the single source of truth for live
delivery and for resuming.

Every event of an answer (start, token, citations, done, error) is appended with the explicit stream id
`<seq>-0`, seq counting from 1, so "the events after N" is one XREAD from `N-0`, and a client's last seen
`seq` is all it needs to resume: no gaps, no duplicates. Readers (WebSocket consumers, SSE views) block on XREAD
with their own connection; nothing fans out per token through the channel layer. Each entry stores the event
type and its JSON, which readers forward without re-encoding. Streams expire `CHAT_STREAM_TTL_SECONDS` after
the answer ends; afterwards readers rebuild the closing events from the saved message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import redis
import redis.asyncio as aioredis
from django.conf import settings

if TYPE_CHECKING:
    from chat.models import Message

KEY_PREFIX = "docent:chat:"
TERMINAL = "done"
# The largest `after` a reader may give: event ids are Redis stream ids (`<seq>-0`), which refuse a first part past
# 64 bits, and an answer's seq stays far below this.
MAX_SEQ = 2**63 - 1


def stream_key(message_id: int) -> str:
    return f"{KEY_PREFIX}events:{message_id}"


def cancel_key(message_id: int) -> str:
    return f"{KEY_PREFIX}cancel:{message_id}"


class Event(NamedTuple):
    seq: int
    type: str
    data: str  # the event as JSON, including "type" and "seq"

    def sse(self) -> bytes:
        return f"id: {self.seq}\nevent: {self.type}\ndata: {self.data}\n\n".encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# One encoder for every event: json.dumps(..., default=...) would build a new one for each token.
_encode = json.JSONEncoder(default=_json_default).encode


def event(seq: int, type_: str, **payload: Any) -> Event:
    return Event(seq, type_, _encode({"type": type_, "seq": seq, **payload}))


def start_event(message: Message) -> Event:
    return event(
        1,
        "start",
        message_id=message.id,
        conversation_id=message.conversation_id,
        model=message.model,
    )


def usage_payload(message: Message) -> dict[str, Any]:
    return {
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "cost_usd": str(message.cost_usd),
    }


def closing_events(message: Message) -> list[Event]:
    """The events that end a finished answer, numbered up to `message.last_seq`: [error,] citations, done."""
    events: list[Event] = []
    seq = message.last_seq - (2 if not message.error_code else 3)
    if message.error_code:
        seq += 1
        retry = {"retry_after": message.error_retry_after} if message.error_retry_after is not None else {}
        events.append(event(seq, "error", message_id=message.id, code=message.error_code,
                            message=message.error_message, **retry))
    seq += 1
    events.append(event(seq, "citations", message_id=message.id, citations=message.citations))
    seq += 1
    events.append(
        event(
            seq,
            "done",
            message_id=message.id,
            finish_reason=message.finish_reason,
            usage=usage_payload(message),
            content=message.content,
            model=message.model,
            latency_ms={"first_token": message.first_token_ms, "total": message.total_ms},
        )
    )
    return events


_sync_lock = threading.Lock()
_sync_client: redis.Redis | None = None


def redis_client() -> redis.Redis:
    """The process' synchronous client (thread-safe connection pool)."""
    global _sync_client
    with _sync_lock:
        if _sync_client is None:
            _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30,
                                                driver_info=None)
        return _sync_client


L = TypeVar("L")


def _per_loop(registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, L], make: Callable[[], L]) -> L:
    """The running loop's own instance from `registry`, made on first use: asyncio objects (connections,
    futures, tasks) belong to the loop that created them."""
    loop = asyncio.get_running_loop()
    value = registry.get(loop)
    if value is None:
        value = registry[loop] = make()
    return value


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def async_redis() -> aioredis.Redis:
    """A client bound to the running event loop (each blocking XREAD holds one of its connections)."""
    return _per_loop(_async_clients, _new_async_client)


def _new_async_client() -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=2,
        # Longer than any blocking XREAD (`heartbeat` seconds), which would otherwise fail as a read timeout.
        socket_timeout=settings.CHAT_SSE_HEARTBEAT_SECONDS + 10,
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=10_000,
        # No CLIENT SETINFO: a burst of answers opens a connection each, and redis-py would otherwise read
        # its own package metadata (~1 ms) and spend a round trip on every one of them.
        driver_info=None,
    )


def _generation_ttl() -> int:
    # While an answer is generated its stream must outlive the longest allowed task (queue wait included): the
    # threads pool does not enforce the task limit, but an answer stops streaming after CHAT_ANSWER_MAX_SECONDS.
    longest = max(settings.CELERY_TASK_TIME_LIMIT, settings.CHAT_ANSWER_MAX_SECONDS)
    return int(longest) + settings.CHAT_STREAM_TTL_SECONDS


def append(message_id: int, events: list[Event], *, final: bool = False) -> None:
    """Append events in one round trip (synchronous callers: the edge and the worker's bookkeeping)."""
    key = stream_key(message_id)
    with redis_client().pipeline(transaction=False) as pipe:
        for item in events:
            pipe.xadd(key, {"t": item.type, "e": item.data}, id=f"{item.seq}-0")
        pipe.expire(key, settings.CHAT_STREAM_TTL_SECONDS if final else _generation_ttl())
        pipe.execute()


def request_cancel(message_id: int) -> None:
    redis_client().set(cancel_key(message_id), b"1", ex=_generation_ttl())


class EventWriter:
    """Appends one answer's token events without making the reader of the model's stream wait for Redis.

    Every answer of the process writes through one `_Sink` per event loop: whatever all answers queued since
    the last flush goes out in one pipelined round trip, so hundreds of concurrent streams cost a handful of
    round trips per token interval instead of one per token, and an idle process sends each delta at once."""

    def __init__(self, message_id: int) -> None:
        self.key = stream_key(message_id)
        self.pending = 0
        self.error: BaseException | None = None
        # Another hand wrote at these ids (the sweep closed the answer as abandoned): later events would land
        # past its `done`.
        self.fenced = False
        self._sink = _sink()

    def add(self, item: Event) -> None:
        if self.fenced:
            return
        self.pending += 1
        self._sink.add(self, item)

    async def drain(self) -> None:
        """Wait until everything added is in Redis; raises the first write error."""
        while self.pending:
            await self._sink.flushed()
        if self.error is not None:
            raise self.error


class _Sink:
    def __init__(self) -> None:
        self._client = async_redis()
        self._queue: list[tuple[EventWriter, Event]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, writer: EventWriter, item: Event) -> None:
        self._queue.append((writer, item))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def flushed(self) -> None:
        if self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _flush(self) -> None:
        while self._queue:
            queued, self._queue = self._queue, []
            batch = []
            for writer, item in queued:
                if writer.fenced:
                    writer.pending -= 1
                else:
                    batch.append((writer, item))
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for writer, item in batch:
                        pipe.xadd(writer.key, {"t": item.type, "e": item.data}, id=f"{item.seq}-0")
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the whole batch is lost: every answer in it learns why in drain()
                results = [exc] * len(batch)
            for (writer, _), result in zip(batch, results, strict=True):
                writer.pending -= 1
                if isinstance(result, Exception):
                    writer.fenced = writer.fenced or _is_id_refused(result)
                    writer.error = writer.error or result


def _is_id_refused(error: BaseException) -> bool:
    return isinstance(error, redis.ResponseError) and "equal or smaller" in str(error)


_sinks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sink] = weakref.WeakKeyDictionary()


def _sink() -> _Sink:
    return _per_loop(_sinks, _Sink)


class _Follower:
    """One reader of one answer's stream, fed by the loop's `_Hub`."""

    __slots__ = ("error", "items", "key", "last", "waiter")

    def __init__(self, key: str, last: int) -> None:
        self.key = key
        self.last = last
        self.items: list[Event] = []
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None

    def push(self, item: Event) -> None:
        self.items.append(item)
        self.last = item.seq
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next_batch(self, timeout: float) -> list[Event]:
        """The events received since the last call; empty after `timeout` seconds without any."""
        if not self.items and self.error is None:
            loop = asyncio.get_running_loop()
            self.waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        if self.error is not None:
            raise self.error
        batch, self.items = self.items, []
        return batch


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Hub:
    """Every live reader of an event loop (a web process' sockets and SSE responses) waits in one blocking XREAD
    over all the streams they follow, instead of one XREAD per reader: with hundreds of answers streaming, a
    token costs its reader a dispatch in the loop rather than a Redis round trip of its own.

    A reader whose stream is not in the XREAD under way adds an entry to the hub's own wake-up stream, which
    ends the wait; the next XREAD includes the new stream, read from where that reader stands."""

    BLOCK_MS = 5_000
    # With many streams live, a short pause between reads lets each XREAD (whose arguments name every stream
    # followed) bring back several tokens per stream instead of one: fewer, fuller reads, a few ms later.
    BATCH_FROM_STREAMS = 16
    BATCH_SECONDS = 0.005

    def __init__(self) -> None:
        self.followers: dict[str, set[_Follower]] = {}
        self.wake_key = f"{KEY_PREFIX}wake:{uuid.uuid4().hex}"
        self._wake_last = b"0-0"
        # The XREAD under way: each stream's starting position (the seq after which it reads).
        self._reading: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Task[None] | None = None

    def add(self, follower: _Follower) -> Awaitable[Any] | None:
        """Registers `follower`; returns the wake-up to await when the XREAD under way does not cover it."""
        self.followers.setdefault(follower.key, set()).add(follower)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
            return None
        start = self._reading.get(follower.key)
        if start is not None and start <= follower.last:
            return None  # the read under way covers this reader: it starts at or before the reader's position
        if self._wake is None or self._wake.done():
            # Readers arriving together (a burst of questions) share one wake-up.
            self._wake = loop.create_task(self._send_wake())
        return asyncio.shield(self._wake)

    async def _send_wake(self) -> None:
        async with async_redis().pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, {"w": b"1"}, maxlen=16, approximate=True)
            pipe.expire(self.wake_key, 3600)
            await pipe.execute()

    def remove(self, follower: _Follower) -> None:
        group = self.followers.get(follower.key)
        if group is not None:
            group.discard(follower)
            if not group:
                del self.followers[follower.key]

    async def _run(self) -> None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=self.BLOCK_MS / 1000 + 10,
            socket_keepalive=True, single_connection_client=True, driver_info=None,
        )
        try:
            while self.followers:
                starts = {key: min(f.last for f in group) for key, group in self.followers.items()}
                streams: dict[str, Any] = {self.wake_key: self._wake_last}
                streams.update((key, f"{start}-0") for key, start in starts.items())
                self._reading = starts
                reply = await client.xread(streams, count=1000, block=self.BLOCK_MS)
                self._reading = {}
                for raw_key, entries in reply or ():
                    key = raw_key.decode()
                    if key == self.wake_key:
                        self._wake_last = entries[-1][0]
                        continue
                    # Not a reader that joined behind this read's start: what the read skipped would be lost
                    # to it. The next read starts from where it stands.
                    covered = [follower for follower in self.followers.get(key, ()) if follower.last >= starts[key]]
                    if not covered:
                        continue
                    for entry_id, fields in entries:
                        seq = int(entry_id.split(b"-", 1)[0])
                        item = Event(seq, fields[b"t"].decode(), fields[b"e"].decode())
                        for follower in covered:
                            if seq > follower.last:
                                follower.push(item)
                if reply and len(self.followers) >= self.BATCH_FROM_STREAMS:
                    await asyncio.sleep(self.BATCH_SECONDS)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else ConnectionError("the event reader stopped")
            for group in list(self.followers.values()):
                for follower in group:
                    follower.fail(error)
            self.followers.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            # Nothing is read from here on: before the first await, so that a reader arriving meanwhile starts a
            # new hub task instead of joining one that is ending.
            self._reading = {}
            if self._task is asyncio.current_task():
                self._task = None
            # The connection ends with the hub. A cancelled or failed XREAD leaves it mid-reply; an idle one, kept
            # for the next hub, outlived a loop that closed (asyncio.run, the tests), and collecting it at the
            # interpreter's exit failed with "Event loop is closed".
            with contextlib.suppress(Exception):
                await client.aclose()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub] = weakref.WeakKeyDictionary()


def _hub() -> _Hub:
    return _per_loop(_hubs, _Hub)


async def follow(
    message_id: int,
    *,
    after: int = 0,
    heartbeat: float,
    load_message: Callable[[], Awaitable[Message | None]],
    fresh: bool = False,
) -> AsyncIterator[Event | None]:
    """The answer's events with seq > `after`, live, until `done`; None after every `heartbeat` seconds
    without any. When the stream has expired, the closing events are rebuilt from the saved message.

    `fresh`: the answer was just asked for in this process, so its stream exists (`start` is written before
    the question is accepted): everything is read live, without the first look."""
    client = async_redis()
    key = stream_key(message_id)
    # What is there already, in one look (a missing stream, or one that ended at or before `after`, is noticed
    # at once); then live, through the hub.
    reply, exists = [], True
    if not fresh:
        async with client.pipeline(transaction=False) as pipe:
            pipe.xread({key: f"{after}-0"}, count=1000)
            pipe.xrevrange(key, count=1)
            reply, tail = await pipe.execute()
        exists = bool(tail)
        # The reader has seen the end (a client reconnecting after `done`): nothing will follow. Its seq is
        # checked too: the two reads are not one transaction, and an ending written between them is unread.
        if (not reply and exists and tail[0][1][b"t"] == TERMINAL.encode()
                and int(tail[0][0].split(b"-", 1)[0]) <= after):
            return
    last = after
    while reply:
        entries = reply[0][1]
        for entry_id, fields in entries:
            item = Event(int(entry_id.split(b"-", 1)[0]), fields[b"t"].decode(), fields[b"e"].decode())
            yield item
            if item.type == TERMINAL:
                return
            last = item.seq
        if len(entries) < 1000:
            break
        reply = await client.xread({key: f"{last}-0"}, count=1000)
    if not exists:
        closing = await _closing_from_database(load_message, after=last)
        if closing is not None:
            for item in closing:
                yield item
            return
    hub = _hub()
    follower = _Follower(key, last)
    try:
        wake = hub.add(follower)
        if wake is not None:
            await wake
        while True:
            batch = await follower.next_batch(heartbeat)
            for item in batch:
                yield item
                if item.type == TERMINAL:
                    return
            if not batch:
                # Quiet for a whole heartbeat: the saved answer may be finished although its stream never got
                # the closing events (Redis was down when they were written), or the stream expired.
                closing = await _closing_from_database(load_message, after=follower.last)
                if closing is not None:
                    for item in closing:
                        yield item
                    return
                yield None
    finally:
        hub.remove(follower)


def _renumbered(item: Event, seq: int) -> Event:
    payload = json.loads(item.data)
    del payload["type"], payload["seq"]
    return event(seq, item.type, **payload)


async def _closing_from_database(
    load_message: Callable[[], Awaitable[Message | None]], *, after: int
) -> list[Event] | None:
    """The stream is gone (expired, or not written yet): the closing events rebuilt from the saved answer when
    it is finished (none if it was deleted), None while it is not finished."""
    message = await load_message()
    if message is None:
        return []
    if not message.is_finished:
        return None
    closing = closing_events(message)
    if after > message.last_seq:
        # The reader saw events past the saved end (a worker that stalled past its lease wrote on after the
        # answer was closed): the ending still reaches it, numbered after what it saw.
        return [_renumbered(item, after + n) for n, item in enumerate(closing, start=1)]
    return [item for item in closing if item.seq > after]
