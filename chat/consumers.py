from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http import Http404

from chat import events, prompting
from chat.asyncdb import db
from chat.errors import error_event
from chat.models import Conversation, Message
from chat.selectors import conversation_get, message_find, message_get
from chat.services import chat_ask, message_cancel

logger = logging.getLogger(__name__)

# Load the tokenizer (~0.3 s) in the background as soon as the ASGI app routes here, not in the first question.
threading.Thread(
    target=prompting.count_tokens, args=("warm up",), name="chat-tokenizer-warm-up", daemon=True
).start()


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """`ws/chat/<conversation_id>/` for the conversation's owner. Client messages:
    {"type": "ask", "message", "document_ids"?}, {"type": "cancel", "message_id"?},
    {"type": "resume", "message_id", "after"}. Server messages are the answer's events (see chat.events), and
    {"type": "error", "code", "message", ...} for a refused request.

    Events come from the answer's Redis stream, read by a per-socket relay task; the channel layer is not used.
    """

    # No channel layer: a per-socket layer channel would be one more subscription per connection for nothing.
    channel_layer_alias = "chat-without-channel-layer"

    conversation: Conversation | None = None
    relay: asyncio.Task[None] | None = None
    following: int | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)  # before accept: the handshake is refused with HTTP 403
            return
        try:
            self.conversation = await db(conversation_get)(
                user=user, conversation_id=self.scope["url_route"]["kwargs"]["conversation_id"]
            )
        except Http404:
            await self.close(code=4404)
            return
        await self.accept()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels first runs close_old_connections on its single shared sync thread for every message; this
        # consumer's database calls run elsewhere and tidy their own connections, so that hop is pure latency.
        await getattr(self, get_handler_name(message))(message)

    async def disconnect(self, code: int) -> None:
        # Closing the socket only stops the relay: the answer keeps generating and is saved for later.
        if self.relay is not None:
            self.relay.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        # Channels raises on a frame without text, which ended the consumer without its disconnect (the relay of
        # an answer it followed stayed in the hub until the answer ended).
        if not text_data:
            await self._error("invalid_request", "Send JSON in text frames.")
            return
        await self.receive_json(await self.decode_json(text_data), **kwargs)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        handler = {"ask": self._ask, "cancel": self._cancel, "resume": self._resume}.get(kind)
        if handler is None:
            await self._error("invalid_request", 'Send {"type": "ask" | "cancel" | "resume", ...}.')
            return
        try:
            await handler(content)
        except Exception as exc:
            payload = error_event(exc)
            if payload is None:
                logger.exception("chat socket request failed")
                payload = {"type": "error", "code": "internal_error", "message": "Something went wrong."}
            await self.send_json(payload)

    async def decode_json(self, text_data: str) -> Any:
        try:
            return json.loads(text_data)
        except ValueError:
            return None

    async def _error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    def _busy(self) -> bool:
        return self.relay is not None and not self.relay.done()

    async def _ask(self, content: dict[str, Any]) -> None:
        if self._busy():
            await self._error("busy", "An answer is still streaming: wait for it or cancel it first.")
            return
        received = time.perf_counter()
        answer = await db(chat_ask)(
            user=self.scope["user"],
            question=content.get("message"),
            conversation=self.conversation,
            document_ids=content.get("document_ids"),
        )
        logger.debug("ask saved and queued in %.1f ms", (time.perf_counter() - received) * 1000)
        self._follow(answer.id, after=0, fresh=True)

    async def _cancel(self, content: dict[str, Any]) -> None:
        message_id = content.get("message_id") or self.following
        if not isinstance(message_id, int):
            await self._error("invalid_request", "Nothing to cancel.")
            return
        message = await db(message_get)(user=self.scope["user"], message_id=message_id)
        if message.conversation_id != self.conversation.id:
            raise Http404
        await db(message_cancel)(user=self.scope["user"], message_id=message_id)

    async def _resume(self, content: dict[str, Any]) -> None:
        message_id, after = content.get("message_id"), content.get("after", 0)
        if not isinstance(message_id, int) or not isinstance(after, int) or not 0 <= after <= events.MAX_SEQ:
            await self._error("invalid_request", "resume needs an integer message_id and after (the last seq seen).")
            return
        message = await db(message_get)(user=self.scope["user"], message_id=message_id)
        if message.conversation_id != self.conversation.id or message.role != Message.Role.ASSISTANT:
            raise Http404
        if self.relay is not None:
            self.relay.cancel()
        self._follow(message_id, after=after)

    def _follow(self, message_id: int, *, after: int, fresh: bool = False) -> None:
        self.following = message_id
        self.relay = asyncio.get_running_loop().create_task(self._relay(message_id, after, fresh))

    async def _relay(self, message_id: int, after: int, fresh: bool = False) -> None:
        user = self.scope["user"]

        async def load() -> Message | None:
            return await db(message_find)(user=user, message_id=message_id)

        try:
            followed = events.follow(message_id, after=after, heartbeat=settings.CHAT_SSE_HEARTBEAT_SECONDS,
                                     load_message=load, fresh=fresh)
            async with contextlib.aclosing(followed):
                async for item in followed:
                    if item is not None:
                        await self.send(text_data=item.data)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("relay of answer %s failed", message_id)
            await self._error("stream_failed", "Lost the answer's stream; reconnect to resume it.")
            # Closed, so that the client resumes as after any dropped connection (the page reconnects on close);
            # left open, the page kept the answer busy until it was reloaded.
            await self.close(code=1011)
