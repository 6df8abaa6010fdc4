from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from config.testing.fake_openai import FakeOpenAI, embedding_vector
from documents import embedding
from documents.embedding import (
    LOCAL_DIMENSIONS,
    EmbeddingConfig,
    LocalEmbedder,
    OpenAIEmbedder,
    get_embedder,
    local_model_dir,
    openai_client,
)
from documents.ingestion.types import IngestionError, TransientIngestionError

# The ONNX export takes ~20 s; keep it across test runs (outside the repository) instead of per session.
MODEL_CACHE = Path(tempfile.gettempdir()) / "docent-test-models"

SIMILAR = ("How do I change the title of a plot?", "Set the plot's title with the `set title` command.")
UNRELATED = "The chapter 13 trustee distributes payments to creditors under the plan."


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder(cache_dir=MODEL_CACHE)


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(local_model_dir()), device="cpu")


def test_local_embedder_runs_the_int8_onnx_export(local: LocalEmbedder) -> None:
    assert local.runtime == "onnx-int8"
    assert list(MODEL_CACHE.glob("all-MiniLM-L6-v2-int8-*.onnx"))


def test_local_vectors_are_384_dimensional_unit_float32(local: LocalEmbedder) -> None:
    batch = local.embed_documents(["one", "two words", "a somewhat longer sentence about plotting data"])
    assert batch.vectors.shape == (3, LOCAL_DIMENSIONS)
    assert batch.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-4)
    assert batch.model == "all-MiniLM-L6-v2"


def test_similar_texts_score_higher_than_unrelated_ones(local: LocalEmbedder) -> None:
    query = local.embed_query(SIMILAR[0]).vectors[0]
    documents = local.embed_documents([SIMILAR[1], UNRELATED]).vectors
    related, unrelated = documents @ query
    assert related > unrelated + 0.2


def test_local_vectors_agree_with_sentence_transformers(local: LocalEmbedder, reference) -> None:
    texts = [*SIMILAR, UNRELATED, "short", "plot sin(x) with lines linewidth 2 " * 30]
    expected = reference.encode(texts)
    cosines = (local.embed_documents(texts).vectors * expected).sum(axis=1)
    assert cosines.min() > 0.97


def test_questions_get_a_single_threaded_session_of_their_own(monkeypatch) -> None:
    threads_built: list[int] = []
    build = embedding._onnx_runner

    def recording(path: Path, *, threads: int):
        threads_built.append(threads)
        return build(path, threads=threads)

    monkeypatch.setattr(embedding, "_onnx_runner", recording)
    embedder = LocalEmbedder(cache_dir=MODEL_CACHE, threads=2)
    embedder.embed_documents(["A chunk of a document."])
    assert threads_built == [2]
    question = embedder.embed_query(SIMILAR[0])
    embedder.embed_query(UNRELATED)
    assert threads_built == [2, 1]  # built on the first question, then reused
    np.testing.assert_allclose(question.vectors, embedder.embed_documents([SIMILAR[0]]).vectors, atol=1e-6)
    assert question.prompt_tokens == embedder.count_tokens(SIMILAR[0])

    LocalEmbedder(cache_dir=MODEL_CACHE, threads=1).embed_query(SIMILAR[0])
    assert threads_built == [2, 1, 1]  # already single-threaded: one session serves both


MIXED_LENGTHS = [
    "Axes, ranges and labels are set with `set xrange`, `set yrange` and `set xlabel`. " * 6,
    "The trustee files the final report.",
    "Grid lines are drawn at the major tics of the axes named in `set grid`.",
    "Plot styles: lines, points, linespoints, impulses, steps, boxes and filled curves.",
    "A creditor may object to the plan within the period set by the court order.",
]


