"""The ingestion pipeline: extract -> chunk -> embed -> store, streamed batch by batch.

Nothing holds a whole document: pages are extracted one at a time, chunks are pulled from the splitter
as they come, and each batch of vectors is written with one binary COPY in its own transaction, then
dropped. A run starts by deleting the document's chunks and ends by marking it ready, so a second run
(or one after a worker was killed mid-document) leaves exactly one chunk set, and search never sees a
half-written one (it reads ready documents only).

Exactly one run per document at a time: a run holds a PostgreSQL advisory lock keyed on the document
for its whole duration. The lock lives on the worker's database session, so a killed worker releases
it at once; a second delivery of the same task finds it taken and leaves.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.exceptions import LimiterUnavailable
from billing.limiter import LimitExceeded
from billing.services import quota_check, usage_record
from documents.ingestion.extract import ExtractionLimits, extract_sections, pdf_page_count
from documents.ingestion.types import ChunkDraft, IngestionError, Kind, Section, TransientIngestionError
from documents.models import Document
from documents.services.progress import ProgressThrottle, document_push
from documents.services.store import (
    StoredChunk,
    chunks_copy,
    chunks_delete,
    lexeme_counts_store,
    vector_column_dimensions,
)
from documents.services.uploads import document_ingest_enqueue

logger = logging.getLogger(__name__)

# About 30 word pieces: with chunks of at most 200, the model's 254-piece window always holds both.
_HEADER_MAX_CHARS = 120
_LOCK_NAMESPACE = 0x646F63  # "doc": the first key of the two-key advisory lock, the document id is the second


class Outcome(enum.StrEnum):
    READY = "ready"
    FAILED = "failed"
    SKIPPED = "skipped"  # deleted, already done, or being processed by another worker right now


@dataclass
class IngestReport:
    outcome: Outcome
    document_id: int
    pages: int | None = None
    chunks: int = 0
    tokens: int = 0
    embedding_tokens: int = 0
    # Seconds spent in each stage (self time: extraction is not counted again inside chunking).
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""


class DocumentVanished(Exception):
    """The document was deleted while it was being processed."""


class _StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def iterate(self, name: str, iterable: Iterable) -> Iterator:
        iterator = iter(iterable)
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.seconds[name] += time.perf_counter() - started
                return
            self.seconds[name] += time.perf_counter() - started
            yield item

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def report(self) -> dict[str, float]:
        extract = self.seconds["extract"]
        return {
            "extract": extract,
            "chunk": max(0.0, self.seconds["extract+chunk"] - extract),
            "embed": self.seconds["embed"],
            "store": self.seconds["store"],
        }


@contextlib.contextmanager
def _document_lock(document_id: int) -> Iterator[bool]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, document_id])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired and connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_NAMESPACE, document_id])


def document_is_being_processed(*, document_id: int) -> bool:
    """Whether a live worker holds the document's run lock (for the stuck-document sweep)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, document_id])
        if cursor.fetchone()[0]:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_NAMESPACE, document_id])
            return False
    return True


def _interrupted_message(attempts: int) -> str:
    return (
        f"Processing this document was interrupted {attempts} times (the worker stopped or ran out of time), "
        "so it was given up; try a smaller or simpler file."
    )


def _claim(document_id: int) -> Document | None:
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(id=document_id).first()
        if document is None or document.status in (Document.Status.READY, Document.Status.FAILED):
            return None
        if document.attempts >= settings.INGEST_MAX_ATTEMPTS:
            # Every earlier attempt was counted when it started and none finished: a poison document.
            chunks_delete(document_id=document.id)
            document.status = Document.Status.FAILED
            document.error = _interrupted_message(document.attempts)
            document.save(update_fields=["status", "error", "updated_at"])
            transaction.on_commit(lambda: document_push(document))
            return None
        document.status = Document.Status.PROCESSING
        document.attempts += 1
        document.processing_started_at = timezone.now()
        document.progress = 0
        document.error = ""
        document.pages = None
        document.chunk_count = 0
        document.token_count = 0
        document.save()
    document_push(document)
    return document


