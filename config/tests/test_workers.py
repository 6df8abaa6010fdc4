import pytest

from config.tasks import echo

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("queue", ["ingest", "llm"])
def test_task_round_trip_through_the_worker_of_each_queue(celery_workers, queue):
    result = echo.apply_async(args=[f"hello {queue}"], queue=queue).get(timeout=20)
    assert result == {"value": f"hello {queue}", "queue": queue}
