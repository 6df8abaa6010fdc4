"""Who may see and drive which conversation: the owner only, over the socket and every API endpoint."""

from __future__ import annotations

import httpx
import pytest
from django.test import Client
from websockets.exceptions import InvalidStatus

from chat.models import Message
from chat.services import conversation_create
from chat.tests.conftest import ChatSocket, api_key, session_cookie
from chat.tests.factories import chat_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_other_users_and_anonymous_visitors_are_refused_the_conversation_socket(live) -> None:
    owner, other = chat_user(), chat_user()
    conversation = conversation_create(user=owner)

    for user in (other, None):
        with pytest.raises(InvalidStatus) as refused:
            ChatSocket(live, conversation.id, user)
        assert refused.value.response.status_code == 403
    with ChatSocket(live, conversation.id, owner) as socket:
        socket.send(type="resume", message_id=0, after=0)
        assert socket.recv()["code"] == "not_found"  # the owner is let in


def test_another_users_answer_cannot_be_resumed_or_cancelled_over_the_socket(live, llm) -> None:
    owner, other = chat_user(), chat_user()
    response = httpx.post(f"{live}/api/v1/chat/", json={"message": "Mine"},
                          headers={"Authorization": f"Bearer {api_key(owner)}"}, timeout=10)
    answer_id = response.json()["id"]
    own_conversation = conversation_create(user=other)

    with ChatSocket(live, own_conversation.id, other) as socket:
        socket.send(type="resume", message_id=answer_id, after=0)
        resumed = socket.recv()
        socket.send(type="cancel", message_id=answer_id)
        cancelled = socket.recv()

    assert resumed == {"type": "error", "code": "not_found", "message": "Not found."}
    assert cancelled["code"] == "not_found"


def test_another_users_conversations_and_answers_are_404_on_the_api(live, llm) -> None:
    owner, other = chat_user(), chat_user()
    owner_key, other_key = api_key(owner), api_key(other)
    answer = httpx.post(f"{live}/api/v1/chat/", json={"message": "Mine"},
                        headers={"Authorization": f"Bearer {owner_key}"}, timeout=10).json()
    conversation_id, answer_id = answer["conversation_id"], answer["id"]
    as_other = httpx.Client(base_url=live, headers={"Authorization": f"Bearer {other_key}"}, timeout=10)
    as_owner = httpx.Client(base_url=live, headers={"Authorization": f"Bearer {owner_key}"}, timeout=10)

    refused = [
        as_other.get(f"/api/v1/conversations/{conversation_id}/messages/"),
        as_other.get(f"/api/v1/chat/messages/{answer_id}/"),
        as_other.get(f"/api/v1/chat/messages/{answer_id}/stream"),
        as_other.post(f"/api/v1/chat/messages/{answer_id}/cancel"),
        as_other.post("/api/v1/chat/", json={"message": "Sneak in", "conversation_id": conversation_id}),
    ]
    assert [r.status_code for r in refused] == [404] * len(refused)
    assert all(r.json()["error"]["code"] == "not_found" for r in refused)
    assert as_other.get("/api/v1/conversations/").json()["count"] == 0
    listed = as_owner.get("/api/v1/conversations/").json()
    assert [c["id"] for c in listed["results"]] == [conversation_id]
    messages = as_owner.get(f"/api/v1/conversations/{conversation_id}/messages/").json()["results"]
    assert [(m["role"], m["id"]) for m in messages][1] == ("assistant", answer_id)
    assert Message.objects.filter(conversation_id=conversation_id).count() == 2  # nothing added by the intruder


def test_unauthenticated_and_csrf_less_session_requests_are_refused(live) -> None:
    user = chat_user()

    anonymous = httpx.post(f"{live}/api/v1/chat/", json={"message": "Hi"}, timeout=10)
    without_token = httpx.post(f"{live}/api/v1/chat/", json={"message": "Hi"}, timeout=10,
                               cookies={"sessionid": session_cookie(user)})

    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert without_token.status_code == 403 and "CSRF" in without_token.json()["error"]["message"]
    assert not Message.objects.exists()


def test_session_with_csrf_token_can_ask_and_documents_of_others_are_invalid(live, llm) -> None:
    user, other = chat_user(), chat_user()
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.get("/chat/")
    token = browser.cookies["csrftoken"].value
    cookies = {"sessionid": browser.cookies["sessionid"].value, "csrftoken": token}
    from chat.tests.factories import document_with_chunks

    foreign = document_with_chunks(owner=other, title="Not yours", texts=["Secret plans."])

    ok = httpx.post(f"{live}/api/v1/chat/", json={"message": "Hi"}, cookies=cookies, timeout=10,
                    headers={"X-CSRFToken": token, "Referer": live + "/chat/"})
    foreign_docs = httpx.post(f"{live}/api/v1/chat/", json={"message": "Hi", "document_ids": [foreign.id]},
                              cookies=cookies, timeout=10, headers={"X-CSRFToken": token, "Referer": live + "/"})

    assert ok.status_code == 201 and ok.json()["role"] == "assistant"
    assert foreign_docs.status_code == 400 and foreign_docs.json()["error"]["code"] == "invalid_documents"
