import gc
import os
from importlib import import_module

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before the routing modules import consumers and models.
django_asgi_app = get_asgi_application()

from channels.auth import get_user  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.sessions import CookieMiddleware  # noqa: E402
from django.conf import settings  # noqa: E402

from config.body_limit import RequestBodyLimit  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402


class SocketSessionMiddleware:
    """scope["session"] and scope["user"] of a WebSocket, read once when it connects.

    Channels' AuthMiddlewareStack does the same, and also wraps `send` to save a modified session with every
    outgoing message. No socket here changes the session, and that wrapper (a lazy session lookup on each
    message) was a visible share of the web process' CPU with hundreds of answers streaming tokens."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope, receive, send):
        session = self.store(scope["cookies"].get(settings.SESSION_COOKIE_NAME))
        scope = dict(scope, session=session)
        scope["user"] = await get_user(scope)
        return await self.inner(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": RequestBodyLimit(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            CookieMiddleware(SocketSessionMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# Everything loaded so far lives as long as the process: out of the collector's reach, a full collection no
# longer walks Django, DRF and the app (~200k objects, a pause of ~0.2 s with the GIL held that would stall
# every socket and request in flight).
gc.freeze()
