"""Chat's HTTP API. Asking and following an answer are async views (SSE under the ASGI server: a waiting client
costs a coroutine, not a thread); the lists and cancel are ordinary DRF views."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import APIKeyAuthentication
from accounts.models import User
from chat import events
from chat.asyncdb import db
from chat.errors import describe
from chat.models import Message
from chat.selectors import conversation_get, conversation_list, message_find, message_get, message_list
from chat.serializers import AskIn, ConversationOut, MessageOut
from chat.services import ChatError, chat_ask, message_cancel
from config.api import APIError, paginate, paginated

logger = logging.getLogger(__name__)


def _authenticate(request: HttpRequest) -> User:
    """DRF's authentication for a plain view: `Bearer dk_…` API keys (with their failure throttling) or the
    session (with its CSRF check on unsafe methods)."""
    request.body  # noqa: B018  (cached first, so that the CSRF check below can parse the body again)
    drf_request = Request(request, parsers=[JSONParser()],
                          authenticators=[APIKeyAuthentication(), SessionAuthentication()])
    user = drf_request.user
    if user is None or not user.is_authenticated:
        raise exceptions.NotAuthenticated("Authentication credentials were not provided.")
    return user


def _error_response(exc: Exception) -> JsonResponse:
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        first = next(iter(detail.items())) if isinstance(detail, dict) and detail else ("", detail)
        message = f"{first[0]}: {_first(first[1])}" if first[0] else _first(first[1])
        return JsonResponse({"error": {"code": "invalid_request", "message": message, "fields": detail}},
                            status=400)
    described = describe(exc)
    if described is None:
        raise exc
    status, headers, body = described
    response = JsonResponse({"error": body}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _first(detail: Any) -> str:
    while isinstance(detail, list | dict) and detail:
        detail = detail[0] if isinstance(detail, list) else next(iter(detail.values()))
    return str(detail)


def _parse_ask(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError as exc:
        raise exceptions.ValidationError({"body": ["Send a JSON object."]}) from exc
    serializer = AskIn(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _ask(*, user: User, data: dict[str, Any]) -> Message:
    conversation_id = data.get("conversation_id")
    conversation = conversation_get(user=user, conversation_id=conversation_id) if conversation_id else None
    return chat_ask(user=user, question=data["message"], conversation=conversation,
                    document_ids=data.get("document_ids"))


_STREAM_FAILED = b"event: error\ndata: " + json.dumps({
    "type": "error", "code": "stream_failed",
    "message": "Lost the answer's stream; reconnect with Last-Event-ID to resume it.",
}).encode() + b"\n\n"


def _event_stream(user: User, message_id: int, after: int, *, fresh: bool = False) -> StreamingHttpResponse:
    async def load() -> Message | None:
        return await db(message_find)(user=user, message_id=message_id)

    async def body() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        followed = events.follow(message_id, after=after, heartbeat=settings.CHAT_SSE_HEARTBEAT_SECONDS,
                                 load_message=load, fresh=fresh)
        # Closed as soon as the client goes, not when the generator is collected: the reader leaves the hub now.
        try:
            async with contextlib.aclosing(followed):
                async for item in followed:
                    yield b": keep-alive\n\n" if item is None else item.sse()
        except Exception:
            # Said before the connection ends, without an id: the client resumes from the last event it has.
            logger.exception("event stream of answer %s failed", message_id)
            yield _STREAM_FAILED

    response = StreamingHttpResponse(body(), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the events back in its buffer
    return response


async def _finished_answer(user: User, message_id: int) -> JsonResponse:
    async def load() -> Message | None:
        return await db(message_find)(user=user, message_id=message_id)

    # Bounded: with no worker running (or a model that never ends) the client is not left hanging; it gets the
    # answer so far and where to follow the rest, and the answer itself carries on.
    followed = events.follow(message_id, heartbeat=settings.CHAT_SSE_HEARTBEAT_SECONDS, load_message=load)
    finished = True
    try:
        async with contextlib.aclosing(followed), asyncio.timeout(settings.CHAT_API_WAIT_SECONDS):
            async for _ in followed:
                pass
    except TimeoutError:
        finished = False
    message = await db(message_get)(user=user, message_id=message_id)
    data = MessageOut(message).data
    if not finished:
        response = JsonResponse(data, status=202)
        response["Location"] = f"/api/v1/chat/messages/{message_id}/stream"
        return response
    if message.error_code:
        error = {"code": message.error_code, "message": message.error_message, "message_id": message.id,
                 "partial": data}
        if message.error_retry_after is not None:  # the model provider's rate limit: a limit, with its wait
            response = JsonResponse({"error": error | {"retry_after": message.error_retry_after}}, status=429)
            response["Retry-After"] = str(message.error_retry_after)
            return response
        return JsonResponse({"error": error}, status=502)
    return JsonResponse(data, status=201)


@csrf_exempt  # API keys need no CSRF token; session requests are checked by DRF's SessionAuthentication
async def chat_ask_api(request: HttpRequest) -> HttpResponse:
    """POST /api/v1/chat/ {"message", "conversation_id"?, "document_ids"?}. With `Accept: text/event-stream`
    the answer streams as SSE; otherwise the response is the finished answer."""
    if request.method != "POST":
        return _error_response(exceptions.MethodNotAllowed(request.method))
    try:
        user = await db(_authenticate)(request)
        answer = await db(_ask)(user=user, data=_parse_ask(request))
    except Exception as exc:
        return _error_response(exc)
    if "text/event-stream" in request.headers.get("Accept", ""):
        return _event_stream(user, answer.id, after=0, fresh=True)
    return await _finished_answer(user, answer.id)


@csrf_exempt
async def message_stream_api(request: HttpRequest, message_id: int) -> HttpResponse:
    """GET /api/v1/chat/messages/{id}/stream: the answer's events after `Last-Event-ID` (or `?after=N`), then
    the live ones until `done`."""
    if request.method != "GET":
        return _error_response(exceptions.MethodNotAllowed(request.method))
    raw_after = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    try:
        after = int(raw_after)
        if not 0 <= after <= events.MAX_SEQ:
            raise ValueError
    except ValueError:
        return _error_response(exceptions.ValidationError(
            {"after": [f"Give the last event id seen (0 to {events.MAX_SEQ})."]}
        ))
    try:
        user = await db(_authenticate)(request)
        message = await db(message_get)(user=user, message_id=message_id)
    except Exception as exc:
        return _error_response(exc)
    if message.role != Message.Role.ASSISTANT:
        return _error_response(exceptions.NotFound("Only answers have an event stream."))
    if message.is_finished and after == message.last_seq:
        # The client has every event, `done` included: 204 is what stops an EventSource from reconnecting. (One
        # past the saved end saw tokens of a worker that wrote on after the answer was closed: it still gets
        # the ending, renumbered after them.)
        return HttpResponse(status=204)
    return _event_stream(user, message.id, after=after)


def _chat_error(exc: ChatError) -> APIError:
    return APIError(exc.status_code, exc.code, exc.message)


class ConversationListApi(APIView):
    @extend_schema(responses=paginated(ConversationOut), operation_id="conversations_list")
    def get(self, request):
        return paginate(request, conversation_list(user=request.user), ConversationOut, view=self)


class ConversationMessagesApi(APIView):
    @extend_schema(responses=paginated(MessageOut), operation_id="conversation_messages_list")
    def get(self, request, conversation_id: int):
        messages = message_list(user=request.user, conversation_id=conversation_id)
        return paginate(request, messages, MessageOut, view=self)


class MessageDetailApi(APIView):
    @extend_schema(responses=MessageOut, operation_id="chat_message_retrieve")
    def get(self, request, message_id: int):
        return Response(MessageOut(message_get(user=request.user, message_id=message_id)).data)


class MessageCancelApi(APIView):
    @extend_schema(request=None, responses={202: MessageOut}, operation_id="chat_message_cancel")
    def post(self, request, message_id: int):
        try:
            message = message_cancel(user=request.user, message_id=message_id)
        except ChatError as exc:
            raise _chat_error(exc) from exc
        return Response(MessageOut(message).data, status=202)
