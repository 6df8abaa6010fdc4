"""The per-process copy of a user's limits and the model prices that LLM admissions read (on in production,
off in the other tests): it spares the queries, and a change saved through the ORM applies at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.tests.factories import UserFactory
from billing.exceptions import ModelNotAllowed
from billing.limiter import LimitExceeded
from billing.models import Subscription
from billing.services import limits_cache_clear, llm_release, llm_reserve, llm_settle, subscription_assign_plan
from billing.tests.factories import ModelPriceFactory, PlanFactory, subscribe

pytestmark = pytest.mark.django_db

MODEL = "gpt-4o-mini"


@pytest.fixture(autouse=True)
def cache_on(settings) -> Iterator[None]:
    settings.BILLING_LIMITS_CACHE_SECONDS = 60
    limits_cache_clear()
    yield
    limits_cache_clear()


@pytest.fixture(autouse=True)
def prices() -> None:
    ModelPriceFactory(model=MODEL)
    ModelPriceFactory(model="gpt-4.1", input_per_million="2.00", output_per_million="8.00")


def _reserve(user, *, model=MODEL):
    return llm_reserve(user=user, model=model, prompt_tokens=10, max_tokens=10, request_id=uuid.uuid4().hex,
                       stream=False)


def test_second_admission_of_a_user_runs_no_query():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(requests_per_minute=100, chat_models=[MODEL]))
    llm_release(reservation=_reserve(user))

    with CaptureQueriesContext(connection) as queries:
        llm_release(reservation=_reserve(user))

    assert len(queries) == 0


def test_cached_limits_are_still_enforced_by_the_counters():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(requests_per_minute=2, chat_models=[MODEL]))
    _reserve(user)
    _reserve(user)

    with pytest.raises(LimitExceeded) as refused:
        _reserve(user)

    assert refused.value.limit == "rpm"


def test_plan_change_applies_to_the_next_admission_at_once():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(slug="small", requests_per_minute=1, chat_models=[MODEL]))
    PlanFactory(slug="big", requests_per_minute=100, chat_models=[MODEL, "gpt-4.1"])
    _reserve(user)
    with pytest.raises(ModelNotAllowed):
        _reserve(user, model="gpt-4.1")

    subscription_assign_plan(user=user, plan_slug="big")

    _reserve(user, model="gpt-4.1")
    _reserve(user)


def test_subscription_saved_by_an_admin_applies_at_once():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(requests_per_minute=100, chat_models=[MODEL]))
    _reserve(user)
    subscription = Subscription.objects.get(user=user)

    subscription.status = Subscription.Status.CANCELED  # no default plan: nothing is allowed any more
    subscription.save()

    with pytest.raises(ModelNotAllowed):
        _reserve(user)


def test_ended_period_is_never_served_from_the_cache():
    user = UserFactory()
    subscription = subscribe(user=user, plan=PlanFactory(requests_per_minute=100, chat_models=[MODEL]))
    Subscription.objects.filter(pk=subscription.pk).update(current_period_end=timezone.now() + timedelta(seconds=1))
    first = _reserve(user)  # cached with a period that ends a second from now

    time.sleep(1.1)

    assert _reserve(user).period_id != first.period_id


def test_new_price_row_prices_the_next_settlement():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(requests_per_minute=100, chat_models=[MODEL]))
    reservation = _reserve(user)
    ModelPriceFactory(model=MODEL, input_per_million="100.00", output_per_million="100.00",
                      effective_from=timezone.now() - timedelta(minutes=1))

    record = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=10_000,
                        completion_tokens=0, latency_ms=1, request_id=reservation.request_id)

    assert record.cost == 1


def test_limits_read_before_a_change_are_not_cached_after_it(monkeypatch):
    # Found in review: an admission that read the old plan while another thread saved the new one stored the old
    # limits after the save had cleared the cache, and served them for the cache's lifetime.
    from billing import services

    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(slug="small", requests_per_minute=100, chat_models=[MODEL]))
    PlanFactory(slug="big", requests_per_minute=100, chat_models=[MODEL, "gpt-4.1"])
    read_current = services._current

    def current_then_plan_changes(user):
        read = read_current(user)  # the old plan
        subscription_assign_plan(user=user, plan_slug="big")  # saved (and the cache cleared) meanwhile
        return read

    monkeypatch.setattr(services, "_current", current_then_plan_changes)
    llm_release(reservation=_reserve(user))
    monkeypatch.setattr(services, "_current", read_current)

    llm_release(reservation=_reserve(user, model="gpt-4.1"))
