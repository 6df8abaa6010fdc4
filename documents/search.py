"""Hybrid retrieval over one user's ready documents: pgvector cosine + BM25 on PostgreSQL full text, fused
by Reciprocal Rank Fusion, in one SQL statement.

Both halves are filtered by owner inside the database. For an owner with few chunks the vector half is an
exact scan through the owner btree (a few ms, and exact); for a big owner it walks the HNSW index with
pgvector 0.8's iterative scan, which keeps reading the graph until enough rows pass the owner filter
instead of returning the few of its first `ef_search` candidates that happen to be the owner's.
The keyword half weighs the question's words by IDF, from per-document lexeme counts (`LexemeCount`), and
finds each word's chunks through a GIN index of owner-qualified lexemes, which holds that owner's chunks only.

`manage.py bench documents.retrieval` (SQuAD) and `documents.scale` (1M chunks) measure both halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from accounts.models import User
from documents.models import Chunk, Document, LexemeCount
from documents.services.store import raw_connection

_TABLE = Chunk._meta.db_table
_DOCUMENT_TABLE = Document._meta.db_table
_LEXEME_TABLE = LexemeCount._meta.db_table


@dataclass(frozen=True, slots=True)
class SearchHit:
    chunk_id: int
    document_id: int
    document_title: str
    page: int | None
    heading_path: list[str]
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[SearchHit]
    query_tokens: int
    embedding_model: str


# Exact: the owner btree finds the rows and they are sorted by distance (`+ 0` keeps the HNSW index out).
# Approximate: the owner and document filters are made unindexable (`+ 0`) so that the planner cannot trade
# the HNSW scan for an owner btree scan plus a sort of all that owner's rows (exact, but 50 ms at 30k rows).
_VECTOR_SQL = {
    True: """
        SELECT c.id, c.embedding <=> %(vector)s::vector AS distance
        FROM {table} c
        WHERE c.owner_id = %(owner)s AND c.document_id = ANY(%(documents)s)
        ORDER BY (c.embedding <=> %(vector)s::vector) + 0
        LIMIT %(vector_candidates)s""",
    False: """
        SELECT c.id, c.embedding <=> %(vector)s::vector AS distance
        FROM {table} c
        WHERE c.owner_id + 0 = %(owner)s AND c.document_id + 0 = ANY(%(documents)s)
        ORDER BY c.embedding <=> %(vector)s::vector
        LIMIT %(vector_candidates)s""",
}

# BM25 over PostgreSQL's own text search: the question's lexemes (english stemming, stop words out), each
# weighted by its IDF among the searched chunks (document frequencies from LexemeCount), and chunks scored by
# the sum of their matched lexemes' IDFs with BM25's length normalisation. Term frequency is taken as 1: in
# ~200-token chunks content words rarely repeat. ts_rank_cd, without IDF, ranks "year" like "Normans".
#
# Bounded by the owner's data, not the table's: each word's chunks come from the owner-scoped GIN index
# (`chunk_owner_lexemes`, see documents.models.OwnerLexemes), one index scan per word, so that which words a
# chunk holds is known without reading its tsvector (TOASTed: ~18 µs a row, 10x that once per word) and the
# index never walks other users' postings. Lexemes in more than `max_df` chunks are left out (near stop words
# for that corpus), and only the rarest words are read: rarest first while their chunks add up to at most
# `candidate_rows` (always at least one word); the commoner words, lowest in IDF, are left out of the score.
# When even the rarest word is in more chunks than that, only `candidate_rows` of them are read: alone, such a
# word ranks its chunks by length only and singles out no passage (a 300k-chunk owner's question whose every
# word is in thousands of chunks read 4,600 rows, 27 ms, where the vector half finds the passage).
# The best BM25 matches hold the rarest words (on SQuAD the ranking is unchanged), and without the bound a big
# owner's question of ten common-ish words would visit tens of thousands of chunks, each a random heap page.
# `owner_id + 0`, `document_id + 0`: the owner btree would add nothing to the owner-scoped index but the cost
# of reading all that owner's entries (30 ms at 300k chunks).
_KEYWORD_SQL = """
        WITH terms AS MATERIALIZED (
            SELECT DISTINCT t.lexeme FROM unnest(to_tsvector('english', %(text)s)) AS t
        ),
        corpus AS MATERIALIZED (
            SELECT greatest(sum(chunk_count), 1) AS chunks,
                   greatest(sum(token_count)::float8 / greatest(sum(chunk_count), 1), 1) AS mean_tokens
            FROM {document_table} WHERE id = ANY(%(documents)s)
        ),
        weights AS MATERIALIZED (
            SELECT %(owner)s::bigint::text || ':' || t.lexeme AS owner_lexeme, f.df,
                   ln(1 + (corpus.chunks - f.df + 0.5) / (f.df + 0.5)) AS idf,
                   sum(f.df) OVER (ORDER BY f.df, t.lexeme) AS cumulative
            FROM terms t
            CROSS JOIN corpus
            CROSS JOIN LATERAL (
                SELECT coalesce(sum(l.chunks), 0) AS df FROM {lexeme_table} l
                WHERE l.owner_id = %(owner)s AND l.lexeme = t.lexeme AND l.document_id = ANY(%(documents)s)
            ) f
            WHERE f.df BETWEEN 1 AND %(max_df)s
        ),
        matches AS MATERIALIZED (
            SELECT c.id, c.token_count, sum(w.idf) AS idf
            FROM weights w
            CROSS JOIN LATERAL (
                SELECT c.id, c.token_count FROM {table} c
                WHERE chunk_owner_lexemes(c.owner_id, c.search_vector) && ARRAY[w.owner_lexeme]
                  AND c.owner_id + 0 = %(owner)s AND c.document_id + 0 = ANY(%(documents)s)
                LIMIT %(candidate_rows)s
            ) c
            WHERE w.cumulative <= %(candidate_rows)s OR w.cumulative = w.df
            GROUP BY c.id, c.token_count
        )
        SELECT m.id,
               m.idf * (%(k1)s + 1) / (1 + %(k1)s * (1 - %(b)s + %(b)s * m.token_count / corpus.mean_tokens)) AS score
        FROM matches m, corpus
        ORDER BY score DESC, m.id
        LIMIT %(candidates)s"""

_HYBRID_SQL = """
WITH vector_hits AS MATERIALIZED (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank FROM ({vector_sql}) nearest
),
keyword_hits AS MATERIALIZED (
    SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank FROM ({keyword_sql}) matched
),
fused AS (
    SELECT id, sum(1.0 / (%(rrf_k)s + rank)) AS score
    FROM (SELECT id, rank FROM vector_hits UNION ALL SELECT id, rank FROM keyword_hits) ranks
    GROUP BY id
    ORDER BY score DESC, id
    LIMIT %(k)s
)
SELECT c.id, c.document_id, c.page, c.heading_path, c.text, f.score
FROM fused f JOIN {table} c ON c.id = f.id
ORDER BY f.score DESC, c.id
"""

BM25_K1 = 1.2
BM25_B = 0.75


def vector_literal(vector: np.ndarray) -> str:
    """The query vector in pgvector's text form, for the SQL's `%(vector)s` (which it names twice). pgvector's
    own dumper writes it again for every occurrence, each float with 17 digits (0.23 ms for 384 dimensions
    here); 9 significant digits hold a float32 exactly, and this writes them once (0.13 ms)."""
    return "[" + ",".join([f"{x:.9g}" for x in np.asarray(vector, dtype=np.float32).tolist()]) + "]"


def keyword_parameters() -> dict:
    return {"k1": BM25_K1, "b": BM25_B, "max_df": settings.SEARCH_KEYWORD_MAX_DF,
            "candidate_rows": settings.SEARCH_KEYWORD_CANDIDATE_ROWS}


def hybrid_sql(*, exact: bool) -> str:
    return _HYBRID_SQL.format(vector_sql=vector_sql(exact=exact), keyword_sql=keyword_sql(), table=_TABLE)


def keyword_sql() -> str:
    """(id, score) of the `candidates` best full-text matches; parameters text, owner, documents, candidates
    and `keyword_parameters()`."""
    return _KEYWORD_SQL.format(table=_TABLE, document_table=_DOCUMENT_TABLE, lexeme_table=_LEXEME_TABLE)


def vector_sql(*, exact: bool) -> str:
    """(id, distance) of the nearest chunks; parameters vector, owner, documents, vector_candidates."""
    return _VECTOR_SQL[exact].format(table=_TABLE)


# enable_seqscan off: with the owner filter unindexable the planner's only other choice is a sequential scan,
# which it may prefer on a misjudged selectivity; for owners this big the HNSW walk is what we want.
#
# ef_search grows as the searched chunks' share of the table shrinks. A filtered walk keeps the share of the
# graph's candidates that pass the filter: at 30% of 1M chunks ef_search 200 gives recall@10 ~0.97-0.99, at 3% it
# gives ~0.94, and 1,000 brings that to ~0.97 for 2-3 ms more (`manage.py bench documents.scale`). The share comes
# from the planner's row estimate of the table, so it costs no count. The scan's memory is bounded by work_mem
# times scan_mem_multiplier; at pgvector's default (1x) a deep walk stops early and loses the recall it was for.
_ANN_SETTINGS_SQL = """
SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('hnsw.ef_search', least(%(ef_max)s, greatest(%(ef)s, ceil(
           %(ef)s * %(ef_share)s * greatest(t.reltuples, 0) / greatest(d.chunks, 1))))::int::text, true),
       set_config('hnsw.max_scan_tuples', %(max_scan_tuples)s, true),
       set_config('hnsw.scan_mem_multiplier', %(scan_mem_multiplier)s, true),
       set_config('enable_seqscan', 'off', true)
