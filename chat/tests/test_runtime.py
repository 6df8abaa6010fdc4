"""The llm worker's machinery (chat.runtime): its Celery pool, the cancel-flag checks of starting answers, and
its event loop thread when the process exits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

from chat import events
from chat.runtime import Runtime, TaskPool

ROOT = Path(__file__).resolve().parents[2]

# atexit runs its handlers last-registered first: the check registered before the runtime exists runs after
# whatever the runtime registered for itself.
EXIT_CHECK = """
import asyncio
import atexit
import django
django.setup()
from chat import runtime as module

atexit.register(lambda: print("loop thread alive at exit:", module._runtime.thread.is_alive()))
module.get_runtime().run(asyncio.sleep(0))
"""


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
        runtime.close()


async def _client():
    return events.async_redis()


def test_the_loop_thread_is_stopped_before_the_interpreter_finalizes() -> None:
    """A daemon thread left in uvloop crashed the process on exit (SIGSEGV) when a timer fired after the
    interpreter was gone: now and then a worker's shutdown, or the whole test run, ended that way."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run([sys.executable, "-c", EXIT_CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stderr
    assert "loop thread alive at exit: False" in result.stdout


def test_closing_the_runtime_twice_is_harmless() -> None:
    runtime = Runtime()
    runtime.close()
    runtime.close()

    assert not runtime.thread.is_alive()
