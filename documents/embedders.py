"""The embedder and chunker as configured in settings.

`documents.embedding` never reads Django settings (callers pass an `EmbeddingConfig`); this is the one place
that translates the EMBEDDING_* / CHUNK_* / OPENAI_* settings into it, for the workers and for search.
"""

from __future__ import annotations

from django.conf import settings

from documents.embedding import Embedder, EmbeddingConfig, get_embedder
from documents.ingestion.chunking import Chunker, chunker_for


def embedding_config() -> EmbeddingConfig:
    backend = settings.EMBEDDING_BACKEND
    return EmbeddingConfig(
        backend=backend,
        model=settings.EMBEDDING_MODEL,
        dimensions=settings.EMBEDDING_DIMENSIONS,
        cache_dir=str(settings.EMBEDDING_CACHE_DIR),
        api_key=settings.OPENAI_API_KEY if backend == "openai" else "",
        base_url=(settings.OPENAI_BASE_URL or None) if backend == "openai" else None,
        max_batch_size=settings.EMBEDDING_BATCH_SIZE if backend == "openai" else EmbeddingConfig.max_batch_size,
    )


def configured_embedder() -> Embedder:
    """The process-wide embedder for the current settings (built on first use)."""
    return get_embedder(embedding_config())


def configured_chunker(embedder: Embedder) -> Chunker:
    return chunker_for(embedder, chunk_tokens=settings.CHUNK_TOKENS, overlap_tokens=settings.CHUNK_OVERLAP_TOKENS)
