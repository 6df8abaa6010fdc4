"""The /v1/ edges: async views under the ASGI server, authenticated by a Docent API key (`Authorization: Bearer`).

A completion follows its answer's Redis event stream like chat's SSE view, translated into OpenAI objects. The
streamed response's status is decided when the first token (or the end) arrives, so that a failure before
any text still gets a real HTTP error that the SDKs raise as their error classes; after that, errors come as
an SSE `{"error": ...}` frame. A client that goes away (closed stream, timeout) cancels the answer: the
worker closes the model's stream and bills only the tokens generated so far."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.request import Request

from accounts.authentication import APIKeyAuthentication
from accounts.models import User
from chat import events
from chat.models import Message
from chat.openai_compat import frames, services
from chat.openai_compat.errors import NO_RETRY, OpenAIError, from_exception, model_not_found, server_error
from chat.openai_compat.parsing import CompletionRequest, parse_completion, parse_embedding, parse_json
from chat.selectors import message_find
from chat.services import reservation_load

logger = logging.getLogger(__name__)

# Chat's error codes for answers that failed before or while streaming, as OpenAI statuses.
_RATE_LIMITED_CODES = {"provider_rate_limited"}


def db(fn: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
    # The loop's shared executor keeps its threads' database connections (see chat.api.db).
    return DatabaseSyncToAsync(fn, thread_sensitive=False)


_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Cleanup that must finish even when the request's task is cancelled by a disconnecting client."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def _quietly(fn: Callable[..., Any], **kwargs: Any) -> None:
    try:
        await db(fn)(**kwargs)
    except Exception:
        logger.exception("%s failed", fn.__name__)


def _authenticate(request: HttpRequest) -> User:
    drf_request = Request(request, authenticators=[APIKeyAuthentication()])
    user = drf_request.user
    if user is None or not user.is_authenticated:
        raise exceptions.NotAuthenticated()
    return user


def _error(exc: BaseException) -> HttpResponse:
    error = from_exception(exc)
    if error is None:
        logger.error("unexpected error on the OpenAI-compatible API", exc_info=exc)
        error = server_error("The server had an error while processing your request.")
    return error.response()


def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    error = OpenAIError(405, f"{request.method} is not allowed here; use {allowed}.", code="method_not_allowed",
                        headers={"Allow": allowed})
    return error.response()


@dataclass
class _AnswerState:
    """What the answer's events have said so far."""

    parts: list[str] = field(default_factory=list)
    done: bool = False
    reason: str = ""
    content: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    citations: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[str, str] | None = None
    retry_after: int | None = None

    def take(self, item: dict[str, Any]) -> str | None:
        """Record one event; returns the text of a token event."""
        kind = item.get("type")
        if kind == "token":
            self.parts.append(item["text"])
            return item["text"]
        if kind == "error":
            self.error = (item.get("code") or "error", item.get("message") or "The answer failed.")
            self.retry_after = item.get("retry_after")
        elif kind == "citations":
            self.citations = item.get("citations") or []
        elif kind == "done":
            self.done = True
            self.reason = item.get("finish_reason") or "stop"
            self.usage = item.get("usage") or {}
            self.content = item.get("content")
        return None

    @property
    def text(self) -> str:
        return self.content if self.content is not None else "".join(self.parts)

    def failure(self) -> OpenAIError | None:
        if not self.done:
            return server_error("The answer was lost before it finished; please try again.", code="answer_lost")
        if self.error is None:
            return None
        code, message = self.error
        if code in _RATE_LIMITED_CODES:
            wait = {"retry_after": self.retry_after} if self.retry_after is not None else {}
            error = OpenAIError(429, message, type="requests", code="rate_limit_exceeded",
                                headers={"Retry-After": str(self.retry_after)} if wait else None, extra=wait)
        else:
            error = server_error(message, code=code)
        if self.parts:
            error.headers.update(NO_RETRY)  # the partial answer was billed: a silent retry would bill it again
        return error


@dataclass
class _Call:
    user: User
    request: CompletionRequest
    answer: Message
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return "chatcmpl-" + (self.answer.request_id.removeprefix("chat-") or str(self.answer.id))

    def docent(self, state: _AnswerState) -> dict[str, Any]:
        stored = self.request.store
        return {
            "citations": state.citations,
            "cost_usd": state.usage.get("cost_usd"),
            "finish_reason": state.reason,
            "conversation_id": self.answer.conversation_id if stored else None,
            "message_id": self.answer.id if stored else None,
        }

    def headers(self) -> dict[str, str]:
        """The plan's rate-limit counters right after this call was admitted."""
        try:
            return reservation_load(self.answer.reservation).headers() if self.answer.reservation else {}
        except Exception:
            logger.warning("no rate-limit headers for answer %s", self.answer.id, exc_info=True)
            return {}

    async def follow(self) -> AsyncIterator[dict[str, Any] | None]:
        """The answer's events as dicts, None for a heartbeat interval without any."""

        async def load() -> Message | None:
            return await db(message_find)(user=self.user, message_id=self.answer.id)

        async for item in events.follow(self.answer.id, heartbeat=settings.CHAT_SSE_HEARTBEAT_SECONDS,
                                        load_message=load):
            yield None if item is None else json.loads(item.data)

    def abandon(self) -> None:
        _spawn(_quietly(services.completion_abandon, user=self.user, answer=self.answer, store=self.request.store))

    async def settle(self) -> None:
        """The answer ended: forget an unstored conversation before the client hears the end."""
        if not self.request.store:
            await asyncio.shield(_spawn(_quietly(services.completion_discard, user=self.user,
                                                 conversation_id=self.answer.conversation_id)))


