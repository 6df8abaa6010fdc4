from __future__ import annotations

from typing import Any

from rest_framework import serializers

from chat.models import Conversation, Message


class ConversationOut(serializers.ModelSerializer):
    class Meta:
        model = Conversation
        fields = ["id", "title", "created_at", "updated_at"]


class MessageOut(serializers.ModelSerializer):
    conversation_id = serializers.IntegerField(read_only=True)
    error = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()
    latency_ms = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id", "conversation_id", "role", "content", "status", "finish_reason", "error", "citations",
            "document_ids", "model", "usage", "latency_ms", "created_at", "completed_at",
        ]

    def get_error(self, message: Message) -> dict[str, Any] | None:
        if not message.error_code:
            return None
        error = {"code": message.error_code, "message": message.error_message}
        if message.error_retry_after is not None:
            error["retry_after"] = message.error_retry_after
        return error

    def get_usage(self, message: Message) -> dict[str, Any] | None:
        if message.role != Message.Role.ASSISTANT:
            return None
        return {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "cost_usd": str(message.cost_usd),
        }

    def get_latency_ms(self, message: Message) -> dict[str, int | None] | None:
        if message.role != Message.Role.ASSISTANT:
            return None
        return {"retrieval": message.retrieval_ms, "first_token": message.first_token_ms, "total": message.total_ms}


class AskIn(serializers.Serializer):
    message = serializers.CharField(trim_whitespace=True, allow_blank=False)
    conversation_id = serializers.IntegerField(required=False, allow_null=True)
    document_ids = serializers.ListField(child=serializers.IntegerField(), required=False, allow_null=True)
