"""Ingestion of a real 300+ page PDF: time and pages/s per stage, worker peak RSS, COPY throughput.

The pipeline runs in a child process (`manage.py ingest <id> --json`), exactly as a worker runs it, so that
its peak RSS is its own and not this process's. Baselines, measured here in the same run: pypdf for
extraction, langchain's token splitter without batching for chunking, plain `SentenceTransformer.encode`
for embedding, and Django's `bulk_create` for storing the same chunks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction

from config.bench import Row
from documents.benchmarking.common import bench_document, bench_documents_clear, bench_user
from documents.models import Chunk, Document
from documents.services.store import StoredChunk, chunks_copy, chunks_delete

NAME = "documents.ingestion"
BASELINE_PAGES = 40  # pypdf is slow; its rate is measured on the first pages
BASELINE_EMBED_CHUNKS = 96


def _run_pipeline_in_child(document_id: int) -> dict:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "manage.py", "ingest", str(document_id), "--json"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"ingest child failed ({completed.returncode}): {completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = wall
    return report


def _pypdf_pages_per_second(path: Path) -> float | None:
    try:
        from pypdf import PdfReader
    except ImportError:
        return None
    started = time.perf_counter()
    reader = PdfReader(path)
    for page in reader.pages[:BASELINE_PAGES]:
        page.extract_text()
    return BASELINE_PAGES / (time.perf_counter() - started)


def _in_process_pdfium_pages_per_second(path: Path) -> float:
    """pypdfium2 page by page in this process, without the sandboxed child: what the sandbox costs."""
    import pypdfium2 as pdfium

    started = time.perf_counter()
    document = pdfium.PdfDocument(str(path))
    try:
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            textpage.get_text_bounded()
            textpage.close()
            page.close()
        pages = len(document)
    finally:
        document.close()
    return pages / (time.perf_counter() - started)


def _naive_chunking_pages_per_second(texts_by_page: list[str]) -> float:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from documents.embedders import configured_embedder

    tokenizer = configured_embedder().tokenizer
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=settings.CHUNK_TOKENS, chunk_overlap=settings.CHUNK_OVERLAP_TOKENS, length_function=tokenizer.count
    )
    started = time.perf_counter()
    for text in texts_by_page:
        splitter.split_text(text)
    return len(texts_by_page) / (time.perf_counter() - started)


def _sentence_transformers_chunks_per_second(texts: list[str]) -> float:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from documents.embedding import local_model_dir

    model = SentenceTransformer(str(local_model_dir()), device="cpu")
    model.encode(texts[:8], show_progress_bar=False)
    started = time.perf_counter()
    model.encode(texts, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - started)


def _store_rates(document: Document) -> tuple[float, float, int]:
    """chunks/s for binary COPY and for Django's bulk_create of the document's chunks into a scratch copy."""
    rows = [
        StoredChunk(ordinal=chunk.ordinal, text=chunk.text, page=chunk.page, heading_path=chunk.heading_path,
                    token_count=chunk.token_count, embedding=np.asarray(chunk.embedding, dtype=np.float32))
        for chunk in Chunk.objects.filter(document=document).order_by("ordinal")
    ]
    scratch = Document.objects.create(
        owner=document.owner, title="store benchmark", filename="scratch", content_type=document.content_type,
        kind=document.kind, size_bytes=0, sha256=f"scratch-{time.time_ns()}",
    )
    try:
        started = time.perf_counter()
        with transaction.atomic():
            chunks_copy(document_id=scratch.id, owner_id=scratch.owner_id, chunks=rows)
        copy_rate = len(rows) / (time.perf_counter() - started)
        chunks_delete(document_id=scratch.id)
        started = time.perf_counter()
        with transaction.atomic():
            Chunk.objects.bulk_create([
                Chunk(document_id=scratch.id, owner_id=scratch.owner_id, ordinal=row.ordinal, text=row.text,
                      page=row.page, heading_path=list(row.heading_path), token_count=row.token_count,
                      embedding=row.embedding)
                for row in rows
            ], batch_size=settings.INGEST_STORE_BATCH)
        bulk_rate = len(rows) / (time.perf_counter() - started)
    finally:
        chunks_delete(document_id=scratch.id)
        scratch.delete()
    return copy_rate, bulk_rate, len(rows)


def _bare_copy_rates(document: Document) -> tuple[float, float]:
    """COPY itself, without index upkeep: into a temporary table with the chunk table's columns only."""
    from django.db import connection

    from documents.services.store import CHUNK_TABLE, raw_connection

    rows = list(Chunk.objects.filter(document=document).order_by("ordinal").values_list(
        "ordinal", "text", "page", "heading_path", "token_count", "embedding"))
    pg = raw_connection()
    columns = "document_id, owner_id, ordinal, text, page, heading_path, token_count, embedding"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE chunk_copy_probe (LIKE {CHUNK_TABLE} INCLUDING IDENTITY) ON COMMIT DROP")
        started = time.perf_counter()
        with cursor.cursor.copy(f"COPY chunk_copy_probe ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int8", "int4", "text", "int4", "varchar[]", "int4", "vector"])
            for ordinal, text, page, heading_path, token_count, embedding in rows:
                copy.write_row((document.id, document.owner_id, ordinal, text, page, heading_path, token_count,
                                np.asarray(embedding, dtype=np.float32)))
        copy_rate = len(rows) / (time.perf_counter() - started)
        started = time.perf_counter()
        with pg.cursor() as raw:
            raw.executemany(
                f"INSERT INTO chunk_copy_probe ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",  # noqa: S608
                [(document.id, document.owner_id, ordinal, text, page, heading_path, token_count,
                  np.asarray(embedding, dtype=np.float32))
                 for ordinal, text, page, heading_path, token_count, embedding in rows],
            )
        insert_rate = len(rows) / (time.perf_counter() - started)
    return copy_rate, insert_rate