def test_a_texts_vector_does_not_depend_on_the_texts_embedded_with_it(local: LocalEmbedder) -> None:
    together = local.embed_documents(MIXED_LENGTHS).vectors
    alone = np.stack([local.embed_query(text).vectors[0] for text in MIXED_LENGTHS])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_batching_by_length_keeps_the_input_order() -> None:
    batched = LocalEmbedder(cache_dir=MODEL_CACHE, max_batch_rows=4)
    together = batched.embed_documents(MIXED_LENGTHS).vectors
    alone = np.stack([batched.embed_query(text).vectors[0] for text in MIXED_LENGTHS])
    similarity = together @ alone.T
    assert (similarity.argmax(axis=1) == np.arange(len(MIXED_LENGTHS))).all()
    # In a padded batch int8 activations are quantised together, so vectors move slightly.
    assert similarity.diagonal().min() > 0.98


def test_local_prompt_tokens_are_the_tokenizers_counts(local: LocalEmbedder) -> None:
    texts = ["Hello world", "Ünïcödé façade, naïve café!", "set xrange [0:10]; plot sin(x)"]
    batch = local.embed_documents(texts)
    assert batch.prompt_tokens == sum(local.count_tokens(text) for text in texts)
    assert local.count_tokens("Hello world") == 2
    assert local.embed_query("Hello world").prompt_tokens == 2


def test_local_tokens_past_the_models_window_are_not_billed(local: LocalEmbedder) -> None:
    long_text = "word " * 1_000
    assert local.count_tokens(long_text) == 1_000
    assert local.embed_documents([long_text]).prompt_tokens == local.max_input_tokens


def test_empty_input_gives_an_empty_batch(local: LocalEmbedder) -> None:
    batch = local.embed_documents([])
    assert batch.vectors.shape == (0, LOCAL_DIMENSIONS)
    assert batch.prompt_tokens == 0


def test_cached_export_is_reused(local: LocalEmbedder) -> None:
    exported = sorted(MODEL_CACHE.glob("all-MiniLM-L6-v2-int8-*.onnx"))
    assert exported  # the `local` fixture's embedder exported it
    modified = [path.stat().st_mtime_ns for path in exported]
    again = LocalEmbedder(cache_dir=MODEL_CACHE)
    assert again.runtime == "onnx-int8"
    assert sorted(MODEL_CACHE.glob("all-MiniLM-L6-v2-int8-*.onnx")) == exported
    assert [path.stat().st_mtime_ns for path in exported] == modified


def test_failed_onnx_export_falls_back_to_sentence_transformers(monkeypatch, reference) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no onnxruntime here")

    monkeypatch.setattr(embedding, "ensure_onnx_model", broken)
    fallback = LocalEmbedder(cache_dir=MODEL_CACHE)
    assert fallback.runtime == "torch"
    vectors = fallback.embed_documents(list(SIMILAR)).vectors
    np.testing.assert_allclose(vectors, reference.encode(list(SIMILAR)), atol=1e-4)


def test_get_embedder_builds_one_embedder_per_config_across_threads(monkeypatch) -> None:
    built: list[EmbeddingConfig] = []
    gate = threading.Barrier(8)

    def build(config: EmbeddingConfig) -> object:
        built.append(config)
        return object()

    monkeypatch.setattr(embedding, "_build", build)
    monkeypatch.setattr(embedding, "_EMBEDDERS", {})
    config = EmbeddingConfig(cache_dir="/nonexistent/for-this-test")
    results: list[object] = []

    def worker() -> None:
        gate.wait()
        results.append(get_embedder(config))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == [config]
    assert all(result is results[0] for result in results)
    assert get_embedder(EmbeddingConfig(cache_dir="/another")) is not results[0]


@pytest.mark.parametrize(
    "config",
    [
        EmbeddingConfig(backend="local", model="text-embedding-3-small"),
        EmbeddingConfig(backend="local", dimensions=768),
        EmbeddingConfig(backend="elsewhere"),  # type: ignore[arg-type]
        EmbeddingConfig(backend="openai", model="my-own-model"),  # dimensions unknown and not given
    ],
)
def test_misconfigured_backends_are_refused(config: EmbeddingConfig) -> None:
    with pytest.raises(ValueError):
        embedding._build(config)


