"""The Celery app. Two queues: `ingest` (CPU-bound, prefork) and `llm` (I/O-bound streams, threads).

Worker commands (the same in `manage.py runstack` and docker-compose.yml):
    celery -A config worker -Q ingest -P prefork -c 2   --prefetch-multiplier 1
    CELERY_CUSTOM_WORKER_POOL=chat.runtime:TaskPool \
    celery -A config worker -Q llm    -P custom  -c 200 --prefetch-multiplier 1
The llm worker's pool is Celery's threads pool with its threads started up front (see chat.runtime.TaskPool);
`-P threads` works too, only slower to take up a burst of questions.
"""

from __future__ import annotations

import os
import threading
import time

import redis
from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("docent")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

QUEUES = ("ingest", "llm")
HEARTBEAT_KEY = "docent:workers:{queue}"
HEARTBEAT_EVERY = 2.0
HEARTBEAT_FRESH = 10.0


class QueueHeartbeat(bootsteps.StartStopStep):
    """Each consumer records, every couple of seconds, which queues it serves.

    The health check reads these instead of broadcasting a control ping: a worker on the threads pool answers
    broadcasts from a blocking loop that polls every second or two, so a ping with a sub-second window misses
    live workers now and then.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, consumer) -> None:
        queues = [queue.name for queue in consumer.task_consumer.queues]
        client = redis.Redis.from_url(consumer.app.conf.broker_url, socket_timeout=2, socket_connect_timeout=2)
        hostname = consumer.hostname
        self._stop.clear()

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    with client.pipeline(transaction=False) as pipe:
                        for queue in queues:
                            pipe.zadd(HEARTBEAT_KEY.format(queue=queue), {hostname: time.time()})
                        pipe.execute()
                except redis.RedisError:
                    pass  # the broker is down; the worker itself is reconnecting
                self._stop.wait(HEARTBEAT_EVERY)
            try:
                for queue in queues:
                    client.zrem(HEARTBEAT_KEY.format(queue=queue), hostname)
            except redis.RedisError:
                pass

        self._thread = threading.Thread(target=beat, name="queue-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, consumer) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)

    shutdown = stop


app.steps["consumer"].add(QueueHeartbeat)


def live_workers(client: redis.Redis, queue: str) -> int:
    return client.zcount(HEARTBEAT_KEY.format(queue=queue), time.time() - HEARTBEAT_FRESH, "+inf")
