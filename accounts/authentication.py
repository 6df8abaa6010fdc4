from django.conf import settings
from django_ratelimit.core import is_ratelimited
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from accounts.services import InvalidAPIKey, api_key_authenticate

FAILURE_GROUP = "api-key-failures"


class APIKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer dk_…`. Failed attempts are counted per client IP; past the limit even a valid key
    is refused with 429 until the window passes, so keys cannot be guessed at speed."""

    keyword = b"bearer"

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None
        django_request = request._request
        if is_ratelimited(
            django_request, group=FAILURE_GROUP, key="ip", rate=settings.API_KEY_FAILURE_RATE, increment=False
        ):
            raise exceptions.Throttled(detail="Too many failed API key attempts; try again in a minute.")
        if len(header) != 2:
            self._count_failure(django_request)
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <API key>'.")
        try:
            user, api_key = api_key_authenticate(raw_key=header[1].decode("latin-1"))
        except InvalidAPIKey as exc:
            self._count_failure(django_request)
            raise exceptions.AuthenticationFailed(str(exc)) from exc
        return user, api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'

    @staticmethod
    def _count_failure(django_request) -> None:
        is_ratelimited(
            django_request, group=FAILURE_GROUP, key="ip", rate=settings.API_KEY_FAILURE_RATE, increment=True
        )