class QueuedAgain(Exception):
    """The document was queued again while this run processed it (a reindex, an admin's re-ingest): the run's
    result is not the one asked for last."""


def _queued_again(current: Document, claimed: Document) -> bool:
    # Every requeue (an upload again, an admin's re-ingest, a reindex) sets `queued`; every claim its own start.
    return (current.status != Document.Status.PROCESSING
            or current.processing_started_at != claimed.processing_started_at)


def _finish(document: Document, *, status: str, error: str = "") -> None:
    """Record a failure (or a return to the queue), unless the document is gone; raises QueuedAgain when it was
    queued again during the run, and leaves it queued."""
    with transaction.atomic():
        current = Document.objects.select_for_update().filter(id=document.id).first()
        if current is None:
            return
        if _queued_again(current, document):
            raise QueuedAgain
        if status == Document.Status.FAILED:
            # What the run stored before it failed: search never reads a failed document's chunks, but they would
            # hold their space in the tables and the vector index, uncounted, until the document was deleted.
            chunks_delete(document_id=document.id)
        current.status, current.error = status, error
        if status == Document.Status.QUEUED:
            current.progress = 0
        current.save(update_fields=["status", "error", "progress", "updated_at"])
    document_push(current)


def document_ingest(*, document_id: int) -> IngestReport:
    """Run the pipeline for one document. Safe to call again for the same document at any time.

    Permanent problems (a hostile or broken file, the quota) end as `failed` with a sentence for the
    user. A transient one (storage, the embedding provider) puts the document back in the queue and is
    re-raised for the caller to retry later, until `INGEST_MAX_ATTEMPTS` attempts have been used. A document
    queued again while it was processed is left queued, and sent to the queue again once its lock is free (the
    task queued with it found the lock held and went away).
    """
    try:
        with _document_lock(document_id) as acquired:
            if not acquired:
                return IngestReport(Outcome.SKIPPED, document_id)
            document = _claim(document_id)
            if document is None:
                return IngestReport(Outcome.SKIPPED, document_id)
            report = _ingest_claimed(document)
    except QueuedAgain:
        document_ingest_enqueue(document_id=document_id)
        return IngestReport(Outcome.SKIPPED, document_id)
    if Document.objects.filter(id=document_id, status=Document.Status.QUEUED).exists():
        # Queued again between this run's last write and the release of its lock: that request's task found the
        # lock held and went away.
        document_ingest_enqueue(document_id=document_id)
    return report


def _ingest_claimed(document: Document) -> IngestReport:
    document_id = document.id
    try:
        return _run(document)
    except DocumentVanished:
        return IngestReport(Outcome.SKIPPED, document_id)
    except TransientIngestionError as exc:
        if document.attempts >= settings.INGEST_MAX_ATTEMPTS:
            message = f"{exc.message} Gave up after {document.attempts} attempts; upload the file again later."
            _finish(document, status=Document.Status.FAILED, error=message)
            return IngestReport(Outcome.FAILED, document_id, error=message)
        _finish(document, status=Document.Status.QUEUED, error=exc.message)
        raise
    except IngestionError as exc:
        _finish(document, status=Document.Status.FAILED, error=exc.message)
        return IngestReport(Outcome.FAILED, document_id, error=exc.message)
    except LimitExceeded:
        message = (
            "Your monthly token quota is used up, so this document was not processed; "
            "upload it again when the quota renews or after upgrading your plan."
        )
        _finish(document, status=Document.Status.FAILED, error=message)
        return IngestReport(Outcome.FAILED, document_id, error=message)
    except SoftTimeLimitExceeded:
        message = "Processing this document took too long and was stopped; split it into smaller files."
        _finish(document, status=Document.Status.FAILED, error=message)
        return IngestReport(Outcome.FAILED, document_id, error=message)
    except QueuedAgain:
        raise
    except Exception as exc:
        logger.exception("ingestion of document %s failed unexpectedly", document_id)
        transient = TransientIngestionError("Processing stopped on an unexpected error.")
        if document.attempts >= settings.INGEST_MAX_ATTEMPTS:
            message = f"{transient.message} Gave up after {document.attempts} attempts."
            _finish(document, status=Document.Status.FAILED, error=message)
            return IngestReport(Outcome.FAILED, document_id, error=message)
        _finish(document, status=Document.Status.QUEUED, error=transient.message)
        raise transient from exc


