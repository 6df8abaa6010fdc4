"""Retrieval quality on SQuAD: one document per article, a hit is a retrieved chunk holding a gold answer.

Ours: the real pipeline (extraction, token chunking, ONNX MiniLM, COPY) and the production SQL for vector,
keyword and hybrid search, per question over all of the user's documents. Baselines in the same run: the
naive setup, LangChain's character splitter with plain `SentenceTransformer` cosine in memory, BM25 from
`rank-bm25`, and the RRF fusion of those two.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from config.bench import Row
from documents.benchmarking.common import bench_document, bench_user
from documents.models import Chunk, Document

NAME = "documents.retrieval"
KS = (1, 5, 10)
NAIVE_CHUNK_CHARS = 1000
NAIVE_OVERLAP_CHARS = 150
_WORD = re.compile(r"\w+")


def _articles(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]]]:
    data = json.loads(path.read_text())
    articles, questions = [], []
    for article in data["data"]:
        title = article["title"].replace("_", " ")
        articles.append((title, "\n\n".join(paragraph["context"] for paragraph in article["paragraphs"])))
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                questions.append((qa["question"], sorted({answer["text"] for answer in qa["answers"]})))
    return articles, questions


def _ingested(articles: list[tuple[str, str]]) -> list[Document]:
    """The articles as ready documents of the benchmark user, ingested once and reused while unchanged."""
    from documents.services import document_ingest

    user = bench_user("bench-squad@docent.invalid")
    with tempfile.TemporaryDirectory() as directory:
        documents = []
        for title, text in articles:
            path = Path(directory) / f"{title[:80]}.txt"
            path.write_text(f"{title}\n\n{text}\n")
            existing = Document.objects.filter(owner=user, filename=path.name, status="ready").first()
            if existing is not None and existing.size_bytes == path.stat().st_size:
                documents.append(existing)
                continue
            Document.objects.filter(owner=user, filename=path.name).delete()
            document = bench_document(user, path, title=title)
            report = document_ingest(document_id=document.id)
            if report.outcome != "ready":
                raise RuntimeError(f"{title}: {report.outcome} {report.error}")
            document.refresh_from_db()
            documents.append(document)
    return documents


def _scores(rankings: Sequence[Sequence[int]], is_hit: Callable[[int, int], bool]) -> dict[str, float]:
    found_at = []
    for question, ranking in enumerate(rankings):
        found_at.append(next((rank for rank, item in enumerate(ranking[:10], 1) if is_hit(question, item)), None))
    result = {f"recall@{k}": sum(1 for rank in found_at if rank and rank <= k) / len(found_at) for k in KS}
    result["mrr@10"] = sum(1 / rank for rank in found_at if rank) / len(found_at)
    return result


def _rrf(*rankings: Sequence[int], limit: int = 10, k: int | None = None) -> list[int]:
    from django.conf import settings

    k = settings.SEARCH_RRF_K if k is None else k
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1 / (k + rank)
    return sorted(scores, key=lambda item: (-scores[item], item))[:limit]


def _ours(documents: list[Document], questions: list[tuple[str, list[str]]]) -> tuple[dict, float]:
    from django.conf import settings

    from documents.embedders import configured_embedder
    from documents.search import hybrid_rows, keyword_chunk_ids, nearest_chunk_ids

    owner_id = documents[0].owner_id
    document_ids = [document.id for document in documents]
    texts = dict(Chunk.objects.filter(document_id__in=document_ids).values_list("id", "text"))
    exact = len(texts) <= settings.SEARCH_EXACT_MAX_CHUNKS
    vectors = configured_embedder().embed_documents([question for question, _ in questions]).vectors
    candidates = settings.SEARCH_CANDIDATES
    rankings: dict[str, list[list[int]]] = {"vector": [], "keyword": [], "hybrid": [], "vector_candidates": [],
                                            "keyword_candidates": []}
    hybrid_seconds = 0.0
    for (question, _), vector in zip(questions, vectors, strict=True):
        nearest = nearest_chunk_ids(owner_id=owner_id, document_ids=document_ids, vector=vector, limit=candidates,
                                    exact=exact)
        matched = keyword_chunk_ids(owner_id=owner_id, document_ids=document_ids, text=question, limit=candidates)
        rankings["vector_candidates"].append(nearest)
        rankings["keyword_candidates"].append(matched)
        rankings["vector"].append(nearest[:10])
        rankings["keyword"].append(matched[:10])
        started = time.perf_counter()
        rows = hybrid_rows(owner_id=owner_id, document_ids=document_ids, vector=vector, text=question, k=10,
                           exact=exact)
        hybrid_seconds += time.perf_counter() - started
        rankings["hybrid"].append([row[0] for row in rows])

    # The same fusion with the paper's k=60, from the two candidate lists the SQL fuses, for comparison.
    rankings["hybrid, RRF k=60"] = [
        _rrf(vector, keyword, k=60)
        for vector, keyword in zip(rankings["vector_candidates"], rankings["keyword_candidates"], strict=True)
    ]
    del rankings["vector_candidates"], rankings["keyword_candidates"]

    def is_hit(question: int, chunk_id: int) -> bool:
        return any(answer in texts[chunk_id] for answer in questions[question][1])

    return ({mode: _scores(ranked, is_hit) for mode, ranked in rankings.items()},
            hybrid_seconds / len(questions) * 1000)


def _naive(articles: list[tuple[str, str]], questions: list[tuple[str, list[str]]]) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from rank_bm25 import BM25Okapi
    from sentence_transformers import SentenceTransformer

    from documents.embedding import local_model_dir

    splitter = RecursiveCharacterTextSplitter(chunk_size=NAIVE_CHUNK_CHARS, chunk_overlap=NAIVE_OVERLAP_CHARS)
    chunks = [piece for title, text in articles for piece in splitter.split_text(f"{title}\n\n{text}")]
    model = SentenceTransformer(str(local_model_dir()), device="cpu")
    chunk_vectors = model.encode(chunks, normalize_embeddings=True, show_progress_bar=False, batch_size=32)
    query_vectors = model.encode([q for q, _ in questions], normalize_embeddings=True, show_progress_bar=False)
    similarities = query_vectors @ chunk_vectors.T
    vector_rankings = [list(np.argsort(-row)[:50]) for row in similarities]
    bm25 = BM25Okapi([_WORD.findall(chunk.lower()) for chunk in chunks])
    bm25_rankings = [list(np.argsort(-bm25.get_scores(_WORD.findall(q.lower())))[:50]) for q, _ in questions]
    fused = [_rrf(v, b, k=60) for v, b in zip(vector_rankings, bm25_rankings, strict=True)]
    fused_small_k = [_rrf(v, b) for v, b in zip(vector_rankings, bm25_rankings, strict=True)]

    def is_hit(question: int, index: int) -> bool:
        return any(answer in chunks[index] for answer in questions[question][1])

    return {"MiniLM cosine": _scores(vector_rankings, is_hit), "BM25": _scores(bm25_rankings, is_hit),
            "RRF(MiniLM, BM25)": _scores(fused, is_hit), "RRF(MiniLM, BM25), our k": _scores(fused_small_k, is_hit),
            "_chunks": len(chunks)}


def _search_latencies(
    documents: list[Document], questions: list[tuple[str, list[str]]], count: int = 200
) -> list[float]:
    """End-to-end `chunk_search` as chat calls it: query embedding, the ready-document lookup and the SQL."""
    from documents.search import chunk_search

    user = documents[0].owner
    for question, _ in questions[:10]:
        chunk_search(user=user, query=question, k=8)
    latencies = []
    for question, _ in questions[10:10 + count]:
        started = time.perf_counter()
        chunk_search(user=user, query=question, k=8)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def retrieval_benchmark(squad: Path) -> list[Row]:
    articles, questions = _articles(squad)
    documents = _ingested(articles)
    ours, hybrid_ms = _ours(documents, questions)
    naive = _naive(articles, questions)
    naive_chunks = naive.pop("_chunks")
    chunks = sum(document.chunk_count for document in documents)
    best_baseline = {metric: max(scores[metric] for scores in naive.values()) for metric in ours["hybrid"]}
    best_names = {metric: max(naive, key=lambda name, metric=metric: naive[name][metric]) for metric in ours["hybrid"]}
    # Each of ours beside its naive counterpart; hybrid beside the best naive run of all (it must beat every one).
    counterparts = {"vector": "MiniLM cosine", "keyword": "BM25", "hybrid, RRF k=60": "RRF(MiniLM, BM25)"}
    rows = []
    for mode, scores in ours.items():
        for metric, value in scores.items():
            if mode in counterparts:
                baseline, baseline_name = naive[counterparts[mode]][metric], counterparts[mode]
            else:
                baseline, baseline_name = best_baseline[metric], f"best of them, {best_names[metric]}"
            target = ">= 0.95" if mode == "hybrid" and metric == "recall@5" else None
            rows.append(Row(NAME, f"{mode} {metric}", value, "", baseline=baseline, target=target,
                            note=f"baseline: naive {baseline_name}"))
    for name, scores in naive.items():
        rows.append(Row(NAME, f"naive {name} recall@5 / mrr@10", scores["recall@5"], "",
                        note=f"mrr@10 {scores['mrr@10']:.3f}, recall@1 {scores['recall@1']:.3f}, "
                             f"recall@10 {scores['recall@10']:.3f}"))
    rows.append(Row(NAME, "hybrid recall@5 margin over best baseline", ours["hybrid"]["recall@5"]
                    - best_baseline["recall@5"], "", target=">= 0.0001"))
    latencies = _search_latencies(documents, questions)
    rows.append(Row(NAME, "chunk_search p50 (embed + SQL)", float(np.median(latencies)), "ms", target="<= 30",
                    note=f"p95 {np.percentile(latencies, 95):.1f} ms over {len(latencies)} questions, k=8"))
    rows.append(Row(NAME, "hybrid SQL per question", hybrid_ms, "ms",
                    note=f"{len(questions)} questions, {len(documents)} documents, {chunks} chunks "
                         f"(naive: {naive_chunks} chunks of {NAIVE_CHUNK_CHARS} characters)"))
    return rows