def ingestion_benchmark(pdf: Path) -> list[Row]:
    user = bench_user("bench-ingestion@docent.invalid")
    bench_documents_clear(user)
    document = bench_document(user, pdf)
    report = _run_pipeline_in_child(document.id)
    document.refresh_from_db()
    if report["outcome"] != "ready":
        raise RuntimeError(f"ingestion of {pdf.name} ended {report['outcome']}: {report['error']}")
    pages, chunks, seconds = document.pages, document.chunk_count, report["seconds"]
    rss_mb = report["peak_rss_bytes"] / 2**20

    texts = [chunk.text for chunk in Chunk.objects.filter(document=document).order_by("ordinal")]
    from documents.ingestion.extract import ExtractionLimits, extract_sections
    from documents.ingestion.types import Kind

    started = time.perf_counter()
    page_texts = [section.text for section in extract_sections(pdf, Kind.PDF, limits=ExtractionLimits())]
    extract_alone = len(page_texts) / (time.perf_counter() - started)
    pypdf_rate = _pypdf_pages_per_second(pdf)
    if pypdf_rate is None:  # pypdf is not installed: compare with the unsandboxed reader instead
        extract_baseline, extract_baseline_note = _in_process_pdfium_pages_per_second(pdf), (
            "baseline pypdfium2 in this process without the sandbox (pypdf is not installed)")
    else:
        extract_baseline, extract_baseline_note = pypdf_rate, f"baseline pypdf on the first {BASELINE_PAGES} pages"
    naive_chunk_rate = _naive_chunking_pages_per_second(page_texts)
    st_rate = _sentence_transformers_chunks_per_second(texts[:BASELINE_EMBED_CHUNKS])
    copy_rate, bulk_rate, stored = _store_rates(document)
    bare_copy_rate, bare_insert_rate = _bare_copy_rates(document)
    bench_documents_clear(user)

    def rate(stage: str) -> float:
        return pages / max(seconds[stage], 1e-9)

    note = f"{pdf.name}: {pages} pages, {chunks} chunks, {document.token_count} tokens"
    # The naive pipeline's time, from its stages' rates measured above on the same pages and chunks.
    naive_seconds = (pages / extract_baseline + pages / naive_chunk_rate + chunks / st_rate
                     + chunks / bulk_rate)
    return [
        Row(NAME, "total ingestion time", seconds["total"], "s", baseline=naive_seconds,
            note=f"{note}; child process wall time {report['wall_seconds']:.1f} s; baseline: the naive stages' "
                 "times added up (extract baseline, per-call splitter, SentenceTransformer.encode, bulk_create)"),
        Row(NAME, "extract", extract_alone, "pages/s", baseline=extract_baseline, target=">= 200",
            note=f"pypdfium2 in a sandboxed child, run alone (inside the pipeline it overlaps the other stages: "
                 f"{rate('extract'):.0f} pages/s of waiting); {extract_baseline_note}"),
        Row(NAME, "chunk", rate("chunk"), "pages/s", baseline=naive_chunk_rate, target=">= 200",
            note="baseline: RecursiveCharacterTextSplitter with a per-call token counter"),
        Row(NAME, "embed", rate("embed"), "pages/s", baseline=st_rate * pages / chunks,
            note="the model's compute; no target; baseline SentenceTransformer.encode's rate in pages"),
        Row(NAME, "embed chunks/s", chunks / seconds["embed"], "chunks/s", baseline=st_rate,
            note=f"baseline SentenceTransformer.encode on {min(len(texts), BASELINE_EMBED_CHUNKS)} of the chunks"),
        Row(NAME, "store", rate("store"), "pages/s", target=">= 200",
            note=f"COPY + HNSW/GIN upkeep + progress row; each batch over {settings.INGEST_STORE_CONNECTIONS} database "
                 "sessions at once, a transaction each"),
        Row(NAME, "store chunks/s (pipeline)", chunks / seconds["store"], "chunks/s", baseline=bulk_rate,
            note="baseline: bulk_create of the same chunks"),
        Row(NAME, "binary COPY chunks/s (chunk table)", copy_rate, "chunks/s", baseline=bulk_rate,
            note=f"{stored} chunks in one COPY into the real table: tsvector, HNSW and GIN upkeep included; "
                 "baseline bulk_create"),
        Row(NAME, "binary COPY chunks/s (bare table)", bare_copy_rate, "chunks/s", baseline=bare_insert_rate,
            target=">= 20000", note="the same rows into a table without indexes or generated column; "
                                    "baseline executemany INSERT"),
        Row(NAME, "worker peak RSS", rss_mb, "MB", target="<= 1024",
            note="VmHWM of the pipeline process; the PDF reader runs in its own child capped at 1 GiB"),
    ]
