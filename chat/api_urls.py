from django.urls import path

from chat import api

urlpatterns = [
    path("chat/", api.chat_ask_api, name="chat_ask_api"),
    path("chat/messages/<int:message_id>/", api.MessageDetailApi.as_view(), name="chat_message_detail_api"),
    path("chat/messages/<int:message_id>/stream", api.message_stream_api, name="chat_message_stream_api"),
    path("chat/messages/<int:message_id>/cancel", api.MessageCancelApi.as_view(), name="chat_message_cancel_api"),
    path("conversations/", api.ConversationListApi.as_view(), name="conversation_list_api"),
    path(
        "conversations/<int:conversation_id>/messages/",
        api.ConversationMessagesApi.as_view(),
        name="conversation_messages_api",
    ),
]
