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
import atexit
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from celery.concurrency.thread import TaskPool as ThreadTaskPool
from django.conf import settings

from chat import events
from chat.asyncdb import call_tidily

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    # uvloop (installed with uvicorn[standard]) runs each callback, socket read and timer for a fraction of
    # the CPU of the pure-Python loop, and this loop wakes for every token of every answer in flight.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime:
    def __init__(self) -> None:
        self.loop = _new_event_loop()
        self.db_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.CHAT_WORKER_DB_THREADS), thread_name_prefix="chat-db"
        )
        self._in_flight: dict[int, asyncio.Task[Any]] = {}
        self._cancel_requested: set[int] = set()
        self._checks: list[tuple[int, asyncio.Future[bool]]] = []
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), name="chat-llm-loop", daemon=True)
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.create_task(self._poll_cancellations())
        self.loop.run_forever()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait for its thread. Left running into the interpreter's finalization, the daemon
        thread crashed the process on exit (SIGSEGV) whenever one of uvloop's timers fired: its callback takes
        the GIL of an interpreter that is gone."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop)
            self.thread.join(timeout)

    def _stop(self) -> None:
        # Cancelled first, so that no task is left pending for the garbage collector to complain about.
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.call_soon(self.loop.stop)

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
        """Whether the edge flagged the answer before its stream was tracked (the poller covers later flags).

        Answers that start together (a burst of questions) share one MGET: one command and one connection,
        where one EXISTS each would open as many connections as there are answers starting."""
        waiter = self.loop.create_future()
        self._checks.append((message_id, waiter))
        if len(self._checks) == 1:
            self.loop.create_task(self._check_flags())
        flagged = await waiter
        if flagged:
            self._cancel_requested.add(message_id)
        return flagged

    async def _check_flags(self) -> None:
        checks, self._checks = self._checks, []
        try:
            flags = await events.async_redis().mget([events.cancel_key(mid) for mid, _ in checks])
        except Exception:
            logger.warning("could not check the cancel flags of %d answers", len(checks), exc_info=True)
            flags = [None] * len(checks)
        for (_, waiter), flag in zip(checks, flags, strict=True):
            if not waiter.done():
                waiter.set_result(bool(flag))

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
            # Runs after Python has joined the non-daemon threads (Celery finishes its tasks before that).
            atexit.register(_runtime.close)
        return _runtime


class TaskPool(ThreadTaskPool):
    """Celery's threads pool for the llm worker, with all its threads started up front (`-P custom` with
    CELERY_CUSTOM_WORKER_POOL=chat.runtime:TaskPool, as runstack and docker-compose start it).

    ThreadPoolExecutor starts a thread the first time every thread is busy, and Thread.start() waits until the
    new thread runs. In a burst of questions the worker's consumer paid that wait, under a GIL contended by the
    answers already streaming, for each task up to the concurrency: tasks sat for seconds in the prefetch buffer.
    A Celery thread only hands its answer to the event loop and waits, so idle threads cost nothing but memory."""

    def on_start(self) -> None:
        super().on_start()
        # Bounded: a thread that cannot start breaks the barrier for all instead of leaving them waiting forever.
        started = threading.Barrier(self.limit + 1, timeout=60)
        for _ in range(self.limit):
            self.executor.submit(started.wait)
        started.wait()
