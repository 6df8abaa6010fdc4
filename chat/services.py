"""Asking, answering and cancelling.

The edge (`chat_ask`, from a WebSocket consumer or an API view) validates, reserves the worst-case tokens with
billing, saves the question and an empty answer, writes the `start` event and enqueues the answer on the `llm`
queue after commit. It never calls the model. The llm worker (`answer_generate`) claims the answer, retrieves,
builds the prompt, streams the model's deltas into the answer's Redis event stream, then saves the answer and
settles the reservation, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from accounts.models import User
from billing.limiter import LimiterConfig, Limits, Reservation
from billing.selectors import model_limits
from billing.services import llm_heartbeat_async, llm_release, llm_reserve, llm_settle
from chat import events
from chat.models import Conversation, Message
from chat.prompting import (
    Prompt,
    Turn,
    build_plain_prompt,
    build_prompt,
    cited_sources,
    count_tokens,
    fixed_cost,
    prompt_bound,
)
from chat.providers import AnswerRequest, Completion, ProviderError, get_provider
from chat.runtime import Runtime, get_runtime
from chat.selectors import message_get
from documents.selectors import chunk_search, document_list

logger = logging.getLogger(__name__)

TITLE_CHARS = 80
HISTORY_MESSAGES = 100
_FINISH_REASONS = {"stop", "length"}


class ChatError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidQuestion(ChatError):
    code = "invalid_question"


class InvalidDocuments(ChatError):
    code = "invalid_documents"


class NotCancellable(ChatError):
    code = "not_cancellable"


def _relaxed_commit(*, conversation_id: int | None = None) -> None:
    """Inside a transaction on the first-token path: commit without waiting for the WAL flush (~4 ms here).

    A Postgres crash may then lose the last fraction of a second of such commits, never corrupt anything;
    the ledger (billing) and the final save of an answer keep synchronous commits.

    With `conversation_id`, also hold that conversation's lock until the commit, in the same round trip:
    questions asked at once in one conversation (two tabs, parallel API calls) are then stored one after the
    other, so that an answer's row always follows its own question's, which is how the worker finds it."""
    sql = "SET LOCAL synchronous_commit TO OFF"
    if conversation_id is not None:
        # The one-key form: a lock space apart from ingestion's two-key document locks.
        sql += f"; SELECT pg_advisory_xact_lock({int(conversation_id)}::bigint)"
    with connection.cursor() as cursor:
        cursor.execute(sql)


def conversation_create(*, user: User, title: str = "") -> Conversation:
    return Conversation.objects.create(owner=user, title=title[:TITLE_CHARS])


def conversation_delete(*, conversation: Conversation) -> None:
    """Deletes the conversation and its messages; answers still streaming are cancelled first."""
    for message_id in conversation.messages.filter(
        role=Message.Role.ASSISTANT, status__in=[Message.Status.PENDING, Message.Status.STREAMING]
    ).values_list("id", flat=True):
        with contextlib.suppress(Exception):
            message_cancel(user=conversation.owner, message_id=message_id)
    conversation.delete()


def _title(question: str) -> str:
    line = " ".join(question.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rsplit(" ", 1)[0] + "…"


def _document_ids(user: User, document_ids: list[Any] | None) -> list[int]:
    if not document_ids:
        return []
    if not isinstance(document_ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in document_ids
    ):
        raise InvalidDocuments("document_ids must be a list of document ids.")
    wanted = sorted(set(document_ids))
    found = set(document_list(user=user).filter(id__in=wanted).values_list("id", flat=True))
    missing = [i for i in wanted if i not in found]
    if missing:
        raise InvalidDocuments(f"No such document: {', '.join(map(str, missing))}.")
    return wanted


_RESERVATION_TYPES = {cls.__name__: cls for cls in (Reservation, Limits, LimiterConfig)}


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__datetime__" in value:
            return datetime.fromisoformat(value["__datetime__"])
        cls = _RESERVATION_TYPES[value["__type__"]]
        return cls(**{name: _from_json(item) for name, item in value.items() if name != "__type__"})
    if isinstance(value, list):
        return tuple(_from_json(item) for item in value)
    return value


def reservation_dump(reservation: Reservation) -> dict[str, Any]:
    """The limiter reservation as JSON, stored on the answer row for the worker that settles it."""
    return _to_json(reservation)


def reservation_load(data: dict[str, Any]) -> Reservation:
    return _from_json(data)


@dataclass(frozen=True)
class Budget:
    model: str
    max_tokens: int
    prompt_budget: int


_LIMITS_TTL_SECONDS = 30.0
_limits_cache: dict[str, tuple[float, tuple[int, int]]] = {}


def _model_limits(model: str) -> tuple[int, int]:
    # Context windows change when an admin edits a price row: half a minute of staleness spares a query per ask.
    cached = _limits_cache.get(model)
    now = time.monotonic()
    if cached is None or now - cached[0] > _LIMITS_TTL_SECONDS:
        cached = (now, model_limits(model=model))
        _limits_cache[model] = cached
    return cached[1]


def _budget(model: str, *, max_tokens: int | None = None, fixed: int) -> Budget:
    """Room for the answer and the prompt inside the model's window. `fixed` is what every prompt of this ask
    costs before history and context; an explicit `max_tokens` that leaves it no room is refused."""
    window, default_max = _model_limits(model)
    floor = fixed + 64  # and a little history or context
    if max_tokens is not None and max_tokens > window - floor:
        raise InvalidQuestion(f"max_tokens is too large: {model} has a context window of {window} tokens and "
                              f"this prompt needs at least {floor}, leaving room for at most {window - floor}.")
    max_tokens = max_tokens or settings.CHAT_MAX_TOKENS or default_max or 1024
    max_tokens = max(1, min(max_tokens, window - floor))
    return Budget(model=model, max_tokens=max_tokens,
                  prompt_budget=min(settings.CHAT_MAX_PROMPT_TOKENS, window - max_tokens))


def is_storable_text(text: str) -> bool:
    """Whether Postgres can store `text` and the tokenisers read it: no NUL, no unpaired surrogate (which a JSON
    escape can still carry in)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _clean_question(question: Any) -> str:
    question = question.strip() if isinstance(question, str) else ""
    if not question:
        raise InvalidQuestion("Type a question first.")
    if not is_storable_text(question):
        raise InvalidQuestion(
            "The question contains a NUL character or an unpaired surrogate; remove it and ask again."
        )
    if len(question) > settings.CHAT_MAX_QUESTION_CHARS:
        raise InvalidQuestion(f"Questions are limited to {settings.CHAT_MAX_QUESTION_CHARS} characters.")
    return question


