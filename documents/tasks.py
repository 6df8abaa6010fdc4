from __future__ import annotations

from celery import shared_task
from django.conf import settings

from documents.ingestion.types import TransientIngestionError
from documents.services import document_ingest, documents_requeue_stuck


@shared_task(
    bind=True,
    acks_late=True,
    ignore_result=True,
    max_retries=settings.INGEST_MAX_ATTEMPTS,
    name="documents.tasks.ingest_document",
)
def ingest_document(self, document_id: int) -> str:
    # The service counts attempts on the document itself and only raises while attempts remain, so the
    # retries here are bounded even across redeliveries and sweeps.
    try:
        return document_ingest(document_id=document_id).outcome.value
    except TransientIngestionError as exc:
        countdown = settings.INGEST_RETRY_BACKOFF_SECONDS * 2**self.request.retries
        raise self.retry(exc=exc, countdown=countdown) from exc


@shared_task(ignore_result=True, name="documents.tasks.requeue_stuck_documents")
def requeue_stuck_documents() -> list[int]:
    return documents_requeue_stuck()
