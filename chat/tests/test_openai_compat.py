"""The /v1/ surface driven by the official `openai` SDK, unchanged, over the real path: ASGI app, a real llm
worker, Redis, Postgres and the fake OpenAI server as the upstream model. The request parsing at the end is
pure and needs no database."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from accounts.models import User
from billing.models import UsageRecord
from billing.tests.factories import ModelPriceFactory
from chat.models import Conversation, Message
from chat.openai_compat.errors import OpenAIError
from chat.openai_compat.parsing import parse_completion, parse_embedding
from chat.prompting import DATA_FOOTER, DATA_HEADER, SYSTEM_PROMPT
from chat.tests.conftest import api_key, kill_event_readers, wait_for_event_reader
from chat.tests.factories import chat_user, document_with_chunks
from documents.embedders import configured_embedder

live_db = pytest.mark.django_db(transaction=True)

ANSWER = "Gnuplot draws two- and three-dimensional plots of functions and data [1]."
PLOTTING = [
    "Gnuplot is a portable command-line driven graphing utility. It draws two- and three-dimensional plots.",
    "The set logscale command makes an axis logarithmic, for example set logscale y.",
]
BOILERS = ["Boiler maintenance: bleed the radiators every autumn and check the pressure gauge reads 1.5 bar."]
QUESTION = "What does gnuplot draw?"


def pieces(text: str) -> list[str]:
    head, *rest = text.split(" ")
    return [head, *(" " + word for word in rest)]


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.fixture
def sdk(live) -> Callable[..., OpenAI]:
    def make(user: User | None = None, *, key: str | None = None, max_retries: int = 0) -> OpenAI:
        return OpenAI(base_url=f"{live}/v1", api_key=key or api_key(user), max_retries=max_retries, timeout=30)

    return make


def data_message(request) -> str:
    """The retrieved-data message chat sent to the model."""
    return next(m["content"] for m in request.messages if m["content"].startswith(DATA_HEADER))


@live_db
def test_streamed_completion_is_answered_from_the_callers_documents_with_citations_and_usage(sdk, llm) -> None:
    user = chat_user()
    document = document_with_chunks(owner=user, title="Gnuplot manual", texts=PLOTTING, pages=[3, 7])
    llm.configure(text=ANSWER, token_ms=2)

    stream = sdk(user).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    upstream = llm.chat_requests[-1]
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == pieces(ANSWER)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    finish = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finish.choices[0].finish_reason == "stop"
    citations = finish.model_extra["docent"]["citations"]
    assert [(c["document_id"], c["page"]) for c in citations] == [(document.id, 3)]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        upstream.prompt_tokens, len(pieces(ANSWER)))
    assert all(c.usage is None for c in chunks[:-1])
    # Answered by chat's pipeline: Docent's prompt, the retrieved excerpt, then the question.
    assert "portable command-line" in data_message(upstream) and DATA_FOOTER in data_message(upstream)
    assert upstream.messages[-1] == {"role": "user", "content": QUESTION}
    record = UsageRecord.objects.get(user=user, kind="chat")
    assert (record.prompt_tokens, record.completion_tokens) == (upstream.prompt_tokens, len(pieces(ANSWER)))
    assert wait_for(lambda: not Conversation.objects.filter(owner=user).exists())


@live_db
def test_plain_completion_is_a_chat_completion_with_usage_cost_and_citations(sdk, llm) -> None:
    user = chat_user()
    document = document_with_chunks(owner=user, title="Gnuplot manual", texts=PLOTTING, pages=[3, 7])
    llm.configure(text=ANSWER)

    completion = sdk(user).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": QUESTION}],
    )

    upstream = llm.chat_requests[-1]
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        upstream.prompt_tokens, len(pieces(ANSWER)))
    assert completion.usage.total_tokens == upstream.prompt_tokens + len(pieces(ANSWER))
    docent = completion.model_extra["docent"]
    record = UsageRecord.objects.get(user=user, kind="chat")
    assert docent["cost_usd"] == str(record.cost) and record.cost > 0
    assert [c["document_id"] for c in docent["citations"]] == [document.id]
    assert docent["conversation_id"] is None and docent["message_id"] is None
    # Not stored unless asked: gone by the time the response arrived; the ledger keeps the call.
    assert not Conversation.objects.filter(owner=user).exists()


@live_db
def test_stored_completion_keeps_the_callers_conversation_and_sends_its_history(sdk, llm) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=PLOTTING)
    llm.configure(text=ANSWER)
    history = [
        {"role": "user", "content": "Which manual is this?"},
        {"role": "assistant", "content": "It is the gnuplot manual."},
        {"role": "user", "content": QUESTION},
    ]

    completion = sdk(user).chat.completions.create(model="gpt-4o-mini", messages=history,
                                                   extra_body={"docent": {"store": True}})

    docent = completion.model_extra["docent"]
    conversation = Conversation.objects.get(owner=user)
    assert docent["conversation_id"] == conversation.id
    stored = list(conversation.messages.order_by("id").values_list("role", "content"))
    assert stored == [(m["role"], m["content"]) for m in history] + [("assistant", ANSWER)]
    assert docent["message_id"] == conversation.messages.order_by("id").last().id
    sent = [(m["role"], m["content"]) for m in llm.chat_requests[-1].messages]
    assert sent[1:3] == [("user", "Which manual is this?"), ("assistant", "It is the gnuplot manual.")]
    assert sent[-1] == ("user", QUESTION)


@live_db
def test_document_ids_restrict_retrieval_to_those_documents(sdk, llm) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=PLOTTING)
    boilers = document_with_chunks(owner=user, title="Boiler notes", texts=BOILERS)
    llm.configure(text="Bleed the radiators [1].")

    completion = sdk(user).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}],
        extra_body={"docent": {"document_ids": [boilers.id]}},
    )

    data = data_message(llm.chat_requests[-1])
    assert "bleed the radiators" in data and "Gnuplot" not in data
    assert [c["document_id"] for c in completion.model_extra["docent"]["citations"]] == [boilers.id]


@live_db
def test_someone_elses_document_id_is_a_bad_request(sdk, llm) -> None:
    owner, intruder = chat_user(), chat_user()
    private = document_with_chunks(owner=owner, title="Private", texts=BOILERS)

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(intruder).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}],
            extra_body={"docent": {"document_ids": [private.id]}},
        )

    assert caught.value.body["code"] == "invalid_documents"
    assert caught.value.body["param"] == "docent.document_ids"
    assert llm.chat_requests == []


@live_db
def test_closing_the_stream_cancels_the_model_and_bills_only_the_generated_tokens(sdk, llm) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=PLOTTING)
    llm.configure(text="alpha beta gamma delta", tokens=400, token_ms=20)

    stream = sdk(user).chat.completions.create(model="gpt-4o-mini", stream=True,
                                               messages=[{"role": "user", "content": QUESTION}])
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == 3:
                break
    stream.close()

    llm.wait_until(lambda: llm.cancelled, timeout=5)
    cancelled = llm.cancelled[0]
    record = wait_for(lambda: UsageRecord.objects.filter(user=user, kind="chat").first())
    assert record is not None, "the cancelled answer was not billed"
    assert 3 <= cancelled.tokens_sent < 400
    assert 3 <= record.completion_tokens <= cancelled.tokens_sent
    assert record.prompt_tokens > 0
    assert wait_for(lambda: not Conversation.objects.filter(owner=user).exists())


@live_db
def test_closing_a_stored_stream_keeps_the_partial_answer_as_cancelled(sdk, llm) -> None:
    user = chat_user()
    llm.configure(text="alpha beta gamma delta", tokens=400, token_ms=20)

    stream = sdk(user).chat.completions.create(model="gpt-4o-mini", stream=True,
                                               messages=[{"role": "user", "content": QUESTION}],
                                               extra_body={"docent": {"store": True}})
    next(c for c in stream if c.choices and c.choices[0].delta.content)
    stream.close()

    llm.wait_until(lambda: llm.cancelled, timeout=5)
    answer = wait_for(lambda: Message.objects.filter(conversation__owner=user, role="assistant",
                                                     status=Message.Status.DONE).first())
    assert answer.finish_reason == Message.FinishReason.CANCELLED
    assert answer.content.startswith("alpha") and answer.completion_tokens < 400


@live_db
def test_unknown_and_disallowed_models_raise_not_found(sdk, llm) -> None:
    user = chat_user()
    ModelPriceFactory(model="gpt-4o")  # priced, but not in the user's plan
    client = sdk(user)

    for model in ("gpt-4o", "no-such-model"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}])
        assert caught.value.body["code"] == "model_not_found"
        assert caught.value.body["param"] == "model"
        assert caught.value.body["type"] == "invalid_request_error"
    assert llm.chat_requests == []


@live_db
def test_bad_or_missing_api_key_raises_authentication_error(sdk, live) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(key="dk_not-a-real-key").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])
    assert caught.value.body["code"] == "invalid_api_key"

    response = httpx.get(f"{live}/v1/models")
    assert response.status_code == 401
    assert set(response.json()["error"]) >= {"message", "type", "code", "param"}


@live_db
def test_rate_limit_raises_rate_limit_error_with_retry_after_and_ratelimit_headers(sdk, llm) -> None:
    user = chat_user(requests_per_minute=1)
    llm.configure(text=ANSWER)
    client = sdk(user)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])

    headers = caught.value.response.headers
    assert 0 < int(headers["retry-after"]) <= 60
    assert '"rpm";q=1' in headers["ratelimit-policy"] and '"rpm";r=0' in headers["ratelimit"]
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert caught.value.body["type"] == "requests"
    assert len(llm.chat_requests) == 1


@live_db
def test_exhausted_quota_is_insufficient_quota_that_the_sdk_does_not_retry(sdk, llm) -> None:
    user = chat_user(monthly_token_quota=10)

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(user, max_retries=2).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])

    assert caught.value.body["type"] == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert llm.chat_requests == []


@live_db
def test_successful_completion_carries_the_plans_ratelimit_headers(sdk, llm) -> None:
    user = chat_user(requests_per_minute=5)
    llm.configure(text=ANSWER)

    raw = sdk(user).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])

    assert '"rpm";r=4' in raw.headers["ratelimit"]
    assert raw.parse().choices[0].message.content == ANSWER


@live_db
def test_model_failure_before_the_first_token_is_an_http_error_and_costs_nothing(sdk, llm, settings) -> None:
    user = chat_user()
    settings.OPENAI_MAX_RETRIES = 0
    llm.configure(error=503)
    client = sdk(user)

    with pytest.raises(openai.InternalServerError) as plain:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.InternalServerError) as streamed:
        client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                       messages=[{"role": "user", "content": QUESTION}])

    for caught in (plain, streamed):
        assert caught.value.status_code == 500
        assert caught.value.body["code"] == "provider_unavailable"
        assert caught.value.body["type"] == "server_error"
    assert not UsageRecord.objects.filter(user=user).exists()


@live_db
def test_model_failure_after_the_first_token_ends_the_stream_with_an_error(sdk, llm, settings) -> None:
    user = chat_user()
    settings.OPENAI_MAX_RETRIES = 0
    llm.configure(text=ANSWER, drop_after=3, token_ms=2)

    stream = sdk(user).chat.completions.create(model="gpt-4o-mini", stream=True,
                                               messages=[{"role": "user", "content": QUESTION}])
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    assert received == pieces(ANSWER)[:3]
    assert caught.value.body["code"] == "provider_error"
    record = wait_for(lambda: UsageRecord.objects.filter(user=user).first())
    assert record.completion_tokens > 0  # the partial answer was generated, so it is billed


@live_db
def test_a_stream_whose_event_reader_failed_ends_with_an_error_the_sdk_raises(sdk, llm, redis_client) -> None:
    user = chat_user()
    llm.configure(text="alpha beta gamma delta", tokens=400, token_ms=20)

    stream = sdk(user).chat.completions.create(model="gpt-4o-mini", stream=True,
                                               messages=[{"role": "user", "content": QUESTION}])
    received = 0
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == 3:
                    wait_for_event_reader(redis_client)
                    assert kill_event_readers(redis_client) >= 1

    assert caught.value.body["code"] == "stream_failed"
    llm.wait_until(lambda: llm.cancelled, timeout=5)  # the answer nobody can read on is stopped
    assert llm.cancelled[0].tokens_sent < 400


@live_db
def test_the_model_providers_rate_limit_is_a_429_with_its_retry_after(sdk, llm, settings) -> None:
    settings.OPENAI_MAX_RETRIES = 0
    user = chat_user()
    llm.enqueue(error=429, retry_after=60)

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(user).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])

    assert caught.value.response.headers["retry-after"] == "60"
    assert caught.value.body["code"] == "rate_limit_exceeded" and caught.value.body["retry_after"] == 60


@live_db
def test_models_lists_the_plans_models_and_retrieve_404s_the_others(sdk) -> None:
    user = chat_user()
    ModelPriceFactory(model="gpt-4o")
    client = sdk(user)

    listed = [model.id for model in client.models.list()]

    assert sorted(listed) == sorted(["gpt-4o-mini", "extractive", "gpt-4o-mini-small",
                                     configured_embedder().model])
    assert client.models.retrieve("gpt-4o-mini").owned_by == "docent"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@live_db
def test_embeddings_come_from_the_configured_embedder_and_are_metered(sdk) -> None:
    user = chat_user()
    embedder = configured_embedder()
    texts = ["set logscale y", "bleed the radiators every autumn"]
    client = sdk(user)

    as_base64 = client.embeddings.create(model=embedder.model, input=texts)  # the SDK's default encoding
    as_floats = client.embeddings.create(model=embedder.model, input=texts[0], encoding_format="float")

    # Compared call for call: the int8 model's vectors shift slightly with the batch they are computed in.
    expected, single = embedder.embed_documents(texts), embedder.embed_documents(texts[:1])
    assert [item.index for item in as_base64.data] == [0, 1]
    np.testing.assert_allclose(np.array([item.embedding for item in as_base64.data]), expected.vectors, atol=1e-6)
    np.testing.assert_allclose(as_floats.data[0].embedding, single.vectors[0], atol=1e-6)
    assert as_base64.usage.prompt_tokens == expected.prompt_tokens
    records = UsageRecord.objects.filter(user=user, kind="embedding").order_by("id")
    assert [r.prompt_tokens for r in records] == [expected.prompt_tokens, single.prompt_tokens]
    assert {r.model for r in records} == {embedder.model}

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-large", input="x")
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=embedder.model, input="word " * 1000)
    assert too_long.value.body["param"] == "input[0]"


@live_db
def test_embeddings_refuse_an_exhausted_quota(sdk) -> None:
    user = chat_user(monthly_token_quota=0)

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(user).embeddings.create(model=configured_embedder().model, input="set logscale y")

    assert caught.value.body["type"] == "insufficient_quota"
    assert not UsageRecord.objects.filter(user=user).exists()


@live_db
def test_parallel_embeddings_cannot_overshoot_the_quota_together(sdk) -> None:
    embedder = configured_embedder()
    text = "bleed the radiators every autumn"
    tokens = embedder.embed_documents([text]).prompt_tokens
    user = chat_user(monthly_token_quota=3 * tokens + tokens // 2)  # room for three calls, not four
    barrier = threading.Barrier(10)
    admitted, refused, errors = [], [], []

    def call(client: OpenAI) -> None:
        try:
            barrier.wait(timeout=30)
            admitted.append(client.embeddings.create(model=embedder.model, input=text).usage.prompt_tokens)
        except openai.RateLimitError as exc:
            refused.append(exc.body["type"])
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(sdk(user),)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert (admitted, refused) == ([tokens] * 3, ["insufficient_quota"] * 7)
    assert sorted(UsageRecord.objects.filter(user=user).values_list("prompt_tokens", flat=True)) == [tokens] * 3


@live_db
def test_invalid_requests_are_bad_requests_naming_the_parameter(sdk, llm) -> None:
    client = sdk(chat_user())
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": QUESTION}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": QUESTION}], "extra_body": {"docent": {"stored": True}}},
         "docent.stored"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", **kwargs)
        assert caught.value.body["param"] == param, kwargs
        assert caught.value.body["type"] == "invalid_request_error"
    assert llm.chat_requests == []


@live_db
def test_unknown_v1_path_and_wrong_method_answer_in_openai_shape(live, sdk) -> None:
    user = chat_user()
    headers = {"Authorization": f"Bearer {api_key(user)}"}

    missing = httpx.post(f"{live}/v1/completions", headers=headers, json={})
    with_newline = httpx.get(f"{live}/v1/models%0A%09x", headers=headers)
    wrong_method = httpx.get(f"{live}/v1/chat/completions", headers=headers)
    not_json = httpx.post(f"{live}/v1/chat/completions", headers=headers, content=b"{")

    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert with_newline.status_code == 404 and with_newline.json()["error"]["code"] == "unknown_url"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]


@live_db
def test_unstorable_text_is_a_400_and_an_oversized_body_a_413(live, llm) -> None:
    user = chat_user()
    headers = {"Authorization": f"Bearer {api_key(user)}", "Content-Type": "application/json"}
    completions, embeddings = f"{live}/v1/chat/completions", f"{live}/v1/embeddings"

    def message(text: str) -> bytes:  # json.dumps escapes both (\u0000, \ud800), as a client would
        return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).encode()

    for text in ("hi\x00there", "hi\ud800there"):
        for url, body in ((completions, message(text)),
                          (embeddings, json.dumps({"model": "all-MiniLM-L6-v2", "input": text}).encode())):
            response = httpx.post(url, headers=headers, content=body)
            assert response.status_code == 400, (url, text, response.text)
            assert "NUL" in response.json()["error"]["message"]
    oversized = httpx.post(completions, headers=headers, content=message("x" * (11 * 2**20)), timeout=30)

    assert oversized.status_code == 413
    assert oversized.json()["error"]["code"] == "too_large"
    assert llm.chat_requests == []
    assert not Message.objects.filter(conversation__owner=user).exists()


@live_db
def test_requested_model_and_max_tokens_reach_the_model(sdk, llm) -> None:
    user = chat_user()
    llm.configure(text=ANSWER)

    completion = sdk(user).chat.completions.create(model="gpt-4o-mini-small", max_tokens=5,
                                                   messages=[{"role": "user", "content": QUESTION}])

    assert llm.chat_requests[-1].model == "gpt-4o-mini-small"
    assert llm.chat_requests[-1].body["max_tokens"] == 5
    assert completion.choices[0].finish_reason == "length"


@live_db
def test_system_messages_reach_the_model_after_docents_rules(sdk, llm) -> None:
    user = chat_user()
    llm.configure(text=ANSWER)

    sdk(user).chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": QUESTION}])

    sent = llm.chat_requests[-1].messages
    assert [m["role"] for m in sent[:2]] == ["system", "system"]
    assert sent[0]["content"] == SYSTEM_PROMPT  # Docent's rules first: the caller's cannot override the data rule
    assert sent[1]["content"] == "Answer in French."


@live_db
def test_max_tokens_beyond_the_models_window_is_a_400(sdk, llm) -> None:
    user = chat_user()

    with pytest.raises(openai.BadRequestError) as refused:
        sdk(user).chat.completions.create(model="gpt-4o-mini", max_tokens=10_000_000,
                                          messages=[{"role": "user", "content": QUESTION}])

    assert "max_tokens is too large" in refused.value.message
    assert llm.chat_requests == []


@live_db
def test_retrieval_false_sends_the_callers_messages_without_documents(sdk, llm) -> None:
    user = chat_user()
    document_with_chunks(owner=user, title="Gnuplot manual", texts=PLOTTING)
    llm.configure(text=ANSWER)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]

    sdk(user).chat.completions.create(model="gpt-4o-mini", messages=messages,
                                      extra_body={"docent": {"retrieval": False}})

    assert llm.chat_requests[-1].messages == messages
    assert not Conversation.objects.filter(owner=user).exists()  # not stored unless asked


def test_completion_request_splits_instructions_history_and_question() -> None:
    request = parse_completion({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "First"}, {"type": "text", "text": "part"}]},
            {"role": "assistant", "content": "Answer one"},
            {"role": "developer", "content": "Cite sources."},
            {"role": "user", "content": "  The question?  "},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 300,
        "max_completion_tokens": 200,
        "temperature": 0.2,
        "docent": {"document_ids": [4, 2], "store": True},
    })

    assert request.instructions == ("Be brief.", "Cite sources.")
    assert [(t.role, t.content) for t in request.history] == [("user", "First\npart"), ("assistant", "Answer one")]
    assert request.question == "The question?"
    assert (request.stream, request.include_usage, request.max_tokens) == (True, True, 200)
    assert (request.retrieval, request.document_ids, request.store) == (True, [4, 2], True)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream_options": {}}, "stream_options"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content[0]"),
        ({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}, "tools"),
        ({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
          "docent": {"retrieval": False, "document_ids": [1]}}, "docent.document_ids"),
        ({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "docent": {"document_ids": [True]}},
         "docent.document_ids"),
    ],
)
def test_completion_request_refusals_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_completion(body)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_embedding_request_accepts_text_and_refuses_token_ids() -> None:
    request = parse_embedding({"model": "m", "input": "one", "encoding_format": "base64"})
    assert (request.inputs, request.encoding_format) == (["one"], "base64")
    with pytest.raises(OpenAIError) as caught:
        parse_embedding({"model": "m", "input": [[1, 2, 3]]})
    assert caught.value.param == "input[0]"
    with pytest.raises(OpenAIError):
        parse_embedding({"model": "m", "input": ["ok", ""]})
