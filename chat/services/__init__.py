"""Asking, answering and cancelling.

The edge (`chat_ask`, from a WebSocket consumer or an API view) validates, reserves the worst-case tokens with
billing, saves the question and an empty answer, writes the `start` event and enqueues the answer on the `llm`
queue after commit. It never calls the model. The llm worker (`answer_generate`) claims the answer, retrieves,
builds the prompt, streams the model's deltas into the answer's Redis event stream, then saves the answer and
settles the reservation, whatever the outcome.
"""

from chat.services.answering import answer_generate, warm_up
from chat.services.asking import (
    MAX_DOCUMENT_IDS,
    ChatError,
    InvalidDocuments,
    InvalidQuestion,
    NotCancellable,
    chat_ask,
    completion_ask,
    conversation_create,
    conversation_delete,
    is_storable_text,
    message_cancel,
)
from chat.services.leases import Recovery, answers_recover_stuck
from chat.services.reservations import reservation_dump, reservation_load

__all__ = [
    "MAX_DOCUMENT_IDS",
    "ChatError",
    "InvalidDocuments",
    "InvalidQuestion",
    "NotCancellable",
    "Recovery",
    "answer_generate",
    "answers_recover_stuck",
    "chat_ask",
    "completion_ask",
    "conversation_create",
    "conversation_delete",
    "is_storable_text",
    "message_cancel",
    "reservation_dump",
    "reservation_load",
    "warm_up",
]
