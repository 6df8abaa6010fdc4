from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    # Settings are process-wide, so the worker threads of `celery_workers` store and read files here too.
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def post_file(api) -> Callable:
    """POST /api/v1/documents/ with `data` as the multipart `file`."""

    def post(data: bytes, name: str = "sample.pdf", client: APIClient | None = None, **extra):
        handle = io.BytesIO(data)
        handle.name = name
        return (client or api).post("/api/v1/documents/", {"file": handle, **extra}, format="multipart")

    return post
