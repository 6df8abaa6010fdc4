"""How a refusal by the limiter looks to a client: one place for the HTTP 429 and the WebSocket error event."""

from __future__ import annotations

from typing import Any

from billing.limiter import LimitExceeded

_WHAT = {  # (one, many)
    "rpm": ("request per minute", "requests per minute"),
    "tpm": ("token per minute", "tokens per minute"),
    "concurrency": ("concurrent request", "concurrent requests"),
    "quota": ("token this month", "tokens this month"),
}


def _what(limit: str, count: int) -> str:
    one, many = _WHAT[limit]
    return one if count == 1 else many


def _when(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def limit_exceeded_message(exc: LimitExceeded) -> str:
    limit = f"{exc.limit_value:,} {_what(exc.limit, exc.limit_value)}"
    if not exc.satisfiable:
        if exc.limit_value == 0:
            return f"Your plan allows no {_what(exc.limit, 0)}."
        return (f"This request needs more tokens than your plan allows ({limit}); "
                "send a shorter prompt or a lower max_tokens.")
    if exc.limit == "quota":
        return (f"Your monthly token quota is used up ({limit}). It resets in {_when(exc.retry_after)}; "
                "upgrade your plan for more.")
    if exc.limit == "concurrency":
        return (f"Too many requests at once: your plan allows {exc.limit_value:,} at a time. "
                "Wait for one to finish.")
    return f"Rate limit reached: your plan allows {limit}. Try again in {_when(exc.retry_after)}."


def limit_exceeded_code(exc: LimitExceeded) -> str:
    return "quota_exceeded" if exc.limit == "quota" else "rate_limited"


def limit_exceeded_response_parts(exc: LimitExceeded) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(429, headers with Retry-After and the IETF RateLimit / RateLimit-Policy fields, JSON body)."""
    body = {
        "error": {
            "code": limit_exceeded_code(exc),
            "limit": exc.limit,
            "message": limit_exceeded_message(exc),
            "retry_after": exc.retry_after,
        }
    }
    return 429, exc.headers(), body


def limit_exceeded_event(exc: LimitExceeded) -> dict[str, Any]:
    """The WebSocket `error` event for a refusal."""
    return {
        "type": "error",
        "code": limit_exceeded_code(exc),
        "limit": exc.limit,
        "message": limit_exceeded_message(exc),
        "retry_after": exc.retry_after,
    }
