"""The llm worker's side: claim an answer, retrieve, build the prompt, stream the model into the answer's events,
then save and settle it whatever the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection

from accounts.models import User
from billing.limiter import Reservation
from billing.services import llm_heartbeat_async, llm_release, llm_settle
from chat import events
from chat.models import Conversation, Message
from chat.prompting import (
    Prompt,
    Turn,
    build_plain_prompt,
    build_prompt,
    cited_sources,
    count_tokens,
)
from chat.providers import AnswerRequest, Completion, ProviderError, get_provider
from chat.runtime import Runtime, get_runtime
from chat.services.asking import InvalidQuestion
from chat.services.leases import _answer_close_abandoned, _answer_release_lease, _answer_renew_lease
from chat.services.reservations import reservation_load
from chat.services.saving import _answer_fail_before_stream, _answer_save
from documents.selectors import chunk_search

logger = logging.getLogger(__name__)

HISTORY_MESSAGES = 100
_FINISH_REASONS = {"stop", "length"}


@dataclass
class Job:
    message_id: int
    owner_id: int
    conversation_id: int
    model: str
    max_tokens: int
    question: str
    prompt: Prompt
    reservation: Reservation
    request_id: str
    created_at: float  # epoch seconds of the answer row, the start of every latency
    retrieval_ms: int = 0


@dataclass
class Outcome:
    text: str = ""
    seq: int = 1  # last event written
    first_token_at: float | None = None
    cancelled: bool = False
    error: ProviderError | None = None
    completion: Completion = dataclasses.field(default_factory=Completion)


def answer_generate(*, message_id: int) -> None:
    """Answer one pending message (the Celery task's body; safe to run twice, and at once)."""
    runtime = get_runtime()
    runtime.run(_generate(runtime, message_id))


def _lease_beat_seconds() -> float:
    return min(settings.CHAT_SLOT_HEARTBEAT_SECONDS, settings.CHAT_ANSWER_LEASE_SECONDS / 3)


async def _generate(runtime: Runtime, message_id: int) -> None:
    entered = time.time()
    job = await _prepare(runtime, message_id)
    if job is None:
        return
    prepared = time.time()
    stream = asyncio.get_running_loop().create_task(_stream(runtime, job))
    runtime.track(message_id, stream)
    # Recorded while the model starts, for the answer's row and for recovering it after a worker crash.
    record = asyncio.get_running_loop().create_task(runtime.db(
        _answer_record, message_id, prompt_tokens=job.prompt.prompt_tokens, retrieval_ms=job.retrieval_ms,
    ))
    try:
        if await runtime.check_cancelled(message_id):
            stream.cancel()
        # The first beat at once: the answer may have waited in the queue for most of its slot's lifetime. The
        # lease was taken with the claim and renewed by the record; the beats renew it from the second on.
        first_beat, renewed_at, fenced = True, time.monotonic(), False
        while not stream.done():
            if not first_beat:
                try:
                    if await runtime.db(_answer_renew_lease, message_id):
                        renewed_at = time.monotonic()
                    else:
                        # Closed meanwhile as abandoned (this worker stalled past its lease): stop spending on it.
                        logger.warning("answer %s lost its lease; stopping its stream", message_id)
                        stream.cancel()
                except Exception:
                    logger.warning("lease renewal failed for answer %s", message_id, exc_info=True)
                    if time.monotonic() - renewed_at > settings.CHAT_ANSWER_LEASE_SECONDS * 2 / 3:
                        # Stopped before the lease runs out, so that the sweep that will close the answer never
                        # writes its ending beside this worker's tokens; what was streamed is saved as usual.
                        logger.warning("answer %s could not renew its lease; stopping its stream", message_id)
                        stream.cancel()
                        fenced = True
            try:
                if not await llm_heartbeat_async(reservation=job.reservation):
                    logger.warning("answer %s outlived its concurrency slot", message_id)
            except Exception:
                logger.warning("slot heartbeat failed for answer %s", message_id, exc_info=True)
            first_beat = False
            await asyncio.wait({stream}, timeout=_lease_beat_seconds())
    finally:
        runtime.untrack(message_id)
    with contextlib.suppress(Exception):
        await record
    outcome = Outcome(cancelled=True) if stream.cancelled() else stream.result()
    if fenced and outcome.cancelled:  # stopped by this worker, not by its user
        outcome.cancelled = False
        outcome.error = ProviderError("unavailable", "The answer was stopped because the server could not keep "
                                                     "track of it; the part received so far was kept.")
    if outcome.first_token_at is not None:
        logger.debug("answer %s: queued %.1f ms, prepared in %.1f ms (retrieval %s ms), first token %.1f ms later",
                     message_id, (entered - job.created_at) * 1000, (prepared - entered) * 1000,
                     job.retrieval_ms, (outcome.first_token_at - prepared) * 1000)
    try:
        await runtime.db(_answer_finish, job, outcome)
    except Exception:
        logger.exception("could not save answer %s", message_id)
        _close_unsaved(job, outcome)
        # Handing the answer on: the task's next run (or, if the database is still failing, the sweep once the
        # lease runs out) saves what was streamed, as after a worker crash.
        with contextlib.suppress(Exception):
            await runtime.db(_answer_release_lease, message_id)
        raise


async def _prepare(runtime: Runtime, message_id: int) -> Job | None:
    """Claim the answer, search and build the prompt. The search starts before the claim and runs beside it
    (and beside reading the history): it needs only the question, and it is the slow part."""
    head = await runtime.db(_answer_head, message_id)
    if head is None:
        return None
    answer, question, owner_id = head
    retrieval = None
    if question is not None and answer.status == Message.Status.PENDING and answer.retrieval:
        retrieval = asyncio.get_running_loop().create_task(
            runtime.db(_retrieve, owner_id, question.content, answer.document_ids)
        )
    turns = await runtime.db(_answer_claim, answer, question)
    if turns is None:
        if retrieval is not None:
            with contextlib.suppress(Exception):
                await retrieval
        return None
    try:
        if question is None:
            raise InvalidQuestion("The question of this answer is missing.")
        budget = answer.prompt_budget or settings.CHAT_MAX_PROMPT_TOKENS
        if retrieval is None:  # the caller turned retrieval off
            retrieval_ms = 0
            prompt = await runtime.db(
                build_plain_prompt, question=question.content, history=turns, budget=budget,
                question_tokens=question.content_tokens, instructions=answer.instructions,
            )
        else:
            hits, retrieval_ms = await retrieval
            prompt = await runtime.db(
                build_prompt, question=question.content, hits=hits, history=turns, budget=budget,
                context_budget=settings.CHAT_CONTEXT_TOKENS, question_tokens=question.content_tokens,
                instructions=answer.instructions,
            )
    except Exception:
        logger.exception("could not prepare answer %s", message_id)
        try:
            await runtime.db(_answer_fail_before_stream, answer, code="retrieval_failed",
                             text="Searching your documents failed; please try again.")
        except Exception:
            with contextlib.suppress(Exception):  # the task's next run closes it (see _generate)
                await runtime.db(_answer_release_lease, message_id)
            raise
        return None
    return Job(
        message_id=answer.id,
        owner_id=owner_id,
        conversation_id=answer.conversation_id,
        model=answer.model,
        max_tokens=answer.max_tokens,
        question=question.content,
        prompt=prompt,
        reservation=reservation_load(answer.reservation),
        request_id=answer.request_id,
        created_at=answer.created_at.timestamp(),
        retrieval_ms=retrieval_ms,
    )


def _close_unsaved(job: Job, outcome: Outcome) -> None:
    """The answer could not be saved: still end its stream, so that nobody waits forever."""
    with contextlib.suppress(Exception):
        seq = outcome.seq
        closing = [events.event(seq + 1, "error", message_id=job.message_id, code="save_failed",
                                message="The answer could not be saved; please ask again."),
                   events.event(seq + 2, "citations", message_id=job.message_id, citations=[]),
                   events.event(seq + 3, "done", message_id=job.message_id, finish_reason="error",
                                usage={"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": "0"},
                                content=outcome.text)]
        events.append(job.message_id, closing, final=True)


async def _stream(runtime: Runtime, job: Job) -> Outcome:
    outcome = Outcome()
    writer = events.EventWriter(job.message_id)
    parts: list[str] = []
    seq = 1
    request = AnswerRequest(model=job.model, messages=job.prompt.messages, max_tokens=job.max_tokens,
                            question=job.question, sources=job.prompt.sources)
    try:
        provider = get_provider()
        # A model that keeps its connection alive without finishing (keep-alive comments, a hung server) would
        # otherwise hold the answer, its slot and its reservation for as long as it likes.
        async with asyncio.timeout(settings.CHAT_ANSWER_MAX_SECONDS), \
                contextlib.aclosing(provider.stream(request, outcome.completion)) as deltas:
            async for text in deltas:
                seq += 1
                parts.append(text)
                writer.add(events.event(seq, "token", message_id=job.message_id, text=text))
                if outcome.first_token_at is None:
                    outcome.first_token_at = time.time()
                    # Off to Redis now: the model often sends more tokens in the same read, and the writer's
                    # flush would otherwise wait until they are all parsed (0.8 ms of a first token here).
                    await asyncio.sleep(0)
    except asyncio.CancelledError:
        outcome.cancelled = True
    except TimeoutError:
        minutes = settings.CHAT_ANSWER_MAX_SECONDS / 60
        outcome.error = ProviderError("timeout", f"The model took longer than {minutes:g} minutes and was stopped; "
                                                 "the part received so far was kept.")
    except ProviderError as exc:
        outcome.error = exc
    except Exception as exc:
        logger.exception("provider failed for answer %s", job.message_id)
        outcome.error = ProviderError("provider_error", f"The language model failed: {exc}")
    finally:
        runtime.untrack(job.message_id)
    outcome.text, outcome.seq = "".join(parts), seq
    while True:
        try:
            await writer.drain()
            break
        except asyncio.CancelledError:
            continue  # a cancel that raced the end of the stream: the answer is already complete
        except Exception as exc:
            logger.exception("could not write events of answer %s", job.message_id)
            outcome.error = outcome.error or ProviderError("unavailable", f"The answer could not be delivered: {exc}")
            break
    return outcome


_HEAD_SQL = """
SELECT m.*, c.owner_id AS owner_id
FROM {message} m JOIN {conversation} c ON c.id = m.conversation_id
WHERE m.conversation_id = (SELECT conversation_id FROM {message} WHERE id = %s) AND m.id <= %s
ORDER BY m.id DESC
LIMIT 2
"""


def _answer_head(message_id: int) -> tuple[Message, Message | None, int] | None:
    """The answer, the question before it and their owner's id. Hand-written SQL: compiling the equivalent
    queryset costs more CPU than running it, for every answer of a busy worker."""
    sql = _HEAD_SQL.format(message=Message._meta.db_table, conversation=Conversation._meta.db_table)
    rows = list(Message.objects.raw(sql, [message_id, message_id]))
    if not rows or rows[0].id != message_id or rows[0].role != Message.Role.ASSISTANT:
        return None
    question = rows[1] if len(rows) > 1 and rows[1].role == Message.Role.USER else None
    return rows[0], question, rows[0].owner_id


_CLAIM_SQL = """
UPDATE {message} SET status = %s, lease_until = now() + make_interval(secs => %s)
WHERE id = %s AND status = %s AND set_config('synchronous_commit', 'off', true) IS NOT NULL
"""

_RECORD_SQL = """
UPDATE {message} SET prompt_tokens = %s, retrieval_ms = %s, lease_until = now() + make_interval(secs => %s)
WHERE id = %s AND status = %s AND set_config('synchronous_commit', 'off', true) IS NOT NULL
"""

_HISTORY_SQL = """
SELECT role, content, content_tokens, status FROM {message}
WHERE conversation_id = %s AND id < %s
ORDER BY id DESC
LIMIT %s
"""


def _answer_claim(answer: Message, question: Message | None) -> list[Turn] | None:
    """Take the answer (pending -> streaming, with a lease) and read the history before its question; None when
    a cancel or another delivery of the task got there first. An answer left streaming by a worker that is gone
    (its lease ran out) is closed with what it streamed; one whose worker still renews its lease is left to it.

    Hand-written SQL, as for the head: every answer of a burst of questions pays this on the worker's one
    core. The claim is one statement, its own transaction, whose commit is relaxed as _relaxed_commit's are
    (set_config(..., true) is SET LOCAL) without the round trips of an explicit transaction."""
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        lease = settings.CHAT_ANSWER_LEASE_SECONDS
        cursor.execute(_CLAIM_SQL.format(message=table),
                       [Message.Status.STREAMING, lease, answer.id, Message.Status.PENDING])
        claimed = cursor.rowcount
        if claimed and question is not None:
            try:
                cursor.execute(_HISTORY_SQL.format(message=table),
                               [answer.conversation_id, question.id, HISTORY_MESSAGES])
                recent = cursor.fetchall()
            except Exception:
                with contextlib.suppress(Exception):  # claimed by this run: the task's next run closes it
                    _answer_release_lease(answer.id)
                raise
    if not claimed:
        _answer_close_abandoned(answer.id)
        return None
    if question is None:
        return []
    return [
        Turn(role=role, content=content, tokens=tokens)
        for role, content, tokens, status in reversed(recent)
        if status == Message.Status.DONE and content
    ]


def _answer_record(message_id: int, *, prompt_tokens: int, retrieval_ms: int) -> None:
    """The prompt's size (what settling an answer interrupted by a worker crash charges) and the retrieval time,
    written while the model starts. Relaxed like the claim: as an ordinary commit it waited for a WAL flush,
    2.2 ms on average over a burst of 200 questions here, holding one of the worker's database threads while
    the kernel's writeback kept a core busy. Only a crash of Postgres itself, within a fraction of a second,
    can lose it, not a crash of the worker."""
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_SQL.format(message=Message._meta.db_table),
                       [prompt_tokens, retrieval_ms, settings.CHAT_ANSWER_LEASE_SECONDS, message_id,
                        Message.Status.STREAMING])


