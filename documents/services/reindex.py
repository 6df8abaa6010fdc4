"""Re-embedding after an embedding model change, including a change of vector dimension."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from documents.models import Chunk, Document
from documents.services.ingest import IngestReport, document_ingest
from documents.services.store import CHUNK_TABLE, HNSW_INDEX, LEXEME_TABLE, vector_column_dimensions
from documents.services.uploads import document_ingest_enqueue


def _hnsw_index():
    return next(index for index in Chunk._meta.indexes if index.name == HNSW_INDEX)


@transaction.atomic
def embedding_column_resize(*, dimensions: int) -> int:
    """Give the vector column a new dimension. Every chunk is deleted (vectors of another model are useless
    and cannot be cast) and every document is queued for re-embedding. Returns the old dimension.

    The HNSW index is dropped first and rebuilt on the empty table, where building costs nothing; the
    re-ingestion then fills it incrementally.
    """
    old = vector_column_dimensions()
    if old == dimensions:
        return old
    index = _hnsw_index()
    with connection.schema_editor(atomic=False) as editor:
        # Deferred foreign-key checks still pending in an enclosing transaction would block TRUNCATE/ALTER.
        editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        editor.remove_index(Chunk, index)
        editor.execute(f"TRUNCATE {CHUNK_TABLE}, {LEXEME_TABLE}")
        editor.execute(f"ALTER TABLE {CHUNK_TABLE} ALTER COLUMN embedding TYPE vector({int(dimensions)})")
        editor.add_index(Chunk, index)
    Document.objects.update(
        status=Document.Status.QUEUED,
        progress=0,
        chunk_count=0,
        token_count=0,
        attempts=0,
        error="",
        embedding_model="",
        updated_at=timezone.now(),
    )
    return old


def _selected(user: User | None) -> QuerySet[Document]:
    documents = Document.objects.order_by("id")
    return documents.filter(owner=user) if user is not None else documents


def documents_reindex(*, user: User | None = None) -> list[int]:
    """Queue every document (of `user`, or of everyone) for re-embedding; returns their ids.

    A document leaves search while it is re-embedded: its old vectors come from another model, so
    serving them beside the new ones would mix two incompatible spaces.
    """
    ids = list(_selected(user).values_list("id", flat=True))
    for start in range(0, len(ids), 1000):
        batch = ids[start : start + 1000]
        with transaction.atomic():
            Document.objects.filter(id__in=batch).update(
                status=Document.Status.QUEUED, progress=0, attempts=0, error="", updated_at=timezone.now()
            )
            transaction.on_commit(
                lambda batch=batch: [document_ingest_enqueue(document_id=document_id) for document_id in batch]
            )
    return ids


def documents_reindex_now(*, user: User | None = None) -> Iterator[IngestReport]:
    """Re-embed in this process, one document after the other (an operator's `reindex --sync`)."""
    for document_id in documents_reindex_ids(user=user):
        yield document_ingest(document_id=document_id)


def documents_reindex_ids(*, user: User | None = None) -> list[int]:
    ids = list(_selected(user).values_list("id", flat=True))
    Document.objects.filter(id__in=ids).update(
        status=Document.Status.QUEUED, progress=0, attempts=0, error="", updated_at=timezone.now()
    )
    return ids
