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
    _chunk_texts,
    _http_client,
    _StreamError,
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


def test_an_error_event_refusing_the_request_is_reported_with_its_words_and_not_retried(fake_llm: FakeOpenAI) -> None:
    provider = _provider(fake_llm, retries=2)
    refusal = "This model's maximum context length is 8192 tokens."

    async def run() -> None:
        await _answer(provider, _request(f'[[fake:error_after=0,stream_error_status=400,error_message="{refusal}"]]'))

    with pytest.raises(ProviderError) as failed:
        asyncio.run(run())

    assert (failed.value.code, len(fake_llm.chat_requests)) == ("provider_rejected", 1)
    assert refusal in failed.value.message


def test_an_error_event_of_a_failing_server_is_retried_then_reported_with_its_words(fake_llm: FakeOpenAI) -> None:
    provider = _provider(fake_llm, retries=2)

    async def run() -> None:
        await _answer(provider, _request('[[fake:error_after=0,error_message="The engine is overloaded."]]'))

    with pytest.raises(ProviderError) as failed:
        asyncio.run(run())

    assert (failed.value.code, len(fake_llm.chat_requests)) == ("provider_unavailable", 3)
    assert "The engine is overloaded." in failed.value.message


def test_a_vllm_style_refusal_in_the_stream_is_not_retried() -> None:
    line = b'data: {"error": {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}}'

    with pytest.raises(_StreamError) as failed:
        _chunk_texts(line, Completion())

    assert not failed.value.retryable


@pytest.mark.parametrize("line", [b"data: {not json", b"data: [1, 2]", b'data: "text"'])
def test_a_chunk_that_is_not_a_json_object_is_a_stream_error_the_provider_retries(line: bytes) -> None:
    with pytest.raises(_StreamError) as failed:
        _chunk_texts(line, Completion())

    assert failed.value.retryable


def test_choices_that_are_not_objects_are_skipped() -> None:
    completion = Completion()

    texts = _chunk_texts(b'data: {"choices": ["x", {"delta": {"content": "ok"}, "finish_reason": "stop"}]}', completion)

    assert (texts, completion.finish_reason) == (["ok"], "stop")


def test_configured_http_proxy_keeps_the_default_transport(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")

    client = _http_client(timeout=httpx2.Timeout(5))

    assert not isinstance(client._transport, StreamingTransport)  # httpx applies proxies only to its own


class _RawServer:
    """A loopback server answering every request with canned bytes, and keeping what each request sent."""

    def __init__(self, *parts: bytes, close: bool = False) -> None:
        self.parts, self.close, self.requests = parts, close, []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        self.requests.append(head + await reader.readexactly(length))
        for part in self.parts:  # each in a packet of its own
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        if self.close:
            writer.close()
        else:
            await reader.read()  # until the client hangs up


def _client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=StreamingTransport(), timeout=5)


def test_interim_1xx_responses_are_skipped_for_the_response_that_follows() -> None:
    async def run() -> tuple[int, bytes]:
        async with _RawServer(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
                              b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") as url, _client() as client:
            response = await client.get(url + "/")
            return response.status_code, response.content

    assert asyncio.run(run()) == (200, b"hello")


def test_body_delimited_by_the_end_of_the_connection_is_read_whole() -> None:
    async def run() -> tuple[int, bytes]:
        async with _RawServer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: one\n\ndata: two\n\n",
                              close=True) as url, _client() as client:
            response = await client.get(url + "/")
            return response.status_code, response.content

    assert asyncio.run(run()) == (200, b"data: one\n\ndata: two\n\n")


def test_head_response_has_no_body_whatever_its_length_says() -> None:
    async def run() -> tuple[int, bytes]:
        async with _RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") as url, _client() as client:
            response = await asyncio.wait_for(client.head(url + "/"), 2)
            return response.status_code, response.content

    assert asyncio.run(run()) == (200, b"")


def test_request_body_of_unknown_length_goes_out_with_its_length() -> None:
    async def body():
        yield b'{"a": '
        yield b"1}"

    async def run() -> bytes:
        server = _RawServer(b"HTTP/1.1 204 No Content\r\n\r\n")
        async with server as url, _client() as client:
            response = await client.post(url + "/", content=body())
            assert response.status_code == 204
        return server.requests[0]

    sent = asyncio.run(run())
    assert b"content-length: 8\r\n" in sent.lower() and b"transfer-encoding" not in sent.lower()
    assert sent.endswith(b'\r\n\r\n{"a": 1}')
