"""`llm_heartbeat_async`, the event-loop twin of `llm_heartbeat` that llm workers call for their streams."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from accounts.tests.factories import UserFactory
from billing.limiter import LimitExceeded
from billing.services import llm_heartbeat_async, llm_release, llm_reserve
from billing.tests.factories import ModelPriceFactory, PlanFactory, subscribe

pytestmark = pytest.mark.django_db

MODEL = "gpt-4o-mini"


@pytest.fixture
def user():
    ModelPriceFactory(model=MODEL)
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(concurrent_streams=1, chat_models=[MODEL]))
    return user


def _stream(user):
    return llm_reserve(user=user, model=MODEL, prompt_tokens=10, max_tokens=10, request_id=uuid.uuid4().hex,
                       stream=True)


def test_async_heartbeat_keeps_a_stream_slot_past_its_ttl(user, settings):
    settings.BILLING_SLOT_TTL_SECONDS = 1
    reservation = _stream(user)
    time.sleep(0.6)

    assert asyncio.run(llm_heartbeat_async(reservation=reservation)) is True
    time.sleep(0.6)  # 1.2 s after reserve: the slot would have lapsed without the heartbeat

    with pytest.raises(LimitExceeded) as refused:
        _stream(user)
    assert refused.value.limit == "concurrency"


def test_async_heartbeat_of_a_released_slot_reports_it_lapsed(user):
    reservation = _stream(user)
    llm_release(reservation=reservation)

    assert asyncio.run(llm_heartbeat_async(reservation=reservation)) is False
