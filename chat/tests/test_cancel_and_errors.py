"""Stop, provider failures and plan limits, over the real path (ASGI app, llm worker, Redis, fake model)."""

from __future__ import annotations

import time

import httpx
import pytest
from django.db import OperationalError

from billing.limiter import LimitExceeded
from billing.models import UsageRecord
from chat import events
from chat.models import Message
from chat.prompting import count_tokens
from chat.services import chat_ask, conversation_create, message_cancel
from chat.tests.conftest import ChatSocket, api_key, sse_events, wait_finished
from chat.tests.factories import chat_user

ANSWER = "The boiler must be serviced once a year by a certified engineer, says the manual."


def token_text(received: list[dict]) -> str:
    return "".join(event["text"] for event in received if event["type"] == "token")


@pytest.mark.django_db(transaction=True)
def test_ws_cancel_stops_the_model_within_a_second_and_bills_only_generated_tokens(live, llm) -> None:
    user = chat_user()
    conversation = conversation_create(user=user)
    llm.configure(tokens=400, token_ms=20)

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="Go on and on.")
        head = [socket.recv() for _ in range(6)]
        cancelled_at = time.monotonic()
        socket.send(type="cancel")
        rest = socket.until("done", timeout=5)
        done_at = time.monotonic()

    done = rest[-1]
    assert done["finish_reason"] == "cancelled"
    assert done_at - cancelled_at < 1.0
    llm.wait_until(lambda: llm.cancelled, timeout=2)
    upstream = llm.cancelled[0]
    sent = upstream.tokens_sent
    time.sleep(0.2)
    assert upstream.tokens_sent == sent < 400  # the model stopped, it is not generating into the void
    text = token_text(head + rest)
    assert done["content"] == text
    message = Message.objects.get(id=head[0]["message_id"])
    record = UsageRecord.objects.get(request_id=message.request_id)
    assert record.completion_tokens == message.completion_tokens == count_tokens(text)
    assert 5 <= message.completion_tokens < 400
    assert record.prompt_tokens == upstream.prompt_tokens  # counted locally: no usage chunk after a cancel
    assert message.content == text and message.finish_reason == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_api_cancel_stops_an_answer_streaming_over_sse(live, llm) -> None:
    user = chat_user()
    key = api_key(user)
    llm.configure(tokens=400, token_ms=20)

    with httpx.stream("POST", f"{live}/api/v1/chat/", json={"message": "Go on."}, timeout=10,
                      headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}) as response:
        lines = response.iter_lines()
        head = sse_events(lines, stop_after=4)
        message_id = head[0]["data"]["message_id"]
        cancel = httpx.post(f"{live}/api/v1/chat/messages/{message_id}/cancel",
                            headers={"Authorization": f"Bearer {key}"}, timeout=5)
        rest = sse_events(lines)

    assert cancel.status_code == 202
    assert rest[-1]["event"] == "done" and rest[-1]["data"]["finish_reason"] == "cancelled"
    llm.wait_until(lambda: llm.cancelled, timeout=2)
    assert llm.cancelled[0].tokens_sent < 400
    assert Message.objects.get(id=message_id).finish_reason == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_closing_the_socket_does_not_cancel_the_answer(live, llm) -> None:
    user = chat_user()
    conversation = conversation_create(user=user)
    llm.configure(tokens=20, token_ms=20)

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="Keep going.")
        message_id = socket.recv()["message_id"]

    llm.wait_until(lambda: llm.chat_requests and llm.chat_requests[-1].done, timeout=5)
    time.sleep(0.2)
    message = Message.objects.get(id=message_id)
    assert message.finish_reason == "stop" and message.completion_tokens == 20
    assert llm.cancelled == []