FROM pg_class t, (SELECT sum(chunk_count) AS chunks FROM {document_table} WHERE id = ANY(%(documents)s)) d
WHERE t.oid = '{table}'::regclass
"""


def ann_settings_sql() -> str:
    """Sets the HNSW walk's settings; parameters `ann_settings_params(...)`."""
    return _ANN_SETTINGS_SQL.format(table=_TABLE, document_table=_DOCUMENT_TABLE)


def ann_settings_params(*, candidates: int, document_ids: list[int]) -> dict:
    return {
        "ef": max(settings.SEARCH_EF_SEARCH, candidates),
        "ef_max": max(settings.SEARCH_EF_SEARCH_MAX, candidates),
        "ef_share": settings.SEARCH_EF_SHARE,
        "max_scan_tuples": str(settings.SEARCH_MAX_SCAN_TUPLES),
        "scan_mem_multiplier": str(settings.SEARCH_SCAN_MEM_MULTIPLIER),
        "documents": document_ids,
    }


def set_ann_parameters(*, candidates: int, document_ids: list[int]) -> None:
    """HNSW settings for the current transaction (SET LOCAL) and a search of `document_ids`, in one round trip."""
    with connection.cursor() as cursor:
        cursor.execute(ann_settings_sql(), ann_settings_params(candidates=candidates, document_ids=document_ids))


