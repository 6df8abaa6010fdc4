"""The upload/list/detail/delete API, without a worker: what happens at the edge and in storage."""

from __future__ import annotations

import hashlib
import io
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_key_create
from billing.models import Plan
from billing.services import catalog_ensure
from documents.models import Chunk, Document, LexemeCount
from documents.services import documents_requeue_stuck
from documents.services.store import StoredChunk, chunks_copy, lexeme_counts_store
from documents.tests import hostile_files

pytestmark = pytest.mark.django_db

DOCUMENT_FIELDS = {
    "id",
    "title",
    "filename",
    "content_type",
    "size_bytes",
    "status",
    "error",
    "progress",
    "pages",
    "chunks",
    "tokens",
    "created_at",
}


def test_pdf_upload_returns_201_with_the_document_json(post_file, user, media_root):
    data = hostile_files.sample_pdf()

    response = post_file(data, name="Quarterly report.pdf", title="Q3 report")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == DOCUMENT_FIELDS
    assert body["title"] == "Q3 report"
    assert body["filename"] == "Quarterly report.pdf"
    assert body["content_type"] == "application/pdf"
    assert body["size_bytes"] == len(data)
    assert (body["status"], body["progress"], body["chunks"], body["tokens"], body["error"]) == ("queued", 0, 0, 0, "")
    document = Document.objects.get(id=body["id"])
    assert document.owner == user
    assert document.sha256 == hashlib.sha256(data).hexdigest()
    assert Path(document.file.path).read_bytes() == data
    assert Path(document.file.path).is_relative_to(media_root)


def test_title_defaults_to_the_file_name_without_extension(post_file):
    response = post_file(hostile_files.sample_markdown(), name="C:\\Users\\me\\notes.md")

    assert response.status_code == 201
    assert response.json()["title"] == "notes"
    assert response.json()["filename"] == "notes.md"
    assert response.json()["content_type"] == "text/markdown"


def test_type_comes_from_the_content_not_the_extension(post_file):
    response = post_file(hostile_files.sample_html(), name="page.txt")

    assert response.status_code == 201
    assert response.json()["content_type"] == "text/html"


def test_identical_content_returns_the_existing_document(post_file, user):
    first = post_file(hostile_files.sample_pdf(), name="a.pdf")
    second = post_file(hostile_files.sample_pdf(), name="copy of a.pdf")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert Document.objects.filter(owner=user).count() == 1


def test_identical_content_from_another_user_is_their_own_document(post_file, other_user):
    mine = post_file(hostile_files.sample_pdf())
    client = APIClient()
    client.force_authenticate(other_user)
    theirs = post_file(hostile_files.sample_pdf(), client=client)

    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine.json()["id"]


def test_uploading_a_failed_document_again_queues_it_again(post_file, user):
    first = post_file(hostile_files.sample_pdf()).json()
    yesterday = timezone.now() - timedelta(days=1)
    Document.objects.filter(id=first["id"]).update(status="failed", error="boom", attempts=3, updated_at=yesterday)

    again = post_file(hostile_files.sample_pdf())

    assert again.status_code == 200
    assert (again.json()["status"], again.json()["error"]) == ("queued", "")
    assert Document.objects.get(id=first["id"]).attempts == 0
    assert documents_requeue_stuck() == []  # just queued: not mistaken for a queued document that was lost


def test_uploading_again_a_document_whose_file_went_missing_puts_the_file_back(post_file, user, media_root):
    first = post_file(hostile_files.sample_pdf()).json()
    document = Document.objects.get(id=first["id"])
    stored = Path(document.file.path)
    stored.unlink()
    Document.objects.filter(id=document.id).update(
        status="failed", error="The uploaded file is missing from storage; upload it again.")

    again = post_file(hostile_files.sample_pdf())

    assert (again.status_code, again.json()["id"], again.json()["status"]) == (200, document.id, "queued")
    assert stored.read_bytes() == hostile_files.sample_pdf()
    assert [path for path in media_root.rglob("*") if path.is_file()] == [stored]  # and no stray copy


@pytest.mark.parametrize(
    ("builder", "name", "words"),
    [
        (hostile_files.binary_junk, "junk.pdf", "named .pdf"),
        (hostile_files.png_image, "photo.pdf", "PNG image"),
        (hostile_files.xlsx_like_zip, "sheet.docx", "Excel"),
        (hostile_files.legacy_doc, "old.doc", "legacy Microsoft Office"),
        (hostile_files.encrypted_docx_container, "secret.docx", "password-protected"),
    ],
)
def test_unsupported_content_is_415_with_a_reason(post_file, media_root, builder, name, words):
    response = post_file(builder(), name=name)

    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert words in error["message"]
    assert not Document.objects.exists()
    assert not any(path.is_file() for path in media_root.rglob("*"))


def test_empty_file_is_400_and_stores_nothing(post_file, media_root):
    response = post_file(hostile_files.zero_byte_file(), name="empty.pdf")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_file"
    assert not Document.objects.exists()
    assert not any(path.is_file() for path in media_root.rglob("*"))


def test_truncated_docx_is_422_with_a_reason(post_file):
    response = post_file(hostile_files.truncated_docx(), name="broken.docx")

    assert response.status_code == 422
    assert "damaged" in response.json()["error"]["message"]


def test_file_over_the_server_limit_is_413_and_stores_nothing(post_file, settings, media_root):
    settings.MAX_UPLOAD_MB = 1

    response = post_file(b"word " * 250_000, name="big.txt")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert not Document.objects.exists()
    assert not any(path.is_file() for path in media_root.rglob("*"))


