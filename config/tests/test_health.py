import time

import httpx
import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_is_ok_when_every_part_is_up(celery_workers, client):
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "pgvector", "redis", "queue:ingest", "queue:llm"}
    assert body["checks"]["pgvector"]["version"].startswith("0.8")
    assert body["checks"]["queue:llm"]["workers"] >= 1


def test_health_names_redis_and_answers_quickly_when_redis_is_down(celery_workers, client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    started = time.monotonic()
    response = client.get("/healthz")
    elapsed = time.monotonic() - started
    body = response.json()
    assert response.status_code == 503
    assert "redis" in body["failing"]
    assert body["checks"]["database"]["ok"] is True
    assert "broker" in body["checks"]["queue:llm"]["error"]
    assert elapsed < 1.5, "a dead dependency must not make the health check hang"


def test_health_names_a_queue_that_no_worker_consumes(celery_workers, client, monkeypatch):
    monkeypatch.setattr("config.health.QUEUES", ("ingest", "llm", "reports"))
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["failing"] == ["queue:reports"], body
    assert "no worker" in body["checks"]["queue:reports"]["error"]
    assert body["checks"]["queue:ingest"]["ok"] is True


def test_health_is_served_by_the_asgi_server(asgi_server):
    response = httpx.get(f"{asgi_server}/healthz", timeout=5)
    body = response.json()
    # Workers may or may not be up beside this server; the parts it reaches itself must be.
    assert all(body["checks"][part]["ok"] for part in ("database", "pgvector", "redis")), body
    assert set(body["failing"]) <= {"queue:ingest", "queue:llm"}
    assert response.status_code == (503 if body["failing"] else 200)
