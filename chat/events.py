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
import json
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
import redis.asyncio as aioredis
from django.conf import settings

if TYPE_CHECKING:
    from chat.models import Message

KEY_PREFIX = "docent:chat:"
TERMINAL = "done"


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


def event(seq: int, type_: str, **payload: Any) -> Event:
    return Event(seq, type_, json.dumps({"type": type_, "seq": seq, **payload}, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
        events.append(event(seq, "error", message_id=message.id, code=message.error_code,
                            message=message.error_message))
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
            _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30)
        return _sync_client


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def async_redis() -> aioredis.Redis:
    """A client bound to the running event loop (each blocking XREAD holds one of its connections)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            # Longer than any blocking XREAD (`heartbeat` seconds), which would otherwise fail as a read timeout.
            socket_timeout=settings.CHAT_SSE_HEARTBEAT_SECONDS + 10,
            socket_keepalive=True,
            health_check_interval=30,
            max_connections=10_000,
        )
        _async_clients[loop] = client
    return client


def _generation_ttl() -> int:
    # While an answer is generated its stream must outlive the longest allowed task.
    return int(settings.CELERY_TASK_TIME_LIMIT) + settings.CHAT_STREAM_TTL_SECONDS


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
        self._sink = _sink()

    def add(self, item: Event) -> None:
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
            batch, self._queue = self._queue, []
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for writer, item in batch:
                        pipe.xadd(writer.key, {"t": item.type, "e": item.data}, id=f"{item.seq}-0")
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the whole batch is lost: every answer in it learns why in drain()
                results = [exc] * len(batch)
            for (writer, _), result in zip(batch, results, strict=True):
                writer.pending -= 1
                if isinstance(result, Exception) and writer.error is None:
                    writer.error = result


_sinks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sink] = weakref.WeakKeyDictionary()


def _sink() -> _Sink:
    loop = asyncio.get_running_loop()
    sink = _sinks.get(loop)
    if sink is None:
        sink = _sinks[loop] = _Sink()
    return sink


async def follow(
    message_id: int,
    *,
    after: int = 0,
    heartbeat: float,
    load_message: Callable[[], Awaitable[Message | None]],
) -> AsyncIterator[Event | None]:
    """The answer's events with seq > `after`, live, until `done`; None after every `heartbeat` seconds
    without any. When the stream has expired, the closing events are rebuilt from the saved message."""
    client = async_redis()
    key = stream_key(message_id)
    last = f"{after}-0"
    block: int | None = None  # the first read only looks, so a missing stream is noticed at once
    while True:
        if block is None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.xread({key: last}, count=1000)
                pipe.exists(key)
                reply, exists = await pipe.execute()
        else:
            reply = await client.xread({key: last}, count=1000, block=block)
            exists = True
        if reply:
            for entry_id, fields in reply[0][1]:
                item = Event(int(entry_id.split(b"-", 1)[0]), fields[b"t"].decode(), fields[b"e"].decode())
                yield item
                if item.type == TERMINAL:
                    return
            last = entry_id.decode()
            block = max(1, int(heartbeat * 1000))
            continue
        if not exists or (block is not None and not await client.exists(key)):
            message = await load_message()
            if message is None:
                return
            if message.is_finished:
                for item in closing_events(message):
                    if item.seq > after:
                        yield item
                return
        if block is not None:
            yield None
        block = max(1, int(heartbeat * 1000))
