"""The chat models behind one interface, used only by llm workers (on the worker's event loop).

`openai` talks to OpenAI or any OpenAI-compatible server through the official client. `extractive` needs no
model at all: it quotes the retrieved sentences that best match the question, so the app answers offline.

A provider's `stream()` is an async iterator of answer text deltas; it fills the `Completion` it is given with
the provider-reported usage and finish reason. Errors come out as `ProviderError`. Retries happen only before
the first delta: after it, a retried request would repeat text the user has already seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx2
from django.conf import settings

from chat.prompting import Source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Completion:
    """What the provider reported besides the text: None when it did not say (cancelled, dropped)."""

    usage: Usage | None = None
    finish_reason: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class AnswerRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    question: str
    sources: Sequence[Source] = field(default_factory=tuple)


class ProviderError(Exception):
    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Provider(Protocol):
    name: str

    def stream(self, request: AnswerRequest, completion: Completion) -> AsyncIterator[str]: ...


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        backoff: float,
        max_wait: float,
    ) -> None:
        import openai

        self._openai = openai
        # Built once per process: constructing a client costs ~70 ms, and its connection pool is what lets
        # hundreds of concurrent streams reuse warm connections.
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",
            base_url=base_url or None,
            timeout=openai.Timeout(timeout, connect=connect_timeout),
            max_retries=0,  # retried here, and only before the first token
            http_client=_http_client(timeout=openai.Timeout(timeout, connect=connect_timeout)),
        )
        # The official client's HTTP transport: its errors surface while reading a raw stream.
        self._transport_errors = httpx2.TransportError
        self.official = not base_url
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait

    def _retry_delay(self, exc: Exception | None, attempt: int) -> float:
        asked = _retry_after(exc)
        if asked is not None:
            return min(self.max_wait, asked)
        return min(self.max_wait, self.backoff * 2**attempt * (0.8 + 0.4 * random.random()))

    def _retryable(self, exc: Exception) -> bool:
        openai = self._openai
        if isinstance(exc, _StreamError):
            return exc.retryable
        if isinstance(exc, openai.APIConnectionError | self._transport_errors):  # incl. timeouts
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code == 429 or exc.status_code >= 500
        return False

    async def stream(self, request: AnswerRequest, completion: Completion) -> AsyncIterator[str]:
        openai = self._openai
        limit = {"max_completion_tokens" if self.official else "max_tokens": request.max_tokens}
        delivered = False
        attempt = 0
        while True:
            completion.attempts = attempt + 1
            try:
                # The request through the official client (auth, timeouts, status errors), with two shortcuts
                # on the per-answer CPU that hundreds of concurrent answers add up: the prompt goes in as
                # `extra_body`, which the SDK sends as is, where `messages=` would first be walked against
                # every typed message variant (~4 ms a request); and the event stream is split and parsed
                # here from the decoded bytes, where the SDK's typed chunks and the text/line iterators
                # cost ~0.25 ms and a few generator hops per token.
                async with self.client.chat.completions.with_streaming_response.create(
                    model=request.model,
                    messages=[],
                    stream=True,
                    extra_body={"messages": request.messages, "stream_options": {"include_usage": True}, **limit},
                ) as response:
                    pending = b""
                    async for data in response.http_response.aiter_bytes():
                        lines = (pending + data if pending else data).split(b"\n")
                        pending = lines.pop()
                        for line in lines:
                            for text in _chunk_texts(line, completion):
                                delivered = True
                                yield text
                    for text in _chunk_texts(pending, completion):
                        delivered = True
                        yield text
                # Leaving the block closes the response; on a cancel that is what stops the model.
            except (openai.APIError, self._transport_errors, _StreamError) as exc:
                if delivered:
                    raise ProviderError(
                        "provider_error",
                        "The model stopped in the middle of the answer; the part received so far was kept.",
                    ) from exc
                if self._retryable(exc) and attempt < self.max_retries:
                    delay = self._retry_delay(exc, attempt)
                    logger.info("LLM request failed before the first token (%s); retry in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                # The provider's own wait, unclipped: it is the client's to honour, not this worker's.
                raise _final_error(openai, exc, _retry_after(exc) or self._retry_delay(exc, attempt)) from exc
            if completion.finish_reason is None:
                if not delivered and attempt < self.max_retries:
                    await asyncio.sleep(self._retry_delay(None, attempt))  # not straight back at a failing server
                    attempt += 1
                    continue
                raise ProviderError("provider_error", "The model's answer ended unexpectedly; please try again.")
            return


def _http_client(*, timeout: httpx2.Timeout) -> httpx2.AsyncClient:
    """The SDK's HTTP client with its defaults, on `StreamingTransport` when httptools is there. httpx honours
    HTTP(S)_PROXY only with its own transport, so that one is kept when a proxy is configured."""
    transport = None
    if not {"http", "https", "all"} & set(urllib.request.getproxies()):
        with contextlib.suppress(ImportError):
            transport = StreamingTransport()
    return httpx2.AsyncClient(timeout=timeout, follow_redirects=True, transport=transport)


class StreamingTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 for the official client over asyncio protocols and httptools' C parser.

    The default transport (httpcore on anyio, h11 in pure Python) spends ~150 us of CPU on every read of a
    streamed answer: a cancel scope, a parser event loop and several generator hops per token. With hundreds
    of answers streaming at once that was the largest part of an llm worker's CPU. Here a read is a protocol
    callback that feeds the parser and wakes the reader. Keep-alive connections are reused per origin; a
    response that is closed before its end (a cancelled answer) closes its connection, which is what tells
    the model server to stop."""

    MAX_IDLE_PER_ORIGIN = 512
    IDLE_SECONDS = 30.0

    def __init__(self) -> None:
        import httptools

        self._httptools = httptools
        self._idle: dict[tuple[str, str, int], list[tuple[float, _Connection]]] = {}
        self._ssl = None

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for _, conn in idle:
                conn.close()
        self._idle.clear()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout") or {}
        body = await request.aread()
        target = url.raw_path or b"/"
        head = [request.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        # The body is read whole: it goes out with its length, never chunk-encoded (no framing written here).
        for name, value in request.headers.raw:
            if name.lower() not in (b"transfer-encoding", b"content-length"):
                head += [name, b": ", value, b"\r\n"]
        if body or request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            head += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
        head.append(b"\r\n")
        message = b"".join(head) + body
        conn = self._reuse(origin)
        if conn is None:
            conn = await self._connect(request, origin, timeouts.get("connect"))
        conn.send(request, message, head_only=request.method == "HEAD")
        try:
            status, headers = await conn.head(timeouts.get("read"))
        except BaseException:
            conn.close()
            raise
        return httpx2.Response(status, headers=headers, stream=_ResponseBody(self, origin, conn, timeouts.get("read")),
                               extensions={"http_version": b"HTTP/1.1"}, request=request)

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            since, conn = idle.pop()
            if now - since < self.IDLE_SECONDS and conn.reusable():
                return conn
            conn.close()
        return None

    def release(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if conn.reusable() and len(idle) < self.MAX_IDLE_PER_ORIGIN:
            idle.append((time.monotonic(), conn))
        else:
            conn.close()

    async def _connect(self, request: httpx2.Request, origin: tuple[str, str, int],
                       timeout: float | None) -> _Connection:
        scheme, host, port = origin
        ssl_context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx2.create_ssl_context()
            ssl_context = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._httptools, request), host, port, ssl=ssl_context,
                    server_hostname=host if ssl_context else None,
                )
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from exc
        except OSError as exc:
            raise httpx2.ConnectError(f"could not connect to {host}:{port}: {exc}", request=request) from exc
        return conn


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; requests go one at a time (no pipelining)."""

    def __init__(self, httptools, request: httpx2.Request) -> None:
        self._httptools = httptools
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.parser = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.status: int | None = None
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.closed = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.head_only = False  # a HEAD request: its response has no body, whatever Content-Length says
        self.framed = False  # Content-Length or chunked; otherwise the body ends when the server closes
        self.interim = False  # a 1xx response, to be skipped: the real one follows on the same connection

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            self.error = httpx2.RemoteProtocolError("data received outside of a response", request=self.request)
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except self._httptools.HttpParserUpgrade:
            self.error = httpx2.RemoteProtocolError("unexpected protocol upgrade", request=self.request)
            self.close()
        except self._httptools.HttpParserError as exc:
            self.error = httpx2.RemoteProtocolError(f"malformed HTTP response: {exc}", request=self.request)
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.status is not None and not self.framed and self.error is None and exc is None:
            self.complete = True  # a body delimited by the end of the connection, read to its end
            self.keep_alive = False
        if not self.complete and self.parser is not None and self.error is None:
            self.error = httpx2.RemoteProtocolError(
                "the server closed the connection before the response ended", request=self.request
            )
        self._wake()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # 100 Continue, 103 Early Hints: complete messages of their own; the response follows.
            self.interim = True
            self.headers, self.framed = [], False
            return
        self.status = status
        if self.head_only:
            self.complete, self.keep_alive = True, False

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        # Asked now: once the parser has moved past the message it no longer knows.
        self.keep_alive = self.parser.should_keep_alive()

    # used by the transport
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reusable(self) -> bool:
        return not self.closed and self.error is None and self.transport is not None and not self.transport.is_closing()

    def send(self, request: httpx2.Request, message: bytes, *, head_only: bool = False) -> None:
        self.request = request
        self.parser = self._httptools.HttpResponseParser(self)
        self.headers, self.status, self.chunks, self.error = [], None, [], None
        self.complete = self.keep_alive = self.framed = self.interim = False
        self.head_only = head_only
        self.transport.write(message)

    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()
        if waiter.result() is _TIMED_OUT:
            raise httpx2.ReadTimeout("timed out waiting for the model server", request=self.request)

    async def head(self, timeout: float | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        while self.status is None:
            if self.error is not None:
                raise self.error
            if self.closed:
                raise httpx2.RemoteProtocolError("the server closed the connection", request=self.request)
            await self._wait(timeout)
        return self.status, self.headers

    async def body(self, timeout: float | None) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                chunks, self.chunks = self.chunks, []
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                continue
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            await self._wait(timeout)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


_TIMED_OUT = object()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class _ResponseBody(httpx2.AsyncByteStream):
    """The response's byte stream (an httpx AsyncByteStream): a connection goes back to the pool only once
    its response was read to the end."""

    def __init__(self, transport: StreamingTransport, origin: tuple[str, str, int], conn: _Connection,
                 timeout: float | None) -> None:
        self._transport = transport
        self._origin = origin
        self._conn = conn
        self._timeout = timeout
        self._released = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._conn.body(self._timeout)

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.complete and conn.keep_alive and conn.error is None:
            self._transport.release(self._origin, conn)
        else:
            conn.close()


class _StreamError(Exception):
    """An error event inside the stream (`data: {"error": ...}`), or a chunk that cannot be read."""

    status_code = 500

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


# Error types a model server gives a request it refuses as it is (too long, not allowed): a retry fails alike.
_REFUSALS = frozenset({"invalid_request_error", "authentication_error", "permission_error", "not_found_error"})


def _chunk_texts(line: bytes, completion: Completion) -> list[str]:
    """The content deltas of one SSE line, recording usage and finish reason as they pass."""
    if not line.startswith(b"data:"):
        return []
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return []
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise _StreamError("The model sent a chunk that is not JSON.") from exc
    if not isinstance(chunk, dict):
        raise _StreamError("The model sent a chunk that is not a JSON object.")
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        kind = error.get("type") if isinstance(error, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        # vLLM names its refusals BadRequestError and gives the HTTP status as the code.
        refused = kind in _REFUSALS or (isinstance(code, int) and 400 <= code < 500 and code != 429)
        raise _StreamError(message or "The model reported an error.", retryable=not refused)
    usage = chunk.get("usage")
    if usage:
        completion.usage = Usage(prompt_tokens=usage.get("prompt_tokens") or 0,
                                 completion_tokens=usage.get("completion_tokens") or 0)
    texts = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            completion.finish_reason = choice["finish_reason"]
        text = (choice.get("delta") or {}).get("content")
        if text:
            texts.append(text)
    return texts


def _retry_after(exc: Exception | None) -> float | None:
    """The seconds a provider's Retry-After header asks for, if it sent one (HTTP dates are not used by them)."""
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        seconds = float(header) if header is not None else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def _final_error(openai, exc: Exception, retry_after: float) -> ProviderError:
    if isinstance(exc, openai.RateLimitError):
        return ProviderError(
            "provider_rate_limited",
            "The language model is rate limited right now; please try again shortly.",
            retry_after=retry_after,
        )
    if isinstance(exc, _StreamError):
        # The server's own words: they say what to change (a shorter question, another model) or that it failed.
        if not exc.retryable:
            return ProviderError("provider_rejected", f"The language model refused the request: {exc.message}")
        return ProviderError("provider_unavailable", f"The language model failed to answer ({exc.message}); "
                                                     "please try again.")
    if isinstance(exc, openai.APIConnectionError) or not isinstance(exc, openai.APIError):
        return ProviderError("provider_unavailable", "The language model could not be reached; please try again.")
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return ProviderError("provider_unavailable", "The language model failed to answer; please try again.")
    if isinstance(exc, openai.APIStatusError):
        return ProviderError(
            "provider_rejected", f"The language model refused the request ({exc.status_code}): {exc.message}"
        )
    return ProviderError("provider_error", f"The language model failed: {exc}")