async def _start(user: User, request: CompletionRequest) -> _Call:
    start = asyncio.ensure_future(db(services.completion_start)(user=user, request=request))
    try:
        answer = await asyncio.shield(start)
    except asyncio.CancelledError:
        # The client left while the question was being saved: the answer may exist already; stop it.
        with contextlib.suppress(Exception):
            _Call(user, request, await start).abandon()
        raise
    return _Call(user=user, request=request, answer=answer)


@csrf_exempt  # API keys only: no cookies, so no cross-site requests to forge
async def chat_completions(request: HttpRequest) -> HttpResponse:
    """POST /v1/chat/completions: the last user message answered over the caller's documents."""
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    try:
        user = await db(_authenticate)(request)
        completion = parse_completion(parse_json(request.body))
        call = await _start(user, completion)
    except Exception as exc:
        return _error(exc)
    if completion.stream:
        return await _streamed(call)
    return await _complete(call)


async def _complete(call: _Call) -> HttpResponse:
    state = _AnswerState()
    try:
        async with contextlib.aclosing(call.follow()) as feed:
            async for item in feed:
                if item is not None:
                    state.take(item)
                    if state.done:
                        break
    except asyncio.CancelledError:  # the client went away
        call.abandon()
        raise
    except Exception as exc:
        call.abandon()
        return _error(exc)
    await call.settle()
    failure = state.failure()
    if failure is not None:
        return failure.response()
    usage = state.usage
    body = frames.completion(
        id=call.id, created=call.created, model=call.answer.model, content=state.text, reason=state.reason,
        prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
        docent=call.docent(state),
    )
    return JsonResponse(body, headers=call.headers())


async def _streamed(call: _Call) -> HttpResponse:
    state = _AnswerState()
    feed = call.follow()
    first: list[str] = []
    try:
        async for item in feed:
            if item is None:
                continue
            token = state.take(item)
            if token is not None:
                first.append(token)
                break
            if state.done:
                break
    except asyncio.CancelledError:
        call.abandon()
        raise
    except Exception as exc:
        call.abandon()
        return _error(exc)
    if not first:
        failure = state.failure()
        if failure is not None:
            await feed.aclose()
            await call.settle()
            return failure.response()
    writer = frames.ChunkWriter(id=call.id, created=call.created, model=call.answer.model,
                                include_usage=call.request.include_usage)

    async def body() -> AsyncIterator[bytes]:
        ended = False
        try:
            yield writer.role()
            for token in first:
                yield writer.content(token)
            if not state.done:
                async for item in feed:
                    if item is None:
                        yield frames.HEARTBEAT_FRAME
                        continue
                    token = state.take(item)
                    if token is not None:
                        yield writer.content(token)
                    elif state.done:
                        break
            ended = True
            await call.settle()
            failure = state.failure()
            if failure is not None:
                yield frames.error_frame(failure.body())
                return
            yield writer.finish(state.reason, call.docent(state))
            if call.request.include_usage:
                yield writer.usage(state.usage.get("prompt_tokens", 0), state.usage.get("completion_tokens", 0))
            yield frames.DONE_FRAME
        except Exception:
            # The events of the answer could not be read on (Redis failed): the client hears why before the end,
            # as the SDKs raise it, rather than a stream cut off mid-body. The answer is stopped below.
            logger.exception("stream of completion %s failed", call.id)
            yield frames.error_frame({"error": {"message": "Lost the answer's stream; please try again.",
                                                "type": "server_error", "code": "stream_failed", "param": None}})
        finally:
            # Reached through a cancelled task or the response's generator being closed when the client left.
            if not ended:
                call.abandon()
            with contextlib.suppress(Exception):
                await feed.aclose()

    response = StreamingHttpResponse(body(), content_type="text/event-stream; charset=utf-8",
                                     headers=call.headers())
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the chunks back in its buffer
    return response


@csrf_exempt
async def models_list(request: HttpRequest) -> HttpResponse:
    """GET /v1/models: the models the caller's plan allows."""
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    try:
        user = await db(_authenticate)(request)
        models = await db(services.model_list)(user=user)
    except Exception as exc:
        return _error(exc)
    return JsonResponse(frames.model_list(models))


@csrf_exempt
async def model_retrieve(request: HttpRequest, model: str) -> HttpResponse:
    """GET /v1/models/{model}: 404 unless the caller's plan allows it."""
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    try:
        user = await db(_authenticate)(request)
        models = await db(services.model_list)(user=user)
        if model not in models:
            raise model_not_found(model)
    except Exception as exc:
        return _error(exc)
    return JsonResponse(frames.model_object(model))


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    """POST /v1/embeddings with the configured embedding model, metered against the monthly quota."""
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    try:
        user = await db(_authenticate)(request)
        embedding = parse_embedding(parse_json(request.body))
        batch = await db(services.embeddings_create)(user=user, request=embedding)
    except Exception as exc:
        return _error(exc)
    return JsonResponse(frames.embedding_list(vectors=batch.vectors, model=batch.model,
                                              prompt_tokens=batch.prompt_tokens,
                                              encoding_format=embedding.encoding_format))


@csrf_exempt
async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    return OpenAIError(404, f"Invalid URL ({request.method} {request.path}).", code="unknown_url").response()
