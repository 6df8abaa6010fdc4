"""Chat test data: users on a roomy plan with priced models, and ready documents with real embeddings."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from unittest import mock

from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import ModelPrice
from billing.tests.factories import ModelPriceFactory, PlanFactory, subscribe
from chat import events
from chat.models import Message
from documents.benchmarking.common import document_from_texts as document_with_chunks

# A model with a tiny context window, for the tests that need the prompt budget to bite.
SMALL_MODEL = "gpt-4o-mini-small"


def model_prices() -> None:
    ModelPriceFactory(model="gpt-4o-mini")
    ModelPriceFactory(model="extractive", input_per_million=Decimal(0), output_per_million=Decimal(0),
                      context_window=32_768, default_max_tokens=512)
    ModelPriceFactory(model=SMALL_MODEL, context_window=1_200, default_max_tokens=100)


def chat_user(**plan_fields) -> User:
    """A user whose plan allows the test models, with limits that only the limit tests reach."""
    user = UserFactory()
    plan = PlanFactory(chat_models=["gpt-4o-mini", "extractive", SMALL_MODEL], **plan_fields)
    subscribe(user=user, plan=plan)
    return user


def answer_left_pending(*, lease_left: float | None, asked_ago: float = 0, question: str = "Tell me more") -> Message:
    """An answer asked for `asked_ago` seconds ago whose task never reached a worker (a lost broker message), its
    lease ending `lease_left` seconds from now (None: no lease, as versions before leases left it)."""
    from chat.services import chat_ask, conversation_create
    from chat.tasks import generate_answer

    user = chat_user()
    with mock.patch.object(generate_answer, "delay"):
        answer = chat_ask(user=user, question=question, conversation=conversation_create(user=user))
    now = timezone.now()
    Message.objects.filter(id=answer.id).update(
        lease_until=None if lease_left is None else now + timedelta(seconds=lease_left),
        created_at=now - timedelta(seconds=asked_ago),
    )
    return answer


def answer_left_streaming(tokens: list[str], *, lease_left: float | None, asked_ago: float = 0) -> Message:
    """An answer a worker claimed and streamed `tokens` of (into its Redis event stream, as a worker does), and
    whose lease ends `lease_left` seconds from now: a worker killed mid-stream when that is negative."""
    answer = answer_left_pending(lease_left=lease_left, asked_ago=asked_ago)
    Message.objects.filter(id=answer.id).update(status=Message.Status.STREAMING, prompt_tokens=120)
    events.append(answer.id, [events.event(seq, "token", message_id=answer.id, text=text)
                              for seq, text in enumerate(tokens, start=2)])
    return Message.objects.get(id=answer.id)


__all__ = [
    "SMALL_MODEL", "ModelPrice", "answer_left_pending", "answer_left_streaming", "chat_user", "document_with_chunks",
    "model_prices",
]
