"""Search at scale: 1,000,000 chunks with skewed owners, realistic vectors, production SQL.

The data set lives in its own database (`docent_bench_scale`) on the same PostgreSQL server, with the chunk and
document tables shaped like production ones, so that the search SQL of `documents.search` runs unchanged. It is
built once (about 40 minutes on 2 cores, most of it the HNSW build) and reused while its parameters are unchanged;
the base embeddings are cached under `DATA_DIR/bench/scale/`.

Vectors: the data sets' own text (gnuplot and IRS PDFs, the DOCX handbook, the 10-K, SQuAD) chunked and embedded
with the configured MiniLM embedder, then replicated with perturbations: each stored vector is a base chunk's
vector plus a share of another chunk's and Gaussian noise, renormalised (cosine ~0.9 to its base: a paraphrase,
not a copy). A document is a run of consecutive base chunks, so an owner's chunks are topically coherent as real
uploads are. Owners: one with ~30% of the chunks, ten with ~3% each, the rest under `SMALL_MAX` each.

Measured per owner class (big, mid, small), with queries near that owner's own content, through the product's
own code on a Django connection to this database: p50/p95 of `hybrid_rows`, the SQL `chunk_search` runs (vector
half exact through the owner btree for small owners, HNSW with iterative scan otherwise; BM25 keyword half; RRF),
`chunk_search` itself end to end (ready-document lookup, query embedding, SQL), and recall@10 of the vector half
(`nearest_chunk_ids`) against an exact scan. Baselines in the same run: the same SQL with the other vector path
(an exact scan for big and mid owners), and the recall of a plain filtered HNSW scan without iterative scan.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db import connection as django_connection
from pgvector.psycopg import register_vector

from config.bench import Row
from config.testing.datasets import SQUAD_FILE
from documents.models import OWNER_LEXEMES_FUNCTION_SQL

T = TypeVar("T")

NAME = "documents.scale"
DATABASE = "docent_bench_scale"
DATASET_VERSION = 3
SMALL_MIN = 50
SMALL_MAX = 2_000
QUERIES = 100
# Searches run first, on queries of their own, to bring in the index and heap pages a server in steady state
# keeps in shared_buffers. Every run draws new queries (BENCH_SCALE_QUERY_SEED repeats one), so that a run never
# reads pages an earlier run's identical queries left cached.
WARMUP = 200
COPY_COMMIT_ROWS = 50_000


@dataclass(frozen=True)
class ScaleConfig:
    chunks: int = 1_000_000
    big_share: float = 0.30
    mid_owners: int = 10
    mid_share: float = 0.03
    big_document_chunks: int = 1_000
    mid_document_chunks: int = 1_000
    mix: float = 0.3
    noise: float = 0.35
    seed: int = 20_261_128
    version: int = DATASET_VERSION

    def key(self, corpus_hash: str) -> str:
        return hashlib.sha256(json.dumps(asdict(self) | {"corpus": corpus_hash}, sort_keys=True).encode()).hexdigest()


def selected(names: list[str] | None = None) -> bool:
    """Whether the scale benchmark was asked for by name (it is too long for every `make bench`)."""
    if os.environ.get("BENCH_SCALE", "").lower() in {"1", "true", "yes"}:
        return True
    return any(arg.startswith(NAME) for arg in (names if names is not None else sys.argv[1:]))


def _connect(dbname: str, *, autocommit: bool = True) -> psycopg.Connection:
    params = django_connection.settings_dict
    # Client-side binding, as Django's backend does: no server-prepared statements, so every query is planned
    # for its own owner and words (a prepared statement flips to a generic plan after five runs).
    return psycopg.connect(
        dbname=dbname, user=params["USER"], password=params["PASSWORD"] or None, host=params["HOST"] or None,
        port=params["PORT"] or None, autocommit=autocommit, cursor_factory=psycopg.ClientCursor,
    )


def _ensure_database() -> psycopg.Connection:
    with _connect(django_connection.settings_dict["NAME"]) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{DATABASE}"')
    conn = _connect(DATABASE)
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    register_vector(conn)
    return conn


def _cache_dir() -> Path:
    directory = Path(settings.DATA_DIR) / "bench" / "scale"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def base_corpus(datasets: Path) -> tuple[list[str], np.ndarray]:
    """Chunks of every data set document and their vectors (embedded once, then read from the cache)."""
    cache = _cache_dir()
    texts_path, vectors_path = cache / "base_texts.json", cache / "base_vectors.npy"
    if texts_path.exists() and vectors_path.exists():
        return json.loads(texts_path.read_text()), np.load(vectors_path)
    from documents.embedders import configured_chunker, configured_embedder
    from documents.ingestion.extract import extract_sections
    from documents.ingestion.sniff import sniff_kind_path
    from documents.ingestion.types import Section

    embedder = configured_embedder()
    chunker = configured_chunker(embedder)
    texts: list[str] = []
    for path in sorted(datasets.glob("*/*")):
        if path.suffix.lower() not in {".pdf", ".docx", ".html"}:
            continue
        texts.extend(draft.text for draft in chunker(extract_sections(path, sniff_kind_path(path))))
    squad = json.loads((datasets / SQUAD_FILE).read_text())
    sections = [Section(text=paragraph["context"]) for article in squad["data"] for paragraph in article["paragraphs"]]
    texts.extend(draft.text for draft in chunker(sections))
    vectors = np.concatenate([
        embedder.embed_documents(texts[start:start + 256]).vectors for start in range(0, len(texts), 256)
    ]).astype(np.float32)
    texts_path.write_text(json.dumps(texts))
    np.save(vectors_path, vectors)
    return texts, vectors


@dataclass(frozen=True)
class Doc:
    id: int
    owner_id: int
    start: int  # first base chunk of its run
    size: int


def layout(config: ScaleConfig, bases: int) -> list[Doc]:
    """Owners and documents, deterministic from the seed: owner 1 is big, 2..11 are mid, the rest small."""
    rng = np.random.default_rng(config.seed)
    docs: list[Doc] = []

    def add(owner_id: int, total: int, per_document: int) -> None:
        while total > 0:
            size = min(per_document, total)
            docs.append(Doc(len(docs) + 1, owner_id, int(rng.integers(bases)), size))
            total -= size

    big = round(config.chunks * config.big_share)
    mid = round(config.chunks * config.mid_share)
    add(1, big, config.big_document_chunks)
    for owner_id in range(2, 2 + config.mid_owners):
        add(owner_id, mid, config.mid_document_chunks)
    remaining = config.chunks - big - mid * config.mid_owners
    owner_id = 2 + config.mid_owners
    while remaining > 0:
        size = min(int(rng.integers(SMALL_MIN, SMALL_MAX)), remaining)
        for part in np.array_split(np.arange(size), int(rng.integers(1, 4))):
            if len(part):
                docs.append(Doc(len(docs) + 1, owner_id, int(rng.integers(bases)), len(part)))
        remaining -= size
        owner_id += 1
    return docs


def _perturbed(base: np.ndarray, indexes: np.ndarray, config: ScaleConfig, rng: np.random.Generator) -> np.ndarray:
    other = base[rng.integers(len(base), size=len(indexes))]
    scale = config.noise / math.sqrt(base.shape[1])  # so that the noise vector's norm is about config.noise
    noise = rng.standard_normal((len(indexes), base.shape[1])).astype(np.float32) * scale
    vectors = base[indexes] + config.mix * other + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS documents_document (
    id bigint PRIMARY KEY, owner_id bigint NOT NULL, chunk_count integer NOT NULL, token_count bigint NOT NULL);
CREATE TABLE IF NOT EXISTS documents_chunk (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    document_id bigint NOT NULL, owner_id bigint NOT NULL, ordinal integer NOT NULL, text text NOT NULL,
    page integer, heading_path varchar(300)[] NOT NULL DEFAULT '{{}}',
    token_count integer NOT NULL, embedding vector({dimensions}) NOT NULL,
    search_vector tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED);
ALTER TABLE documents_chunk ALTER COLUMN embedding SET STORAGE MAIN;
"""
# The production indexes (see documents/migrations), built after loading: far faster than upkeep per row.
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS chunk_owner_document ON documents_chunk (owner_id, document_id)",
    "CREATE INDEX IF NOT EXISTS chunk_owner_lexemes_gin ON documents_chunk "
    "USING gin (chunk_owner_lexemes(owner_id, search_vector))",
    "CREATE INDEX IF NOT EXISTS chunk_embedding_hnsw ON documents_chunk USING hnsw (embedding vector_cosine_ops) "
    "WITH (m = 16, ef_construction = 64)",
]


