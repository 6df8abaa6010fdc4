"""Health of every part Docent needs. Each probe has its own deadline so that one dead part cannot make the
health endpoint itself hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connections

from config.celery import QUEUES, live_workers
from config.celery import app as celery_app

PROBE_TIMEOUT = 0.8


def _database() -> dict[str, Any]:
    # A fresh thread gets its own connection; close it so probes don't pile up idle connections.
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SET statement_timeout = 500")
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
    finally:
        connections["default"].close()
    return {"database": {"ok": True}, "pgvector": {"ok": row is not None, "version": row[0] if row else None}}


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def _redis() -> dict[str, Any]:
    with _redis_client(settings.REDIS_URL) as client:
        client.ping()
    return {"redis": {"ok": True}}


def _workers() -> dict[str, Any]:
    checks = {}
    with _redis_client(celery_app.conf.broker_url) as client:
        for queue in QUEUES:
            count = live_workers(client, queue)
            checks[f"queue:{queue}"] = {"ok": count > 0, "workers": count} | (
                {} if count else {"error": f"no worker is consuming the '{queue}' queue"}
            )
    return checks


async def _probe(name: str, probe: Callable[[], dict[str, Any]], parts: tuple[str, ...]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(probe), PROBE_TIMEOUT)
    except TimeoutError:
        return {part: {"ok": False, "error": f"{name} did not answer within {PROBE_TIMEOUT}s"} for part in parts}
    except Exception as exc:  # any failure of a dependency is a health result, not a crash
        return {part: {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]} for part in parts}


async def health_report() -> tuple[bool, dict[str, Any]]:
    started = time.perf_counter()
    queue_parts = tuple(f"queue:{queue}" for queue in QUEUES)
    database, redis_state = await asyncio.gather(
        _probe("database", _database, ("database", "pgvector")), _probe("redis", _redis, ("redis",))
    )
    if redis_state["redis"]["ok"]:
        workers = await _probe("celery", _workers, queue_parts)
    else:
        workers = {part: {"ok": False, "error": "the broker (Redis) is down"} for part in queue_parts}
    checks = database | redis_state | workers
    healthy = all(check["ok"] for check in checks.values())
    failing = [name for name, check in checks.items() if not check["ok"]]
    return healthy, {
        "status": "ok" if healthy else "degraded",
        "failing": failing,
        "checks": checks,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
