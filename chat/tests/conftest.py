"""Chat's test rig: the fake OpenAI server (a real HTTP server on loopback) behind the `openai` provider, and
clients for the real ASGI app: a WebSocket client with a session cookie and an SSE reader."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as redis_lib
from django.test import Client
from websockets.sync.client import ClientConnection, connect

from accounts.models import User
from accounts.services import api_key_create
from chat.models import Message
from config.testing import fake_openai
from config.testing.fake_openai import FakeOpenAI

# Imported through the module: a conftest attribute named pytest_* would be taken for a pytest hook.
fake_llm_server, fake_llm_per_test = fake_openai.pytest_fixtures(name="fake_llm")


@pytest.fixture(autouse=True)
def billing_key_prefix(settings) -> Iterator[str]:
    """Limiter keys under a prefix of this test's own (the Redis DB is shared with other apps' tests)."""
    prefix = f"test:chat:{uuid.uuid4().hex[:12]}:"
    settings.BILLING_LIMITER_KEY_PREFIX = prefix
    yield prefix
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.unlink(key)
    client.close()


@pytest.fixture
def llm(settings, fake_llm: FakeOpenAI) -> FakeOpenAI:
    """The chat provider pointed at the fake server; retries wait milliseconds, not seconds."""
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_BASE_URL = fake_llm.base_url
    settings.OPENAI_API_KEY = "test"
    settings.LLM_MODEL = "gpt-4o-mini"
    settings.OPENAI_RETRY_BACKOFF_SECONDS = 0.01
    settings.OPENAI_RETRY_MAX_WAIT_SECONDS = 0.05
    return fake_llm


@pytest.fixture
def prices(db) -> None:
    from chat.tests.factories import model_prices

    model_prices()


@pytest.fixture
def live(celery_workers, asgi_server, llm, prices) -> str:
    """The whole path: ASGI server, a real llm worker, Redis, Postgres and the fake model. Base URL."""
    return asgi_server


def wait_finished(message_id: int, timeout: float = 20) -> Message:
    """The answer once a worker has finished it (status done), read back from the database."""
    deadline = time.monotonic() + timeout
    while (message := Message.objects.get(id=message_id)).status != Message.Status.DONE:
        assert time.monotonic() < deadline, f"answer {message_id} is still {message.status}"
        time.sleep(0.05)
    return message


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def api_key(user: User) -> str:
    return api_key_create(user=user, name="test")[1]


class ChatSocket:
    def __init__(self, base_url: str, conversation_id: int, user: User | None) -> None:
        headers = {"Cookie": f"sessionid={session_cookie(user)}"} if user is not None else {}
        url = base_url.replace("http://", "ws://") + f"/ws/chat/{conversation_id}/"
        self._stack = contextlib.ExitStack()
        self.connection: ClientConnection = self._stack.enter_context(
            connect(url, additional_headers=headers, origin=base_url, open_timeout=5)
        )

    def send(self, **message: Any) -> None:
        self.connection.send(json.dumps(message))

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        return json.loads(self.connection.recv(timeout=timeout))

    def until(self, kind: str, timeout: float = 20) -> list[dict[str, Any]]:
        """Every event up to and including the first of type `kind`."""
        deadline = time.monotonic() + timeout
        received = []
        while True:
            event = self.recv(timeout=max(0.01, deadline - time.monotonic()))
            received.append(event)
            if event["type"] == kind:
                return received

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ChatSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sse_events(source: httpx.Response | Iterator[str], *, stop_after: int | None = None) -> list[dict[str, Any]]:
    """Parsed SSE events ({"id", "event", "data"}) until the stream ends or `stop_after` events were read.
    Comments (heartbeats) and `retry:` are skipped. Pass `response.iter_lines()` to read on later."""
    lines = source.iter_lines() if isinstance(source, httpx.Response) else source
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in current:
                events.append(current)
                if stop_after is not None and len(events) >= stop_after:
                    return events
            current = {}
            continue
        if line.startswith(":") or line.startswith("retry:"):
            continue
        field, _, value = line.partition(": ")
        current[field] = json.loads(value) if field == "data" else value
    return events


def _event_readers(redis_client) -> list[dict[str, Any]]:
    """The connections blocked in an XREAD on this run's Redis database: the web process' event hub."""
    database = redis_client.connection_pool.connection_kwargs.get("db", 0)
    return [c for c in redis_client.client_list() if c["cmd"] == "xread" and int(c["db"]) == database]


def kill_event_readers(redis_client) -> int:
    """Drops the event hub's connections, as a Redis restart or a network blip would."""
    readers = _event_readers(redis_client)
    for reader in readers:
        redis_client.client_kill_filter(_id=reader["id"])
    return len(readers)


def wait_for_event_reader(redis_client) -> None:
    deadline = time.monotonic() + 5
    while not _event_readers(redis_client):
        assert time.monotonic() < deadline, "no reader waits in an XREAD"
        time.sleep(0.02)