def chat_ask(
    *,
    user: User,
    question: str,
    conversation: Conversation | None = None,
    document_ids: list[int] | None = None,
) -> Message:
    """Save the question and an empty answer, and have an llm worker answer it. Returns the answer message.

    `conversation` must be the user's (the caller got it through `conversation_get`); None starts a new one.
    Raises billing's LimitExceeded / ModelNotAllowed before saving anything, InvalidQuestion, InvalidDocuments.
    """
    return _ask(user=user, question=_clean_question(question), conversation=conversation,
                document_ids=document_ids)


def completion_ask(
    *,
    user: User,
    question: str,
    history: Sequence[tuple[str, str]] = (),
    instructions: Sequence[str] = (),
    model: str | None = None,
    max_tokens: int | None = None,
    retrieval: bool = True,
    document_ids: list[int] | None = None,
) -> Message:
    """An OpenAI-style completion: the caller's conversation (`history` of (role, text), then `question`) saved
    as a new conversation and its question answered like any chat question, with the caller's model,
    `max_tokens` and system messages (`instructions`, sent after Docent's own rules). Without `retrieval` the
    model gets the caller's messages as they are, with no documents and no Docent prompt.

    Raises what `chat_ask` raises, before anything is saved or charged."""
    question = _clean_question(question)
    if not retrieval and document_ids:
        raise InvalidDocuments("document_ids restricts retrieval; it cannot be combined with retrieval off.")
    turns = [(role, text, count_tokens(text)) for role, text in history if text.strip()]
    return _ask(user=user, question=question, history=turns, instructions=[t for t in instructions if t.strip()],
                model=model, max_tokens=max_tokens, retrieval=retrieval, document_ids=document_ids)