@pytest.mark.django_db
def test_cancelling_an_answer_no_worker_claimed_yet_finishes_it_and_frees_its_slot(prices, llm, redis_client) -> None:
    user = chat_user(concurrent_streams=1)
    # A test transaction never commits, so the answer is never enqueued: it stays pending, as behind a busy queue.
    answer = chat_ask(user=user, question="Hello?")
    with pytest.raises(LimitExceeded):
        chat_ask(user=user, question="And again?")

    cancelled = message_cancel(user=user, message_id=answer.id)

    assert cancelled.status == "done" and cancelled.finish_reason == "cancelled"
    assert cancelled.completion_tokens == 0 and not UsageRecord.objects.filter(request_id=answer.request_id).exists()
    stored = redis_client.xrange(events.stream_key(answer.id))
    assert [fields[b"t"] for _, fields in stored] == [b"citations", b"done"]
    chat_ask(user=user, question="And again?")  # the slot was released


@pytest.mark.django_db(transaction=True)
def test_provider_errors_before_the_first_token_are_retried(live, llm) -> None:
    user = chat_user()
    llm.enqueue(error=429, retry_after=0)
    llm.enqueue(error=503, retry_after=0)
    llm.configure(text=ANSWER)

    response = httpx.post(f"{live}/api/v1/chat/", json={"message": "How often?"},
                          headers={"Authorization": f"Bearer {api_key(user)}"}, timeout=10)

    assert response.status_code == 201
    assert response.json()["content"] == ANSWER
    assert [r.status for r in llm.chat_requests] == [429, 503, 200]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("status", "code"), [(500, "provider_unavailable"), (429, "provider_rate_limited")])
def test_provider_failing_every_retry_ends_with_an_error_event_and_charges_nothing(live, llm, status, code) -> None:
    user = chat_user(concurrent_streams=1)
    conversation = conversation_create(user=user)
    for _ in range(3):
        llm.enqueue(error=status, retry_after=0)

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="How often?")
        received = socket.until("done")
        assert [e["type"] for e in received] == ["start", "error", "citations", "done"]
        assert received[1]["code"] == code
        assert received[-1]["finish_reason"] == "error"
        assert received[-1]["usage"]["completion_tokens"] == 0
        assert len(llm.chat_requests) == 3  # the first try and OPENAI_MAX_RETRIES=2 retries
        message = Message.objects.get(id=received[0]["message_id"])
        assert message.error_code == code
        assert not UsageRecord.objects.filter(request_id=message.request_id).exists()
        socket.send(type="ask", message="Again?")  # the concurrency slot was released
        assert socket.until("done")[-1]["finish_reason"] == "stop"


@pytest.mark.django_db(transaction=True)
def test_the_model_providers_rate_limit_reaches_the_client_with_its_retry_after(live, llm, settings) -> None:
    """The spec's error event carries retry_after for limits; the provider's wait was dropped on the way."""
    settings.OPENAI_MAX_RETRIES = 0
    user = chat_user()
    conversation = conversation_create(user=user)
    llm.enqueue(error=429, retry_after=60)  # longer than the worker would wait itself (8 s): the client's to honour

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="How often?")
        received = socket.until("done")
    message_id = received[0]["message_id"]
    saved = httpx.get(f"{live}/api/v1/chat/messages/{message_id}/", timeout=10,
                      headers={"Authorization": f"Bearer {api_key(user)}"}).json()
    with httpx.stream("GET", f"{live}/api/v1/chat/messages/{message_id}/stream?after=1", timeout=10,
                      headers={"Authorization": f"Bearer {api_key(user)}"}) as response:
        replayed = sse_events(response)

    error = received[1]
    assert (error["type"], error["code"], error["retry_after"]) == ("error", "provider_rate_limited", 60)
    assert saved["error"] == {"code": "provider_rate_limited", "message": error["message"], "retry_after": 60}
    assert replayed[0]["data"]["retry_after"] == 60


