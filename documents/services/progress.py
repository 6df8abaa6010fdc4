"""Status and progress events for the owner's browser, through the channel layer.

Every open documents page of a user listens on one group; events carry the full document JSON so that
the page never has to ask again.
"""

from __future__ import annotations

import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from documents.models import Document
from documents.serializers import DocumentOut

logger = logging.getLogger(__name__)


def owner_group(owner_id: int) -> str:
    return f"documents.user.{owner_id}"


def _send(owner_id: int, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(owner_group(owner_id), message)
    except Exception:
        # A missed progress event costs a stale bar, never the ingestion or the request.
        logger.warning("could not push a document event to user %s", owner_id, exc_info=True)


def document_push(document: Document) -> None:
    _send(document.owner_id, {"type": "document.update", "document": dict(DocumentOut(document).data)})


def document_deleted_push(*, owner_id: int, document_id: int) -> None:
    _send(owner_id, {"type": "document.deleted", "id": document_id})


class ProgressThrottle:
    """Decides when a progress change is worth a database write and a push."""

    def __init__(self, *, step: int | None = None, seconds: float | None = None) -> None:
        self.step = settings.INGEST_PROGRESS_STEP if step is None else step
        self.seconds = settings.INGEST_PROGRESS_SECONDS if seconds is None else seconds
        self._last_value = -1
        self._last_at = 0.0

    def due(self, value: int) -> bool:
        if value == self._last_value:
            return False
        now = time.monotonic()
        if value - self._last_value >= self.step or now - self._last_at >= self.seconds:
            self._last_value = value
            self._last_at = now
            return True
        return False