def _ask(
    *,
    user: User,
    question: str,
    conversation: Conversation | None = None,
    history: Sequence[tuple[str, str, int]] = (),
    instructions: Sequence[str] = (),
    model: str | None = None,
    max_tokens: int | None = None,
    retrieval: bool = True,
    document_ids: list[int] | None = None,
) -> Message:
    chosen = _document_ids(user, document_ids)
    question_tokens = count_tokens(question)
    fixed = fixed_cost(question_tokens, instructions=instructions, retrieval=retrieval)
    budget = _budget(model or settings.LLM_MODEL, max_tokens=max_tokens, fixed=fixed)
    if fixed > budget.prompt_budget:
        raise InvalidQuestion(f"This question is too long for the model ({fixed} prompt tokens; at most "
                              f"{budget.prompt_budget}).")
    # The worst case: a new conversation holds only the history given here; an existing one may fill the whole
    # budget (counting its history here would cost a query on every ask, and settling corrects the charge anyway).
    estimate = (
        prompt_bound(question_tokens=question_tokens, history=[tokens for _, _, tokens in history],
                     budget=budget.prompt_budget, context_budget=settings.CHAT_CONTEXT_TOKENS,
                     instructions=instructions, retrieval=retrieval)
        if conversation is None
        else budget.prompt_budget
    )
    request_id = f"chat-{uuid.uuid4().hex}"
    reservation = llm_reserve(user=user, model=budget.model, prompt_tokens=estimate, max_tokens=budget.max_tokens,
                              request_id=request_id, stream=True)
    try:
        with transaction.atomic():
            _relaxed_commit(conversation_id=conversation.id if conversation is not None else None)
            if conversation is None:
                conversation = Conversation.objects.create(owner=user, title=_title(question))
            earlier = [Message(conversation=conversation, role=role, content=text, content_tokens=tokens,
                               status=Message.Status.DONE) for role, text, tokens in history]
            asked = Message(conversation=conversation, role=Message.Role.USER, content=question,
                            content_tokens=question_tokens, status=Message.Status.DONE)
            answer = Message(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.PENDING,
                document_ids=chosen,
                instructions=list(instructions),
                retrieval=retrieval,
                model=budget.model,
                max_tokens=budget.max_tokens,
                prompt_budget=estimate,
                request_id=request_id,
                reservation=reservation_dump(reservation),
                lease_until=timezone.now() + timedelta(seconds=settings.CHAT_ANSWER_QUEUE_SECONDS),
            )
            # Without history, a VALUES row each: Django sends several rows as UNNEST arrays, a form for big
            # batches that cost 1.6-2.1 ms here for a question and its answer, against 1.0-1.3 ms.
            Message.objects.bulk_create([*earlier, asked, answer], batch_size=None if earlier else 1)
            transaction.on_commit(lambda: _dispatch(answer))
    except BaseException:
        with contextlib.suppress(Exception):
            llm_release(reservation=reservation)
        raise
    return answer


def _dispatch(answer: Message) -> None:
    from chat.tasks import generate_answer

    try:
        # `start` goes in before the task exists, so the worker's first token can never precede it.
        events.append(answer.id, [events.start_event(answer)])
        generate_answer.delay(answer.id)
    except Exception:
        logger.exception("could not enqueue answer %s", answer.id)
        with contextlib.suppress(Exception):
            _finish_without_tokens(answer.id, error=("unavailable", "The answer could not be queued; try again."))


def message_cancel(*, user: User, message_id: int) -> Message:
    """Stop an answer: the worker closes the model's stream within a second and keeps the partial text.

    An answer no worker has claimed yet is finished here; a finished one is returned unchanged."""
    message = message_get(user=user, message_id=message_id)
    if message.role != Message.Role.ASSISTANT:
        raise NotCancellable("Only answers can be cancelled.")
    if message.status == Message.Status.PENDING:
        finished = _finish_without_tokens(message.id, cancelled=True)
        if finished is not None:
            return finished
        message.refresh_from_db()
    if message.status == Message.Status.STREAMING:
        events.request_cancel(message.id)
    return message


def _finish_without_tokens(
    message_id: int, *, cancelled: bool = False, error: tuple[str, str] | None = None
) -> Message | None:
    """Finish a still-pending answer (never claimed by a worker) and release its reservation."""
    now = timezone.now()
    last_seq = 1 + (3 if error else 2)  # after `start`: [error,] citations, done
    updated = Message.objects.filter(id=message_id, status=Message.Status.PENDING).update(
        status=Message.Status.DONE,
        finish_reason=Message.FinishReason.CANCELLED if cancelled else Message.FinishReason.ERROR,
        error_code=error[0] if error else "",
        error_message=error[1] if error else "",
        last_seq=last_seq,
        completed_at=now,
    )
    if not updated:
        return None
    message = Message.objects.get(id=message_id)
    if message.reservation:
        with contextlib.suppress(Exception):
            llm_release(reservation=reservation_load(message.reservation))
    events.append(message.id, events.closing_events(message), final=True)
    return message


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


