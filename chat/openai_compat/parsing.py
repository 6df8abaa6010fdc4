"""OpenAI request bodies, checked and reduced to what Docent acts on. Pure functions: no I/O.

Sampling knobs Docent does not pass on (temperature, top_p, stop, seed, user, metadata, ...) are accepted and
ignored, as OpenAI-compatible servers commonly do; features it cannot honour (tools, several choices, images)
are refused with a 400 naming the parameter, rather than silently answering something else."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chat.openai_compat.errors import OpenAIError, invalid
from chat.services import MAX_DOCUMENT_IDS, is_storable_text

ROLES = ("system", "developer", "user", "assistant")
INSTRUCTION_ROLES = ("system", "developer")
MAX_EMBEDDING_INPUTS = 2048
DOCENT_FIELDS = ("retrieval", "document_ids", "store")


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    question: str  # the last user message: what is answered
    history: tuple[Turn, ...] = ()  # the user and assistant messages before it
    instructions: tuple[str, ...] = ()  # system and developer messages
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    retrieval: bool = True
    document_ids: list[int] | None = None
    store: bool = False

    def messages(self) -> list[dict[str, str]]:
        """The conversation as given, with text contents: what a model without retrieval would be sent."""
        return [
            *({"role": "system", "content": text} for text in self.instructions),
            *({"role": turn.role, "content": turn.content} for turn in self.history),
            {"role": "user", "content": self.question},
        ]


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str] = field(default_factory=list)
    encoding_format: str = "float"
    dimensions: int | None = None


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"null")
    except ValueError as exc:
        raise invalid("We could not parse the JSON body of your request: send a JSON object.") from exc
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    if not _storable(data):
        raise invalid("The request contains a NUL character (\\u0000) or an unpaired surrogate (\\ud800-\\udfff) "
                      "in a string; remove it and send the request again.")
    return data


def _storable(value: Any) -> bool:
    """Whether every string in the JSON value can be stored and tokenised: Postgres text refuses NUL and UTF-8
    refuses lone surrogates, which JSON's escapes can still express."""
    if isinstance(value, str):
        return is_storable_text(value)
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("You must provide a model parameter.", param="model")
    return model.strip()


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("Only text content parts ({\"type\": \"text\", \"text\": ...}) are supported.",
                              param=f"{param}[{index}]")
            texts.append(part["text"])
        return "\n".join(texts)
    raise invalid("Message content must be a string or a list of text parts.", param=param)


def _positive_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise invalid(f"{name} must be a positive integer.", param=name)
    return value


def _docent(data: dict[str, Any]) -> dict[str, Any]:
    extension = data.get("docent")
    if extension is None:
        return {}
    if not isinstance(extension, dict):
        raise invalid('docent must be an object like {"retrieval": false} or {"document_ids": [1, 2]}.',
                      param="docent")
    unknown = sorted(set(extension) - set(DOCENT_FIELDS))
    if unknown:
        raise invalid(f"Unknown docent field(s): {', '.join(unknown)} (known: {', '.join(DOCENT_FIELDS)}).",
                      param=f"docent.{unknown[0]}")
    for name in ("retrieval", "store"):
        if extension.get(name) is not None and not isinstance(extension[name], bool):
            raise invalid(f"docent.{name} must be true or false.", param=f"docent.{name}")
    ids = extension.get("document_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(i) and i > 0 for i in ids):
            raise invalid("docent.document_ids must be a list of document ids.", param="docent.document_ids")
        if len(ids) > MAX_DOCUMENT_IDS:
            raise invalid(f"docent.document_ids may list at most {MAX_DOCUMENT_IDS} documents.",
                          param="docent.document_ids")
        if extension.get("retrieval") is False and ids:
            raise invalid("docent.document_ids restricts retrieval; it cannot be combined with retrieval: false.",
                          param="docent.document_ids")
    return extension


def parse_completion(data: dict[str, Any]) -> CompletionRequest:
    model = _model(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list of messages.", param="messages")
    instructions: list[str] = []
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid("Each message must be an object with a role and a content.", param=param)
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"Unsupported role {role!r}: Docent accepts {', '.join(ROLES)} (no tools).",
                          param=f"{param}.role")
        if message.get("tool_calls") or message.get("function_call"):
            raise invalid("Tool calls are not supported.", param=f"{param}.tool_calls")
        text = _text(message.get("content"), f"{param}.content")
        if role in INSTRUCTION_ROLES:
            if text.strip():
                instructions.append(text)
        else:
            turns.append(Turn(role=role, content=text))
    if messages[-1].get("role") != "user" or not turns[-1].content.strip():
        raise invalid("The last message must be a user message with the question to answer.", param="messages")
    for name in ("tools", "functions"):
        if data.get(name):
            raise invalid(f"{name} are not supported.", param=name)
    n = data.get("n")
    if n is not None and n != 1:
        raise invalid("Only one choice per request is supported (n must be 1).", param="n")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream must be true or false.", param="stream")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                          param="stream_options")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid('stream_options must be an object like {"include_usage": true}.', param="stream_options")
        include_usage = options.get("include_usage", False)
    limits = [value for value in (_positive_int(data, "max_tokens"), _positive_int(data, "max_completion_tokens"))
              if value is not None]
    extension = _docent(data)
    return CompletionRequest(
        model=model,
        question=turns[-1].content.strip(),
        history=tuple(turns[:-1]),
        instructions=tuple(instructions),
        stream=bool(stream),
        include_usage=include_usage,
        max_tokens=min(limits) if limits else None,
        retrieval=extension.get("retrieval") is not False,
        document_ids=extension.get("document_ids") or None,
        store=extension.get("store") is True,
    )


def parse_embedding(data: dict[str, Any]) -> EmbeddingRequest:
    model = _model(data)
    raw = data.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs:
        raise invalid("input must be a non-empty string or a non-empty list of strings.", param="input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise invalid(f"input may hold at most {MAX_EMBEDDING_INPUTS} strings.", param="input")
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            raise invalid("Only text input is supported (no token ids): send strings.", param=f"input[{index}]")
        if not item.strip():
            raise invalid("input cannot contain empty strings.", param=f"input[{index}]")
    encoding_format = data.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise invalid("encoding_format must be 'float' or 'base64'.", param="encoding_format")
    dimensions = data.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions < 1):
        raise invalid("dimensions must be a positive integer.", param="dimensions")
    return EmbeddingRequest(model=model, inputs=inputs, encoding_format=encoding_format, dimensions=dimensions)


__all__ = ["CompletionRequest", "EmbeddingRequest", "OpenAIError", "Turn", "parse_completion",
           "parse_embedding", "parse_json"]