def _meta(conn: psycopg.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM bench_meta WHERE key = %s", [key]).fetchone()
    return row[0] if row else None


def _set_meta(conn: psycopg.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO bench_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 [key, value])


def build(conn: psycopg.Connection, config: ScaleConfig, texts: list[str], base: np.ndarray, docs: list[Doc],
          log=print) -> dict[str, float]:
    """Load and index the data set unless it is already there; returns the seconds each step took."""
    key = config.key(hashlib.sha256(base.tobytes()).hexdigest())
    conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text NOT NULL)")
    timings: dict[str, float] = {}
    if _meta(conn, "key") != key:
        log(f"scale: loading {config.chunks:,} chunks into {DATABASE}")
        conn.execute("DROP TABLE IF EXISTS documents_chunk, documents_document")
        conn.execute("TRUNCATE bench_meta")
        conn.execute(_SCHEMA.format(dimensions=base.shape[1]))
        started = time.perf_counter()
        _load(conn, config, texts, base, docs, log)
        timings["load"] = time.perf_counter() - started
        _set_meta(conn, "key", key)
    conn.execute(OWNER_LEXEMES_FUNCTION_SQL)
    conn.execute("DROP INDEX IF EXISTS chunk_search_vector_gin")  # production's full-text index until migration 0004
    for statement in _INDEXES:
        name = statement.split(" EXISTS ")[1].split()[0]
        if _meta(conn, f"index:{name}") == key:
            continue
        log(f"scale: building {name}")
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '4GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        conn.execute(statement)
        timings[f"index {name}"] = time.perf_counter() - started
        _set_meta(conn, f"index:{name}", key)
    if _meta(conn, "lexemes") != key:  # after the indexes: each document's chunks are read through the btree
        log("scale: counting lexemes per document")
        started = time.perf_counter()
        _lexeme_counts(conn, docs)
        timings["lexeme counts"] = time.perf_counter() - started
        _set_meta(conn, "lexemes", key)
        _set_meta(conn, "index:lexeme_owner_lexeme_cover", key)
    if _meta(conn, "index:lexeme_owner_lexeme_cover") != key:  # a data set built before migration 0004
        log("scale: building lexeme_owner_lexeme_cover")
        started = time.perf_counter()
        _lexeme_index(conn)
        timings["index lexeme_owner_lexeme_cover"] = time.perf_counter() - started
        _set_meta(conn, "index:lexeme_owner_lexeme_cover", key)
    if timings:
        conn.execute("VACUUM ANALYZE documents_chunk")
        conn.execute("ANALYZE documents_document")
    return timings


