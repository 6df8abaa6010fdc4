"""Every refusal of the /v1/ surface in OpenAI's error shape, `{"error": {"message", "type", "code", "param"}}`,
with the status the official SDKs map to their error classes (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, 429 RateLimitError, 5xx InternalServerError)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions

from billing.exceptions import BillingError, ModelNotAllowed, UnknownModel
from billing.http import limit_exceeded_message
from billing.limiter import LimitExceeded
from chat.services import ChatError, InvalidDocuments

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
# The SDKs retry 429 and 5xx by themselves; this header tells them when waiting cannot help.
NO_RETRY = {"x-should-retry": "false"}


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param,
                          **self.extra}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str, message: str | None = None) -> OpenAIError:
    return OpenAIError(
        404,
        message or f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def server_error(message: str, *, code: str | None = None) -> OpenAIError:
    return OpenAIError(500, message, type=SERVER_ERROR, code=code)


def _limit_error(exc: LimitExceeded) -> OpenAIError:
    headers = dict(exc.headers())
    if exc.limit == "quota":
        type_, code = "insufficient_quota", "insufficient_quota"
    else:
        type_, code = ("tokens" if exc.limit == "tpm" else "requests"), "rate_limit_exceeded"
    if exc.limit == "quota" or not exc.satisfiable:
        headers.update(NO_RETRY)  # a month away, or never as asked: an automatic retry only wastes a request
    return OpenAIError(429, limit_exceeded_message(exc), type=type_, code=code, headers=headers,
                       extra={"limit": exc.limit, "retry_after": exc.retry_after})


def _type_for(status: int) -> str:
    if status >= 500:
        return SERVER_ERROR
    if status == 403:
        return "permission_error"
    return INVALID_REQUEST


def from_exception(exc: BaseException) -> OpenAIError | None:
    """The OpenAI error for a refusal by auth, chat, billing or documents; None for a bug."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, LimitExceeded):
        return _limit_error(exc)
    if isinstance(exc, ModelNotAllowed | UnknownModel):
        return model_not_found(exc.model, exc.message)
    if isinstance(exc, BillingError):
        return OpenAIError(exc.status_code, exc.message, type=_type_for(exc.status_code), code=exc.code)
    if isinstance(exc, ChatError):
        param = "docent.document_ids" if isinstance(exc, InvalidDocuments) else "messages"
        return OpenAIError(exc.status_code, exc.message, type=_type_for(exc.status_code), code=exc.code,
                           param=param)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        message = str(exc.detail)
        if isinstance(exc, exceptions.NotAuthenticated):
            message = "You didn't provide an API key: send 'Authorization: Bearer <your Docent API key>'."
        return OpenAIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="api"'})
    if isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 60)
        return OpenAIError(429, str(exc.detail), type="requests", code="rate_limit_exceeded",
                           headers={"Retry-After": str(wait)}, extra={"retry_after": wait})
    if isinstance(exc, Http404):
        return OpenAIError(404, "Not found.", code="not_found")
    if isinstance(exc, RequestDataTooBig):
        return OpenAIError(413, f"The request body is over the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 2**20} MB "
                                "this API accepts; send less text per request.", code="too_large")
    if isinstance(exc, exceptions.APIException):
        return OpenAIError(exc.status_code, str(exc.detail), type=_type_for(exc.status_code))
    return None