# --- OpenAI-compatible backend against the fake server -----------------------------------------------------


@pytest.fixture(scope="module")
def fake_server():
    with FakeOpenAI(embedding_dim=64) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOpenAI):
    fake_server.reset()
    yield fake_server
    fake_server.reset()


class SleepRecorder:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


def _openai(fake: FakeOpenAI, sleeps: SleepRecorder, **overrides) -> OpenAIEmbedder:
    options = {
        "model": "text-embedding-3-small",
        "dimensions": 64,
        "api_key": "test",
        "base_url": fake.base_url,
        "timeout_s": 5.0,
        "max_retries": 2,
        "backoff_s": 0.01,
        "max_backoff_s": 3.0,
        "max_batch_size": 3,
        "sleep": sleeps,
    } | overrides
    return OpenAIEmbedder(**options)


TEXTS = [f"text number {index} about {'plots ' * index}" for index in range(7)]


def test_openai_batches_requests_by_count_and_keeps_order(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    batch = _openai(fake, sleeps).embed_documents(TEXTS)
    assert [len(request.body["input"]) for request in fake.embedding_requests] == [3, 3, 1]
    expected = np.array([embedding_vector(text, dim=64) for text in TEXTS], dtype=np.float32)
    np.testing.assert_allclose(batch.vectors, expected, atol=1e-6)
    assert batch.vectors.dtype == np.float32
    assert all(request.body["dimensions"] == 64 for request in fake.embedding_requests)


def test_openai_batches_requests_by_tokens(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    embedder = _openai(fake, sleeps, max_batch_size=100, max_batch_tokens=20)
    counts = embedder.tokenizer.count_batch(TEXTS)
    embedder.embed_documents(TEXTS)
    sizes = [len(request.body["input"]) for request in fake.embedding_requests]
    assert sum(sizes) == len(TEXTS) and len(sizes) > 1
    start = 0
    for size in sizes:
        # Each request stays under the token budget, unless one text alone is over it.
        assert size == 1 or sum(counts[start : start + size]) <= 20
        start += size


def test_openai_reports_the_providers_token_usage(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    embedder = _openai(fake, sleeps)
    batch = embedder.embed_documents(TEXTS)
    assert batch.prompt_tokens == sum(request.prompt_tokens for request in fake.embedding_requests)
    assert batch.prompt_tokens == sum(embedder.count_tokens(text) for text in TEXTS)  # both cl100k_base
    assert batch.model == "text-embedding-3-small"


def test_openai_bills_the_providers_count_even_when_ours_differs(
    fake: FakeOpenAI, sleeps: SleepRecorder, monkeypatch
) -> None:
    embedder = _openai(fake, sleeps)
    monkeypatch.setattr(embedder.tokenizer, "count_batch", lambda texts: [1_000] * len(texts))
    batch = embedder.embed_documents(TEXTS[:2])
    assert batch.prompt_tokens == sum(request.prompt_tokens for request in fake.embedding_requests)
    assert batch.prompt_tokens < 100


def test_openai_retries_a_429_then_succeeds(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    fake.enqueue(endpoint="embeddings", error=429, retry_after=2)
    batch = _openai(fake, sleeps).embed_documents(TEXTS[:2])
    assert batch.vectors.shape == (2, 64)
    assert [request.status for request in fake.embedding_requests] == [429, 200]
    assert sleeps.calls == [2.0]  # the provider's Retry-After


def test_openai_backs_off_exponentially_on_5xx_without_retry_after(
    fake: FakeOpenAI, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.enqueue(endpoint="embeddings", error=500, retry_after=None)
    fake.enqueue(endpoint="embeddings", error=502, retry_after=None)
    ceilings: list[float] = []
    # Full jitter: each wait is drawn below a ceiling that doubles; the draw itself is the top of its range.
    monkeypatch.setattr("documents.embedding.random.uniform", lambda low, high: ceilings.append(high) or high)
    _openai(fake, sleeps, backoff_s=1.0).embed_documents(TEXTS[:1])
    assert len(fake.embedding_requests) == 3
    assert ceilings == [1.0, 2.0]
    assert sleeps.calls == [1.0, 2.0]


def test_openai_caps_a_long_retry_after(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    fake.enqueue(endpoint="embeddings", error=503, retry_after=600)
    _openai(fake, sleeps, max_backoff_s=3.0).embed_documents(TEXTS[:1])
    assert sleeps.calls == [3.0]


def test_openai_gives_up_after_bounded_retries(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    for _ in range(5):
        fake.enqueue(endpoint="embeddings", error=429, retry_after=0)
    with pytest.raises(TransientIngestionError):
        _openai(fake, sleeps, max_retries=2).embed_documents(TEXTS[:1])
    assert len(fake.embedding_requests) == 3
    assert len(sleeps.calls) == 2


def test_openai_bad_request_fails_permanently_without_retry(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    fake.enqueue(endpoint="embeddings", error=400, error_message="input too long")
    with pytest.raises(IngestionError) as raised:
        _openai(fake, sleeps).embed_documents(TEXTS[:1])
    assert raised.value.permanent
    assert len(fake.embedding_requests) == 1


def test_openai_rejected_credentials_are_transient_and_not_retried(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    fake.enqueue(endpoint="embeddings", error=401)
    with pytest.raises(TransientIngestionError):
        _openai(fake, sleeps).embed_documents(TEXTS[:1])
    assert len(fake.embedding_requests) == 1
    assert sleeps.calls == []


def test_openai_unreachable_server_retries_then_gives_up(sleeps: SleepRecorder) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the socket is closed
    embedder = OpenAIEmbedder(
        model="text-embedding-3-small",
        api_key="test",
        base_url=f"http://127.0.0.1:{port}/v1",
        timeout_s=2.0,
        max_retries=2,
        sleep=sleeps,
    )
    with pytest.raises(TransientIngestionError):
        embedder.embed_documents(["hello"])
    assert len(sleeps.calls) == 2


def test_openai_timeout_is_retried(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    fake.enqueue(endpoint="embeddings", first_token_ms=1_000)
    batch = _openai(fake, sleeps, timeout_s=0.2).embed_documents(TEXTS[:1])
    assert batch.vectors.shape == (1, 64)
    assert len(sleeps.calls) == 1


def test_openai_wrong_vector_size_is_reported(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    # Without configured dimensions nothing is requested, and this server answers with 64, not 1536.
    embedder = _openai(fake, sleeps, dimensions=None)
    with pytest.raises(TransientIngestionError, match="1536"):
        embedder.embed_documents(TEXTS[:1])
    assert "dimensions" not in fake.embedding_requests[0].body


def test_openai_native_dimensions_are_not_requested(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    embedder = _openai(fake, sleeps, model="text-embedding-ada-002", dimensions=1536)
    assert embedder.dimensions == 1536
    with pytest.raises(TransientIngestionError):  # this server answers 64 wide: enough to see the request
        embedder.embed_query("hello")
    assert "dimensions" not in fake.embedding_requests[0].body


def test_openai_client_is_shared_per_process(fake: FakeOpenAI, sleeps: SleepRecorder) -> None:
    first, second = _openai(fake, sleeps), _openai(fake, sleeps, max_batch_size=10)
    assert first._client is second._client
    assert first._client is openai_client(api_key="test", base_url=fake.base_url, timeout_s=5.0)
    assert openai_client(api_key="other", base_url=fake.base_url, timeout_s=5.0) is not first._client


def test_openai_embedder_from_config(fake: FakeOpenAI) -> None:
    config = EmbeddingConfig(
        backend="openai", model="text-embedding-3-small", dimensions=64, api_key="test", base_url=fake.base_url
    )
    embedder = get_embedder(config)
    assert get_embedder(config) is embedder
    assert (embedder.model, embedder.dimensions, embedder.max_input_tokens) == ("text-embedding-3-small", 64, 8191)
    assert embedder.embed_query("hello").vectors.shape == (1, 64)
