from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"  # saved by the edge, waiting for an llm worker
        STREAMING = "streaming"  # claimed by a worker
        DONE = "done"  # finished: finish_reason says how

    class FinishReason(models.TextChoices):
        STOP = "stop"
        LENGTH = "length"
        CANCELLED = "cancelled"
        ERROR = "error"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    # The question's own tokens (user) or the answer's (assistant): sizes history without re-tokenising it.
    content_tokens = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    finish_reason = models.CharField(max_length=16, choices=FinishReason.choices, blank=True)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    # Seconds to wait before asking again, for an error that is a rate limit (the model provider's).
    error_retry_after = models.PositiveIntegerField(null=True, blank=True)
    # Assistant messages: the documents the question was restricted to (empty: all of the owner's).
    document_ids = models.JSONField(default=list, blank=True)
    # Assistant messages asked through the OpenAI-compatible API: the caller's system/developer messages (sent
    # after Docent's own rules), and whether the documents are searched at all.
    instructions = models.JSONField(default=list, blank=True)
    retrieval = models.BooleanField(default=True)
    citations = models.JSONField(default=list, blank=True)
    model = models.CharField(max_length=100, blank=True)
    max_tokens = models.PositiveIntegerField(default=0)
    # The prompt size the reservation was charged for; the worker's prompt never exceeds it.
    prompt_budget = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    # Billing's request id and the limiter reservation charged for it; the worker settles it in every outcome.
    request_id = models.CharField(max_length=64, blank=True)
    reservation = models.JSONField(null=True, blank=True)
    retrieval_ms = models.PositiveIntegerField(null=True, blank=True)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)
    # Sequence number of this answer's last event, so a replay from the database can continue the numbering.
    last_seq = models.PositiveIntegerField(default=0)
    # Until when an unfinished answer is presumed in someone's hands: the queue's while it is pending, then its
    # worker's, renewed as it streams. Past it the stuck sweep sends a pending answer again and closes a
    # streaming one with what it streamed; a second delivery of the task leaves an answer with a live lease alone.
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_conversation_time"),
            # Only the few unfinished answers, which the stuck sweep reads every minute. Keyed by id: the planner
            # also takes it for the claim's and the save's `id = … AND status = …`, where a key of lease_until
            # made it walk every unfinished (and dead) entry, ~3 ms a claim after a burst; and lease renewals
            # stay HOT updates.
            models.Index(fields=["id"], name="message_unfinished",
                         condition=models.Q(status__in=["pending", "streaming"])),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk}"

    @property
    def is_finished(self) -> bool:
        return self.status == self.Status.DONE
