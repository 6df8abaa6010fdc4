"""OpenAI response objects: `chat.completion`, `chat.completion.chunk` SSE frames, models and embeddings.

Docent's own data (citations, cost, the stored conversation) travels in a top-level `docent` field, which the
SDKs keep as an extra attribute and otherwise ignore."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

OWNER = "docent"
DONE_FRAME = b"data: [DONE]\n\n"
HEARTBEAT_FRAME = b": keep-alive\n\n"
# Docent's finish reasons that OpenAI's schema lacks: a cancelled answer simply stopped.
_FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


def finish_reason(docent_reason: str) -> str:
    return _FINISH_REASONS.get(docent_reason, "stop")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


@dataclass(frozen=True)
class ChunkWriter:
    """The SSE frames of one streamed completion; every chunk shares the id, creation time and model."""

    id: str
    created: int
    model: str
    include_usage: bool = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            payload["usage"] = None  # as OpenAI does: null on every chunk but the last
        payload.update(extra)
        return _frame(payload)

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    def role(self) -> bytes:
        return self._chunk(self._choice({"role": "assistant", "content": ""}))

    def content(self, text: str) -> bytes:
        return self._chunk(self._choice({"content": text}))

    def finish(self, reason: str, docent: dict[str, Any]) -> bytes:
        return self._chunk(self._choice({}, finish_reason(reason)), docent=docent)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        payload: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.model, "system_fingerprint": None, "choices": [],
                                   "usage": usage(prompt_tokens, completion_tokens)}
        return _frame(payload)


def error_frame(body: dict[str, Any]) -> bytes:
    """An error after the stream began: the SDKs raise it as an `APIError` from the iteration."""
    return _frame(body)


def completion(
    *, id: str, created: int, model: str, content: str, reason: str, prompt_tokens: int,
    completion_tokens: int, docent: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason(reason),
        }],
        "usage": usage(prompt_tokens, completion_tokens),
        "docent": docent,
    }


def model_object(model: str) -> dict[str, Any]:
    # Creation dates of the upstream models are not known here; 0 says so rather than inventing one.
    return {"id": model, "object": "model", "created": 0, "owned_by": OWNER}


def model_list(models: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model) for model in models]}


def embedding_list(*, vectors: np.ndarray, model: str, prompt_tokens: int, encoding_format: str) -> dict[str, Any]:
    def encode(vector: np.ndarray) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        return [float(x) for x in vector]

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": encode(vector)}
                 for index, vector in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
