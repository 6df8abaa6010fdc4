from __future__ import annotations

import dataclasses
import gc
import logging
import threading

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from chat.services import answer_generate, answers_recover_stuck, warm_up

logger = logging.getLogger(__name__)


# The answer settles the model's failures itself (error event, reservation released or settled). What reaches
# here is the database or Redis failing while the answer was claimed, prepared or saved; a run again, a few
# seconds later, answers one still pending and closes one left streaming with what it streamed (as after a
# worker crash), so that no answer stays unfinished with its reservation held.
@shared_task(bind=True, acks_late=True, max_retries=settings.CHAT_TASK_MAX_RETRIES, ignore_result=True)
def generate_answer(self, message_id: int) -> None:
    try:
        answer_generate(message_id=message_id)
    except Exception as exc:
        logger.warning("answer %s failed (%s); run again, attempt %d", message_id, exc, self.request.retries + 1)
        delay = settings.CHAT_TASK_RETRY_BACKOFF_SECONDS * 2**self.request.retries
        raise self.retry(exc=exc, countdown=delay) from exc


@shared_task(ignore_result=True)
def recover_stuck_answers() -> dict[str, list[int]]:
    recovery = answers_recover_stuck()
    return dataclasses.asdict(recovery)


@worker_ready.connect
def _warm_llm_worker(sender=None, **kwargs) -> None:
    """Pay the one-off costs (model client, embedder, connections) before the first question, not during it."""
    try:
        queues = {queue.name for queue in sender.task_consumer.queues}
    except AttributeError:
        return
    if "llm" in queues:
        # Off the consumer's thread: its start-up (and the broker connection it is setting up) must not wait.
        threading.Thread(target=_warm_up_and_freeze, name="chat-warm-up", daemon=True).start()


def _warm_up_and_freeze() -> None:
    warm_up()
    # The clients, the embedder and the code loaded by now stay for the life of the process: frozen, they are no
    # longer walked by full collections, which otherwise stall every stream of the worker for ~0.2 s at a time.
    gc.freeze()
