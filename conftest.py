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
    """A real Celery worker consuming both queues (`ingest` and `llm`), in threads of the test process so that
    it sees the test database. Tests that use it need `transactional_db` so the worker sees committed rows.

    One worker, not one per queue: two worker controllers in one process share kombu's broker connections and,
    now and then, one of them blocks forever on a reply meant for the other. Celery's `start_worker` helper is
    not used either: it resets the process-wide termination flag on exit.
    """
    from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
    from celery.result import _set_task_join_will_block
    from celery.worker import state

    from config.celery import QUEUES, app

    setup_app_for_worker(app, "WARNING", None)
    with django_db_blocker.unblock():
        worker = TestWorkController(
            app=app, concurrency=8, hostname="worker@test", pool="threads", queues=list(QUEUES),
            loglevel="WARNING", logfile=None, ready_callback=None, without_heartbeat=True, without_mingle=True,
            without_gossip=True,
        )
        thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
        thread.start()
        worker.ensure_started()
        _set_task_join_will_block(False)
        yield {queue: worker for queue in QUEUES}
        # Work a test enqueued but did not wait for must not hold the session open.
        app.control.purge()
        state.should_terminate = 0
        thread.join(90)
        state.should_terminate = None
        assert not thread.is_alive(), "the Celery worker thread did not stop"


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


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium driven by Playwright. Never `playwright install`: it downloads a browser build.

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread while it is open, which
    stops the Django test client from calling async views; closing it after each browser module frees the thread.
    For the same reason the ORM's async-safety check is off only while it is open.
    """
    import os
    import shutil
    from pathlib import Path

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); skipping browser tests")
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            yield browser
            browser.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser, asgi_server) -> Iterator:
    context = browser.new_context(base_url=asgi_server, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.console_errors = console_errors
    yield page
    context.close()


@pytest.fixture
def screenshot():
    """Saves a full-page screenshot under var/screenshots/ (DATA_DIR)."""

    def save(page, name: str) -> None:
        target = settings.DATA_DIR / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / f"{name}.png"), full_page=True)

    return save
