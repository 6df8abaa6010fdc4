"""Database calls from async code (the consumers and async views, the llm worker's event loop).

They run on long-lived pooled threads whose connections persist (CONN_MAX_AGE, or checked out of the psycopg
pool and kept): a fresh thread, as the thread-sensitive default gives every request, would pay a new Postgres
connection (~10 ms here), or at least a pool check-out, each time.
Channels' DatabaseSyncToAsync tidies connections before and after every call, and with CONN_HEALTH_CHECKS each
tidy makes the next query pay a `SELECT 1` round trip; here a thread tidies after a failed call, and otherwise
at most every `TIDY_EVERY_SECONDS`, which still closes connections past their age and broken ones.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

T = TypeVar("T")
TIDY_EVERY_SECONDS = 5.0
_last_tidy = threading.local()


def _kept() -> bool:
    """Whether connections outlive a call: persistent (CONN_MAX_AGE) or pooled (then CONN_MAX_AGE is 0, and
    a thread keeps its pooled connection between calls instead of paying a check-out for each)."""
    settings_dict = connection.settings_dict
    return bool(settings_dict.get("CONN_MAX_AGE") or settings_dict.get("OPTIONS", {}).get("pool"))


def tidy_connections(*, failed: bool = False) -> None:
    # Without persistent connections (the tests), every call closes its connection, as Django's own views do.
    if failed or not _kept():
        close_old_connections()
        return
    now = time.monotonic()
    if now - getattr(_last_tidy, "at", 0.0) >= TIDY_EVERY_SECONDS:
        _last_tidy.at = now
        close_old_connections()


def call_tidily(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        result = fn(*args, **kwargs)
    except DatabaseError:
        tidy_connections(failed=True)
        raise
    tidy_connections()
    return result


class _DatabaseCall(SyncToAsync):
    def thread_handler(self, loop, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().thread_handler(loop, *args, **kwargs)
        except DatabaseError:
            tidy_connections(failed=True)
            raise
        finally:
            tidy_connections()


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _database_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The threads these calls run on, few and fixed: each keeps its connection between calls, so their number
    bounds the connections (or pool slots) a process holds for its async code, whatever the machine's size."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, settings.ASYNC_DB_THREADS), thread_name_prefix="async-db"
            )
        return _executor


def db(fn: Callable[..., T]) -> Callable[..., Any]:
    """`await db(fn)(...)`: run blocking Django code on the process' database threads."""
    return _DatabaseCall(fn, thread_sensitive=False, executor=_database_executor())
