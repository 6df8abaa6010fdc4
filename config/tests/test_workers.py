import threading

import pytest

from config.tasks import echo

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("queue", ["ingest", "llm"])
def test_task_round_trip_through_the_worker_of_each_queue(celery_workers, queue):
    result = echo.apply_async(args=[f"hello {queue}"], queue=queue).get(timeout=20)
    assert result == {"value": f"hello {queue}", "queue": queue}


def test_task_threads_share_one_result_backend():
    # The llm worker runs 200 task threads; a backend per thread was built on each one's first task.
    from config.celery import app

    from_other_thread = []
    thread = threading.Thread(target=lambda: from_other_thread.append(app.backend))
    thread.start()
    thread.join()
    assert from_other_thread[0] is app.backend
