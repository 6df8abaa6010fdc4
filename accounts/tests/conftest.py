import time
from types import SimpleNamespace

import django_ratelimit.core
import pytest


@pytest.fixture
def ratelimit_clock_stopped(monkeypatch) -> None:
    """django-ratelimit counts in fixed windows whose edges fall at a per-key second of each period; a burst of
    attempts that straddles an edge starts counting again from zero and is never refused (CI failed once on this).
    Stopping the library's clock keeps a test's attempts in one window; only that module's clock is stopped."""
    stopped_at = time.time()
    monkeypatch.setattr(django_ratelimit.core, "time", SimpleNamespace(time=lambda: stopped_at))
