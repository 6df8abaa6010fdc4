"""An llm worker process' machinery for streaming answers: one event loop thread for every stream, a few
database threads, and cancellation.

A Celery thread (`-P threads -c 200`) only hands its answer to the loop and waits. On the loop, hundreds of
streams share one provider client (one connection pool) and one Redis client, and cost a coroutine each instead
of a blocking thread fighting for the GIL. Database work (claiming the message, retrieval, the final save) runs on
`CHAT_WORKER_DB_THREADS` threads whose connections persist, so a stream holds no connection while it waits on the
model and a new answer does not pay a fresh Postgres connection (~10 ms here) before its first token.

Cancellation: the edge sets a per-message flag in Redis; one poller per process checks the flags of all the
answers in flight in a single MGET every `CHAT_CANCEL_POLL_SECONDS` and cancels the matching coroutines, whose
provider stream then closes its HTTP response, which is what stops the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from django.conf import settings

from chat import events
from chat.asyncdb import call_tidily

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Runtime:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.db_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.CHAT_WORKER_DB_THREADS), thread_name_prefix="chat-db"
        )
        self._in_flight: dict[int, asyncio.Task[Any]] = {}
        self._cancel_requested: set[int] = set()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), name="chat-llm-loop", daemon=True)
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.create_task(self._poll_cancellations())
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result (from any thread but the loop's)."""
        return self.submit(coro).result()

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking Django code on a database thread."""
        call = functools.partial(call_tidily, fn, *args, **kwargs)
        return await self.loop.run_in_executor(self.db_executor, call)

    def track(self, message_id: int, task: asyncio.Task[Any]) -> None:
        """Make `task` cancellable through the message's Redis flag (call on the loop)."""
        self._in_flight[message_id] = task

    def untrack(self, message_id: int) -> None:
        self._in_flight.pop(message_id, None)
        self._cancel_requested.discard(message_id)

    async def check_cancelled(self, message_id: int) -> bool:
        """Whether the edge flagged the answer before its stream was tracked (the poller covers later flags)."""
        try:
            flagged = await events.async_redis().exists(events.cancel_key(message_id))
        except Exception:
            logger.warning("could not check the cancel flag of answer %s", message_id, exc_info=True)
            return False
        if flagged:
            self._cancel_requested.add(message_id)
        return bool(flagged)

    async def _poll_cancellations(self) -> None:
        while True:
            await asyncio.sleep(settings.CHAT_CANCEL_POLL_SECONDS)
            ids = [mid for mid, task in self._in_flight.items() if not task.done()]
            if not ids:
                continue
            try:
                flags = await events.async_redis().mget([events.cancel_key(mid) for mid in ids])
            except Exception:
                logger.warning("cancellation poll failed", exc_info=True)
                continue
            for message_id, flag in zip(ids, flags, strict=True):
                task = self._in_flight.get(message_id)
                if flag and task is not None and message_id not in self._cancel_requested:
                    self._cancel_requested.add(message_id)
                    task.cancel()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime()
        return _runtime
