"""The chat endpoints that stream Server-Sent Events in the OpenAPI schema.

They are async Django views (DRF cannot stream from the ASGI server without buffering), so drf-spectacular does
not see them; this postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]) adds them, with the event
format, so that the documented REST API is the whole API."""

from __future__ import annotations

from typing import Any

from chat import events

EVENTS_DESCRIPTION = (
    "Server-Sent Events, one per answer event, each with `id:` (its sequence number), `event:` (its type) and "
    "`data:` (a JSON object):\n\n"
    "- `start`: `{message_id, conversation_id}`\n"
    "- `token`: `{text, seq}`, the next piece of the answer\n"
    "- `citations`: `{citations: [{document_id, document_title, page, chunk_id, snippet}]}`\n"
    "- `done`: `{usage: {prompt_tokens, completion_tokens, cost_usd}, finish_reason}` (`stop`, `length`, "
    "`cancelled` or `error`); the server then closes the stream\n"
    "- `error`: `{code, message, retry_after?}`\n\n"
    "Comment lines (`: keep-alive`) arrive while the model is quiet. To resume after a dropped connection, "
    "`GET /api/v1/chat/messages/{id}/stream` with `Last-Event-ID` (or `?after=N`)."
)

# Before OpenAPI 3.2 (and its `itemSchema`), the schema of an event stream describes each event.
_EVENT_STREAM = {"text/event-stream": {"schema": {
    "type": "object",
    "description": "One server-sent event.",
    "properties": {
        "event": {"type": "string", "enum": ["start", "token", "citations", "done", "error"]},
        "id": {"type": "string", "description": "The event's `seq`: resume after it with `Last-Event-ID`."},
        "data": {"type": "string", "description": "The event as a JSON object, with the same `type` and `seq`."},
        "retry": {"type": "integer", "minimum": 0, "description": "Milliseconds to wait before reconnecting."},
    },
}}}
_SECURITY = [{"ApiKeyAuth": []}, {"cookieAuth": []}]
_ERROR = {
    "description": "The refusal, in the API's error format.",
    "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "retry_after": {"type": "integer", "description": "Seconds, for limits."}},
        }},
    }}},
}

ASK_REQUEST = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {"type": "string", "minLength": 1, "description": "The question."},
        "conversation_id": {"type": "integer", "nullable": True,
                            "description": "Continue this conversation (yours); a new one when absent."},
        "document_ids": {"type": "array", "items": {"type": "integer"}, "nullable": True,
                         "description": "Search only these documents (yours); all of them when absent."},
    },
}


def _chat_ask() -> dict[str, Any]:
    return {
        "operationId": "chat_ask",
        "summary": "Ask a question about your documents",
        "description": (
            "With `Accept: text/event-stream` the answer streams as it is generated; otherwise the response is "
            "the finished answer (201), or 502 with the partial answer when the model failed. An answer still "
            "running after `CHAT_API_WAIT_SECONDS` (default 300) is returned as it stands with 202 and a "
            "`Location` to follow the rest.\n\n"
            + EVENTS_DESCRIPTION
        ),
        "tags": ["v1"],
        "security": _SECURITY,
        "requestBody": {"required": True, "content": {"application/json": {"schema": ASK_REQUEST}}},
        "responses": {
            "200": {"description": "The answer's events (with `Accept: text/event-stream`).", "content": _EVENT_STREAM},
            "201": {"description": "The finished answer.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageOut"}}}},
            "202": {"description": "Still being answered: the answer so far; `Location` streams the rest.",
                    "headers": {"Location": {"schema": {"type": "string"},
                                             "description": "This answer's event stream."}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageOut"}}}},
            "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "429": _ERROR, "502": _ERROR,
        },
    }


def _message_stream() -> dict[str, Any]:
    return {
        "operationId": "chat_message_stream",
        "summary": "Follow or resume an answer's events",
        "description": "The events after `Last-Event-ID` (or `?after=N`), then the live ones until `done`.\n\n"
        + EVENTS_DESCRIPTION,
        "tags": ["v1"],
        "security": _SECURITY,
        "parameters": [
            {"in": "path", "name": "message_id", "required": True, "schema": {"type": "integer"}},
            {"in": "query", "name": "after", "required": False,
             "schema": {"type": "integer", "minimum": 0, "maximum": events.MAX_SEQ},
             "description": "The last event id seen; 0 replays from the start."},
            {"in": "header", "name": "Last-Event-ID", "required": False, "schema": {"type": "string"},
             "description": "Sent by EventSource clients on reconnect; wins over `after`."},
        ],
        "responses": {
            "200": {"description": "The answer's events.", "content": _EVENT_STREAM},
            "204": {"description": "The answer is finished and the client has seen its `done`: nothing follows "
                                   "(an EventSource stops reconnecting)."},
            "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR,
        },
    }


def sse_endpoints(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    paths = result.setdefault("paths", {})
    paths.setdefault("/api/v1/chat/", {})["post"] = _chat_ask()
    paths.setdefault("/api/v1/chat/messages/{message_id}/stream", {})["get"] = _message_stream()
    return result
