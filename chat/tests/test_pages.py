"""The chat web pages (server-rendered part; the socket behind them is covered by the streaming tests)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from chat.models import Conversation, Message
from chat.services import conversation_create

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_chat_page_lists_only_the_users_own_conversations() -> None:
    user, other = UserFactory(), UserFactory()
    conversation_create(user=user, title="Boiler questions")
    conversation_create(user=other, title="Someone else's secrets")

    page = logged_in(user).get("/chat/")

    assert page.status_code == 200
    assert b"Boiler questions" in page.content and b"secrets" not in page.content


def test_conversation_page_shows_its_messages_and_the_answer_still_streaming() -> None:
    user = UserFactory()
    conversation = conversation_create(user=user, title="Heating")
    Message.objects.create(conversation=conversation, role="user", content="How often is it serviced?")
    streaming = Message.objects.create(conversation=conversation, role="assistant", status="streaming")

    page = logged_in(user).get(f"/chat/{conversation.id}/")

    assert b"How often is it serviced?" in page.content
    script = page.content.split(b'id="streaming-data" type="application/json">')[1].split(b"</script>")[0]
    assert json.loads(script)["id"] == streaming.id  # the page's script resumes this answer's stream


def test_someone_elses_conversation_page_is_404_and_anonymous_visitors_log_in_first() -> None:
    owner = UserFactory()
    conversation = conversation_create(user=owner)

    assert logged_in(UserFactory()).get(f"/chat/{conversation.id}/").status_code == 404
    anonymous = Client().get("/chat/")
    assert anonymous.status_code == 302 and "/accounts/login" in anonymous["Location"]


def test_new_conversation_answers_json_to_the_page_script_and_redirects_a_form() -> None:
    user = UserFactory()
    client = logged_in(user)

    created = client.post("/chat/new/", HTTP_ACCEPT="application/json")
    redirected = client.post("/chat/new/")

    assert created.status_code == 201
    conversation = Conversation.objects.get(id=created.json()["id"])
    assert conversation.owner == user and created.json()["url"] == f"/chat/{conversation.id}/"
    assert redirected.status_code == 302 and redirected["Location"].startswith("/chat/")
    assert Conversation.objects.filter(owner=user).count() == 2


def test_deleting_a_conversation_removes_its_messages() -> None:
    user = UserFactory()
    conversation = conversation_create(user=user)
    Message.objects.create(conversation=conversation, role="user", content="Hi")

    response = logged_in(user).post(f"/chat/{conversation.id}/delete/")

    assert response.status_code == 302
    assert not Conversation.objects.filter(id=conversation.id).exists() and not Message.objects.exists()
