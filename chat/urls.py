from django.urls import path

from chat import views

urlpatterns = [
    path("", views.chat_home_view, name="chat"),
    path("new/", views.chat_new_view, name="chat_new"),
    path("<int:conversation_id>/", views.chat_conversation_view, name="chat_conversation"),
    path("<int:conversation_id>/delete/", views.chat_delete_view, name="chat_delete"),
]
