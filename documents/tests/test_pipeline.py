"""Upload -> ingestion on the real `ingest` worker (a Celery worker thread) -> stored chunks."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection

from billing.models import Plan, UsageRecord
from billing.selectors import usage_summary
from billing.services import catalog_ensure
from documents.ingestion.types import TransientIngestionError
from documents.models import Chunk, Document, LexemeCount
from documents.services import document_ingest
from documents.services.ingest import _LOCK_NAMESPACE, document_is_being_processed
from documents.tests import hostile_files

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# About 600 tokens a batch of 4 chunks, some 8,000 in all.
BOILER_TEXT = "\n\n".join(
    f"Paragraph {n} about the boiler: " + "the pressure gauge reads between one and two bar. " * 12 for n in range(50)
).encode()


@pytest.fixture(autouse=True)
def _production_store(settings):
    """As in production: each batch stored over two database sessions, in small batches so that a document
    takes several (the rows here are committed, so the second session sees the document)."""
    settings.INGEST_STORE_CONNECTIONS = 2
    settings.INGEST_STORE_BATCH = 4


def wait_for(document_id: int, *, statuses=("ready", "failed"), timeout: float = 90) -> Document:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = Document.objects.filter(id=document_id).first()
        if document is not None and document.status in statuses:
            return document
        time.sleep(0.1)
    raise AssertionError(f"document {document_id} did not reach {statuses}: {document and document.status}")


def wait_idle(document_id: int, timeout: float = 30) -> None:
    """Until the worker is done with the document: ready, and its run lock released (which follows)."""
    wait_for(document_id)
    deadline = time.monotonic() + timeout
    while document_is_being_processed(document_id=document_id):
        assert time.monotonic() < deadline, "the worker kept the document's lock"
        time.sleep(0.02)


def assert_one_chunk_set(document: Document) -> list[Chunk]:
    chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert [chunk.ordinal for chunk in chunks] == list(range(document.chunk_count))
    return chunks


def test_pdf_upload_becomes_ready_with_pages_chunks_and_tokens(celery_workers, post_file):
    response = post_file(hostile_files.sample_pdf(), name="sample.pdf")

    document = wait_for(response.json()["id"])

    assert (document.status, document.progress, document.error) == ("ready", 100, "")
    assert document.pages == 3
    chunks = assert_one_chunk_set(document)
    assert document.chunk_count == len(chunks) >= 3
    assert document.token_count == sum(chunk.token_count for chunk in chunks) > 0
    assert document.embedding_model == "all-MiniLM-L6-v2"
    assert document.attempts == 1
    pages = {chunk.page for chunk in chunks if "apples" in chunk.text}
    assert pages == {1}
    assert {chunk.page for chunk in chunks} == {1, 2, 3}
    assert all(chunk.owner_id == document.owner_id for chunk in chunks)
    assert all(len(chunk.embedding) == 384 for chunk in chunks)
    apples = [chunk for chunk in chunks if "apples" in chunk.text]
    assert LexemeCount.objects.get(document=document, lexeme="appl").chunks == len(apples)
    usage = UsageRecord.objects.get(request_id__startswith=f"embed:{document.id}:1:")
    assert (usage.kind, usage.user_id, usage.document_id) == ("embedding", document.owner_id, document.id)
    # Billed tokens include the title header embedded with each chunk (see `embedding_text`).
    assert usage.prompt_tokens > document.token_count


def test_markdown_chunks_carry_their_heading_path(celery_workers, post_file):
    response = post_file(hostile_files.sample_markdown(), name="guide.md")

    document = wait_for(response.json()["id"])

    assert document.status == "ready"
    chunks = assert_one_chunk_set(document)
    install = next(chunk for chunk in chunks if "Step one." in chunk.text)
    assert install.heading_path == ["Guide", "Install"]
    assert install.page is None
    assert document.pages is None


def test_docx_chunks_carry_headings_and_pages(celery_workers, post_file):
    response = post_file(hostile_files.sample_docx(), name="handbook.docx")

    document = wait_for(response.json()["id"])

    assert document.status == "ready", document.error
    chunks = assert_one_chunk_set(document)
    assert any(chunk.heading_path for chunk in chunks)
    assert all(chunk.page is not None for chunk in chunks)


HOSTILE = [
    pytest.param(hostile_files.encrypted_pdf, "secret.pdf", "password-protected", id="encrypted-pdf"),
    pytest.param(hostile_files.truncated_pdf, "cut.pdf", "damaged", id="truncated-pdf"),
    pytest.param(hostile_files.image_only_pdf, "scan.pdf", "no text layer", id="image-only-pdf"),
    pytest.param(hostile_files.docx_zip_bomb, "bomb.docx", "zip bomb", id="docx-zip-bomb"),
    pytest.param(hostile_files.docx_entity_bomb, "laughs.docx", "entity bomb", id="docx-entity-bomb"),
    pytest.param(hostile_files.pdf_decompression_bomb, "bomb.pdf", "decompression bomb", id="pdf-decompression-bomb"),
]


@pytest.mark.parametrize(("builder", "name", "reason"), HOSTILE)
def test_hostile_file_fails_with_its_reason_and_the_worker_goes_on(celery_workers, post_file, builder, name, reason):
    hostile = post_file(builder(), name=name)
    good = post_file(f"A good document uploaded after {name}.\n".encode(), name="good.txt")
    assert (hostile.status_code, good.status_code) == (201, 201)

    failed = wait_for(hostile.json()["id"], timeout=120)
    ready = wait_for(good.json()["id"], timeout=120)

    assert failed.status == "failed"
    assert reason in failed.error
    assert failed.attempts == 1  # a bad file is never retried
    assert not Chunk.objects.filter(document=failed).exists()
    assert ready.status == "ready"
    assert ready.chunk_count == 1


def test_exhausted_token_quota_fails_the_document_with_the_reason(celery_workers, post_file):
    catalog_ensure()
    Plan.objects.filter(is_default=True).update(monthly_token_quota=0)

    document = wait_for(post_file(b"Nothing will be embedded.\n", name="q.txt").json()["id"])

    assert document.status == "failed"
    assert "monthly token quota is used up" in document.error
    assert not Chunk.objects.filter(document=document).exists()


def test_a_document_bigger_than_the_quota_left_stops_when_the_quota_runs_out(celery_workers, post_file):
    catalog_ensure()
    # A batch (4 chunks here) is about 600 tokens: the first fits, the second would pass the quota.
    quota = 1000
    Plan.objects.filter(is_default=True).update(monthly_token_quota=quota)
    document = wait_for(post_file(BOILER_TEXT, name="big.txt").json()["id"])

    assert document.status == "failed"
    assert "quota ran out while this document was processed" in document.error
    billed = UsageRecord.objects.get(document_id=document.id, kind="embedding")
    assert 0 < billed.prompt_tokens <= quota
    assert len(BOILER_TEXT.split()) > 4 * quota  # embedded whole, it would have cost far more
    # The batches stored before the quota ran out are not left in the tables and the index.
    assert not Chunk.objects.filter(document=document).exists()
    assert not LexemeCount.objects.filter(document=document).exists()


def test_a_document_uploaded_again_after_the_quota_stopped_it_is_billed_for_its_new_run(celery_workers, post_file):
    catalog_ensure()
    Plan.objects.filter(is_default=True).update(monthly_token_quota=1000)
    stopped = wait_for(post_file(BOILER_TEXT, name="big.txt").json()["id"])
    assert stopped.status == "failed" and stopped.attempts == 1
    first = UsageRecord.objects.get(document_id=stopped.id, kind="embedding")

    Plan.objects.filter(is_default=True).update(monthly_token_quota=10_000_000)  # the quota renewed or upgraded
    again = post_file(BOILER_TEXT, name="big.txt")  # the same content: the failed document is queued again
    document = wait_for(again.json()["id"], statuses=("ready",))

    # The new run starts its attempts at 1 again; its spend is a new ledger row, not a duplicate of the first.
    assert (document.id, document.attempts) == (stopped.id, 1)
    runs = list(UsageRecord.objects.filter(document_id=document.id, kind="embedding").order_by("id"))
    assert [row.id for row in runs[:1]] == [first.id] and len(runs) == 2
    assert runs[1].prompt_tokens > document.token_count > first.prompt_tokens
    # The live counter that admits the owner's next requests holds both runs.
    live_quota = usage_summary(user=document.owner)["current"]["quota"]
    assert live_quota["used"] == first.prompt_tokens + runs[1].prompt_tokens


def _requeue(document: Document) -> None:
    from documents.services import document_requeue

    document_requeue(document=document)


def _reindex(document: Document) -> None:
    from documents.services.reindex import documents_reindex

    documents_reindex(user=document.owner)


@pytest.mark.parametrize("queue_again", [_requeue, _reindex], ids=["re-ingest", "reindex"])
def test_a_document_queued_again_while_it_is_processed_is_processed_again(
    celery_workers, post_file, monkeypatch, queue_again
):
    """A reindex or an admin's re-ingest during a run: the task queued with it finds the run's lock and goes
    away, so the run used to mark the document ready with the result nobody asked for last."""
    from documents.services import ingest as module

    document = wait_for(post_file(BOILER_TEXT, name="boiler.txt").json()["id"])
    wait_idle(document.id)
    Document.objects.filter(id=document.id).update(status="queued")
    real_check, calls = module._quota_check_batch, []

    def requeued_during_the_run(document, *, unbilled):
        calls.append(1)
        if len(calls) == 1:
            queue_again(Document.objects.get(id=document.id))
        return real_check(document, unbilled=unbilled)

    monkeypatch.setattr(module, "_quota_check_batch", requeued_during_the_run)
    report = document_ingest(document_id=document.id)  # this thread's run; the worker gets the requeue

    assert report.outcome == "skipped"
    done = wait_for(document.id, statuses=("ready",))
    # The one the requeue asked for, after the first upload's run and this one (a reindex starts them again).
    assert done.attempts == (3 if queue_again is _requeue else 1)
    wait_idle(document.id)
    assert_one_chunk_set(Document.objects.get(id=document.id))
    # The run set aside stopped at its first batch (4 chunks) instead of embedding, and billing, the whole text.
    first, set_aside, last = UsageRecord.objects.filter(document_id=document.id).order_by("id")
    assert set_aside.prompt_tokens * 5 < last.prompt_tokens == first.prompt_tokens


def test_running_the_task_again_for_a_ready_document_changes_nothing(celery_workers, post_file):
    document_id = post_file(hostile_files.sample_pdf()).json()["id"]
    wait_idle(document_id)
    document = Document.objects.get(id=document_id)
    chunk_ids = set(Chunk.objects.filter(document=document).values_list("id", flat=True))

    report = document_ingest(document_id=document.id)

    assert report.outcome == "skipped"
    assert set(Chunk.objects.filter(document=document).values_list("id", flat=True)) == chunk_ids


def test_rerun_after_an_interrupted_run_leaves_exactly_one_chunk_set(celery_workers, post_file):
    document_id = post_file(hostile_files.sample_pdf()).json()["id"]
    wait_idle(document_id)
    document = Document.objects.get(id=document_id)
    first_texts = [chunk.text for chunk in assert_one_chunk_set(document)]
    # What a worker killed mid-document leaves: status processing, some chunks of its run already stored.
    Document.objects.filter(id=document.id).update(status="processing", progress=40)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO documents_chunk (document_id, owner_id, ordinal, text, page, heading_path, token_count, "
            "embedding) SELECT document_id, owner_id, ordinal + 1000, text, page, heading_path, token_count, "
            "embedding FROM documents_chunk WHERE document_id = %s",
            [document.id],
        )

    report = document_ingest(document_id=document.id)

    document.refresh_from_db()
    assert report.outcome == "ready"
    assert document.status == "ready"
    assert [chunk.text for chunk in assert_one_chunk_set(document)] == first_texts
    assert document.attempts == 2


def test_a_second_delivery_while_a_run_holds_the_document_leaves_it_alone(celery_workers, post_file):
    document = wait_for(post_file(hostile_files.sample_pdf()).json()["id"])
    Document.objects.filter(id=document.id).update(status="processing")
    # Another session (a live worker) holds the run lock.
    settings_dict = connection.settings_dict
    other = psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or None,
        password=settings_dict["PASSWORD"] or None,
        autocommit=True,
    )
    try:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, document.id])
        report = document_ingest(document_id=document.id)
    finally:
        other.close()

    assert report.outcome == "skipped"
    document.refresh_from_db()
    assert (document.status, document.attempts) == ("processing", 1)


def test_transient_errors_retry_with_a_bound_then_fail_with_the_reason(
    celery_workers, post_file, settings, monkeypatch
):
    settings.INGEST_RETRY_BACKOFF_SECONDS = 0
    calls = []

    class Unavailable:
        model, dimensions = "all-MiniLM-L6-v2", 384

        def __init__(self, real):
            self.real = real
            self.tokenizer = real.tokenizer
            self.max_input_tokens = real.max_input_tokens

        def embed_documents(self, texts):
            calls.append(len(texts))
            raise TransientIngestionError("The embedding service is unavailable; the document will be retried.")

    from documents import embedders

    real = embedders.configured_embedder()
    monkeypatch.setattr(embedders, "configured_embedder", lambda: Unavailable(real))

    document = wait_for(post_file(b"Some text to embed.\n", name="t.txt").json()["id"], timeout=60)

    assert document.status == "failed"
    assert "embedding service is unavailable" in document.error
    assert "Gave up after 3 attempts" in document.error
    assert document.attempts == 3 == len(calls)
