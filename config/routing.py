"""WebSocket routes of every app, gathered for the ASGI router."""

from chat.routing import websocket_urlpatterns as chat_routes
from documents.routing import websocket_urlpatterns as document_routes

websocket_urlpatterns = [*document_routes, *chat_routes]
