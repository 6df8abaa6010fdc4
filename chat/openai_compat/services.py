"""What the /v1/ edges call: completions run through chat (same limits, ledger, workers and cancel logic as the
chat UI), embeddings through the configured embedder, both metered by billing.

A completion is an ordinary chat answer: `completion_start` saves the caller's conversation and has chat answer
its last user message, whose events the edge then follows in the answer's Redis stream. Unless the caller
asked to store it (`docent.store`), the conversation is deleted once the answer is settled, or as soon as the
client goes away, which also stops the model (chat's cancel)."""

from __future__ import annotations

import logging
import time
import uuid

from accounts.models import User
from billing.models import UsageRecord
from billing.selectors import allowed_models
from billing.services import embedding_reserve, llm_release, llm_settle
from chat.models import Conversation, Message
from chat.openai_compat.errors import OpenAIError, invalid, model_not_found
from chat.openai_compat.parsing import CompletionRequest, EmbeddingRequest
from chat.services import completion_ask, conversation_delete, message_cancel
from documents.embedders import configured_embedder, embedding_config
from documents.embedding import EmbeddingBatch
from documents.ingestion.types import IngestionError, TransientIngestionError

logger = logging.getLogger(__name__)


def embedding_model() -> str:
    return embedding_config().model


def model_list(*, user: User) -> list[str]:
    """The chat models the caller's plan allows, then the embedding model (every plan may embed)."""
    models = allowed_models(user=user)
    embedding = embedding_model()
    return [*models, embedding] if embedding and embedding not in models else models


def completion_start(*, user: User, request: CompletionRequest) -> Message:
    """Save the conversation the caller sent and have chat answer its last user message, with the caller's
    model, max_tokens, system messages and retrieval choice. Returns the answer.

    Raises OpenAIError (unknown or disallowed model) and whatever completion_ask raises (LimitExceeded,
    InvalidQuestion, InvalidDocuments) before anything is saved or charged."""
    if request.model not in allowed_models(user=user):
        raise model_not_found(request.model)
    return completion_ask(
        user=user,
        question=request.question,
        history=[(turn.role, turn.content) for turn in request.history],
        instructions=request.instructions,
        model=request.model,
        max_tokens=request.max_tokens,
        retrieval=request.retrieval,
        document_ids=request.document_ids,
    )


def completion_discard(*, user: User, conversation_id: int) -> None:
    """Forget an unstored completion's conversation (its usage stays in the ledger)."""
    conversation = Conversation.objects.filter(id=conversation_id, owner=user).first()
    if conversation is not None:
        conversation_delete(conversation=conversation)


def completion_abandon(*, user: User, answer: Message, store: bool) -> None:
    """The client went away before the answer ended: stop the model. Only the generated tokens are billed."""
    if store:
        message_cancel(user=user, message_id=answer.id)
    else:
        completion_discard(user=user, conversation_id=answer.conversation_id)  # cancels, then deletes


def embeddings_create(*, user: User, request: EmbeddingRequest) -> EmbeddingBatch:
    """Embed the texts with the configured embedder, within the caller's monthly quota, and meter them."""
    if request.model != embedding_model():
        raise model_not_found(request.model)
    embedder = configured_embedder()
    if request.dimensions is not None and request.dimensions != embedder.dimensions:
        raise invalid(f"{embedder.model} produces {embedder.dimensions}-dimensional embeddings only.",
                      param="dimensions")
    counts = embedder.tokenizer.count_batch(request.inputs)
    for index, tokens in enumerate(counts):
        if tokens > embedder.max_input_tokens:
            raise invalid(f"input[{index}] has {tokens} tokens; {embedder.model} reads at most "
                          f"{embedder.max_input_tokens}. Split it into shorter texts.", param=f"input[{index}]")
    request_id = f"emb-{uuid.uuid4().hex}"
    reservation = embedding_reserve(user=user, tokens=sum(counts), request_id=request_id)
    started = time.perf_counter()
    try:
        batch = embedder.embed_documents(request.inputs)
    except BaseException as exc:
        llm_release(reservation=reservation)
        if isinstance(exc, TransientIngestionError):
            raise OpenAIError(503, "The embedding service is unavailable or rate limited; try again shortly.",
                              type="server_error", code="embedding_unavailable") from exc
        if isinstance(exc, IngestionError):
            raise invalid("The embedding service rejected this input.") from exc
        raise
    llm_settle(reservation=reservation, user=user, model=batch.model, prompt_tokens=batch.prompt_tokens,
               completion_tokens=0, latency_ms=round((time.perf_counter() - started) * 1000),
               request_id=request_id, kind=UsageRecord.Kind.EMBEDDING)
    return batch