def chunk_search(*, user: User, query: str, k: int = 8, document_ids: list[int] | None = None) -> SearchResult:
    """The `k` best chunks of the user's ready documents (optionally only `document_ids`) for `query`."""
    from documents.embedders import configured_embedder  # heavy; only the processes that search load it

    k = max(1, min(int(k), settings.SEARCH_MAX_K))
    query = query.strip()
    embedder = configured_embedder()
    documents = Document.objects.filter(owner=user, status=Document.Status.READY)
    if document_ids is not None:
        documents = documents.filter(id__in=document_ids)
    titles, searchable = {}, 0
    for document_id, title, chunk_count in documents.values_list("id", "title", "chunk_count"):
        titles[document_id] = title
        searchable += chunk_count
    if not query or not titles:
        return SearchResult(hits=[], query_tokens=0, embedding_model=embedder.model)
    embedded = embedder.embed_query(query)
    rows = hybrid_rows(
        owner_id=user.id,
        document_ids=list(titles),
        vector=embedded.vectors[0],
        text=query,
        k=k,
        exact=searchable <= settings.SEARCH_EXACT_MAX_CHUNKS,
    )
    hits = [
        SearchHit(
            chunk_id=chunk_id,
            document_id=document_id,
            document_title=titles[document_id],
            page=page,
            heading_path=list(heading_path or []),
            text=text,
            score=float(score),
        )
        for chunk_id, document_id, page, heading_path, text, score in rows
    ]
    return SearchResult(hits=hits, query_tokens=embedded.prompt_tokens, embedding_model=embedded.model)


