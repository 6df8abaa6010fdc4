"""The llm worker's answer task run directly (no queue): repeated deliveries and a crashed predecessor."""

from __future__ import annotations

import json

import pytest

from billing.models import UsageRecord
from chat import events
from chat.models import Message
from chat.prompting import count_tokens
from chat.services import answer_generate, chat_ask, conversation_create
from chat.tests.factories import chat_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_second_delivery_of_a_finished_answer_changes_nothing(prices, llm) -> None:
    user = chat_user()
    answer = chat_ask(user=user, question="What is it?", conversation=conversation_create(user=user))
    llm.configure(text="It is a test.")
    answer_generate(message_id=answer.id)
    first = Message.objects.get(id=answer.id)

    answer_generate(message_id=answer.id)

    again = Message.objects.get(id=answer.id)
    assert first.finish_reason == "stop" and first.content == "It is a test."
    assert (again.content, again.completed_at, again.last_seq) == (first.content, first.completed_at, first.last_seq)
    assert len(llm.chat_requests) == 1
    assert UsageRecord.objects.filter(request_id=answer.request_id).count() == 1


def test_redelivery_after_a_worker_died_mid_stream_closes_the_answer_with_its_partial_text(
    prices, llm, redis_client
) -> None:
    user = chat_user()
    answer = chat_ask(user=user, question="Tell me more", conversation=conversation_create(user=user))
    Message.objects.filter(id=answer.id).update(status=Message.Status.STREAMING, prompt_tokens=120)
    key = events.stream_key(answer.id)
    for seq, text in enumerate(["The ", "boiler ", "needs"], start=2):
        redis_client.xadd(key, {"t": "token", "e": json.dumps({"type": "token", "seq": seq, "text": text})},
                          id=f"{seq}-0")

    answer_generate(message_id=answer.id)

    message = Message.objects.get(id=answer.id)
    assert message.status == "done" and message.finish_reason == "error"
    assert message.error_code == "interrupted" and message.content == "The boiler needs"
    record = UsageRecord.objects.get(request_id=answer.request_id)
    assert (record.prompt_tokens, record.completion_tokens) == (120, count_tokens("The boiler needs"))
    stored = [(entry_id, fields[b"t"]) for entry_id, fields in redis_client.xrange(key)]
    assert [kind for _, kind in stored[-3:]] == [b"error", b"citations", b"done"]
    assert stored[-1][0] == f"{message.last_seq}-0".encode() and message.last_seq == 7
    assert llm.chat_requests == []  # the model is not asked again
