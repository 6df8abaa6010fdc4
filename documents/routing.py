from django.urls import path

from documents.consumers import DocumentsConsumer

websocket_urlpatterns = [path("ws/documents/", DocumentsConsumer.as_asgi())]
