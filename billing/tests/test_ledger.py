"""The usage ledger in Postgres: rows and costs as priced by ModelPrice, idempotency, partial billing, the Redis
quota counter rebuilt from it, period rollover, and 100 concurrent calls against a small quota."""

from __future__ import annotations

import random
import threading
import time
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F, Sum
from django.utils import timezone

from accounts.tests.factories import UserFactory
from billing import counters
from billing.limiter import LimitExceeded
from billing.models import ModelPrice, Subscription, UsageRecord
from billing.selectors import usage_summary
from billing.services import llm_release, llm_reserve, llm_settle, usage_record
from billing.tests.factories import ModelPriceFactory, PlanFactory, end_current_period, subscribe

MODEL = "gpt-4o-mini"


def _expected_cost(price: ModelPrice, prompt: int, completion: int) -> Decimal:
    exact = (prompt * price.input_per_million + completion * price.output_per_million) / Decimal(1_000_000)
    return exact.quantize(Decimal("0.00000001"))


def _user(**plan_fields):
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(**plan_fields))
    return user


def _rid() -> str:
    return uuid.uuid4().hex


def _quota_counter(user) -> int:
    return usage_summary(user=user)["current"]["quota"]["used"]


def _quota_keys(prefix: str) -> list[bytes]:
    return list(counters.redis_client().scan_iter(match=f"{prefix}*quota*", count=1000))


@pytest.fixture
def price(db) -> ModelPrice:
    return ModelPriceFactory(model=MODEL, input_per_million=Decimal("0.15"), output_per_million=Decimal("0.60"))


@pytest.mark.django_db
def test_settled_call_is_one_row_priced_from_the_model_price(price):
    user = _user()
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=1234, max_tokens=1000, request_id="req-1")

    record = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=1234, completion_tokens=567,
                        latency_ms=842, request_id="req-1", message_id=77)

    stored = UsageRecord.objects.get()
    assert stored.pk == record.pk
    assert (stored.user, stored.kind, stored.model) == (user, "chat", MODEL)
    assert (stored.prompt_tokens, stored.completion_tokens) == (1234, 567)
    assert stored.cost == _expected_cost(price, 1234, 567)
    assert stored.price == price
    assert (stored.latency_ms, stored.message_id, stored.document_id) == (842, 77, None)


@pytest.mark.django_db
def test_embedding_usage_is_priced_per_input_token_and_linked_to_the_document():
    user = _user()
    price = ModelPriceFactory(model="text-embedding-3-large", kind="embedding", input_per_million=Decimal("0.13"),
                              output_per_million=Decimal("0"))

    record = usage_record(user=user, kind="embedding", model="text-embedding-3-large", prompt_tokens=98_765,
                          request_id="emb-1", document_id=12)

    assert record.cost == _expected_cost(price, 98_765, 0)
    assert (record.kind, record.document_id, record.message_id) == ("embedding", 12, None)
    assert _quota_counter(user) == 98_765


@pytest.mark.django_db
def test_cost_keeps_sub_micro_dollar_precision():
    user = _user()
    price = ModelPriceFactory(model="gpt-4.1-nano", input_per_million=Decimal("0.10"),
                              output_per_million=Decimal("0.40"))

    record = usage_record(user=user, kind="chat", model="gpt-4.1-nano", prompt_tokens=1, completion_tokens=1,
                          request_id=_rid())

    record.refresh_from_db()
    assert record.cost == _expected_cost(price, 1, 1) == Decimal("0.00000050")


@pytest.mark.django_db
def test_a_later_price_prices_later_calls_and_not_calls_that_started_before_it(price):
    user = _user()
    early = llm_reserve(user=user, model=MODEL, prompt_tokens=1000, max_tokens=500, request_id="early")
    time.sleep(0.01)
    new_price = ModelPriceFactory(model=MODEL, effective_from=timezone.now(), input_per_million=Decimal("0.30"),
                                  output_per_million=Decimal("1.20"))
    time.sleep(0.01)
    late = llm_reserve(user=user, model=MODEL, prompt_tokens=1000, max_tokens=500, request_id="late")

    late_record = llm_settle(reservation=late, user=user, model=MODEL, prompt_tokens=1000, completion_tokens=500,
                             latency_ms=1, request_id="late")
    early_record = llm_settle(reservation=early, user=user, model=MODEL, prompt_tokens=1000, completion_tokens=500,
                              latency_ms=1, request_id="early")

    assert early_record.price == price
    assert early_record.cost == _expected_cost(price, 1000, 500)
    assert late_record.price == new_price
    assert late_record.cost == _expected_cost(new_price, 1000, 500)
    assert late_record.cost != early_record.cost


@pytest.mark.django_db
def test_stream_cut_short_bills_only_the_tokens_generated(price):
    user = _user(monthly_token_quota=10_000, tokens_per_minute=10_000)
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=300, max_tokens=2_000, request_id="cut")
    assert _quota_counter(user) == 2_300

    record = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=300, completion_tokens=42,
                        latency_ms=1_500, request_id="cut")

    assert (record.prompt_tokens, record.completion_tokens) == (300, 42)
    assert record.cost == _expected_cost(price, 300, 42)
    summary = usage_summary(user=user)
    assert summary["current"]["quota"]["used"] == 342
    assert summary["current"]["tpm"]["used"] == 342
    assert summary["used"] == 342


