from __future__ import annotations

import gc
import logging
import threading

from celery import shared_task
from celery.signals import worker_ready

from chat.services import answer_generate, warm_up

logger = logging.getLogger(__name__)


# No Celery retries: the answer settles its own failures (error event, reservation released or settled), and a
# redelivery after a worker crash finishes the interrupted answer instead of starting it again.
@shared_task(bind=True, acks_late=True, max_retries=0, ignore_result=True)
def generate_answer(self, message_id: int) -> None:
    answer_generate(message_id=message_id)


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
