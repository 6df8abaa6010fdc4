"""How billing reaches the Redis limiter: one client per process and Redis URL, and the limiter's
configuration from settings (read on every call, so tests can shorten windows and slot lifetimes)."""

from __future__ import annotations

import threading

import redis as redis_lib
from django.conf import settings

from billing.limiter import LimiterConfig

_clients: dict[str, redis_lib.Redis] = {}
_clients_lock = threading.Lock()
_configs: dict[tuple, LimiterConfig] = {}


def redis_client() -> redis_lib.Redis:
    """Shared by every thread of the process: redis-py pools connections and is thread-safe."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.get(url)
            if client is None:
                client = redis_lib.Redis.from_url(
                    url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
                )
                _clients[url] = client
    return client


def limiter_config() -> LimiterConfig:
    key = (settings.BILLING_LIMITER_KEY_PREFIX, float(settings.BILLING_SLOT_TTL_SECONDS))
    config = _configs.get(key)
    if config is None:
        # One instance per distinct setting: the limiter caches per (limits, config) pair.
        config = _configs.setdefault(key, LimiterConfig(key_prefix=key[0], slot_ttl_seconds=key[1]))
    return config