def _lexeme_counts(conn: psycopg.Connection, docs: list[Doc]) -> None:
    """The LexemeCount rows production writes at the end of each ingestion, for every document."""
    conn.execute("DROP TABLE IF EXISTS documents_lexemecount")
    conn.execute(
        "CREATE TABLE documents_lexemecount (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
        "document_id bigint NOT NULL, owner_id bigint NOT NULL, lexeme text NOT NULL, chunks integer NOT NULL)"
    )
    with conn.transaction():
        for doc in docs:
            chunks_query = (
                f"SELECT search_vector FROM documents_chunk WHERE owner_id = {doc.owner_id} "  # noqa: S608 - ints
                f"AND document_id = {doc.id}"
            )
            conn.execute(
                "INSERT INTO documents_lexemecount (document_id, owner_id, lexeme, chunks) "
                "SELECT %s, %s, word, ndoc FROM ts_stat(%s)",
                [doc.id, doc.owner_id, chunks_query],
            )
    _lexeme_index(conn)


def _lexeme_index(conn: psycopg.Connection) -> None:
    """Production's covering index (migration 0004), then VACUUM so that its scans are index-only."""
    conn.execute("CREATE INDEX IF NOT EXISTS lexeme_owner_lexeme_cover ON documents_lexemecount (owner_id, lexeme) "
                 "INCLUDE (document_id, chunks)")
    conn.execute("DROP INDEX IF EXISTS lexeme_owner_lexeme")
    conn.execute("VACUUM ANALYZE documents_lexemecount")


