"""The openai provider's HTTP transport (asyncio protocol + httptools) against the fake model server: answers
arrive whole, connections are kept alive between answers, a stopped answer hangs up on the model, and
timeouts and dropped connections surface as the errors the provider retries or reports."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from chat.providers import (
    AnswerRequest,
    Completion,
    OpenAIProvider,
    ProviderError,
    StreamingTransport,
    _http_client,
)
from config.testing.fake_openai import FakeOpenAI


def _provider(llm: FakeOpenAI, *, timeout: float = 5.0, retries: int = 0) -> OpenAIProvider:
    return OpenAIProvider(api_key="test", base_url=llm.base_url, timeout=timeout, connect_timeout=2,
                          max_retries=retries, backoff=0.01, max_wait=0.05)


def _request(text: str = "Tell me.") -> AnswerRequest:
    return AnswerRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=50,
                         question=text)


def _idle_connections(provider: OpenAIProvider) -> list[object]:
    transport = provider.client._client._transport
    assert isinstance(transport, StreamingTransport)
    return [conn for idle in transport._idle.values() for _, conn in idle]


async def _answer(provider: OpenAIProvider, request: AnswerRequest) -> tuple[str, Completion]:
    completion = Completion()
    parts = [text async for text in provider.stream(request, completion)]
    return "".join(parts), completion


def test_answer_arrives_whole_and_the_connection_serves_the_next_answer(fake_llm: FakeOpenAI) -> None:
    provider = _provider(fake_llm)

    async def run() -> tuple[list[str], list[list[object]]]:
        texts, idle = [], []
        for _ in range(2):
            text, completion = await _answer(provider, _request('[[fake:text="one two three",tokens=3]]'))
            assert completion.finish_reason == "stop" and completion.usage.completion_tokens == 3
            texts.append(text)
            idle.append(_idle_connections(provider))
        return texts, idle

    texts, idle = asyncio.run(run())

    assert texts == ["one two three", "one two three"]
    assert len(idle[0]) == 1 and idle[1] == idle[0]  # the second answer went over the first one's connection


def test_closing_an_answer_early_hangs_up_on_the_model(fake_llm: FakeOpenAI) -> None:
    provider = _provider(fake_llm)

    async def run() -> int:
        completion = Completion()
        stream = provider.stream(_request("[[fake:tokens=500,token_ms=5]]"), completion)
        received = 0
        async for _ in stream:
            received += 1
            if received == 3:
                break
        await stream.aclose()
        return len(_idle_connections(provider))

    idle = asyncio.run(run())

    assert idle == 0  # the connection was not kept for reuse: it carried an unfinished response
    fake_llm.wait_until(lambda: fake_llm.cancelled, timeout=2)
    assert fake_llm.cancelled[0].tokens_sent < 500


def test_model_silent_past_the_read_timeout_is_retried_then_reported(fake_llm: FakeOpenAI) -> None:
    provider = _provider(fake_llm, timeout=0.2, retries=1)

    async def run() -> None:
        await _answer(provider, _request("[[fake:first_token_ms=2000]]"))

    with pytest.raises(ProviderError) as failed:
        asyncio.run(run())

    assert failed.value.code == "provider_unavailable"
    assert len(fake_llm.chat_requests) == 2


def test_connection_dropped_mid_answer_is_a_provider_error_keeping_what_arrived(fake_llm: FakeOpenAI) -> None:
    provider = _provider(fake_llm)
    received: list[str] = []

    async def run() -> None:
        async for text in provider.stream(_request("[[fake:tokens=10,drop_after=4]]"), Completion()):
            received.append(text)

    with pytest.raises(ProviderError) as failed:
        asyncio.run(run())

    assert failed.value.code == "provider_error"
    assert len(received) == 4


def test_configured_http_proxy_keeps_the_default_transport(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")

    client = _http_client(timeout=httpx2.Timeout(5))

    assert not isinstance(client._transport, StreamingTransport)  # httpx applies proxies only to its own
