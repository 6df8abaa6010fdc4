"""Accepting an upload: limits, streaming to disk while hashing, sniffing, dedupe, queueing."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path, PurePath

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from billing.services import limits_check_upload
from documents.ingestion.sniff import sniff_kind_path
from documents.ingestion.types import CONTENT_TYPES, IngestionError, UnsupportedFileType
from documents.models import Document, upload_path
from documents.services.progress import document_deleted_push, document_push

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20


class UploadRejected(Exception):
    """An upload refused before a document exists; `status_code` and `code` are for the edge."""

    status_code = 400
    code = "invalid_upload"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyUpload(UploadRejected):
    code = "empty_file"


class UploadTooLarge(UploadRejected):
    status_code = 413
    code = "too_large"


class UnsupportedUpload(UploadRejected):
    status_code = 415
    code = "unsupported_media_type"


class UnreadableUpload(UploadRejected):
    status_code = 422
    code = "unreadable_file"


def max_upload_bytes() -> int:
    """The server-wide ceiling; plans may only be stricter (billing checks those)."""
    return settings.MAX_UPLOAD_MB * 1024 * 1024


def _too_large(size: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"This file is {size / 1024 / 1024:.1f} MB, over the {settings.MAX_UPLOAD_MB} MB limit; "
        "split it into smaller files and upload them separately."
    )


def _owner_usage(owner: User) -> tuple[int, int]:
    totals = Document.objects.filter(owner=owner).aggregate(count=Count("id"), size=Coalesce(Sum("size_bytes"), 0))
    return totals["count"], totals["size"]


def _incoming_dir() -> Path:
    directory = Path(settings.MEDIA_ROOT) / "documents" / "incoming"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _stream_to_disk(upload: UploadedFile, *, limit: int) -> tuple[Path, str, int]:
    """Copy the upload chunk by chunk into a private temp file, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    handle = tempfile.NamedTemporaryFile(dir=_incoming_dir(), prefix="upload-", delete=False)  # noqa: SIM115
    path = Path(handle.name)
    try:
        with handle:
            for piece in upload.chunks(_COPY_CHUNK):
                size += len(piece)
                if size > limit:
                    # The declared size can lie (a chunked request): stop reading at the limit.
                    raise _too_large(size)
                digest.update(piece)
                handle.write(piece)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest(), size


def _clean_filename(name: str | None) -> str:
    # Browsers on Windows may send a full path; only the last part is the name.
    base = PurePath((name or "").replace("\\", "/")).name.strip()
    return (base or "upload")[:255]


def _clean_title(title: str | None) -> str:
    """The given title, trimmed; NUL, which Postgres cannot store in text, is refused."""
    if title and "\x00" in title:
        raise UploadRejected("The title contains a NUL character; remove it and upload again.")
    return (title or "").strip()[:255]


def _default_title(filename: str) -> str:
    stem = PurePath(filename).stem.strip()
    return (stem or filename)[:255]


def document_create(*, owner: User, upload: UploadedFile, title: str | None = None) -> tuple[Document, bool]:
    """Store an upload and queue its ingestion. Returns (document, created).

    Identical content uploaded again by the same owner returns the existing document (created=False);
    if that one had failed, the new upload counts as a retry and queues it again.
    Raises `UploadRejected` subclasses (400/413/415/422) and billing's `UploadLimitExceeded`.
    """
    title = _clean_title(title)
    declared = upload.size or 0
    if declared > max_upload_bytes():
        raise _too_large(declared)
    document_count, storage_bytes = _owner_usage(owner)
    limits_check_upload(user=owner, size_bytes=declared, document_count=document_count, storage_bytes=storage_bytes)
    filename = _clean_filename(upload.name)
    temp_path, sha256, size = _stream_to_disk(upload, limit=max_upload_bytes())
    try:
        if size == 0:
            raise EmptyUpload("The file is empty; choose a file with content and upload it again.")
        try:
            kind = sniff_kind_path(temp_path, filename=filename)
        except UnsupportedFileType as exc:
            raise UnsupportedUpload(exc.message) from exc
        except IngestionError as exc:
            raise UnreadableUpload(exc.message) from exc

        # Under a lock on the owner's row: parallel uploads would otherwise all pass the limits against the
        # same old count (the check above only saves streaming a file that cannot be accepted) and race on the
        # content-addressed path.
        with transaction.atomic():
            User.objects.select_for_update().filter(pk=owner.pk).exists()
            existing = Document.objects.filter(owner=owner, sha256=sha256).first()
            if existing is not None:
                if existing.status == Document.Status.FAILED:
                    # The same bytes: they take the stored file's place, which may be what went missing ("The
                    # uploaded file is missing from storage; upload it again").
                    stored = Path(settings.MEDIA_ROOT) / existing.file.name
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(temp_path, stored)
                    document_requeue(document=existing, reset_attempts=True)
                return existing, False
            document_count, storage_bytes = _owner_usage(owner)
            limits_check_upload(user=owner, size_bytes=size, document_count=document_count,
                                storage_bytes=storage_bytes)
            document = Document(
                owner=owner,
                title=title or _default_title(filename),
                filename=filename,
                content_type=CONTENT_TYPES[kind],
                kind=kind.value,
                size_bytes=size,
                sha256=sha256,
            )
            relative = upload_path(document, filename)
            final_path = Path(settings.MEDIA_ROOT) / relative
            final_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp_path, final_path)
            document.file.name = relative
            try:
                document.save()
            except BaseException:
                # No document of this owner has this content (checked under the lock), so the file is nobody's.
                final_path.unlink(missing_ok=True)
                raise
            # Pushed before the task is queued: the worker's events must not be overtaken by this one.
            transaction.on_commit(lambda: (document_push(document), document_ingest_enqueue(document_id=document.id)))
    finally:
        temp_path.unlink(missing_ok=True)
    return document, True


def document_ingest_enqueue(*, document_id: int) -> None:
    from documents.tasks import ingest_document

    try:
        ingest_document.delay(document_id)
    except Exception:
        # The broker is down: the document stays queued and the periodic sweep enqueues it later.
        logger.exception("could not enqueue ingestion of document %s", document_id)


def document_requeue(*, document: Document, reset_attempts: bool = False) -> Document:
    """Put a document back in the queue (a retry by its owner, an admin action or a reindex)."""
    # updated_at too (update() skips auto_now): the stuck sweep would otherwise queue it a second time at once.
    updates: dict = {"status": Document.Status.QUEUED, "error": "", "progress": 0, "processing_started_at": None,
                     "updated_at": timezone.now()}
    if reset_attempts:
        updates["attempts"] = 0
    with transaction.atomic():
        Document.objects.filter(id=document.id).update(**updates)
        document.refresh_from_db()
        transaction.on_commit(lambda: (document_push(document), document_ingest_enqueue(document_id=document.id)))
    return document


def document_delete(*, document: Document) -> None:
    """Delete the document, its chunks and vectors, then its file."""
    path = Path(document.file.path) if document.file else None
    owner_id, document_id = document.owner_id, document.id
    with transaction.atomic():
        # The row lock makes a worker that is storing a batch finish it first; its next batch then
        # fails on the missing document and the worker stops.
        locked = Document.objects.select_for_update().filter(id=document_id).first()
        if locked is None:
            return
        locked.delete()
        if path is not None:
            transaction.on_commit(lambda: _remove_file(path))
        transaction.on_commit(lambda: document_deleted_push(owner_id=owner_id, document_id=document_id))


def _remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
