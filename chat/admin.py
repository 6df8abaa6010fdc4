from django.contrib import admin

from chat.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["role", "status", "finish_reason", "content", "prompt_tokens", "completion_tokens", "cost_usd"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "owner", "updated_at"]
    search_fields = ["title", "owner__email"]
    raw_id_fields = ["owner"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "status", "finish_reason", "model", "completion_tokens",
                    "first_token_ms", "created_at"]
    list_filter = ["role", "status", "finish_reason", "model"]
    raw_id_fields = ["conversation"]
    readonly_fields = ["reservation", "request_id", "citations"]
