"""Chat test data: users on a roomy plan with priced models, and ready documents with real embeddings."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import ModelPrice
from billing.tests.factories import ModelPriceFactory, PlanFactory, subscribe
from documents.embedding import get_embedder
from documents.ingestion.types import Kind
from documents.models import Chunk, Document
from documents.services.store import lexeme_counts_store

# A model with a tiny context window, for the tests that need the prompt budget to bite.
SMALL_MODEL = "gpt-4o-mini-small"


def model_prices() -> None:
    ModelPriceFactory(model="gpt-4o-mini")
    ModelPriceFactory(model="extractive", input_per_million=Decimal(0), output_per_million=Decimal(0),
                      context_window=32_768, default_max_tokens=512)
    ModelPriceFactory(model=SMALL_MODEL, context_window=1_200, default_max_tokens=100)


def chat_user(**plan_fields) -> User:
    """A user whose plan allows the test models, with limits that only the limit tests reach."""
    user = UserFactory()
    plan = PlanFactory(chat_models=["gpt-4o-mini", "extractive", SMALL_MODEL], **plan_fields)
    subscribe(user=user, plan=plan)
    return user


def document_with_chunks(
    *, owner: User, title: str, texts: Sequence[str], pages: Sequence[int | None] | None = None,
    status: str = Document.Status.READY,
) -> Document:
    """A document as ingestion would leave it: chunks with embeddings from the project's embedder."""
    embedder = get_embedder()
    body = "\n\n".join(texts).encode()
    tokens = [embedder.count_tokens(text) for text in texts]
    document = Document.objects.create(
        owner=owner, title=title, filename=f"{title}.txt", content_type="text/plain", kind=Kind.TEXT,
        size_bytes=len(body), sha256=hashlib.sha256(body + title.encode()).hexdigest(),
        file=f"documents/{owner.id}/{title}", status=status, chunk_count=len(texts), token_count=sum(tokens),
        pages=max((p for p in (pages or []) if p), default=None), embedding_model=embedder.model,
    )
    vectors = embedder.embed_documents(list(texts)).vectors
    Chunk.objects.bulk_create([
        Chunk(document=document, owner=owner, ordinal=index, text=text, page=(pages[index] if pages else None),
              token_count=tokens[index], embedding=vectors[index].tolist())
        for index, text in enumerate(texts)
    ])
    # The keyword half of the search weighs words by these counts: without them it finds nothing.
    lexeme_counts_store(document_id=document.id, owner_id=owner.id)
    return document


__all__ = ["SMALL_MODEL", "ModelPrice", "chat_user", "document_with_chunks", "model_prices"]
