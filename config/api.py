"""What every /api/v1/ endpoint shares: one error format and one pagination shape."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpResponse, JsonResponse
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from billing.exceptions import BillingError
from billing.http import limit_exceeded_response_parts
from billing.limiter import LimitExceeded

_CODES = {400: "invalid_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          413: "too_large", 415: "unsupported_media_type", 429: "rate_limited"}


class APIError(exceptions.APIException):
    """A domain error mapped to an HTTP status by the edge: `raise APIError(413, "too_large", "…")`."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.headers = headers or {}
        self.extra = extra or {}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Every API error body is `{"error": {"code", "message", ...}}`."""
    if isinstance(exc, LimitExceeded):
        status, headers, body = limit_exceeded_response_parts(exc)
        return Response(body, status=status, headers=headers)
    if isinstance(exc, BillingError):  # upload limits (413/403), models not in the plan (403), ...
        exc = APIError(exc.status_code, exc.code, exc.message)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, APIError):
        body: dict[str, Any] = {"code": exc.error_code, "message": str(exc.detail), **exc.extra}
        for name, value in exc.headers.items():
            response[name] = value
    elif isinstance(exc, exceptions.ValidationError):
        body = {"code": "invalid_request", "message": _first_message(exc.detail), "fields": exc.detail}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        body = {"code": _CODES.get(response.status_code, "error"), "message": str(detail)}
    if isinstance(exc, exceptions.Throttled) and exc.wait:
        body["retry_after"] = int(exc.wait)
    response.data = {"error": body}
    return response


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            message = _first_message(value)
            return message if field == "non_field_errors" else f"{field}: {message}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


class Pagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


_PAGINATED: dict[type, type[serializers.Serializer]] = {}


def paginated(serializer_class: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The OpenAPI shape of `paginate`'s answer for `serializer_class`: `extend_schema(responses=paginated(X))`."""
    if serializer_class not in _PAGINATED:
        name = f"Paginated{serializer_class.__name__.removesuffix('Out')}List"
        _PAGINATED[serializer_class] = type(name, (serializers.Serializer,), {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        })
    return _PAGINATED[serializer_class]


@csrf_exempt
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    """The last /api/v1/ route: an unknown path (or an id the URL pattern refuses) answers in the API's format."""
    return JsonResponse({"error": {"code": "not_found", "message": "Not found."}}, status=404)


def csrf_failure(request, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: a session-authenticated API call without its CSRF token gets the API's JSON error."""
    if request.path.startswith(("/api/", "/v1/")):
        message = "CSRF check failed: send the X-CSRFToken header with session authentication, or use an API key."
        return JsonResponse({"error": {"code": "csrf_failed", "message": message}}, status=403)
    return csrf.csrf_failure(request, reason=reason)


def server_error(request) -> HttpResponse:
    """handler500: API callers get JSON they can parse, people get the page."""
    if request.path.startswith(("/api/", "/v1/")):
        return JsonResponse(
            {"error": {"code": "server_error", "message": "Something went wrong on our side; it has been logged."}},
            status=500,
        )
    return defaults.server_error(request)


def paginate(request: Request, queryset, serializer_class: type[serializers.Serializer], *, view=None) -> Response:
    paginator = Pagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)
