"""Benchmarks of the documents app (`make bench`), each against a baseline measured in the same run."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from config.bench import Row, benchmark
from config.testing.datasets import DATASETS, SQUAD

GNUPLOT_PDF = DATASETS / "pdf" / "gnuplot.pdf"

THROUGHPUT_CHUNKS = 480
THROUGHPUT_ROUNDS = 3  # alternating baseline/ours, so that load from other processes hits both alike
RECALL_PARAGRAPHS = 400
RECALL_K = 5
QUERY_SAMPLES = 200


def _gnuplot_sections(first_page: int = 0, last_page: int | None = None) -> list:
    import pypdfium2 as pdfium

    from documents.ingestion.types import Section

    document = pdfium.PdfDocument(str(GNUPLOT_PDF))
    try:
        sections = []
        for index in range(first_page, min(last_page or len(document), len(document))):
            page = document[index]
            textpage = page.get_textpage()
            text = textpage.get_text_bounded().replace("\r\n", "\n")
            textpage.close()
            page.close()
            sections.append(Section(text=text, page=index + 1))
        return sections
    finally:
        document.close()


def _squad_subset(paragraphs: int) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The first `paragraphs` SQuAD paragraphs (as chunks) and all their questions with gold answers."""
    data = json.loads(SQUAD.read_text())
    contexts: list[str] = []
    questions: list[tuple[str, list[str]]] = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            if len(contexts) == paragraphs:
                return contexts, questions
            contexts.append(paragraph["context"])
            for qa in paragraph["qas"]:
                questions.append((qa["question"], [answer["text"] for answer in qa["answers"]]))
    return contexts, questions


