"""Reads of conversations and messages. Every function takes the user whose data it returns."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import User
from chat.models import Conversation, Message


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).order_by("-updated_at", "-id")


def conversation_get(*, user: User, conversation_id: int) -> Conversation:
    # Someone else's conversation is a plain 404, indistinguishable from one that never existed.
    return get_object_or_404(Conversation, id=conversation_id, owner=user)


def message_list(*, user: User, conversation_id: int) -> QuerySet[Message]:
    conversation = conversation_get(user=user, conversation_id=conversation_id)
    return conversation.messages.order_by("created_at", "id")


def message_get(*, user: User, message_id: int) -> Message:
    return get_object_or_404(Message.objects.select_related("conversation"), id=message_id,
                             conversation__owner=user)



def message_find(*, user: User, message_id: int) -> Message | None:
    return Message.objects.filter(id=message_id, conversation__owner=user).first()
