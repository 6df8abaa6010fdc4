"""`manage.py reindex`: re-embedding after a model change."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from documents.models import Chunk, Document
from documents.services.store import HNSW_INDEX, vector_column_dimensions
from documents.tests import hostile_files

pytestmark = pytest.mark.django_db


def _hnsw_definition() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [HNSW_INDEX])
        row = cursor.fetchone()
    return row[0] if row else ""


def test_reindex_of_one_user_queues_only_their_documents(post_file, user, other_user):
    mine = post_file(hostile_files.sample_pdf()).json()["id"]
    theirs = Document.objects.create(
        owner=other_user,
        title="t",
        filename="t.txt",
        content_type="text/plain",
        kind="text",
        size_bytes=1,
        sha256="0" * 64,
        status="ready",
    )
    Document.objects.filter(id=mine).update(status="ready", attempts=1)

    call_command("reindex", "--user", user.email.upper())

    assert Document.objects.get(id=mine).status == "queued"
    assert Document.objects.get(id=mine).attempts == 0
    assert Document.objects.get(id=theirs.id).status == "ready"


def test_reindex_sync_reembeds_into_one_fresh_chunk_set(post_file, user):
    document_id = post_file(hostile_files.sample_pdf()).json()["id"]
    call_command("reindex", "--sync")
    first = set(Chunk.objects.filter(document_id=document_id).values_list("id", flat=True))

    call_command("reindex", "--sync", "--user", user.email)

    document = Document.objects.get(id=document_id)
    second = list(Chunk.objects.filter(document_id=document_id).values_list("id", "ordinal"))
    assert document.status == "ready"
    assert first and not first & {chunk_id for chunk_id, _ in second}
    assert len(second) == len(first) == document.chunk_count
    assert sorted(ordinal for _, ordinal in second) == list(range(document.chunk_count))


def test_reindex_resizes_the_vector_column_and_rebuilds_hnsw_when_dimensions_change(post_file, settings):
    document_id = post_file(hostile_files.sample_pdf()).json()["id"]
    call_command("reindex", "--sync")
    assert Chunk.objects.filter(document_id=document_id).exists()
    settings.EMBEDDING_DIMENSIONS = 8

    call_command("reindex")

    assert vector_column_dimensions() == 8
    assert "hnsw" in _hnsw_definition() and "vector_cosine_ops" in _hnsw_definition()
    assert not Chunk.objects.exists()
    assert Document.objects.get(id=document_id).status == "queued"


def test_reindex_refuses_a_single_user_when_dimensions_change(user, settings):
    settings.EMBEDDING_DIMENSIONS = 8

    with pytest.raises(CommandError, match="without --user"):
        call_command("reindex", "--user", user.email)

    assert vector_column_dimensions() == 384


def test_reindex_of_unknown_user_is_an_error(db):
    with pytest.raises(CommandError, match="no user"):
        call_command("reindex", "--user", "nobody@example.com")
