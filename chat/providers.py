"""The chat models behind one interface, used only by llm workers (on the worker's event loop).

`openai` talks to OpenAI or any OpenAI-compatible server through the official client. `extractive` needs no
model at all: it quotes the retrieved sentences that best match the question, so the app answers offline.

A provider's `stream()` is an async iterator of answer text deltas; it fills the `Completion` it is given with
the provider-reported usage and finish reason. Errors come out as `ProviderError`. Retries happen only before
the first delta: after it, a retried request would repeat text the user has already seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

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
        )
        import httpx2  # the official client's HTTP transport: its errors surface while reading a raw stream

        self._transport_errors = httpx2.TransportError
        self.official = not base_url
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait

    def _retry_delay(self, exc: Exception, attempt: int) -> float:
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        try:
            if header is not None:
                return min(self.max_wait, max(0.0, float(header)))
        except ValueError:
            pass
        return min(self.max_wait, self.backoff * 2**attempt * (0.8 + 0.4 * random.random()))

    def _retryable(self, exc: Exception) -> bool:
        openai = self._openai
        if isinstance(exc, openai.APIConnectionError | self._transport_errors | _StreamError):  # incl. timeouts
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
                # The raw event stream, parsed here: the SDK's typed chunks cost ~0.25 ms of CPU each, which at
                # a few thousand tokens a second is most of a core; its request side (auth, timeouts, status
                # errors) is used as is.
                async with self.client.chat.completions.with_streaming_response.create(
                    model=request.model,
                    messages=request.messages,
                    stream=True,
                    stream_options={"include_usage": True},
                    **limit,
                ) as response:
                    async for line in response.iter_lines():
                        for text in _chunk_texts(line, completion):
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
                raise _final_error(openai, exc, self._retry_delay(exc, attempt)) from exc
            if completion.finish_reason is None:
                if not delivered and attempt < self.max_retries:
                    attempt += 1
                    continue
                raise ProviderError("provider_error", "The model's answer ended unexpectedly; please try again.")
            return


class _StreamError(Exception):
    """An error event inside the stream (`data: {"error": ...}`)."""

    status_code = 500


def _chunk_texts(line: str, completion: Completion) -> list[str]:
    """The content deltas of one SSE line, recording usage and finish reason as they pass."""
    if not line.startswith("data:"):
        return []
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return []
    chunk = json.loads(data)
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise _StreamError(message or "The model reported an error.")
    usage = chunk.get("usage")
    if usage:
        completion.usage = Usage(prompt_tokens=usage.get("prompt_tokens") or 0,
                                 completion_tokens=usage.get("completion_tokens") or 0)
    texts = []
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            completion.finish_reason = choice["finish_reason"]
        text = (choice.get("delta") or {}).get("content")
        if text:
            texts.append(text)
    return texts


def _final_error(openai, exc: Exception, retry_after: float) -> ProviderError:
    if isinstance(exc, openai.RateLimitError):
        return ProviderError(
            "provider_rate_limited",
            "The language model is rate limited right now; please try again shortly.",
            retry_after=retry_after,
        )
    if isinstance(exc, openai.APIConnectionError | _StreamError) or not isinstance(exc, openai.APIError):
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
