from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis as redis_lib


@pytest.fixture(autouse=True)
def billing_key_prefix(settings) -> Iterator[str]:
    """Every test's limiter keys under their own prefix, deleted afterwards (other apps share this Redis DB)."""
    prefix = f"test:billing:{uuid.uuid4().hex[:12]}:"
    settings.BILLING_LIMITER_KEY_PREFIX = prefix
    url = settings.REDIS_URL  # a test may point the setting elsewhere
    yield prefix
    client = redis_lib.Redis.from_url(url)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.unlink(key)
    client.close()