@pytest.mark.django_db(transaction=True)
def test_a_waiting_api_ask_answers_the_providers_rate_limit_with_429_and_absurd_waits_are_capped(
    live, llm, settings
) -> None:
    settings.OPENAI_MAX_RETRIES = 0
    user = chat_user()
    llm.enqueue(error=429, retry_after=1e12)

    response = httpx.post(f"{live}/api/v1/chat/", json={"message": "How often?"}, timeout=20,
                          headers={"Authorization": f"Bearer {api_key(user)}"})

    assert response.status_code == 429 and response.headers["retry-after"] == "86400"
    assert response.json()["error"]["code"] == "provider_rate_limited"
    assert response.json()["error"]["retry_after"] == 86400


@pytest.mark.django_db(transaction=True)
def test_stream_dropped_after_the_first_token_ends_with_an_error_and_bills_the_partial_answer(live, llm) -> None:
    user = chat_user()
    conversation = conversation_create(user=user)
    llm.enqueue(text=ANSWER, drop_after=5)

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="How often?")
        received = socket.until("done")

    kinds = [e["type"] for e in received]
    assert kinds == ["start", *["token"] * 5, "error", "citations", "done"]
    assert received[6]["code"] == "provider_error"
    assert len(llm.chat_requests) == 1  # never retried once text was shown
    partial = token_text(received)
    assert partial == " ".join(ANSWER.split(" ")[:5])
    done = received[-1]
    assert done["finish_reason"] == "error" and done["content"] == partial
    message = Message.objects.get(id=received[0]["message_id"])
    record = UsageRecord.objects.get(request_id=message.request_id)
    assert record.completion_tokens == count_tokens(partial)
    assert record.prompt_tokens == llm.chat_requests[0].prompt_tokens
    assert message.content == partial and message.error_code == "provider_error"


@pytest.mark.django_db(transaction=True)
def test_an_answer_past_its_time_limit_stops_the_model_and_keeps_the_part_received(live, llm, settings) -> None:
    settings.CHAT_ANSWER_MAX_SECONDS = 1.0
    user = chat_user()
    conversation = conversation_create(user=user)
    llm.configure(tokens=400, token_ms=20)  # 8 s of answer

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="Go on and on.")
        received = socket.until("done", timeout=10)

    error = next(event for event in received if event["type"] == "error")
    assert error["code"] == "timeout" and "longer than" in error["message"]
    llm.wait_until(lambda: llm.cancelled, timeout=2)
    assert 10 < llm.cancelled[0].tokens_sent < 400  # the model was stopped, not left generating
    partial = token_text(received)
    message = Message.objects.get(id=received[0]["message_id"])
    assert (message.content, message.error_code, message.finish_reason) == (partial, "timeout", "error")
    assert UsageRecord.objects.get(request_id=message.request_id).completion_tokens == count_tokens(partial) > 0


@pytest.mark.django_db(transaction=True)
def test_waiting_api_call_answers_502_when_the_model_refuses(live, llm) -> None:
    user = chat_user()
    llm.enqueue(error=400, error_message="Unsupported parameter")

    response = httpx.post(f"{live}/api/v1/chat/", json={"message": "How often?"},
                          headers={"Authorization": f"Bearer {api_key(user)}"}, timeout=10)

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "provider_rejected" and "Unsupported parameter" in error["message"]
    assert len(llm.chat_requests) == 1  # a 400 is not retried


@pytest.mark.django_db(transaction=True)
def test_plan_limits_refuse_with_an_error_event_or_429_and_save_nothing(live, llm) -> None:
    user = chat_user(requests_per_minute=1)
    conversation = conversation_create(user=user)
    llm.configure(text="Fine.")

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="First")
        socket.until("done")
        socket.send(type="ask", message="Second")
        refused = socket.recv()
    response = httpx.post(f"{live}/api/v1/chat/", json={"message": "Third"},
                          headers={"Authorization": f"Bearer {api_key(user)}"}, timeout=10)

    assert refused["type"] == "error" and refused["code"] == "rate_limited"
    assert refused["limit"] == "rpm" and refused["retry_after"] >= 1 and "message_id" not in refused
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert '"rpm";q=1' in response.headers["RateLimit-Policy"] and '"rpm";r=0' in response.headers["RateLimit"]
    assert response.json()["error"]["code"] == "rate_limited"
    assert response.json()["error"]["retry_after"] == int(response.headers["Retry-After"])
    assert Message.objects.filter(conversation__owner=user).count() == 2