@pytest.mark.django_db
def test_release_writes_no_row_and_returns_the_reservation(price):
    user = _user(monthly_token_quota=10_000)
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=300, max_tokens=700, request_id="failed")

    llm_release(reservation=reservation)

    assert not UsageRecord.objects.exists()
    assert _quota_counter(user) == 0


@pytest.mark.django_db
def test_settling_the_same_request_twice_records_and_counts_it_once(price):
    user = _user()
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=100, max_tokens=100, request_id="twice")
    first = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=100, completion_tokens=50,
                       latency_ms=1, request_id="twice")

    again = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=100, completion_tokens=50,
                       latency_ms=1, request_id="twice")

    assert again.pk == first.pk
    assert UsageRecord.objects.count() == 1
    assert _quota_counter(user) == 150


@pytest.mark.django_db
def test_usage_record_is_idempotent_on_request_id():
    user = _user()
    for _ in range(3):
        usage_record(user=user, kind="embedding", model="all-MiniLM-L6-v2", prompt_tokens=500, request_id="emb")

    assert UsageRecord.objects.count() == 1
    assert _quota_counter(user) == 500


@pytest.mark.django_db
def test_unpriced_model_is_still_recorded_at_zero_cost():
    user = _user()

    record = usage_record(user=user, kind="embedding", model="not-in-the-price-table", prompt_tokens=10,
                          request_id=_rid())

    assert (record.cost, record.price) == (Decimal(0), None)
    assert UsageRecord.objects.filter(model="not-in-the-price-table").count() == 1


@pytest.mark.django_db
def test_quota_counter_is_rebuilt_from_the_ledger_when_redis_lost_it(price, billing_key_prefix):
    user = _user(monthly_token_quota=1_000)
    for _ in range(3):
        reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=250, max_tokens=50, request_id=_rid())
        llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=250, completion_tokens=50,
                   latency_ms=1, request_id=reservation.request_id)
    keys = _quota_keys(billing_key_prefix)
    assert keys
    counters.redis_client().delete(*keys)

    with pytest.raises(LimitExceeded) as caught:
        llm_reserve(user=user, model=MODEL, prompt_tokens=50, max_tokens=51, request_id=_rid())

    assert caught.value.limit == "quota"
    assert caught.value.remaining == 100  # 1,000 minus the 900 in the ledger
    llm_reserve(user=user, model=MODEL, prompt_tokens=50, max_tokens=50, request_id=_rid())
    assert _quota_counter(user) == 1_000


@pytest.mark.django_db
def test_period_rollover_starts_the_quota_from_zero_and_keeps_the_old_rows(price):
    user = _user(monthly_token_quota=1_000)
    usage_record(user=user, kind="chat", model=MODEL, prompt_tokens=900, completion_tokens=100, request_id=_rid())
    with pytest.raises(LimitExceeded):
        llm_reserve(user=user, model=MODEL, prompt_tokens=1, max_tokens=0, request_id=_rid())
    old = Subscription.objects.get(user=user)

    end_current_period(old)
    old.refresh_from_db()
    llm_reserve(user=user, model=MODEL, prompt_tokens=500, max_tokens=500, request_id=_rid())

    new = Subscription.objects.get(user=user)
    assert old.current_period_end <= new.current_period_start <= timezone.now() < new.current_period_end
    summary = usage_summary(user=user)
    assert (summary["used"], summary["current"]["quota"]["used"]) == (0, 1_000)
    assert UsageRecord.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_hundred_concurrent_calls_overshoot_the_quota_by_at_most_one_reservation():
    ModelPriceFactory(model=MODEL)
    quota, prompt, max_tokens = 2_000, 60, 40
    user = _user(monthly_token_quota=quota, requests_per_minute=None, tokens_per_minute=None,
                 concurrent_streams=None)
    threads_count = 100
    barrier = threading.Barrier(threads_count)
    admitted, refused, errors = [], [], []
    rng = random.Random(5)
    completions = [rng.randint(1, max_tokens) for _ in range(threads_count)]

    def call(index: int) -> None:
        try:
            request_id = f"conc-{index}-{uuid.uuid4().hex}"
            barrier.wait(timeout=30)
            try:
                reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=prompt, max_tokens=max_tokens,
                                          request_id=request_id)
            except LimitExceeded as exc:
                refused.append(exc.limit)
                return
            llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=prompt,
                       completion_tokens=completions[index], latency_ms=1, request_id=request_id)
            admitted.append(request_id)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert len(admitted) + len(refused) == threads_count
    assert refused and set(refused) == {"quota"}
    ledger = UsageRecord.objects.filter(user=user).aggregate(total=Sum(F("prompt_tokens") + F("completion_tokens")))
    assert UsageRecord.objects.filter(user=user).count() == len(admitted)
    assert ledger["total"] <= quota + prompt + max_tokens
    assert _quota_counter(user) == ledger["total"]