def test_plan_document_limit_is_enforced_with_billings_status(post_file, user):
    catalog_ensure()
    Plan.objects.filter(is_default=True).update(max_documents=1)
    assert post_file(hostile_files.sample_pdf()).status_code == 201

    response = post_file(hostile_files.sample_markdown(), name="second.md")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "document_limit"
    assert Document.objects.filter(owner=user).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("limit", ["documents", "storage"])
def test_parallel_uploads_cannot_pass_the_plan_limits_together(user, media_root, limit):
    catalog_ensure()
    files = [f"note {index}: ".encode() + b"x" * 300_000 for index in range(8)]
    if limit == "documents":
        Plan.objects.filter(is_default=True).update(max_documents=3, max_storage_mb=None)
    else:  # room for three of the eight files
        Plan.objects.filter(is_default=True).update(max_documents=None, max_storage_mb=1)
    barrier = threading.Barrier(len(files))
    statuses: list[int] = []
    errors: list[BaseException] = []

    def upload(data: bytes, index: int) -> None:
        try:
            client = APIClient()
            client.force_authenticate(user)
            handle = io.BytesIO(data)
            handle.name = f"n{index}.txt"
            barrier.wait(timeout=30)
            statuses.append(client.post("/api/v1/documents/", {"file": handle}, format="multipart").status_code)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(data, index)) for index, data in enumerate(files)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(statuses) == [201] * 3 + [403] * 5
    assert Document.objects.filter(owner=user).count() == 3
    stored = [path for path in (media_root / "documents" / str(user.id)).iterdir()]
    assert sorted(path.name for path in stored) == sorted(Document.objects.values_list("sha256", flat=True))


def test_title_with_a_nul_is_400_and_stores_nothing(post_file, media_root):
    response = post_file(hostile_files.sample_markdown(), name="guide.md", title="a\x00b")

    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["message"]
    assert not Document.objects.exists()
    assert not any(path.is_file() for path in media_root.rglob("*"))


def test_plan_file_size_limit_is_413(post_file):
    catalog_ensure()
    Plan.objects.filter(is_default=True).update(max_file_size_mb=1)

    response = post_file(b"word " * 250_000, name="big.txt")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


def test_upload_without_a_file_field_is_400(api):
    response = api.post("/api/v1/documents/", {"title": "nothing"}, format="multipart")

    assert response.status_code == 400
    assert "file" in response.json()["error"]["message"]


def test_anonymous_requests_are_refused():
    client = APIClient()

    assert client.get("/api/v1/documents/").status_code in (401, 403)
    assert client.post("/api/v1/search/", {"query": "x"}, format="json").status_code in (401, 403)


def test_api_key_authenticates_uploads(user):
    _, raw_key = api_key_create(user=user, name="ci")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    handle = __import__("io").BytesIO(hostile_files.sample_markdown())
    handle.name = "guide.md"

    response = client.post("/api/v1/documents/", {"file": handle}, format="multipart")

    assert response.status_code == 201
    assert Document.objects.get(id=response.json()["id"]).owner == user


def test_list_shows_only_the_callers_documents_paginated(post_file, api, other_user):
    for index in range(3):
        post_file(f"note number {index}\n".encode(), name=f"n{index}.txt")
    client = APIClient()
    client.force_authenticate(other_user)
    assert post_file(b"someone else's note\n", name="theirs.txt", client=client).status_code == 201

    response = api.get("/api/v1/documents/?page_size=2")

    body = response.json()
    assert body["count"] == 3
    assert [item["filename"] for item in body["results"]] == ["n2.txt", "n1.txt"]
    assert body["next"] is not None


def test_other_users_document_is_404_like_a_missing_one(post_file, other_user):
    document_id = post_file(hostile_files.sample_pdf()).json()["id"]
    client = APIClient()
    client.force_authenticate(other_user)

    for url in (f"/api/v1/documents/{document_id}/", "/api/v1/documents/999999/"):
        assert client.get(url).status_code == 404
        assert client.delete(url).status_code == 404
    assert Document.objects.filter(id=document_id).exists()


def _add_chunks(document: Document, count: int) -> None:
    rng = np.random.default_rng(1)
    chunks_copy(
        document_id=document.id,
        owner_id=document.owner_id,
        chunks=[
            StoredChunk(
                ordinal=i,
                text=f"chunk {i}",
                page=1,
                heading_path=("Intro",),
                token_count=3,
                embedding=rng.standard_normal(384).astype(np.float32),
            )
            for i in range(count)
        ],
    )
    lexeme_counts_store(document_id=document.id, owner_id=document.owner_id)


def test_delete_removes_the_file_chunks_and_vectors(post_file, api, django_capture_on_commit_callbacks):
    document = Document.objects.get(id=post_file(hostile_files.sample_pdf()).json()["id"])
    _add_chunks(document, 5)
    path = Path(document.file.path)
    assert path.exists() and Chunk.objects.filter(document=document).count() == 5
    assert LexemeCount.objects.get(document=document, lexeme="chunk").chunks == 5

    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/api/v1/documents/{document.id}/")

    assert response.status_code == 204
    assert not Document.objects.filter(id=document.id).exists()
    assert not Chunk.objects.filter(document_id=document.id).exists()
    assert not LexemeCount.objects.filter(document_id=document.id).exists()
    assert not path.exists()
    assert api.get(f"/api/v1/documents/{document.id}/").status_code == 404
