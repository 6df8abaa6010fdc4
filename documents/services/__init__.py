"""Writes to documents and chunks: uploads, the ingestion pipeline, deletion, reindexing."""

from documents.services.ingest import IngestReport, Outcome, document_ingest, documents_requeue_stuck
from documents.services.uploads import (
    EmptyUpload,
    UnreadableUpload,
    UnsupportedUpload,
    UploadRejected,
    UploadTooLarge,
    document_create,
    document_delete,
    document_requeue,
    max_upload_bytes,
)

__all__ = [
    "EmptyUpload",
    "IngestReport",
    "Outcome",
    "UnreadableUpload",
    "UnsupportedUpload",
    "UploadRejected",
    "UploadTooLarge",
    "document_create",
    "document_delete",
    "document_ingest",
    "document_requeue",
    "documents_requeue_stuck",
    "max_upload_bytes",
]
