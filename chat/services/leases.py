"""Who holds an unfinished answer, until when; and the sweep that finishes what a lost broker message or a killed
worker left unfinished."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from chat import events
from chat.models import Message
from chat.services.asking import _finish_without_tokens
from chat.services.saving import _answer_interrupted

logger = logging.getLogger(__name__)


def _lease_from_now(seconds: float) -> Any:
    # The database's clock, not this process's: every worker and the sweep compare leases against the same one.
    return Now() + timedelta(seconds=seconds)


def _lease_expired() -> Q:
    # No lease at all: asked or claimed by a version from before leases, whose workers may still be streaming
    # it during a deploy; presumed lost only once no answer could still be streaming.
    legacy_cutoff = timedelta(seconds=settings.CHAT_ANSWER_MAX_SECONDS + settings.CHAT_ANSWER_LEASE_SECONDS)
    return Q(lease_until__lt=Now()) | Q(lease_until__isnull=True, created_at__lt=Now() - legacy_cutoff)


def _answer_renew_lease(message_id: int) -> bool:
    return bool(Message.objects.filter(id=message_id, status=Message.Status.STREAMING)
                .update(lease_until=_lease_from_now(settings.CHAT_ANSWER_LEASE_SECONDS)))


def _answer_release_lease(message_id: int) -> None:
    Message.objects.filter(id=message_id, status=Message.Status.STREAMING).update(lease_until=Now())


def _answer_close_abandoned(message_id: int) -> bool:
    """Close an answer left streaming by a worker that is gone, with what it streamed; False when it is not
    streaming, or its worker's lease is live. Taking the lease first makes one closer win when the sweep and a
    second delivery of the task find it at once."""
    streaming = Message.objects.filter(_lease_expired(), id=message_id, status=Message.Status.STREAMING)
    if not streaming.update(lease_until=_lease_from_now(settings.CHAT_ANSWER_LEASE_SECONDS)):
        return False
    current = Message.objects.select_related("conversation__owner").filter(id=message_id).first()
    if current is None or current.status != Message.Status.STREAMING:
        return False
    _answer_interrupted(current)
    return True


@dataclass(frozen=True)
class Recovery:
    requeued: list[int]  # pending answers sent to the queue again
    given_up: list[int]  # pending answers no worker took within CHAT_ANSWER_GIVE_UP_SECONDS, closed with an error
    closed: list[int]  # streaming answers whose worker was gone, closed with what they streamed


def answers_recover_stuck(*, limit: int = 1000) -> Recovery:
    """Finish what a lost broker message or a killed worker left unfinished (run periodically).

    A pending answer whose lease ran out is sent again (a duplicate of a message still queued is harmless: the
    claim lets one run through) and gets a new lease, so that a backlog is not re-sent on every sweep; one still
    pending after CHAT_ANSWER_GIVE_UP_SECONDS is closed with an error instead (its asker has long stopped
    waiting, and its reservation is released). A streaming answer whose lease ran out is closed with the tokens
    its stream holds, and billed for them."""
    unfinished = Message.objects.filter(_lease_expired(), role=Message.Role.ASSISTANT)
    too_old = Now() - timedelta(seconds=settings.CHAT_ANSWER_GIVE_UP_SECONDS)
    given_up = []
    for answer_id in unfinished.filter(status=Message.Status.PENDING, created_at__lt=too_old) \
            .values_list("id", flat=True)[:limit]:
        if _finish_without_tokens(answer_id, error=("unavailable", "No worker could take this question in time; "
                                                                   "please ask again.")):
            given_up.append(answer_id)
    with transaction.atomic():
        requeued = list(unfinished.filter(status=Message.Status.PENDING).select_for_update(skip_locked=True)
                        .only("id", "conversation_id", "model")[:limit])
        requeued_ids = [answer.id for answer in requeued]
        Message.objects.filter(id__in=requeued_ids).update(
            lease_until=_lease_from_now(settings.CHAT_ANSWER_QUEUE_SECONDS))
        for answer in requeued:
            transaction.on_commit(functools.partial(_send_again, answer), robust=True)
    closed = []
    for answer_id in unfinished.filter(status=Message.Status.STREAMING).values_list("id", flat=True)[:limit]:
        try:
            if _answer_close_abandoned(answer_id):
                closed.append(answer_id)
        except Exception:
            logger.exception("could not close abandoned answer %s", answer_id)
    if requeued or given_up or closed:
        logger.warning("stuck answers: sent %s again, gave up %s, closed %s", requeued_ids, given_up, closed)
    return Recovery(requeued=requeued_ids, given_up=given_up, closed=closed)


def _send_again(answer: Message) -> None:
    from chat.tasks import generate_answer

    # A web process that died between its commit and its dispatch left no `start`, without which readers
    # ignore the tokens that follow.
    if not events.redis_client().exists(events.stream_key(answer.id)):
        events.append(answer.id, [events.start_event(answer)])
    generate_answer.delay(answer.id)
