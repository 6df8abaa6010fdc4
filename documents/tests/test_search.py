"""Hybrid search over the caller's ready documents: the selector and POST /api/v1/search/."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from django.db import connection, transaction

from accounts.tests.factories import UserFactory
from documents.embedders import configured_embedder
from documents.models import Chunk, Document
from documents.search import (
    chunk_search,
    keyword_chunk_ids,
    nearest_chunk_ids,
    set_ann_parameters,
    vector_literal,
    vector_sql,
)
from documents.services.store import StoredChunk, chunks_copy, lexeme_counts_store

pytestmark = pytest.mark.django_db

FACTS = [
    "The Normans conquered England in 1066 after the Battle of Hastings.",
    "Photosynthesis turns sunlight, water and carbon dioxide into glucose and oxygen.",
    "The Rhine flows from the Swiss Alps through Germany to the North Sea.",
    "Gnuplot draws a logarithmic y axis after the command set logscale y.",
    "Part number XQ-4471 is the replacement gasket for the pump housing.",
    "Mitochondria produce most of the chemical energy that powers a cell.",
]


def ready_document(owner, texts, *, title="Facts", status="ready", vectors=None) -> Document:
    document = Document.objects.create(
        owner=owner,
        title=title,
        filename=f"{title}.txt",
        content_type="text/plain",
        kind="text",
        size_bytes=sum(map(len, texts)),
        sha256=hashlib.sha256(repr((title, texts)).encode()).hexdigest(),
        status=status,
        chunk_count=len(texts),
    )
    if vectors is None:
        vectors = configured_embedder().embed_documents(texts).vectors
    chunks_copy(
        document_id=document.id,
        owner_id=owner.id,
        chunks=[
            StoredChunk(
                ordinal=i,
                text=text,
                page=i + 1,
                heading_path=("Facts", f"Fact {i}"),
                token_count=len(text) // 4,
                embedding=vector,
            )
            for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
        ],
    )
    lexeme_counts_store(document_id=document.id, owner_id=owner.id)
    return document


def test_semantic_question_finds_the_fact_that_answers_it(user):
    document = ready_document(user, FACTS)

    result = chunk_search(user=user, query="Which organelle generates energy inside cells?", k=3)

    top = result.hits[0]
    assert top.text == FACTS[5]
    assert (top.document_id, top.document_title, top.page, top.heading_path) == (
        document.id,
        "Facts",
        6,
        ["Facts", "Fact 5"],
    )
    assert result.embedding_model == "all-MiniLM-L6-v2"
    assert result.query_tokens > 0
    assert [hit.score for hit in result.hits] == sorted((hit.score for hit in result.hits), reverse=True)


def test_exact_code_found_through_the_keyword_half(user):
    # The gasket's vector points away from the question's, so the vector half ranks it last: only the keyword
    # half can bring it to the top.
    vectors = configured_embedder().embed_documents(FACTS).vectors
    vectors[4] = -configured_embedder().embed_query("XQ-4471").vectors[0]
    document = ready_document(user, FACTS, vectors=vectors)

    result = chunk_search(user=user, query="XQ-4471", k=2)

    assert result.hits[0].text == FACTS[4]
    by_vector = nearest_chunk_ids(owner_id=user.id, document_ids=[document.id], vector=-vectors[4], limit=6,
                                  exact=True)
    assert by_vector[-1] == Chunk.objects.get(document=document, ordinal=4).id


def test_keyword_half_finds_an_exact_code_alone(user):
    document = ready_document(user, FACTS)
    gasket = Chunk.objects.get(document=document, ordinal=4)

    assert keyword_chunk_ids(owner_id=user.id, document_ids=[document.id], text="XQ-4471", limit=3) == [gasket.id]


def test_keyword_half_weighs_rare_words_above_common_ones(user):
    texts = [f"Fruit stand {i} sells fruit, more fruit and fresh fruit." for i in range(8)]
    texts.append("A quince ripens late in the autumn.")
    document = ready_document(user, texts, vectors=np.eye(len(texts), 384, dtype=np.float32))

    ranked = keyword_chunk_ids(owner_id=user.id, document_ids=[document.id], text="fruit quince", limit=3)

    assert ranked[0] == Chunk.objects.get(document=document, ordinal=8).id


def test_keyword_half_reads_only_the_rarest_words_chunks_up_to_the_bound(user, settings):
    texts = [f"Fruit stand {i} sells fruit, more fruit and fresh fruit." for i in range(8)]
    texts.append("A quince ripens late in the autumn, unlike most fruit.")
    document = ready_document(user, texts, vectors=np.eye(len(texts), 384, dtype=np.float32))
    quince = Chunk.objects.get(document=document, ordinal=8).id
    settings.SEARCH_KEYWORD_CANDIDATE_ROWS = 4

    # "quince" (1 chunk) fits the bound, "fruit" (9 chunks) does not: only the quince chunk is read.
    assert keyword_chunk_ids(owner_id=user.id, document_ids=[document.id], text="fruit quince", limit=5) == [quince]
    # The rarest word is always read, but even it only up to the bound: 4 of the 9 chunks holding "fruit".
    found = keyword_chunk_ids(owner_id=user.id, document_ids=[document.id], text="fruit", limit=20)
    assert len(found) == 4
    assert set(found) <= set(Chunk.objects.filter(document=document).values_list("id", flat=True))


def test_keyword_half_never_returns_another_owners_chunks_with_the_same_words(user, other_user):
    theirs = ready_document(other_user, FACTS, title="Theirs")
    mine = ready_document(user, FACTS, title="Mine")

    found = keyword_chunk_ids(owner_id=user.id, document_ids=[mine.id, theirs.id], text="Normans England", limit=10)

    assert found == [Chunk.objects.get(document=mine, ordinal=0).id]


def test_keyword_half_reads_a_small_chunk_table_through_the_owner_lexeme_index(user):
    document = ready_document(user, [f"{fact} Note {i}." for i in range(10) for fact in FACTS])
    # The per-word scan of documents.search's keyword query, with the word as a constant: the planner's choice
    # that the function's cost decides. EXPLAIN of the whole query on a table this small picks the index at
    # either cost, so it would not catch the regression.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE documents_chunk")
        cursor.execute(
            "EXPLAIN SELECT id FROM documents_chunk c WHERE chunk_owner_lexemes(c.owner_id, c.search_vector) "
            "&& ARRAY[%s] AND c.owner_id + 0 = %s AND c.document_id + 0 = ANY(%s) LIMIT 1000",
            [f"{user.id}:norman", user.id, [document.id]],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())

    # Not a scan that computes every row's lexemes (~15 us each, for each word of the question).
    assert "chunk_owner_lexemes_gin" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_owner_lexemes_qualify_each_lexeme_with_the_owner():
    with connection.cursor() as cursor:
        cursor.execute("SELECT chunk_owner_lexemes(7, to_tsvector('english', 'The Normans conquered England'))")
        assert cursor.fetchone()[0] == ["7:conquer", "7:england", "7:norman"]


def test_only_the_callers_ready_documents_are_searched(user, other_user):
    ready_document(other_user, FACTS, title="Theirs")
    ready_document(user, FACTS[:2], title="Processing", status="processing")
    mine = ready_document(user, FACTS[2:4], title="Mine")

    result = chunk_search(user=user, query="Normans conquered England", k=10)

    assert {hit.document_id for hit in result.hits} == {mine.id}


def test_document_ids_restrict_the_search(user):
    first = ready_document(user, FACTS[:3], title="First")
    second = ready_document(user, FACTS[3:], title="Second")

    result = chunk_search(user=user, query="Normans conquered England", k=10, document_ids=[second.id])

    assert {hit.document_id for hit in result.hits} == {second.id}
    assert first.id not in {hit.document_id for hit in result.hits}


def test_search_without_ready_documents_is_empty(user):
    assert chunk_search(user=user, query="anything", k=5).hits == []


def _near(center: np.ndarray, count: int, spread: float, rng) -> np.ndarray:
    vectors = center + spread * rng.standard_normal((count, center.size)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _crowd(user, count=2000, spread=0.02, seed=7):
    """Another owner's chunks packed around the query: every early HNSW candidate belongs to them."""
    rng = np.random.default_rng(seed)
    query = configured_embedder().embed_query("orchard apple pruning").vectors[0]
    crowd = UserFactory()
    ready_document(crowd, [f"crowd {i}" for i in range(count)], title="Crowd", vectors=_near(query, count, spread, rng))
    mine = ready_document(
        user,
        [f"far away {i}" for i in range(20)],
        title="Mine",
        vectors=_near(rng.standard_normal(query.size).astype(np.float32), 20, 0.3, rng),
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE documents_chunk")
    return query, mine


def test_owner_with_few_chunks_among_many_gets_k_results_through_hnsw(user, settings):
    settings.SEARCH_EXACT_MAX_CHUNKS = 0  # the approximate path, whatever the owner's size
    query, mine = _crowd(user)

    found = nearest_chunk_ids(owner_id=user.id, document_ids=[mine.id], vector=query, limit=10, exact=False)
    result = chunk_search(user=user, query="orchard apple pruning", k=10)

    assert len(found) == 10
    assert len(result.hits) == 10
    # The same scan without pgvector's iterative scan stops after ef_search candidates, all someone else's.
    with transaction.atomic(), connection.cursor() as cursor:
        set_ann_parameters(candidates=10, document_ids=[mine.id])
        cursor.execute("SET LOCAL hnsw.iterative_scan = off")
        cursor.execute("SET LOCAL hnsw.ef_search = 40")  # pgvector's default
        parameters = {"vector": query, "owner": user.id, "documents": [mine.id], "vector_candidates": 10}
        cursor.execute(vector_sql(exact=False), parameters)
        assert len(cursor.fetchall()) < 10


def test_approximate_search_recall_at_10_against_exact_scan(user, settings):
    rng = np.random.default_rng(3)
    embedder = configured_embedder()
    centers = embedder.embed_documents(FACTS).vectors
    # Clustered like real embeddings: six topics, each a cloud of near-duplicates.
    mine = ready_document(
        user,
        [f"mine {i}" for i in range(1200)],
        title="Mine",
        vectors=np.concatenate([_near(c, 200, 0.04, rng) for c in centers]),
    )
    ready_document(
        UserFactory(),
        [f"other {i}" for i in range(1200)],
        title="Other",
        vectors=np.concatenate([_near(c, 200, 0.04, rng) for c in centers]),
    )
    queries = np.concatenate([_near(c, 5, 0.04, rng) for c in centers])

    recalls = []
    for query in queries:
        exact = nearest_chunk_ids(owner_id=user.id, document_ids=[mine.id], vector=query, limit=10, exact=True)
        approximate = nearest_chunk_ids(owner_id=user.id, document_ids=[mine.id], vector=query, limit=10, exact=False)
        recalls.append(len(set(exact) & set(approximate)) / 10)

    assert np.mean(recalls) >= 0.9


def test_search_api_returns_results_in_the_documented_shape(api, user):
    document = ready_document(user, FACTS)

    response = api.post("/api/v1/search/", {"query": "Battle of Hastings", "k": 2}, format="json")

    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    assert {"document_id", "document_title", "chunk_id", "page", "text", "score"} <= set(results[0])
    assert results[0]["document_id"] == document.id
    assert results[0]["text"] == FACTS[0]


@pytest.mark.parametrize("body", [{"query": ""}, {"query": "x", "k": 51}, {"query": "x", "k": 0}, {}])
def test_search_api_rejects_invalid_requests(api, body):
    response = api.post("/api/v1/search/", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_search_api_ignores_other_users_document_ids(api, other_user):
    theirs = ready_document(other_user, FACTS)

    response = api.post("/api/v1/search/", {"query": "Hastings", "document_ids": [theirs.id]}, format="json")

    assert response.json()["results"] == []


def test_the_query_vector_reaches_postgres_unchanged():
    # An embedding's typical values and float32's extremes: 9 significant digits must hold each exactly.
    rng = np.random.default_rng(7)
    vector = rng.standard_normal(384).astype(np.float32)
    vector /= np.linalg.norm(vector)
    vector[:4] = [1.1754944e-38, -3.4028235e38, 0.1, -1e-30]
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::vector::real[]", [vector_literal(vector)])
        stored = np.asarray(cursor.fetchone()[0], dtype=np.float32)
    assert np.array_equal(stored, vector)
