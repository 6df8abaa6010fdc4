"""Recovery: a worker killed mid-document, documents stuck in the queue, poison documents."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import UsageRecord
from documents.models import Chunk, Document
from documents.services import documents_requeue_stuck
from documents.services.ingest import _LOCK_NAMESPACE
from documents.tests.test_pipeline import assert_one_chunk_set, wait_for, wait_idle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _later() -> timezone.datetime:
    return timezone.now() + timedelta(seconds=django_settings.INGEST_STUCK_AFTER_SECONDS + 60)


def _database_url() -> str:
    params = connection.settings_dict
    return f"postgresql://{params['USER']}:{params['PASSWORD']}@/{params['NAME']}?host={params['HOST']}"


def _long_text(paragraphs: int) -> bytes:
    return "\n\n".join(
        f"Paragraph {index} explains how the orchard keeps its apple trees healthy through winter, "
        f"why pruning in season {index % 7} matters, and which pests the growers watch for in row {index}."
        for index in range(paragraphs)
    ).encode()


def test_worker_killed_mid_document_is_recovered_with_one_chunk_set(celery_workers, post_file, settings, tmp_path):
    # The killed "worker" is a separate process running the pipeline, so that it can really be SIGKILLed.
    settings.MEDIA_ROOT = tmp_path / "uploads"
    response = post_file(_long_text(400), name="orchard.txt")
    document_id = response.json()["id"]
    wait_idle(document_id)  # the in-process worker ingests it once first
    Document.objects.filter(id=document_id).update(status="queued", attempts=0)
    expected = Document.objects.get(id=document_id).chunk_count
    env = os.environ | {
        "DATABASE_URL": _database_url(),
        "DATA_DIR": str(tmp_path),
        "INGEST_STORE_BATCH": "16",
        "EMBEDDING_CACHE_DIR": str(django_settings.EMBEDDING_CACHE_DIR),
    }
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "ingest", str(document_id)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not Document.objects.filter(id=document_id, status="processing", chunk_count__gte=32).exists():
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the pipeline stored nothing"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    killed = Document.objects.get(id=document_id)
    assert killed.status == "processing"
    assert 32 <= Chunk.objects.filter(document_id=document_id).count() < expected

    requeued = documents_requeue_stuck(now=_later())

    assert requeued == [document_id]
    document = wait_for(document_id)
    assert document.status == "ready"
    assert document.chunk_count == expected
    assert len(assert_one_chunk_set(document)) == expected
    assert document.attempts == 2


def test_sweep_requeues_a_lost_queued_document(celery_workers, post_file):
    document_id = post_file(b"A document whose queue message was lost.\n", name="lost.txt").json()["id"]
    wait_idle(document_id)
    Document.objects.filter(id=document_id).update(status="queued", attempts=0)

    assert documents_requeue_stuck() == []  # not stuck yet
    assert documents_requeue_stuck(now=_later()) == [document_id]
    assert wait_for(document_id).status == "ready"


def test_sweep_leaves_a_document_a_live_worker_holds(celery_workers, post_file):
    document_id = post_file(b"Slow but alive.\n", name="slow.txt").json()["id"]
    wait_idle(document_id)
    Document.objects.filter(id=document_id).update(status="processing")
    params = connection.settings_dict
    with psycopg.connect(dbname=params["NAME"], user=params["USER"], host=params["HOST"], autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, document_id])

        assert documents_requeue_stuck(now=_later()) == []

    assert Document.objects.get(id=document_id).status == "processing"


def test_document_interrupted_too_often_fails_instead_of_looping(celery_workers, post_file, settings):
    document_id = post_file(b"A poison document.\n", name="poison.txt").json()["id"]
    wait_idle(document_id)
    Document.objects.filter(id=document_id).update(status="processing", attempts=settings.INGEST_MAX_ATTEMPTS)

    assert documents_requeue_stuck(now=_later()) == []

    document = Document.objects.get(id=document_id)
    assert document.status == "failed"
    assert f"interrupted {settings.INGEST_MAX_ATTEMPTS} times" in document.error


def test_deleting_a_document_while_it_is_processed_stops_the_run_and_bills_what_it_embedded(
    celery_workers, post_file, api, other_user, settings
):
    settings.INGEST_STORE_BATCH = 8  # a dozen batches: the run is deleted with most of them still to come
    document_id = post_file(_long_text(400), name="long.txt").json()["id"]
    deadline = time.monotonic() + 60
    while not Chunk.objects.filter(document_id=document_id).exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert Document.objects.get(id=document_id).status == "processing"

    assert api.delete(f"/api/v1/documents/{document_id}/").status_code == 204

    # The same file from someone else, processed in full: what the deleted run would have cost had it gone on.
    someone = APIClient()
    someone.force_authenticate(other_user)
    whole = post_file(_long_text(400), name="long.txt", client=someone)
    assert whole.status_code == 201
    assert wait_for(whole.json()["id"]).status == "ready"
    full = UsageRecord.objects.get(document_id=whole.json()["id"], kind="embedding").prompt_tokens
    deadline = time.monotonic() + 60
    while not (partial := UsageRecord.objects.filter(document_id=document_id, kind="embedding").first()):
        assert time.monotonic() < deadline, "the deleted run never billed what it had embedded"
        time.sleep(0.05)
    assert 0 < partial.prompt_tokens < full / 2
    assert not Chunk.objects.filter(document_id=document_id).exists()
    assert not Document.objects.filter(id=document_id).exists()
