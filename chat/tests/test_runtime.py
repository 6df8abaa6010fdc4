"""The llm worker's machinery (chat.runtime): its Celery pool and the cancel-flag checks of starting answers."""

from __future__ import annotations

import asyncio
import threading

from chat import events
from chat.runtime import Runtime, TaskPool


def test_task_pool_starts_every_thread_before_the_first_task() -> None:
    pool = TaskPool(limit=8)
    pool.start()
    try:
        assert len(pool.executor._threads) == 8
        done = threading.Event()
        pool.apply_async(lambda: done.set())
        assert done.wait(5)
        assert len(pool.executor._threads) == 8
    finally:
        pool.stop()


def test_answers_starting_together_have_their_cancel_flags_read_in_one_command(redis_client) -> None:
    runtime = Runtime()
    flagged, clear = 987_654_321, 987_654_322
    redis_client.set(events.cancel_key(flagged), b"1", ex=60)
    client = runtime.run(_client())
    commands: list[str] = []
    original = client.execute_command

    async def counting(*args, **kwargs):
        commands.append(str(args[0]))
        return await original(*args, **kwargs)

    client.execute_command = counting
    try:
        async def both() -> list[bool]:
            return list(await asyncio.gather(runtime.check_cancelled(flagged), runtime.check_cancelled(clear)))

        assert runtime.run(both()) == [True, False]
        assert commands == ["MGET"]
    finally:
        client.execute_command = original
        redis_client.delete(events.cancel_key(flagged))


async def _client():
    return events.async_redis()
