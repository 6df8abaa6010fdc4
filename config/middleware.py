"""Project middleware. Every class here works in both modes, so that the ASGI server never has to push a request
through a single sync thread (one sync-only middleware makes Django do that for every request)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from django_ratelimit.exceptions import Ratelimited

# Every product page is served with scripts, styles and sockets from this origin only: no inline script, no CDN.
# The admin and the API docs come from third-party templates that use inline code, so they keep Django's defaults.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self' {sockets}; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
EXEMPT_PREFIXES = ("/admin/", "/api/docs/")


class _DualModeMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if iscoroutinefunction(self):
            return self._acall(request)
        return self.process_response(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return self.process_response(request, await self.get_response(request))

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


class ContentSecurityPolicyMiddleware(_DualModeMiddleware):
    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if "Content-Security-Policy" not in response and not request.path.startswith(EXEMPT_PREFIXES):
            host = request.get_host()
            response["Content-Security-Policy"] = POLICY.format(sockets=f"ws://{host} wss://{host}")
        return response


class RatelimitMiddleware(_DualModeMiddleware):
    """django-ratelimit's middleware (turns `Ratelimited` into RATELIMIT_VIEW's answer), usable under ASGI."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Ratelimited):
            return import_string(settings.RATELIMIT_VIEW)(request, exception)
        return None