def _lease_from_now(seconds: float) -> Any:
    # The database's clock, not this process's: every worker and the sweep compare leases against the same one.
    return Now() + timedelta(seconds=seconds)


def _lease_expired() -> Q:
    # No lease at all: asked or claimed by a version from before leases, whose workers may still be streaming
    # it during a deploy; presumed lost only once no answer could still be streaming.
    legacy_cutoff = timedelta(seconds=settings.CHAT_ANSWER_MAX_SECONDS + settings.CHAT_ANSWER_LEASE_SECONDS)
    return Q(lease_until__lt=Now()) | Q(lease_until__isnull=True, created_at__lt=Now() - legacy_cutoff)


def _answer_renew_lease(message_id: int) -> bool:
    return bool(Message.objects.filter(id=message_id, status=Message.Status.STREAMING)
                .update(lease_until=_lease_from_now(settings.CHAT_ANSWER_LEASE_SECONDS)))


def _answer_release_lease(message_id: int) -> None:
    Message.objects.filter(id=message_id, status=Message.Status.STREAMING).update(lease_until=Now())


def _answer_close_abandoned(message_id: int) -> bool:
    """Close an answer left streaming by a worker that is gone, with what it streamed; False when it is not
    streaming, or its worker's lease is live. Taking the lease first makes one closer win when the sweep and a
    second delivery of the task find it at once."""
    streaming = Message.objects.filter(_lease_expired(), id=message_id, status=Message.Status.STREAMING)
    if not streaming.update(lease_until=_lease_from_now(settings.CHAT_ANSWER_LEASE_SECONDS)):
        return False
    current = Message.objects.select_related("conversation__owner").filter(id=message_id).first()
    if current is None or current.status != Message.Status.STREAMING:
        return False
    _answer_interrupted(current)
    return True


@dataclass(frozen=True)
class Recovery:
    requeued: list[int]  # pending answers sent to the queue again
    given_up: list[int]  # pending answers no worker took within CHAT_ANSWER_GIVE_UP_SECONDS, closed with an error
    closed: list[int]  # streaming answers whose worker was gone, closed with what they streamed


def answers_recover_stuck(*, limit: int = 1000) -> Recovery:
    """Finish what a lost broker message or a killed worker left unfinished (run periodically).

    A pending answer whose lease ran out is sent again (a duplicate of a message still queued is harmless: the
    claim lets one run through) and gets a new lease, so that a backlog is not re-sent on every sweep; one still
    pending after CHAT_ANSWER_GIVE_UP_SECONDS is closed with an error instead (its asker has long stopped
    waiting, and its reservation is released). A streaming answer whose lease ran out is closed with the tokens
    its stream holds, and billed for them."""
    unfinished = Message.objects.filter(_lease_expired(), role=Message.Role.ASSISTANT)
    too_old = Now() - timedelta(seconds=settings.CHAT_ANSWER_GIVE_UP_SECONDS)
    given_up = []
    for answer_id in unfinished.filter(status=Message.Status.PENDING, created_at__lt=too_old) \
            .values_list("id", flat=True)[:limit]:
        if _finish_without_tokens(answer_id, error=("unavailable", "No worker could take this question in time; "
                                                                   "please ask again.")):
            given_up.append(answer_id)
    with transaction.atomic():
        requeued = list(unfinished.filter(status=Message.Status.PENDING).select_for_update(skip_locked=True)
                        .only("id", "conversation_id", "model")[:limit])
        requeued_ids = [answer.id for answer in requeued]
        Message.objects.filter(id__in=requeued_ids).update(
            lease_until=_lease_from_now(settings.CHAT_ANSWER_QUEUE_SECONDS))
        for answer in requeued:
            transaction.on_commit(functools.partial(_send_again, answer), robust=True)
    closed = []
    for answer_id in unfinished.filter(status=Message.Status.STREAMING).values_list("id", flat=True)[:limit]:
        try:
            if _answer_close_abandoned(answer_id):
                closed.append(answer_id)
        except Exception:
            logger.exception("could not close abandoned answer %s", answer_id)
    if requeued or given_up or closed:
        logger.warning("stuck answers: sent %s again, gave up %s, closed %s", requeued_ids, given_up, closed)
    return Recovery(requeued=requeued_ids, given_up=given_up, closed=closed)


