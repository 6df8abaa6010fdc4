"""chat.events' readers: every reader in a process waits in one shared XREAD (the hub), and each still gets
its own answer's events, from where it stands, in order, without gaps or duplicates."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from chat import events

ROOT = Path(__file__).resolve().parents[2]

# A reader joins the hub and leaves; the next event makes the hub's read return with no one left to read for.
IDLE_HUB = """
import asyncio, contextlib, sys
import django
django.setup()
from chat import events

message_id = int(sys.argv[1])

async def no_message():
    return None

async def main():
    reader = events.follow(message_id, heartbeat=5, load_message=no_message)
    await reader.__anext__()
    waiting = asyncio.ensure_future(reader.__anext__())
    await asyncio.sleep(0.1)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await reader.aclose()
    await asyncio.to_thread(events.append, message_id, [events.event(2, "token", message_id=message_id, text="b")])
    await asyncio.sleep(0.2)
    task = events._hub()._task
    print("hub ended:", task is None or task.done())

asyncio.run(main())
"""


async def _no_message():
    return None


async def _read(message_id: int, *, after: int = 0, fresh: bool = False) -> list[int]:
    seqs = []
    async for item in events.follow(message_id, after=after, heartbeat=5, load_message=_no_message, fresh=fresh):
        if item is not None:
            seqs.append(item.seq)
    return seqs


@pytest.fixture
def message_ids(redis_client):
    base = 900_000_000 + uuid.uuid4().int % 1_000_000 * 100
    ids = [base + i for i in range(20)]
    yield ids
    redis_client.delete(*(events.stream_key(i) for i in ids))


def _write(message_id: int, first: int, last: int, *, done: bool = False) -> None:
    items = [events.event(seq, "token", message_id=message_id, text=f"t{seq}") for seq in range(first, last + 1)]
    if done:
        items.append(events.event(last + 1, "done", message_id=message_id, finish_reason="stop"))
    events.append(message_id, items)


def test_many_readers_of_many_answers_each_get_their_own_events_in_order(message_ids) -> None:
    for message_id in message_ids:
        _write(message_id, 1, 3)

    async def run() -> list[list[int]]:
        readers = [asyncio.create_task(_read(message_id)) for message_id in message_ids]
        readers.append(asyncio.create_task(_read(message_ids[0], after=2)))  # a second reader, further on
        await asyncio.sleep(0.05)  # all of them waiting in the hub now
        for step in range(4, 40, 5):  # tokens 4..43 in eight rounds, then `done` as 44
            for message_id in message_ids:
                await asyncio.to_thread(_write, message_id, step, step + 4, done=step == 39)
            await asyncio.sleep(0.01)
        return await asyncio.wait_for(asyncio.gather(*readers), 10)

    results = asyncio.run(run())

    assert all(seqs == list(range(1, 45)) for seqs in results[:-1])
    assert results[-1] == list(range(3, 45))


def test_fresh_reader_gets_the_answer_from_its_first_event(message_ids) -> None:
    message_id = message_ids[0]
    _write(message_id, 1, 2)

    async def run() -> list[int]:
        reader = asyncio.create_task(_read(message_id, fresh=True))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(_write, message_id, 3, 4, done=True)
        return await asyncio.wait_for(reader, 10)

    assert asyncio.run(run()) == [1, 2, 3, 4, 5]


def test_reader_joining_behind_the_read_under_way_still_gets_every_event(message_ids) -> None:
    # Found in review: a resuming reader (a second tab, a reconnect) could join the hub while its XREAD was already
    # past the reader's position, because another reader of the same answer had moved it on; it missed the gap.
    message_id = message_ids[0]
    _write(message_id, 1, 10)

    async def run() -> tuple[list[int], list[int]]:
        ahead = asyncio.create_task(_read(message_id, after=10))
        await asyncio.sleep(0.05)  # waiting in the hub's XREAD, from 10
        behind = events.follow(message_id, after=3, heartbeat=5, load_message=_no_message)
        seqs = [(await behind.__anext__()).seq]  # its first look (4..10) is under way; it has not joined yet
        await asyncio.to_thread(_write, message_id, 11, 12)
        await asyncio.sleep(0.1)  # the reader ahead got 11 and 12: the hub now reads from 12

        async def finish() -> None:
            await asyncio.sleep(0.1)
            await asyncio.to_thread(_write, message_id, 13, 14, done=True)

        writer = asyncio.create_task(finish())
        async for item in behind:
            if item is not None:
                seqs.append(item.seq)
        await writer
        return seqs, await asyncio.wait_for(ahead, 10)

    behind_seqs, ahead_seqs = asyncio.run(run())

    assert behind_seqs == list(range(4, 16))
    assert ahead_seqs == list(range(11, 16))


def test_reader_joining_behind_gets_nothing_from_the_read_under_way_before_what_it_missed(message_ids) -> None:
    # Found in review: the hub's XREAD from 12 returned with 13 before the joiner's wake-up, and handed 13 to a
    # reader standing at 10, whose position then jumped past 11 and 12.
    message_id = message_ids[0]
    _write(message_id, 1, 12)

    async def run() -> tuple[list[int], list[int]]:
        ahead = asyncio.create_task(_read(message_id, after=12))
        await asyncio.sleep(0.05)  # waiting in the hub's XREAD, from 12
        hub = events._hub()
        behind = events._Follower(events.stream_key(message_id), 10)
        wake = hub.add(behind)
        assert wake is not None  # the read under way does not cover it
        _write(message_id, 13, 13)  # in Redis before the wake-up, whose task has not run yet
        await wake
        seqs: list[int] = []
        while 13 not in seqs:
            batch = await behind.next_batch(5)
            assert batch, "the reader behind got nothing"
            seqs += [item.seq for item in batch]
        hub.remove(behind)
        _write(message_id, 14, 14, done=True)
        return seqs, await asyncio.wait_for(ahead, 10)

    behind_seqs, ahead_seqs = asyncio.run(run())

    assert behind_seqs == [11, 12, 13]
    assert ahead_seqs == [13, 14, 15]


def test_a_hub_left_without_readers_closes_its_connection_and_the_process_exits_cleanly(message_ids) -> None:
    # Kept open for the next reader, the idle hub's connection outlived its closed loop, and the interpreter's
    # exit printed "Exception ignored in: Redis.__del__ ... RuntimeError: Event loop is closed" (seen after test runs).
    message_id = message_ids[0]
    _write(message_id, 1, 1)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run([sys.executable, "-c", IDLE_HUB, str(message_id)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "hub ended: True" in result.stdout
    assert "Exception ignored" not in result.stderr, result.stderr


def test_a_reader_that_saw_events_past_the_saved_end_still_gets_the_ending_after_them() -> None:
    from decimal import Decimal

    from chat.models import Message

    # Saved as closed by the sweep at seq 5 (error 3, citations 4, done 5), while the stalled worker had written
    # tokens 3 to 7 that the reader saw.
    saved = Message(id=42, conversation_id=7, role="assistant", status="done", content="One", finish_reason="error",
                    error_code="interrupted", error_message="Interrupted.", last_seq=5, cost_usd=Decimal(0))

    async def load() -> Message:
        return saved

    past = asyncio.run(events._closing_from_database(load, after=7))
    resumed = asyncio.run(events._closing_from_database(load, after=3))

    assert [(item.seq, item.type) for item in past] == [(8, "error"), (9, "citations"), (10, "done")]
    assert '"seq":10' in past[-1].data.replace(" ", "") and '"content":"One"' in past[-1].data.replace(" ", "")
    assert [(item.seq, item.type) for item in resumed] == [(4, "citations"), (5, "done")]