def _progress_estimator(document: Document, path: Path, limits: ExtractionLimits) -> Callable[[list[ChunkDraft]], int]:
    """Percent done after a stored batch, from its last page (PDF) or the characters read so far (the rest)."""
    if document.kind == Kind.PDF:
        total_pages = pdf_page_count(path, limits=limits)
        if total_pages > limits.max_pages:
            raise IngestionError(
                f"This PDF has {total_pages:,} pages, more than the limit of {limits.max_pages:,}; "
                "split it into smaller files and upload them separately."
            )
        return lambda batch: min(99, (batch[-1].page or 0) * 100 // max(1, total_pages))
    # Text is a fair fraction of the file size for these formats; the bar only needs to move steadily.
    expected_chars = max(1, document.size_bytes * (1 if document.kind in (Kind.TEXT, Kind.MARKDOWN) else 0.5))
    seen = 0

    def estimate(batch: list[ChunkDraft]) -> int:
        nonlocal seen
        seen += sum(len(draft.text) for draft in batch)
        return min(95, int(seen * 100 / expected_chars))

    return estimate


def embedding_text(title: str, draft: ChunkDraft) -> str:
    """What is embedded for a chunk: its text under the document title and heading path.

    A chunk cut from the middle of a section rarely names what it is about ("It was founded in 1868");
    the header puts it back. Chunks are sized below the model's input window to leave room for it, and
    the header is capped so that it can never push the chunk's own text out.
    """
    header = " > ".join(part for part in (title, *draft.heading_path) if part)
    if len(header) > _HEADER_MAX_CHARS:
        header = header[:_HEADER_MAX_CHARS].rsplit(" ", 1)[0]
    return f"{header}\n\n{draft.text}" if header else draft.text


def _batched(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _run(document: Document) -> IngestReport:
    # Imported here: the model libraries are heavy, and web processes import this module only to queue work.
    from documents.embedders import configured_chunker, configured_embedder

    started = time.perf_counter()
    path = Path(document.file.path)
    if not path.exists():
        raise IngestionError("The uploaded file is missing from storage; upload it again.")
    quota_check(user=document.owner, tokens=0)
    embedder = configured_embedder()
    if vector_column_dimensions() != embedder.dimensions:
        raise TransientIngestionError(
            "The search index is being rebuilt for a new embedding model; this document will be retried."
        )
    limits = ExtractionLimits(max_pages=settings.INGEST_MAX_PAGES)
    estimate = _progress_estimator(document, path, limits)
    chunks_delete(document_id=document.id)

    clock = _StageClock()
    throttle = ProgressThrottle()
    sections: Iterator[Section] = clock.iterate("extract", extract_sections(path, Kind(document.kind), limits=limits))
    drafts = clock.iterate("extract+chunk", configured_chunker(embedder)(sections))
    stored = tokens = embedding_tokens = 0
    pages = 0
    progress = 0
    spent_model = ""
    try:
        with _ChunkWriter(document) as writer:
            for batch in _batched(drafts, settings.INGEST_STORE_BATCH):
                _quota_check_batch(document, unbilled=embedding_tokens + sum(d.token_count for d in batch))
                with clock.stage("embed"):
                    embedded = embedder.embed_documents([embedding_text(document.title, draft) for draft in batch])
                embedding_tokens += embedded.prompt_tokens
                spent_model = embedded.model
                rows = [
                    StoredChunk(
                        ordinal=draft.ordinal,
                        text=draft.text,
                        page=draft.page,
                        heading_path=draft.heading_path,
                        token_count=draft.token_count,
                        embedding=vector,
                    )
                    for draft, vector in zip(batch, embedded.vectors, strict=True)
                ]
                stored += len(rows)
                tokens += sum(draft.token_count for draft in batch)
                pages = max([pages, *(draft.page or 0 for draft in batch)])
                progress = max(progress, estimate(batch))
                with clock.stage("store"):
                    writer.store(rows, progress=progress, pages=pages or None, chunks=stored, tokens=tokens)
                if throttle.due(progress):
                    document.progress, document.pages, document.chunk_count, document.token_count = (
                        progress,
                        pages or None,
                        stored,
                        tokens,
                    )
                    document_push(document)
    except BaseException:
        # A run that stops part-way (the document deleted, a time limit, a failure) has still paid for what it
        # embedded; the retry that follows, if any, is billed as its own attempt.
        _embedding_spend_record(document, model=spent_model, tokens=embedding_tokens, clock=clock)
        raise
    if stored == 0:
        raise IngestionError("No text could be found in this document, so there is nothing to search.")

    # Billed before the document turns ready and outside its transaction (the quota counter lives in Redis,
    # which a rollback would not undo); the request id makes a repeated call a no-op.
    _embedding_spend_record(document, model=spent_model, tokens=embedding_tokens, clock=clock, strict=True)
    with transaction.atomic():
        locked = Document.objects.select_for_update().filter(id=document.id).first()
        if locked is None:
            raise DocumentVanished
        if _queued_again(locked, document):
            raise QueuedAgain
        with clock.stage("store"):
            lexeme_counts_store(document_id=document.id, owner_id=document.owner_id)
        locked.status = Document.Status.READY
        locked.progress = 100
        locked.pages = pages or None
        locked.chunk_count = stored
        locked.token_count = tokens
        locked.embedding_model = spent_model
        locked.error = ""
        locked.save()
    document_push(locked)
    return IngestReport(
        Outcome.READY,
        document.id,
        pages=pages or None,
        chunks=stored,
        tokens=tokens,
        embedding_tokens=embedding_tokens,
        seconds=clock.report() | {"total": time.perf_counter() - started},
    )


def _quota_check_batch(document: Document, *, unbilled: int) -> None:
    """Against what this run has embedded but not billed yet: a document bigger than the quota left stops when it
    runs out (billed for what it embedded) instead of being embedded whole. The chunks' own counts stand in for
    the batch's tokens (the embedder adds each one's title header), so a run may pass the quota by a header per
    chunk of one batch; runs of one owner at once do not see each other's unbilled tokens."""
    try:
        quota_check(user=document.owner, tokens=unbilled)
    except LimitExceeded as exc:
        raise IngestionError(
            "Your monthly token quota ran out while this document was processed, so it was stopped (what was "
            "embedded before is billed); upload it again when the quota renews or after upgrading your plan."
        ) from exc
    except LimiterUnavailable:
        # The run was admitted at its start; a Redis blip mid-run must not fail it and have it embedded again.
        logger.warning("quota not checked for a batch of document %s: the limiter is unavailable", document.id)


def _embedding_spend_record(
    document: Document, *, model: str, tokens: int, clock: _StageClock, strict: bool = False
) -> None:
    """The run's embedding tokens on the owner's ledger, once per run. `strict`: errors propagate (a finished
    run); otherwise they are logged, so that the error that stopped the run is the one that surfaces."""
    if not tokens:
        return
    # Keyed by the run's start, not only its attempt number: a re-upload, a retry from the admin or a reindex
    # starts the attempts again at 1, and a ledger key seen before would record that run's spend as a duplicate.
    run = f"{document.attempts}:{document.processing_started_at:%Y%m%dT%H%M%S.%f}"
    try:
        usage_record(
            user=document.owner,
            kind="embedding",
            model=model,
            prompt_tokens=tokens,
            latency_ms=int(clock.seconds["embed"] * 1000),
            request_id=f"embed:{document.id}:{run}",
            document_id=document.id,
        )
    except Exception:
        if strict:
            raise
        logger.exception("could not bill the %d embedding tokens of document %s", tokens, document.id)


class _ChunkWriter:
    """Stores each batch's chunks over `INGEST_STORE_CONNECTIONS` database sessions at once.

    Inserting into the HNSW index is the store stage's cost (~0.8 ms a chunk, against ~0.15 ms for the COPY, the
    tsvector and the GIN index together) and it runs in the server process of the session that inserts, one
    core each: two sessions store a batch ~1.6x as fast on two cores (`manage.py bench documents.ingestion`).
    Each part is its own transaction; the first also moves the document's progress. A run restarts from no
    chunks at all (`chunks_delete`), so parts committed before a failure are never left behind as a set.
    """

    def __init__(self, document: Document) -> None:
        self.document = document
        self.helpers = max(0, settings.INGEST_STORE_CONNECTIONS - 1)
        self.pool = ThreadPoolExecutor(self.helpers, thread_name_prefix="chunk-copy") if self.helpers else None

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def store(self, rows: list[StoredChunk], *, progress: int, pages: int | None, chunks: int, tokens: int) -> None:
        size = -(-len(rows) // (1 + self.helpers))
        first, rest = rows[:size], [rows[i:i + size] for i in range(size, len(rows), size)]
        pending = [self.pool.submit(self._store_part, part) for part in rest] if self.pool is not None else []
        try:
            _store_batch(self.document, first, progress=progress, pages=pages, chunks=chunks, tokens=tokens)
        finally:
            wait(pending)
        for future in pending:
            future.result()

    def _store_part(self, rows: list[StoredChunk]) -> None:
        try:
            _guard_vanished(self.document, lambda: chunks_copy(
                document_id=self.document.id, owner_id=self.document.owner_id, chunks=rows))
        finally:
            connection.close()  # this thread's session: back to the pool (or closed) between batches


def _store_batch(
    document: Document, rows: list[StoredChunk], *, progress: int, pages: int | None, chunks: int, tokens: int
) -> None:
    def write() -> None:
        chunks_copy(document_id=document.id, owner_id=document.owner_id, chunks=rows)
        # Also the run's heartbeat: the stuck sweep looks at updated_at. Only while the document is this run's:
        # one queued again stops here, rather than being embedded (and billed) whole for a result set aside.
        updated = Document.objects.filter(
            id=document.id, status=Document.Status.PROCESSING, processing_started_at=document.processing_started_at,
        ).update(progress=progress, pages=pages, chunk_count=chunks, token_count=tokens, updated_at=timezone.now())
        if not updated:
            raise QueuedAgain if Document.objects.filter(id=document.id).exists() else DocumentVanished

    _guard_vanished(document, write)


def _guard_vanished(document: Document, write: Callable[[], object]) -> None:
    """Run `write` in a transaction; a document deleted meanwhile raises DocumentVanished."""
    try:
        with transaction.atomic():
            write()
    except IntegrityError as exc:
        # The foreign keys are checked at commit: a document deleted meanwhile shows up here.
        if not Document.objects.filter(id=document.id).exists():
            raise DocumentVanished from exc
        raise


def documents_requeue_stuck(*, now: datetime | None = None) -> list[int]:
    """Queue again the documents no worker is processing although they are queued or processing, and have
    not moved for `INGEST_STUCK_AFTER_SECONDS` (a killed worker, a lost broker message). Run periodically.

    Returns the ids queued again. The stuck time restarts for each, so a long backlog is not re-sent on
    every sweep.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.INGEST_STUCK_AFTER_SECONDS)
    candidates = Document.objects.filter(
        status__in=[Document.Status.QUEUED, Document.Status.PROCESSING], updated_at__lt=cutoff
    ).values_list("id", flat=True)
    requeued = []
    for document_id in candidates[:1000]:
        if document_is_being_processed(document_id=document_id):
            continue
        with transaction.atomic():
            document = (
                Document.objects.select_for_update(skip_locked=True)
                .filter(id=document_id, updated_at__lt=cutoff)
                .first()
            )
            if document is None:
                continue
            if document.attempts >= settings.INGEST_MAX_ATTEMPTS:
                document.status = Document.Status.FAILED
                document.error = _interrupted_message(document.attempts)
                document.save(update_fields=["status", "error", "updated_at"])
                transaction.on_commit(lambda document=document: document_push(document))
                continue
            Document.objects.filter(id=document_id).update(status=Document.Status.QUEUED, progress=0, updated_at=now)
            transaction.on_commit(lambda document_id=document_id: document_ingest_enqueue(document_id=document_id))
        requeued.append(document_id)
    if requeued:
        logger.warning("re-queued %d stuck document(s): %s", len(requeued), requeued)
    return requeued