def _send_again(answer: Message) -> None:
    from chat.tasks import generate_answer

    # A web process that died between its commit and its dispatch left no `start`, without which readers
    # ignore the tokens that follow.
    if not events.redis_client().exists(events.stream_key(answer.id)):
        events.append(answer.id, [events.start_event(answer)])
    generate_answer.delay(answer.id)


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


def _answer_fail_before_stream(message: Message, *, code: str, text: str) -> None:
    with contextlib.suppress(Exception):
        llm_release(reservation=reservation_load(message.reservation))
    _answer_save(message, content="", finish_reason=Message.FinishReason.ERROR, error=(code, text), citations=[],
                 prompt_tokens=0, completion_tokens=0, cost=Decimal(0), seq=1)


def _answer_interrupted(message: Message) -> None:
    key = events.stream_key(message.id)
    entries = events.redis_client().xrange(key)
    parts, seq, ended = [], 1, False
    error = ("interrupted", "The answer was interrupted by a server restart; please ask again.")
    for entry_id, fields in entries:
        if fields[b"t"] == b"token":
            seq = int(entry_id.split(b"-", 1)[0])
            parts.append(json.loads(fields[b"e"])["text"])
        elif fields[b"t"] == b"error":  # the stream was closed but the save was lost: saved as its readers saw it
            closed = json.loads(fields[b"e"])
            error = (closed["code"], closed["message"])
        ended = ended or fields[b"t"] == b"done"
    text = "".join(parts)
    reservation = reservation_load(message.reservation)
    cost = Decimal(0)
    completion_tokens = count_tokens(text) if text else 0
    try:
        if text:  # idempotent per request id: a settle that did happen before the crash is not repeated
            record = llm_settle(reservation=reservation, user=message.conversation.owner, model=message.model,
                                prompt_tokens=message.prompt_tokens, completion_tokens=completion_tokens,
                                latency_ms=0, request_id=message.request_id, message_id=message.id, kind="chat")
            cost = record.cost
        else:
            llm_release(reservation=reservation)
    except Exception:
        logger.exception("could not settle interrupted answer %s", message.id)
    _answer_save(message, content=text, finish_reason=Message.FinishReason.ERROR, error=error, citations=[],
                 prompt_tokens=message.prompt_tokens if text else 0, completion_tokens=completion_tokens, cost=cost,
                 seq=seq, emit=not ended)


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
    )


_ANSWER_FIELDS = [
    "content", "content_tokens", "status", "finish_reason", "error_code", "error_message", "citations",
    "prompt_tokens", "completion_tokens", "cost_usd", "first_token_ms", "total_ms", "last_seq", "completed_at",
]


def _answer_save(
    message: Message,
    *,
    question: str = "",
    content: str,
    finish_reason: str,
    error: tuple[str, str] | None,
    citations: list[dict[str, Any]],
    prompt_tokens: int,
    completion_tokens: int,
    cost: Decimal,
    seq: int,
    first_token_ms: int | None = None,
    total_ms: int | None = None,
    emit: bool = True,
) -> None:
    message.content = content
    # Counted with the same tokenizer as the prompt budget, whatever the provider reported.
    message.content_tokens = count_tokens(content) if content else 0
    message.status = Message.Status.DONE
    message.finish_reason = finish_reason
    message.error_code, message.error_message = error or ("", "")
    message.citations = citations
    message.prompt_tokens = prompt_tokens
    message.completion_tokens = completion_tokens
    message.cost_usd = cost
    message.first_token_ms = first_token_ms
    message.total_ms = total_ms
    message.last_seq = seq + (3 if error else 2)
    message.completed_at = timezone.now()
    # Only while streaming: an answer closed meanwhile as abandoned (its worker stalled past its lease) keeps
    # that ending, and its readers get one set of closing events.
    saved = Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(
        **{name: getattr(message, name) for name in _ANSWER_FIELDS})
    if not saved:
        return  # closed meanwhile, or deleted with its conversation; the usage was billed all the same
    # Off the first-token path: the conversation's recency, and a title for one started without.
    Conversation.objects.filter(pk=message.conversation_id).update(
        updated_at=message.completed_at,
        title=Case(When(title="", then=Value(_title(question))), default=F("title")) if question else F("title"),
    )
    # The database first: a reader that sees `done` and then reads the message finds it saved.
    if emit:
        events.append(message.id, events.closing_events(message), final=True)


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
