"""Finding Redis for `make run` and `make test`: use the configured one, or start a local redis-server."""

from __future__ import annotations

import shutil
import subprocess
import time
from urllib.parse import urlsplit

import redis

INSTALL_HINT = (
    "Install it: `sudo apt-get install redis-server` (Debian/Ubuntu), `sudo dnf install redis` (Fedora) or "
    "`brew install redis` (macOS), or point REDIS_URL at a running server."
)


class RedisUnavailable(Exception):
    pass


def redis_reachable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_server_command(url: str) -> list[str]:
    """The command that serves `url` locally, or RedisUnavailable saying what to install."""
    parts = urlsplit(url)
    server = shutil.which("redis-server")
    if parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise RedisUnavailable(f"Redis is not reachable at {url}.")
    if server is None:
        raise RedisUnavailable(f"Redis is not reachable at {url}, and redis-server is not installed. {INSTALL_HINT}")
    return [server, "--port", str(parts.port or 6379), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def wait_for_redis(url: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not redis_reachable(url):
        if time.monotonic() > deadline:
            raise RedisUnavailable(f"Started redis-server, but {url} still does not answer.")
        time.sleep(0.1)


def ensure_redis_daemon(url: str) -> bool:
    """For `make test`: start a background redis-server if none answers. Returns True if it started one."""
    if redis_reachable(url):
        return False
    subprocess.run([*redis_server_command(url), "--daemonize", "yes"], check=True, capture_output=True)
    wait_for_redis(url)
    return True
