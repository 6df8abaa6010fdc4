"""The OpenAI-compatible surface, included at /v1/ (config/urls.py)."""

from django.urls import path, re_path

from chat.openai_compat import views

urlpatterns = [
    path("chat/completions", views.chat_completions, name="openai_chat_completions"),
    path("embeddings", views.embeddings, name="openai_embeddings"),
    path("models", views.models_list, name="openai_models"),
    path("models/<path:model>", views.model_retrieve, name="openai_model"),
    # Anything else under /v1/ is a 404 in OpenAI's error shape, never Django's HTML page.
    re_path(r"^(?P<path>[\s\S]*)$", views.not_found, name="openai_not_found"),
]
