from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from pgvector.django import HnswIndex, VectorField

from documents.ingestion.types import Kind


def upload_path(document: Document, filename: str) -> str:
    # Content-addressed per owner: the original name is kept on the row, never trusted as a path.
    return f"documents/{document.owner_id}/{document.sha256}"


class Document(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        PROCESSING = "processing"
        READY = "ready"
        FAILED = "failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=255)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=[(kind.value, kind.value) for kind in Kind])
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    file = models.FileField(upload_to=upload_path, max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    error = models.TextField(blank=True)
    progress = models.PositiveSmallIntegerField(default=0)
    pages = models.PositiveIntegerField(null=True, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    token_count = models.PositiveBigIntegerField(default=0)
    embedding_model = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    processing_started_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["owner", "sha256"], name="document_unique_content_per_owner")]
        indexes = [models.Index(fields=["owner", "-created_at"], name="document_owner_recent")]

    def __str__(self) -> str:
        return self.title


# COST (migration 0005): at the default (100) the planner judged a chunk table of a few hundred rows cheaper to
# scan, computing this for every row and every word of the question (~15 us a row: 0.8 ms a word over 54 chunks,
# where the GIN index takes 0.07 ms), so a small installation paid more per search than a big one.
OWNER_LEXEMES_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION chunk_owner_lexemes(owner bigint, lexemes tsvector) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 10000
AS $$ SELECT array(SELECT owner::text || ':' || lexeme FROM unnest(tsvector_to_array(lexemes)) AS lexeme) $$
"""


class OwnerLexemes(models.Func):
    """The chunk's lexemes qualified by its owner (`42:norman`): SQL function `chunk_owner_lexemes`, migration 0004.

    The keyword half of search finds a user's chunks holding a word through a GIN index on this, whose posting
    lists hold that owner's chunks only. On a plain GIN over `search_vector`, shared by all users, a word's posting
    list spans every user's chunks: at 1M chunks a mid-sized user's question read ~50,000 entries (20-30 ms)
    to keep the ~1,500 that were theirs.
    """

    function = "chunk_owner_lexemes"
    output_field = ArrayField(models.TextField())


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunk_set")
    # Denormalised from the document so that a search filters on one indexed column of the chunk table.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    page = models.PositiveIntegerField(null=True, blank=True)
    heading_path = ArrayField(models.CharField(max_length=300), default=list, blank=True)
    token_count = models.PositiveIntegerField()
    embedding = VectorField(dimensions=settings.EMBEDDING_DIMENSIONS)
    search_vector = models.GeneratedField(
        expression=SearchVector("text", config="english"), output_field=SearchVectorField(), db_persist=True
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal")]
        indexes = [
            HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                opclasses=["vector_cosine_ops"],
                m=16,
                ef_construction=64,
            ),
            # Full text, scoped by owner: see OwnerLexemes.
            GinIndex(OwnerLexemes("owner", "search_vector"), name="chunk_owner_lexemes_gin"),
            models.Index(fields=["owner", "document"], name="chunk_owner_document"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"


class LexemeCount(models.Model):
    """How many of a document's chunks hold each lexeme of its text search vectors.

    These are BM25's document frequencies: the keyword half of search sums them over the documents being
    searched, which costs one index lookup per query word, where counting matching chunks would visit
    thousands of rows for a common word in a large collection.
    """

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="+")
    # Denormalised like Chunk.owner, so that the lookup is one index range per word.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    lexeme = models.TextField()
    chunks = models.PositiveIntegerField()

    class Meta:
        # Covering: a big owner's common word has a row in each of hundreds of documents, read index-only.
        indexes = [
            models.Index(fields=["owner", "lexeme"], include=["document", "chunks"], name="lexeme_owner_lexeme_cover")
        ]

    def __str__(self) -> str:
        return f"{self.document_id}:{self.lexeme}={self.chunks}"