@pytest.mark.django_db(transaction=True)
def test_long_stream_keeps_its_concurrency_slot_with_heartbeats(live, llm, settings) -> None:
    # A slot lifetime well above a loaded machine's scheduling hiccups, and a stream that outlives it twice.
    settings.BILLING_SLOT_TTL_SECONDS = 1.5
    settings.CHAT_SLOT_HEARTBEAT_SECONDS = 0.1
    user = chat_user(concurrent_streams=1)
    key = api_key(user)
    httpx.post(f"{live}/api/v1/chat/", json={"message": "Warm up"}, headers={"Authorization": f"Bearer {key}"},
               timeout=10)  # the first answer of a worker may wait on its warm-up longer than the slot lives
    llm.configure(tokens=80, token_ms=50)

    with httpx.stream("POST", f"{live}/api/v1/chat/", json={"message": "Slow one"}, timeout=20,
                      headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}) as response:
        lines = response.iter_lines()
        sse_events(lines, stop_after=2)
        time.sleep(2.5)  # well past the slot's lifetime without heartbeats
        second = httpx.post(f"{live}/api/v1/chat/", json={"message": "Meanwhile"},
                            headers={"Authorization": f"Bearer {key}"}, timeout=10)
        finish = sse_events(lines)[-1]

    assert second.status_code == 429 and second.json()["error"]["limit"] == "concurrency"
    assert finish["data"]["finish_reason"] == "stop"


def _database_fails_once(monkeypatch, settings, name: str) -> list[int]:
    """Makes the worker's `name` fail on the database at its first call only, with the task's runs again a
    tenth of a second apart; returns the list of its calls."""
    from chat.services import answering

    settings.CHAT_TASK_RETRY_BACKOFF_SECONDS = 0.1
    real, calls = getattr(answering, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(answering, name, flaky)
    return calls


@pytest.mark.django_db(transaction=True)
def test_an_answer_whose_claim_failed_on_the_database_is_answered_by_a_second_run(
    live, llm, settings, monkeypatch
) -> None:
    calls = _database_fails_once(monkeypatch, settings, "_answer_head")
    user = chat_user()
    llm.configure(text=ANSWER)

    conversation = conversation_create(user=user)
    answer = chat_ask(user=user, question="How often is the boiler serviced?", conversation=conversation)
    saved = wait_finished(answer.id)

    assert len(calls) == 2
    assert (saved.finish_reason, saved.error_code, saved.content) == ("stop", "", ANSWER)
    assert UsageRecord.objects.get(request_id=saved.request_id).completion_tokens == saved.completion_tokens > 0


@pytest.mark.django_db(transaction=True)
def test_an_answer_whose_save_failed_is_saved_by_a_second_run_as_its_readers_saw_it(
    live, llm, settings, monkeypatch
) -> None:
    calls = _database_fails_once(monkeypatch, settings, "_answer_finish")
    user = chat_user()
    conversation = conversation_create(user=user)
    llm.configure(text=ANSWER, token_ms=2)

    with ChatSocket(live, conversation.id, user) as socket:
        socket.send(type="ask", message="How often is the boiler serviced?")
        received = socket.until("done")
    saved = wait_finished(received[0]["message_id"])

    assert len(calls) == 1  # the second run closes the answer instead of streaming it again
    assert len(llm.chat_requests) == 1
    error = next(event for event in received if event["type"] == "error")
    assert (saved.content, saved.error_code, saved.error_message) == (ANSWER, error["code"], error["message"])
    assert saved.last_seq == received[-1]["seq"]
    record = UsageRecord.objects.get(request_id=saved.request_id)
    assert record.completion_tokens == saved.completion_tokens > 0  # what was streamed is billed once
