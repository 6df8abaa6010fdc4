"""The edge's side: validate a question, reserve its worst case with billing, save it with an empty answer and
queue the answer after commit; cancel; conversations."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from billing.selectors import model_limits
from billing.services import llm_release, llm_reserve
from chat import events
from chat.models import Conversation, Message
from chat.prompting import (
    count_tokens,
    fixed_cost,
    prompt_bound,
)
from chat.selectors import message_get
from chat.services.reservations import reservation_dump, reservation_load
from documents.selectors import document_list

logger = logging.getLogger(__name__)

TITLE_CHARS = 80
MAX_DOCUMENT_IDS = 100


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
    if len(document_ids) > MAX_DOCUMENT_IDS:
        raise InvalidDocuments(f"document_ids may list at most {MAX_DOCUMENT_IDS} documents.")
    wanted = sorted(set(document_ids))
    found = set(document_list(user=user).filter(id__in=wanted).values_list("id", flat=True))
    missing = [i for i in wanted if i not in found]
    if missing:
        raise InvalidDocuments(f"No such document: {', '.join(map(str, missing))}.")
    return wanted


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
