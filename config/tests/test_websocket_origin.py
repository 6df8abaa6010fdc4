"""Every WebSocket refuses a handshake from a page of another origin (the browser sends the user's cookies with
it, so accepting it would let any site read the user's answers and documents live)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from accounts.tests.factories import UserFactory
from chat.services import conversation_create

pytestmark = pytest.mark.django_db(transaction=True)


def _cookie(user) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {"Cookie": f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"}


@pytest.mark.parametrize("route", ["documents", "chat"])
def test_sockets_accept_their_own_origin_and_refuse_any_other(asgi_server, route) -> None:
    user = UserFactory()
    path = "/ws/documents/" if route == "documents" else f"/ws/chat/{conversation_create(user=user).id}/"
    url = asgi_server.replace("http://", "ws://") + path

    with connect(url, origin=asgi_server, additional_headers=_cookie(user), open_timeout=5) as own:
        assert own.ping().wait(5)  # the server answers: the socket was accepted and is open
    for origin in ("http://evil.example", asgi_server.replace("127.0.0.1", "127.0.0.1.evil.example")):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=origin, additional_headers=_cookie(user), open_timeout=5)
        assert refused.value.response.status_code == 403, origin
