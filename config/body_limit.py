"""A ceiling on HTTP request bodies, enforced while they arrive.

Django's ASGI handler reads a whole body into a spooled temporary file before any middleware or view runs, and
uvicorn sets no limit of its own: without this, anyone could stream gigabytes to disk (any URL, no login) long
before an upload view answered 413. The ceiling is the largest file the server accepts plus room for the
multipart envelope; every other body is far smaller (the JSON APIs stop at DATA_UPLOAD_MAX_MEMORY_SIZE)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from django.conf import settings

_ENVELOPE_BYTES = 1024 * 1024


def max_body_bytes() -> int:
    return settings.MAX_UPLOAD_MB * 1024 * 1024 + _ENVELOPE_BYTES


class RequestBodyLimit:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = max_body_bytes()
        declared, chunked = _body_headers(scope)
        if not chunked:
            # The server reads exactly the declared length (none: no body), so only that needs checking.
            if declared is not None and declared > limit:
                return await _refuse(send, limit)
            return await self.app(scope, receive, send)

        received = 0
        over = started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # To Django a client that went away: it stops reading and answers nothing.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over and not started:
                return  # the refusal below answers instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracked_send)
        if over and not started:
            await _refuse(send, limit)


def _body_headers(scope: dict[str, Any]) -> tuple[int | None, bool]:
    """(Content-Length, whether the body is chunked) of the request."""
    declared, chunked = None, False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            with contextlib.suppress(ValueError):  # the server refuses an invalid length before we are called
                declared = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return declared, chunked


async def _refuse(send: Any, limit: int) -> None:
    body = json.dumps({"error": {
        "code": "too_large",
        "type": "invalid_request_error",
        "message": f"The request body is over the {limit // (1024 * 1024)} MB this server accepts; "
                   f"files may be up to {settings.MAX_UPLOAD_MB} MB.",
    }}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
