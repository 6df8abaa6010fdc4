"""Saving an answer's ending: its row, its closing events, and the answers closed without a normal end."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from decimal import Decimal
from typing import Any

from django.db.models import Case, F, Value, When
from django.utils import timezone

from billing.services import llm_release, llm_settle
from chat import events
from chat.models import Conversation, Message
from chat.prompting import (
    count_tokens,
)
from chat.services.asking import _title
from chat.services.reservations import reservation_load

logger = logging.getLogger(__name__)


def _answer_fail_before_stream(message: Message, *, code: str, text: str) -> None:
    with contextlib.suppress(Exception):
        llm_release(reservation=reservation_load(message.reservation))
    _answer_save(message, content="", finish_reason=Message.FinishReason.ERROR, error=(code, text), citations=[],
                 prompt_tokens=0, completion_tokens=0, cost=Decimal(0), seq=1)


def _answer_interrupted(message: Message) -> None:
    key = events.stream_key(message.id)
    entries = events.redis_client().xrange(key)
    parts, seq, ended, retry_after = [], 1, False, None
    error = ("interrupted", "The answer was interrupted by a server restart; please ask again.")
    for entry_id, fields in entries:
        if fields[b"t"] == b"token":
            seq = int(entry_id.split(b"-", 1)[0])
            parts.append(json.loads(fields[b"e"])["text"])
        elif fields[b"t"] == b"error":  # the stream was closed but the save was lost: saved as its readers saw it
            closed = json.loads(fields[b"e"])
            error, retry_after = (closed["code"], closed["message"]), closed.get("retry_after")
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
                 seq=seq, retry_after=retry_after, emit=not ended)


_RETRY_AFTER_MAX_SECONDS = 86_400

_ANSWER_FIELDS = [
    "content", "content_tokens", "status", "finish_reason", "error_code", "error_message", "error_retry_after",
    "citations", "prompt_tokens", "completion_tokens", "cost_usd", "first_token_ms", "total_ms", "last_seq",
    "completed_at",
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
    retry_after: float | None = None,
    emit: bool = True,
) -> None:
    message.content = content
    # Counted with the same tokenizer as the prompt budget, whatever the provider reported.
    message.content_tokens = count_tokens(content) if content else 0
    message.status = Message.Status.DONE
    message.finish_reason = finish_reason
    message.error_code, message.error_message = error or ("", "")
    message.error_retry_after = (
        # A day at most: a provider's wait is advice to the client, and the column is an integer.
        min(math.ceil(retry_after), _RETRY_AFTER_MAX_SECONDS) if error and retry_after is not None else None
    )
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
