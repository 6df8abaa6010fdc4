"""Chat's edges map domain errors here, in one place: to an HTTP status + headers + `{"error": {...}}` body for
the API views, or to an `error` event for the WebSocket."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import exceptions

from billing.exceptions import BillingError
from billing.http import limit_exceeded_response_parts
from billing.limiter import LimitExceeded
from chat.services import ChatError

_API_CODES = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              429: "rate_limited"}


def describe(exc: Exception) -> tuple[int, dict[str, str], dict[str, Any]] | None:
    """(status, headers, error body) for an error an edge should answer with; None for a bug."""
    if isinstance(exc, LimitExceeded):
        status, headers, body = limit_exceeded_response_parts(exc)
        return status, headers, body["error"]
    if isinstance(exc, BillingError | ChatError):
        return exc.status_code, {}, {"code": exc.code, "message": exc.message}
    if isinstance(exc, Http404):
        return 404, {}, {"code": "not_found", "message": "Not found."}
    if isinstance(exc, exceptions.APIException):
        headers: dict[str, str] = {}
        body: dict[str, Any] = {"code": _API_CODES.get(exc.status_code, "error"), "message": str(exc.detail)}
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
        if isinstance(exc, exceptions.Throttled) and exc.wait:
            headers["Retry-After"] = str(int(exc.wait))
            body["retry_after"] = int(exc.wait)
        return exc.status_code, headers, body
    return None


def error_event(exc: Exception) -> dict[str, Any] | None:
    described = describe(exc)
    if described is None:
        return None
    return {"type": "error", **described[2]}