def _recall_at_k(
    chunk_vectors: np.ndarray, query_vectors: np.ndarray, chunks: Sequence[str], answers: Sequence[list[str]], k: int
) -> float:
    # A hit is a retrieved chunk containing a gold answer (any chunk, not only the question's own paragraph).
    scores = query_vectors @ chunk_vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    hits = sum(any(answer in chunks[j] for j in row for answer in gold) for row, gold in zip(top, answers, strict=True))
    return hits / len(answers)


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@benchmark("documents.embedding")
def embedding_benchmark() -> list[Row]:
    """Local embedder (ONNX int8) vs plain ``SentenceTransformer(...).encode``: speed on ~200-token chunks of
    the gnuplot manual, recall@5 on SQuAD paragraphs, and single-query latency."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from documents.embedding import LocalEmbedder, local_model_dir
    from documents.ingestion.chunking import chunker_for

    name = "documents.embedding"
    started = time.perf_counter()
    ours = LocalEmbedder()
    load_s = time.perf_counter() - started
    baseline = SentenceTransformer(str(local_model_dir()), device="cpu")
    baseline_encode = lambda texts: baseline.encode(list(texts), show_progress_bar=False)  # noqa: E731
    ours_encode = lambda texts: ours.embed_documents(texts).vectors  # noqa: E731

    chunks = [chunk.text for chunk in chunker_for(ours)(_gnuplot_sections(20))][:THROUGHPUT_CHUNKS]
    mean_tokens = statistics.fmean(ours.count_tokens(chunk) for chunk in chunks)
    baseline_encode(chunks[:16])
    ours_encode(chunks[:16])
    per_round = len(chunks) // THROUGHPUT_ROUNDS
    baseline_s = ours_s = 0.0
    for index in range(THROUGHPUT_ROUNDS):
        part = chunks[index * per_round : (index + 1) * per_round]
        baseline_s += _timed(lambda part=part: baseline_encode(part))
        ours_s += _timed(lambda part=part: ours_encode(part))
    measured = per_round * THROUGHPUT_ROUNDS
    baseline_rate, ours_rate = measured / baseline_s, measured / ours_s

    contexts, questions = _squad_subset(RECALL_PARAGRAPHS)
    query_texts = [question for question, _ in questions]
    answers = [gold for _, gold in questions]
    baseline_recall = _recall_at_k(baseline_encode(contexts), baseline_encode(query_texts), contexts, answers, RECALL_K)
    ours_recall = _recall_at_k(ours_encode(contexts), ours_encode(query_texts), contexts, answers, RECALL_K)

    latencies = []
    for question in query_texts[:QUERY_SAMPLES]:
        latencies.append(_timed(lambda question=question: ours.embed_query(question)) * 1000)
    query_p50 = statistics.median(latencies)
    query_p95 = float(np.percentile(latencies, 95))

    note = f"{measured} gnuplot chunks, mean {mean_tokens:.0f} word pieces; runtime {ours.runtime}"
    return [
        Row(name, "local embedder throughput", ours_rate, "chunks/s", baseline=baseline_rate, note=note),
        Row(name, "speedup vs SentenceTransformer", ours_rate / baseline_rate, "x", target=">= 2", note=note),
        Row(
            name,
            f"recall@{RECALL_K} SQuAD",
            ours_recall * 100,
            "%",
            baseline=baseline_recall * 100,
            note=f"{len(contexts)} paragraphs as chunks, {len(questions)} questions; hit = chunk has a gold answer",
        ),
        Row(
            name,
            f"recall@{RECALL_K} delta vs baseline",
            (ours_recall - baseline_recall) * 100,
            "points",
            target=">= -1",
        ),
        Row(name, "embed_query p50", query_p50, "ms", target="<= 5", note=f"p95 {query_p95:.1f} ms"),
        Row(name, "local embedder load", load_s * 1000, "ms", note="cached ONNX export; first run exports (~20 s)"),
    ]


@benchmark("documents.chunking")
def chunking_benchmark() -> list[Row]:
    """`chunk_sections` on the 311 gnuplot pages with the local model's tokenizer (extraction not timed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from documents.embedding import LOCAL_MODEL, HFTokenizer, local_model_dir, tiktoken_for_model
    from documents.ingestion.chunking import LOCAL_CHUNK_TOKENS, chunk_sections

    sections = _gnuplot_sections()
    rows = []
    tokenizers = [
        (LOCAL_MODEL, HFTokenizer.from_file(local_model_dir() / "tokenizer.json", name=LOCAL_MODEL)),
        ("cl100k_base", tiktoken_for_model("text-embedding-3-small")),
    ]
    for label, tokenizer in tokenizers:
        size, overlap = LOCAL_CHUNK_TOKENS, round(LOCAL_CHUNK_TOKENS * 0.15)
        list(chunk_sections(sections[:10], tokenizer=tokenizer, chunk_tokens=size, overlap_tokens=overlap))
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            chunks = list(chunk_sections(sections, tokenizer=tokenizer, chunk_tokens=size, overlap_tokens=overlap))
            best = min(best, time.perf_counter() - started)
        over = sum(chunk.token_count > size for chunk in chunks)
        rows.append(
            Row(
                "documents.chunking",
                f"chunking pages/s ({label})",
                len(sections) / best,
                "pages/s",
                target=">= 200",
                note=f"{len(chunks)} chunks of <= {size} tokens ({over} over), best of 3",
            )
        )
    return rows


@benchmark("documents.ingestion")
def ingestion_benchmark() -> list[Row]:
    """The whole pipeline on the 311-page gnuplot manual, in a child process as a worker runs it."""
    from documents.benchmarking.ingest import ingestion_benchmark as run

    return run(GNUPLOT_PDF)


@benchmark("documents.retrieval")
def retrieval_benchmark() -> list[Row]:
    """SQuAD answer recall@1/5/10 and MRR for vector, keyword and hybrid search vs naive baselines."""
    from documents.benchmarking.squad import retrieval_benchmark as run

    return run(SQUAD)


@benchmark("documents.scale")
def scale_benchmark() -> list[Row]:
    """Search at 1M chunks (BENCH_SCALE_CHUNKS): latency and recall@10 for big, mid and small owners.

    Long (the first run builds the data set and its HNSW index, ~40 min), so it runs only when named:
    `manage.py bench documents.scale` (or BENCH_SCALE=1); `manage.py bench documents` skips it.
    """
    import sys

    from documents.benchmarking import scale

    if not scale.selected():
        print("documents.scale skipped: run `manage.py bench documents.scale` (or set BENCH_SCALE=1)",
              file=sys.stderr)
        return []
    return scale.scale_benchmark(DATASETS)
