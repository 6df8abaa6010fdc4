"""chat.events' readers: every reader in a process waits in one shared XREAD (the hub), and each still gets
its own answer's events, from where it stands, in order, without gaps or duplicates."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chat import events


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