def _retrieve(owner_id: int, question: str, document_ids: list[int]) -> tuple[list[Any], int]:
    # The search needs only the owner's id: reading the whole row first (~1 ms) would delay every first token.
    owner = User(pk=owner_id)
    started = time.perf_counter()
    result = chunk_search(user=owner, query=question, k=settings.CHAT_RETRIEVAL_K, document_ids=document_ids or None)
    return result.hits, round((time.perf_counter() - started) * 1000)


def _answer_finish(job: Job, outcome: Outcome) -> None:
    text = outcome.text
    usage = outcome.completion.usage
    prompt_tokens = usage.prompt_tokens if usage else job.prompt.prompt_tokens
    completion_tokens = usage.completion_tokens if usage else count_tokens(text)
    finished_at = time.time()
    total_ms = round((finished_at - job.created_at) * 1000)
    cost = Decimal(0)
    try:
        if text or usage:
            # Billing needs only the owner's key: no read of the user's row for it.
            record = llm_settle(reservation=job.reservation, user=User(pk=job.owner_id), model=job.model,
                                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                latency_ms=total_ms, request_id=job.request_id, message_id=job.message_id,
                                kind="chat")
            cost = record.cost
        else:
            # Nothing was generated (cancelled or failed before the first token): nothing is charged.
            prompt_tokens = completion_tokens = 0
            llm_release(reservation=job.reservation)
    except Exception:
        logger.exception("could not settle answer %s", job.message_id)
    if outcome.cancelled:
        finish_reason = Message.FinishReason.CANCELLED
    elif outcome.error is not None:
        finish_reason = Message.FinishReason.ERROR
    else:
        reported = outcome.completion.finish_reason or "stop"
        finish_reason = reported if reported in _FINISH_REASONS else Message.FinishReason.STOP
    error = (outcome.error.code, outcome.error.message) if outcome.error is not None and not outcome.cancelled else None
    citations = [source.citation() for source in cited_sources(text, job.prompt.sources)] if text else []
    _answer_save(
        Message(id=job.message_id, conversation_id=job.conversation_id, model=job.model),
        question=job.question,
        content=text,
        finish_reason=finish_reason,
        error=error,
        citations=citations,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        seq=outcome.seq,
        first_token_ms=(
            round((outcome.first_token_at - job.created_at) * 1000) if outcome.first_token_at else None
        ),
        total_ms=total_ms,
        retry_after=outcome.error.retry_after if error else None,
    )


def warm_up() -> None:
    """Start the worker runtime and build the process-wide clients and models ahead of the first answer."""
    runtime = get_runtime()

    async def touch() -> None:
        get_provider()
        await events.async_redis().ping()

    try:
        runtime.run(touch())
        from documents.embedding import get_embedder

        runtime.db_executor.submit(lambda: get_embedder().embed_query("warm up")).result()
    except Exception:
        logger.warning("warming up the llm worker failed", exc_info=True)