def hybrid_rows(
    *,
    owner_id: int,
    document_ids: list[int],
    vector: np.ndarray,
    text: str,
    k: int,
    exact: bool,
    candidates: int | None = None,
) -> list[tuple]:
    """(chunk id, document id, page, heading path, text, RRF score) rows, best first."""
    candidates = max(k, candidates or settings.SEARCH_CANDIDATES)
    vector_candidates = vector_candidate_count(k=k, candidates=candidates, exact=exact)
    raw_connection()
    params = {
        "vector": vector_literal(vector),
        "owner": owner_id,
        "documents": document_ids,
        "candidates": candidates,
        "vector_candidates": vector_candidates,
        "text": text,
        "k": k,
        "rrf_k": settings.SEARCH_RRF_K,
        **keyword_parameters(),
    }
    with transaction.atomic():
        if not exact:
            set_ann_parameters(candidates=vector_candidates, document_ids=document_ids)
        with connection.cursor() as cursor:
            cursor.execute(hybrid_sql(exact=exact), params)
            return cursor.fetchall()


def vector_candidate_count(*, k: int, candidates: int, exact: bool) -> int:
    """How deep the vector half reads. An exact scan ranks all of the owner's chunks anyway, so it returns as many
    candidates as the keyword half. A filtered HNSW walk pays for each extra row (for an owner holding 3% of the
    table, ~30 more graph tuples and heap checks per row), so it reads `SEARCH_ANN_CANDIDATES` (at least k)."""
    return candidates if exact else max(k, settings.SEARCH_ANN_CANDIDATES)


def nearest_chunk_ids(
    *, owner_id: int, document_ids: list[int], vector: np.ndarray, limit: int, exact: bool
) -> list[int]:
    """The vector half of the search alone, nearest first (for recall measurements against exact search)."""
    raw_connection()
    params = {
        "vector": vector_literal(vector),
        "owner": owner_id,
        "documents": document_ids,
        "vector_candidates": limit,
    }
    with transaction.atomic():
        if not exact:
            set_ann_parameters(candidates=limit, document_ids=document_ids)
        with connection.cursor() as cursor:
            sql = f"SELECT id FROM ({vector_sql(exact=exact)}) nearest ORDER BY distance, id"  # noqa: S608 - constants
            cursor.execute(sql, params)
            return [row[0] for row in cursor.fetchall()]


def keyword_chunk_ids(*, owner_id: int, document_ids: list[int], text: str, limit: int) -> list[int]:
    """The full-text half of the search alone, best first (for retrieval-quality measurements)."""
    params = {"text": text, "owner": owner_id, "documents": document_ids, "candidates": limit,
              **keyword_parameters()}
    with connection.cursor() as cursor:
        cursor.execute(keyword_sql(), params)
        return [row[0] for row in cursor.fetchall()]
