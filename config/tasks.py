from celery import shared_task


@shared_task(bind=True, name="config.tasks.echo")
def echo(self, value: str) -> dict[str, str]:
    """A round trip through a worker: tests send it to each queue and check which queue delivered it."""
    return {"value": value, "queue": self.request.delivery_info.get("routing_key", "")}
