"""Shared test infrastructure: the real Redis (a separate logical database), real Celery workers on both queues
running in threads of the test process (so they see the test database), and a real ASGI server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis as redis_lib
from django.conf import settings


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis() -> Iterator[None]:
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.close()


@pytest.fixture(autouse=True)
def _reset_rate_limit_counters() -> Iterator[None]:
    """Brute-force counters live in the shared cache; each test starts with none. (Not cache.clear(): that would
    flush the database the Celery broker keeps its queues in.)"""
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match="docent:*:rl:*", count=1000):
        client.delete(key)
    client.close()
    yield


@pytest.fixture
def redis_client() -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture(scope="session")
def celery_workers(django_db_setup, django_db_blocker) -> Iterator[dict]:
    """One worker per queue, as in production: `ingest` (solo here; prefork needs its own process) and `llm`
    (threads). Tests that use them need `transactional_db` so that the workers see committed rows."""
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    common = {"perform_ping_check": False, "loglevel": "WARNING", "shutdown_timeout": 30}
    with (
        django_db_blocker.unblock(),
        start_worker(app, pool="solo", concurrency=1, queues=["ingest"], hostname="ingest@test", **common) as ingest,
        start_worker(app, pool="threads", concurrency=8, queues=["llm"], hostname="llm@test", **common) as llm,
    ):
        yield {"ingest": ingest, "llm": llm}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def asgi_server(django_db_setup, django_db_blocker) -> Iterator[str]:
    """The project's ASGI application under uvicorn, in a thread so that it uses the test database."""
    import uvicorn

    from config.asgi import application

    port = _free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    with django_db_blocker.unblock():
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(10)
