"""Writing chunks with binary COPY, and the vector column's shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.db import connection
from pgvector.psycopg import register_vector

from documents.models import Chunk, LexemeCount

CHUNK_TABLE = Chunk._meta.db_table
LEXEME_TABLE = LexemeCount._meta.db_table
HNSW_INDEX = "chunk_embedding_hnsw"
_HEADING_MAX = 300  # varchar(300)[]: binary COPY checks the length instead of truncating
_COPY_SQL = (
    f"COPY {CHUNK_TABLE} (document_id, owner_id, ordinal, text, page, heading_path, token_count, embedding) "
    "FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["int8", "int8", "int4", "text", "int4", "varchar[]", "int4", "vector"]


@dataclass(frozen=True, slots=True)
class StoredChunk:
    ordinal: int
    text: str
    page: int | None
    heading_path: Sequence[str]
    token_count: int
    embedding: np.ndarray


def raw_connection():
    """The psycopg 3 connection under Django's, with the pgvector types registered on it."""
    connection.ensure_connection()
    pg = connection.connection
    if pg.adapters.types.get("vector") is None:
        register_vector(pg)
    return pg


def chunks_copy(*, document_id: int, owner_id: int, chunks: Sequence[StoredChunk]) -> int:
    """Append chunks with one binary COPY; call inside the batch's transaction."""
    raw_connection()
    with connection.cursor() as cursor, cursor.cursor.copy(_COPY_SQL) as copy:
        copy.set_types(_COPY_TYPES)
        for chunk in chunks:
            copy.write_row(
                (
                    document_id,
                    owner_id,
                    chunk.ordinal,
                    chunk.text.replace("\x00", ""),
                    chunk.page,
                    [heading[:_HEADING_MAX] for heading in chunk.heading_path],
                    chunk.token_count,
                    np.asarray(chunk.embedding, dtype=np.float32),
                )
            )
    return len(chunks)


def chunks_delete(*, document_id: int) -> int:
    """Remove a document's chunks and their lexeme counts."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {LEXEME_TABLE} WHERE document_id = %s", [document_id])  # noqa: S608
        cursor.execute(f"DELETE FROM {CHUNK_TABLE} WHERE document_id = %s", [document_id])  # noqa: S608
        return cursor.rowcount


def lexeme_counts_store(*, document_id: int, owner_id: int) -> int:
    """Count, per lexeme, the document's chunks holding it (from their stored text search vectors)."""
    # ts_stat takes its query as text; the id is an int, so formatting it in is safe.
    chunks_query = f"SELECT search_vector FROM {CHUNK_TABLE} WHERE document_id = {int(document_id)}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {LEXEME_TABLE} WHERE document_id = %s", [document_id])  # noqa: S608
        cursor.execute(
            f"INSERT INTO {LEXEME_TABLE} (document_id, owner_id, lexeme, chunks) "  # noqa: S608
            "SELECT %s, %s, word, ndoc FROM ts_stat(%s)",
            [document_id, owner_id, chunks_query],
        )
        return cursor.rowcount


def vector_column_dimensions() -> int:
    """The dimension the database column was created with (it can lag the settings after a model change)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding'",
            [CHUNK_TABLE],
        )
        return cursor.fetchone()[0]
