from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from chat.models import Message
from chat.selectors import conversation_get, conversation_list, message_list
from chat.serializers import MessageOut
from chat.services import conversation_create, conversation_delete
from documents.models import Document
from documents.selectors import document_list


def _page(request: HttpRequest, conversation=None) -> HttpResponse:
    messages = list(message_list(user=request.user, conversation_id=conversation.id)) if conversation else []
    streaming = next((m for m in messages if m.role == Message.Role.ASSISTANT and not m.is_finished), None)
    return render(request, "chat/chat.html", {
        "conversations": conversation_list(user=request.user)[:100],
        "conversation": conversation,
        "chat_messages": messages,
        "documents": document_list(user=request.user).filter(status=Document.Status.READY)[:500],
        "streaming_json": MessageOut(streaming).data if streaming else None,
    })


@login_required
def chat_home_view(request: HttpRequest) -> HttpResponse:
    return _page(request)


@login_required
def chat_conversation_view(request: HttpRequest, conversation_id: int) -> HttpResponse:
    return _page(request, conversation_get(user=request.user, conversation_id=conversation_id))


@login_required
@require_POST
def chat_new_view(request: HttpRequest) -> HttpResponse:
    """Starts a conversation: JSON for the page's script, a redirect for a plain form post."""
    conversation = conversation_create(user=request.user)
    url = reverse("chat_conversation", args=[conversation.id])
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse({"id": conversation.id, "url": url}, status=201)
    return redirect(url)


@login_required
@require_POST
def chat_delete_view(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation_delete(conversation=conversation_get(user=request.user, conversation_id=conversation_id))
    return redirect("chat")
