from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

from accounts.models import User
from billing.services import subscription_assign_plan
from documents.embedding import get_embedder
from documents.ingestion.sniff import sniff_kind_path
from documents.ingestion.types import CONTENT_TYPES, Kind
from documents.models import Document, upload_path
from documents.services import document_delete
from documents.services.store import StoredChunk, chunks_copy, lexeme_counts_store


def bench_user(email: str) -> User:
    """A throwaway account for benchmark data, on the largest plan so that repeated runs fit its quota."""
    user, created = User.objects.get_or_create(email=email, defaults={"name": "Benchmark"})
    if created:
        user.set_unusable_password()
        user.save()
    subscription_assign_plan(user=user, plan_slug="team")
    return user


def bench_documents_clear(user: User) -> None:
    for document in Document.objects.filter(owner=user):
        document_delete(document=document)


def bench_document(user: User, source: Path, *, title: str | None = None) -> Document:
    """A queued document for `source`, stored the way an upload stores it (without the HTTP part)."""
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    kind = sniff_kind_path(source)
    document = Document(owner=user, title=title or source.stem, filename=source.name, content_type=CONTENT_TYPES[kind],
                        kind=kind.value, size_bytes=source.stat().st_size, sha256=sha256)
    relative = upload_path(document, source.name)
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    document.file.name = relative
    document.save()
    return document


def document_from_texts(
    *, owner: User, title: str, texts: Sequence[str], pages: Sequence[int | None] | None = None,
    status: str = Document.Status.READY,
) -> Document:
    """A document as ingestion leaves it, one chunk per text, without the ingest queue (tests and benchmarks):
    embeddings from the project's embedder, token counts, chunks written by ingestion's own COPY, and the lexeme
    counts the keyword half of search weighs words by (without them it finds nothing)."""
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
    chunks_copy(document_id=document.id, owner_id=owner.id, chunks=[
        StoredChunk(ordinal=index, text=text, page=(pages[index] if pages else None), heading_path=(),
                    token_count=tokens[index], embedding=vectors[index])
        for index, text in enumerate(texts)
    ])
    lexeme_counts_store(document_id=document.id, owner_id=owner.id)
    return document
