"""Live status over `ws/documents/`, through the real ASGI server, channel layer and worker."""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from accounts.tests.factories import UserFactory
from documents.tests import hostile_files
from documents.tests.test_pipeline import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _socket(base_url: str, user=None) -> ClientConnection:
    headers = {}
    if user is not None:
        client = Client()
        client.force_login(user)
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return connect(
        base_url.replace("http", "ws", 1) + "/ws/documents/",
        origin=base_url,
        additional_headers=headers,
        open_timeout=10,
    )


def _events_until_done(socket: ClientConnection, document_id: int, timeout: float = 90) -> list[dict]:
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        events.append(message)
        if (
            message["type"] == "document"
            and message["document"]["id"] == document_id
            and message["document"]["status"] in ("ready", "failed")
        ):
            return events
    raise AssertionError(f"no final event; got {events}")


def test_owner_receives_status_and_progress_until_ready(celery_workers, asgi_server, user, post_file):
    with _socket(asgi_server, user) as socket:
        document_id = post_file(hostile_files.sample_pdf()).json()["id"]
        events = _events_until_done(socket, document_id)

    mine = [event["document"] for event in events if event["type"] == "document"]
    assert {doc["id"] for doc in mine} == {document_id}
    statuses = [doc["status"] for doc in mine]
    assert statuses[0] == "queued" and "processing" in statuses and statuses[-1] == "ready"
    progress = [doc["progress"] for doc in mine if doc["status"] == "processing"]
    assert progress == sorted(progress)
    final = mine[-1]
    assert (final["progress"], final["pages"]) == (100, 3)
    assert final["chunks"] == wait_for(document_id).chunk_count > 0


def test_another_users_socket_receives_nothing(celery_workers, asgi_server, user, post_file):
    stranger = UserFactory()
    with _socket(asgi_server, user) as mine, _socket(asgi_server, stranger) as theirs:
        document_id = post_file(hostile_files.sample_pdf()).json()["id"]
        _events_until_done(mine, document_id)

        with pytest.raises(TimeoutError):
            theirs.recv(timeout=0.5)


def test_owner_is_told_when_a_document_is_deleted(celery_workers, asgi_server, user, post_file, api):
    document_id = post_file(b"Short lived.\n", name="short.txt").json()["id"]
    wait_for(document_id)
    with _socket(asgi_server, user) as socket:
        api.delete(f"/api/v1/documents/{document_id}/")

        assert json.loads(socket.recv(timeout=10)) == {"type": "document_deleted", "id": document_id}


def test_unauthenticated_socket_is_refused(asgi_server):
    with pytest.raises(InvalidStatus) as refused:
        _socket(asgi_server)

    assert refused.value.response.status_code == 403


def test_progress_of_a_long_text_moves_in_steps(celery_workers, asgi_server, user, post_file, settings):
    settings.INGEST_STORE_BATCH = 16
    text = "\n\n".join(f"Paragraph {i} about orchards, pruning and the apple harvest of year {i}." * 3
                       for i in range(300)).encode()
    with _socket(asgi_server, user) as socket:
        document_id = post_file(text, name="long.txt").json()["id"]
        events = _events_until_done(socket, document_id)

    progress = [event["document"]["progress"] for event in events
                if event["type"] == "document" and event["document"]["status"] == "processing"]
    assert len(set(progress)) >= 5
    assert progress == sorted(progress)
    assert max(progress) <= 95  # only "ready" says 100