def _load(conn: psycopg.Connection, config: ScaleConfig, texts: list[str], base: np.ndarray, docs: list[Doc],
          log) -> None:
    rng = np.random.default_rng(config.seed + 1)
    token_counts = [max(1, len(text) // 4) for text in texts]
    loaded = 0
    with conn.cursor() as cursor:
        cursor.execute("BEGIN")
        for start in range(0, len(docs), 1000):
            batch = docs[start:start + 1000]
            with cursor.copy("COPY documents_document (id, owner_id, chunk_count, token_count) FROM STDIN") as copy:
                for doc in batch:
                    indexes = (doc.start + np.arange(doc.size)) % len(base)
                    copy.write_row((doc.id, doc.owner_id, doc.size, sum(token_counts[i] for i in indexes)))
            with cursor.copy("COPY documents_chunk (document_id, owner_id, ordinal, text, token_count, embedding) "
                             "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "int4", "text", "int4", "vector"])
                for doc in batch:
                    indexes = (doc.start + np.arange(doc.size)) % len(base)
                    vectors = _perturbed(base, indexes, config, rng)
                    for ordinal, (index, vector) in enumerate(zip(indexes, vectors, strict=True)):
                        copy.write_row((doc.id, doc.owner_id, ordinal, texts[index], token_counts[index], vector))
                    loaded += doc.size
            if loaded >= COPY_COMMIT_ROWS:
                cursor.execute("COMMIT")
                cursor.execute("BEGIN")
                log(f"scale: {sum(d.size for d in docs[:start + 1000]):,} chunks loaded")
                loaded = 0
        cursor.execute("COMMIT")


def _queries(config: ScaleConfig, base: np.ndarray, owner_docs: list[Doc], count: int,
             query_seed: int) -> tuple[np.ndarray, list[int]]:
    """Questions about the owner's own content: perturbations of base chunks that their documents hold
    (and which base chunk each one is about)."""
    rng = np.random.default_rng([config.seed, query_seed, owner_docs[0].owner_id])
    picks = []
    for _ in range(count):
        doc = owner_docs[int(rng.integers(len(owner_docs)))]
        picks.append((doc.start + int(rng.integers(doc.size))) % len(base))
    return _perturbed(base, np.array(picks), config, rng), picks


def _production_columns(conn: psycopg.Connection) -> None:
    """The document columns `chunk_search` reads besides the ones the data set was built with (cheap to add)."""
    conn.execute(
        "ALTER TABLE documents_document ADD COLUMN IF NOT EXISTS title text NOT NULL DEFAULT 'scale document', "
        "ADD COLUMN IF NOT EXISTS status varchar(16) NOT NULL DEFAULT 'ready', "
        "ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now()"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS document_owner ON documents_document (owner_id)")


@contextmanager
def _as_default_database(name: str) -> Iterator[None]:
    """Route Django's default connection to database `name` for this thread, so that the product's own
    functions (`chunk_search`, `hybrid_rows`, `nearest_chunk_ids`) run unchanged against the data set, on a
    connection configured exactly as production's (client-side binding, the same session settings)."""
    alias = "bench_scale"
    connections.settings[alias] = copy.deepcopy(connections["default"].settings_dict) | {"NAME": name}
    original = connections[DEFAULT_DB_ALIAS]
    scale = connections[alias]
    connections[DEFAULT_DB_ALIAS] = scale
    try:
        yield
    finally:
        connections[DEFAULT_DB_ALIAS] = original
        scale.close()


def _plain_hnsw_ids(owner_id: int, document_ids: list[int], vector: np.ndarray, k: int = 10) -> list[int]:
    """Baseline: the product's filtered HNSW query without iterative scan (pgvector's defaults, ef_search 40)."""
    from documents.search import vector_sql
    from documents.services.store import raw_connection

    params = {"vector": vector, "owner": owner_id, "documents": document_ids, "vector_candidates": k}
    raw_connection()
    with transaction.atomic(), django_connection.cursor() as cursor:
        cursor.execute("SELECT set_config('hnsw.iterative_scan', 'off', true)")
        cursor.execute(f"SELECT id FROM ({vector_sql(exact=False)}) nearest ORDER BY distance, id", params)  # noqa: S608
        return [row[0] for row in cursor.fetchall()]


_WARM_TABLES = ["documents_chunk", "documents_lexemecount", "documents_document"]


def _warm(conn: psycopg.Connection) -> float:
    """Bring the data set to a server's steady state: its files in the OS cache (as on a server that has been up
    a while; a benchmark right after a reboot would time the disk), and the chunk heap in shared_buffers through a
    bitmap scan (a sequential scan of a table this size goes through a small ring and would leave them empty).
    The HNSW and GIN pages come in with the warm-up searches, as on a server answering queries. Returns seconds."""
    started = time.perf_counter()
    data_directory = Path(conn.execute("SHOW data_directory").fetchone()[0])
    files = conn.execute(
        "SELECT pg_relation_filepath(c.oid) FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid "
        "WHERE coalesce(i.indrelid, c.oid) = ANY(%s::regclass[])",  # the tables and every index on them
        [_WARM_TABLES],
    ).fetchall()
    for (file_path,) in files:
        path = data_directory / file_path
        for segment in [path, *sorted(path.parent.glob(f"{path.name}.[0-9]*"))]:
            with segment.open("rb") as file:
                while file.read(16 * 2**20):
                    pass
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SELECT sum(token_count) FROM documents_chunk WHERE owner_id >= 0")
    return time.perf_counter() - started


def _timed(fn: Callable[..., T], **kwargs) -> tuple[T, float]:
    """fn(**kwargs) and how long it took, in ms."""
    started = time.perf_counter()
    result = fn(**kwargs)
    return result, (time.perf_counter() - started) * 1000


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _question(text: str) -> str:
    """A question's words: a dozen from the chunk it is about."""
    return " ".join(text.split()[:12])


def measure(config: ScaleConfig, texts: list[str], base: np.ndarray, docs: list[Doc],
            sizes: dict[int, int], query_seed: int) -> list[Row]:
    """Per owner class, on Django's default connection (pointed at the data set by `_as_default_database`)."""
    by_owner: dict[int, list[Doc]] = {}
    for doc in docs:
        by_owner.setdefault(doc.owner_id, []).append(doc)
    small = sorted((owner for owner, size in sizes.items() if size < SMALL_MAX), key=lambda o: sizes[o])
    classes = {"big": 1, "mid": 2, "small": small[len(small) // 2]}
    rows = []
    for label, owner_id in classes.items():
        rows += _measure_owner(config, texts, base, label, by_owner[owner_id], sizes[owner_id], query_seed)
    return rows


def _measure_owner(config: ScaleConfig, texts: list[str], base: np.ndarray, label: str, owner_docs: list[Doc],
                   size: int, query_seed: int) -> list[Row]:
    """Latencies first, each pass on queries of its own (a query repeated would find its pages cached), with
    nothing else running between them as in production; then recall and the baselines, whose exact scans of a
    big owner would evict the cache the searches live on."""
    from accounts.models import User
    from documents.search import chunk_search, hybrid_rows, nearest_chunk_ids

    owner_id = owner_docs[0].owner_id
    user = User(id=owner_id)
    document_ids = [doc.id for doc in owner_docs]
    exact = size <= settings.SEARCH_EXACT_MAX_CHUNKS
    k = settings.SEARCH_DEFAULT_K
    vectors, picks = _queries(config, base, owner_docs, WARMUP + 3 * QUERIES, query_seed)
    questions = [_question(texts[pick]) for pick in picks]
    owner = {"owner_id": owner_id, "document_ids": document_ids}
    warmup, searches, end_to_end, vector_half = (
        range(WARMUP), range(WARMUP, WARMUP + QUERIES), range(WARMUP + QUERIES, WARMUP + 2 * QUERIES),
        range(WARMUP + 2 * QUERIES, WARMUP + 3 * QUERIES))

    for i in warmup:
        hybrid_rows(**owner, vector=vectors[i], text=questions[i], k=k, exact=exact)
    chunk_search(user=user, query=questions[0], k=k)  # loads the embedder
    latencies = [_timed(hybrid_rows, **owner, vector=vectors[i], text=questions[i], k=k, exact=exact)[1]
                 for i in searches]
    search_latencies = [_timed(chunk_search, user=user, query=questions[i], k=k)[1] for i in end_to_end]
    found, vector_latencies = {}, []
    for i in vector_half:
        found[i], elapsed = _timed(nearest_chunk_ids, **owner, vector=vectors[i], limit=10, exact=exact)
        vector_latencies.append(elapsed)
    recalls, plain_recalls = [], []
    for i in vector_half:
        truth = set(nearest_chunk_ids(**owner, vector=vectors[i], limit=10, exact=True))
        recalls.append(len(set(found[i]) & truth) / max(1, len(truth)))
        plain_recalls.append(len(set(_plain_hnsw_ids(owner_id, document_ids, vectors[i])) & truth) / max(1, len(truth)))
    other_latencies = [_timed(hybrid_rows, **owner, vector=vectors[i], text=questions[i], k=k, exact=not exact)[1]
                       for i in searches]

    path = "exact vector half (owner btree)" if exact else "HNSW vector half, iterative scan"
    other = "HNSW vector half" if exact else "exact vector half"
    note = (f"owner {owner_id}: {size:,} chunks in {len(owner_docs)} documents; hybrid_rows, the SQL chunk_search "
            f"runs: {path} + BM25 keyword half + RRF, k={k}; {QUERIES} queries")
    return [
        Row(NAME, f"{label} owner search p50", statistics.median(latencies), "ms",
            baseline=statistics.median(other_latencies), note=f"{note}; baseline the same SQL with the {other}"),
        Row(NAME, f"{label} owner search p95", _percentile(latencies, 95), "ms",
            baseline=_percentile(other_latencies, 95), target="<= 20",
            note=f"baseline the same SQL with the {other}"),
        Row(NAME, f"{label} owner vector half p95", _percentile(vector_latencies, 95), "ms",
            note=f"nearest_chunk_ids alone (10 nearest, {path}); p50 {statistics.median(vector_latencies):.1f} ms"),
        Row(NAME, f"{label} owner chunk_search p95", _percentile(search_latencies, 95), "ms",
            note=f"end to end: ready-document lookup, query embedding, SQL; "
                 f"p50 {statistics.median(search_latencies):.1f} ms"),
        Row(NAME, f"{label} owner recall@10", statistics.fmean(recalls), "",
            baseline=statistics.fmean(plain_recalls), target=">= 0.95",
            note="nearest_chunk_ids vs an exact scan; baseline filtered HNSW without iterative scan (ef_search 40)"),
    ]


def _distribution(sizes: dict[int, int]) -> str:
    big = sizes[1]
    mid = sorted(size for owner, size in sizes.items() if 2 <= owner <= 11)
    small = sorted(size for owner, size in sizes.items() if owner > 11)
    return (f"owner 1: {big:,} chunks; owners 2-11: {mid[0]:,}-{mid[-1]:,} each; {len(small)} small owners: "
            f"{small[0]:,}-{small[-1]:,} chunks (median {small[len(small) // 2]:,}, {sum(small):,} in all)")


def scale_benchmark(datasets: Path) -> list[Row]:
    chunks = int(os.environ.get("BENCH_SCALE_CHUNKS", "1000000"))
    config = ScaleConfig(chunks=chunks)
    texts, base = base_corpus(datasets)
    docs = layout(config, len(base))
    query_seed = int(os.environ.get("BENCH_SCALE_QUERY_SEED") or np.random.SeedSequence().entropy % 2**32)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with _ensure_database() as conn:
        timings = build(conn, config, texts, base, docs, log=log)
        _production_columns(conn)
        stored = conn.execute("SELECT count(*), count(DISTINCT owner_id) FROM documents_chunk").fetchone()
        sizes = dict(conn.execute("SELECT owner_id, count(*) FROM documents_chunk GROUP BY owner_id").fetchall())
        size = conn.execute("SELECT pg_relation_size('chunk_embedding_hnsw')").fetchone()[0]
        buffers = conn.execute("SELECT current_setting('shared_buffers')").fetchone()[0]
        warm_seconds = _warm(conn)
    with _as_default_database(DATABASE):
        rows = measure(config, texts, base, docs, sizes, query_seed)
    rows.append(Row(NAME, "data set chunks", stored[0], "chunks", target=f">= {chunks}",
                    note=f"counted in the table; {stored[1]} owners: {_distribution(sizes)}; "
                         f"{len(base):,} base MiniLM vectors; HNSW index {size / 2**30:.2f} GB; "
                         f"shared_buffers {buffers}; queries drawn with BENCH_SCALE_QUERY_SEED={query_seed}, "
                         f"after {warm_seconds:.0f} s reading the data set into the caches (see _warm) and "
                         f"{WARMUP} warm-up searches per owner class"))
    rows.append(Row(NAME, "data set build", sum(timings.values()), "s",
                    note="reused from an earlier run" if not timings else
                         ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())))
    return rows