_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])|\n{2,}|\n(?=[-*•\d])")
_WORD_RE = re.compile(r"\w+")
_PIECE_RE = re.compile(r"\s*\S+")
_STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from", "has",
        "have", "how", "i", "if", "in", "into", "is", "it", "its", "of", "on", "or", "so", "than", "that",
        "the", "their", "them", "then", "there", "these", "they", "this", "to", "was", "were", "what", "when",
        "where", "which", "who", "whom", "why", "will", "with", "you", "your", "about", "after", "all", "also",
        "any", "been", "being", "between", "both", "each", "more", "most", "other", "over", "some", "such",
        "only", "same", "very"
    }
)
EXTRACTIVE_PREAMBLE = (
    "Extractive answer (no language model is configured): the passages of your documents that best match "
    "the question, quoted as they are.\n\n"
)
EXTRACTIVE_NOTHING = (
    "Extractive answer (no language model is configured): no passage of your documents matches this question."
)


def _terms(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def extractive_answer(question: str, sources: Sequence[Source], *, sentences: int = 3) -> str:
    """The best-matching sentences of the sources, each quoted with its source number."""
    wanted = _terms(question)
    scored: list[tuple[float, int, int, str]] = []
    for rank, source in enumerate(sources):
        for position, raw in enumerate(_SENTENCE_RE.split(source.text)):
            sentence = " ".join(raw.split())
            if len(sentence) < 20:
                continue
            if len(sentence) > 400:
                sentence = sentence[:400].rsplit(" ", 1)[0] + "…"
            overlap = len(wanted & _terms(sentence))
            # Earlier (better-ranked) sources win ties; so do earlier sentences within a source.
            scored.append((overlap - 0.1 * rank - 0.01 * position, rank, position, sentence))
    scored.sort(key=lambda item: item[0], reverse=True)
    best = [item for item in scored if item[0] > 0][:sentences] or scored[:1]
    if not best:
        return EXTRACTIVE_NOTHING
    best.sort(key=lambda item: (item[1], item[2]))
    lines = [f'- "{sentence}" [{sources[rank].number}]' for _, rank, _, sentence in best]
    return EXTRACTIVE_PREAMBLE + "\n".join(lines)


class ExtractiveProvider:
    name = "extractive"

    async def stream(self, request: AnswerRequest, completion: Completion) -> AsyncIterator[str]:
        completion.attempts = 1
        for piece in _PIECE_RE.findall(extractive_answer(request.question, request.sources)):
            yield piece
            await asyncio.sleep(0)  # let the event writer flush between pieces
        completion.finish_reason = "stop"


_lock = threading.Lock()
_providers: dict[tuple, Provider] = {}


def get_provider() -> Provider:
    """The process-wide provider for the current settings (tests repoint it at the fake server)."""
    name = settings.LLM_PROVIDER
    if name == "extractive":
        key: tuple = ("extractive",)
    elif name == "openai":
        key = (
            "openai",
            settings.OPENAI_API_KEY,
            settings.OPENAI_BASE_URL,
            settings.OPENAI_TIMEOUT_SECONDS,
            settings.OPENAI_CONNECT_TIMEOUT_SECONDS,
            settings.OPENAI_MAX_RETRIES,
            settings.OPENAI_RETRY_BACKOFF_SECONDS,
            settings.OPENAI_RETRY_MAX_WAIT_SECONDS,
        )
    else:
        raise ValueError(f"LLM_PROVIDER must be 'openai' or 'extractive', not {name!r}")
    with _lock:
        provider = _providers.get(key)
        if provider is None:
            if name == "extractive":
                provider = ExtractiveProvider()
            else:
                provider = OpenAIProvider(
                    api_key=settings.OPENAI_API_KEY,
                    base_url=settings.OPENAI_BASE_URL,
                    timeout=settings.OPENAI_TIMEOUT_SECONDS,
                    connect_timeout=settings.OPENAI_CONNECT_TIMEOUT_SECONDS,
                    max_retries=settings.OPENAI_MAX_RETRIES,
                    backoff=settings.OPENAI_RETRY_BACKOFF_SECONDS,
                    max_wait=settings.OPENAI_RETRY_MAX_WAIT_SECONDS,
                )
            _providers[key] = provider
        return provider
