"""Concurrent test sessions on one machine must not share a Redis database or a test database: their Celery
workers would take each other's tasks, and pytest-django would drop the other session's database.

Each session claims a free Redis database number (9-15) with a lock in database 0 and derives the test database name
from it. The claim is exported through the environment, so the processes a test spawns use the same pair.
"""

from __future__ import annotations

import atexit
import os
from urllib.parse import urlsplit, urlunsplit

import redis

FIRST_DB, LAST_DB = 9, 15
LOCK_KEY = "docent:test-session:{db}"
LOCK_SECONDS = 3 * 3600


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


CLAIM_ENV = "DOCENT_TEST_REDIS_CLAIM"


def claim_test_redis_db(redis_url: str) -> int:
    xdist_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if os.environ.get("TEST_REDIS_DB"):
        return int(os.environ["TEST_REDIS_DB"]) + int(xdist_worker.removeprefix("gw") or 0)
    inherited_db, _, inherited_worker = os.environ.get(CLAIM_ENV, "").partition(":")
    if inherited_db and inherited_worker == xdist_worker:
        return int(inherited_db)  # a process spawned by this session: share its databases
    owner = f"{os.getpid()}"
    client = redis.Redis.from_url(_with_db(redis_url, 0), socket_connect_timeout=2, socket_timeout=2)
    claimed = None
    try:
        for db in range(FIRST_DB, LAST_DB + 1):
            if client.set(LOCK_KEY.format(db=db), owner, nx=True, ex=LOCK_SECONDS):
                claimed = db
                break
    except redis.RedisError:
        claimed = FIRST_DB  # no Redis: the tests will say so themselves
    if claimed is None:
        raise RuntimeError(
            f"Redis databases {FIRST_DB}-{LAST_DB} are all claimed by other test sessions; "
            "wait for one to finish, or set TEST_REDIS_DB."
        )

    def release() -> None:
        try:
            if client.get(LOCK_KEY.format(db=claimed)) == owner.encode():
                client.delete(LOCK_KEY.format(db=claimed))
        except redis.RedisError:
            pass

    atexit.register(release)
    os.environ[CLAIM_ENV] = f"{claimed}:{xdist_worker}"
    return claimed


def redis_url_for_tests(redis_url: str) -> str:
    return _with_db(redis_url, claim_test_redis_db(redis_url))


def database_name_for_tests(base_name: str, redis_url: str) -> str:
    # pytest-django appends the xdist worker id itself.
    return f"test_{base_name}_r{urlsplit(redis_url).path.strip('/')}"
