"""Every limit through the services, against the real Postgres and Redis: it trips at the right count and
recovers when its window passes (rate windows shortened to a second by settings)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.tests.factories import UserFactory
from billing.exceptions import ModelNotAllowed, UploadLimitExceeded
from billing.limiter import LimitExceeded
from billing.models import Subscription, UsageRecord
from billing.selectors import allowed_models
from billing.services import (
    MB,
    limits_check_upload,
    llm_heartbeat,
    llm_release,
    llm_reserve,
    llm_settle,
    quota_check,
    usage_record,
)
from billing.tests.factories import ModelPriceFactory, PlanFactory, end_current_period, subscribe

pytestmark = pytest.mark.django_db

MODEL = "gpt-4o-mini"


@pytest.fixture(autouse=True)
def prices():
    ModelPriceFactory(model=MODEL)
    ModelPriceFactory(model="gpt-4.1", input_per_million="2.00", output_per_million="8.00")
    ModelPriceFactory(model="text-embedding-3-small", kind="embedding", input_per_million="0.02",
                      output_per_million="0", default_max_tokens=0)


def _user(**plan_fields):
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(**plan_fields))
    return user


def _rid() -> str:
    return uuid.uuid4().hex


def _reserve(user, *, prompt=10, max_tokens=10, stream=False, model=MODEL, request_id=None):
    return llm_reserve(user=user, model=model, prompt_tokens=prompt, max_tokens=max_tokens,
                       request_id=request_id or _rid(), stream=stream)


def _call(user, *, prompt=10, completion=10, max_tokens=10, stream=False):
    """A whole call: reserve the worst case, then settle to what was generated."""
    reservation = _reserve(user, prompt=prompt, max_tokens=max_tokens, stream=stream)
    return llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=prompt,
                      completion_tokens=completion, latency_ms=5, request_id=reservation.request_id)


def _refused(user, **kwargs) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        _reserve(user, **kwargs)
    return caught.value


def test_rpm_refuses_the_request_after_the_limit_and_admits_again_after_the_window(settings):
    settings.BILLING_RATE_WINDOW_SECONDS = 1
    user = _user(requests_per_minute=3)
    for _ in range(3):
        _call(user)

    refused = _refused(user)

    assert (refused.limit, refused.limit_value, refused.remaining) == ("rpm", 3, 0)
    assert 0 < refused.retry_after_ms <= 1000
    time.sleep(refused.retry_after_ms / 1000 + 0.05)
    _call(user)


def test_tpm_counts_settled_tokens_and_admits_again_after_the_window(settings):
    settings.BILLING_RATE_WINDOW_SECONDS = 1
    user = _user(tokens_per_minute=100)
    _call(user, prompt=30, max_tokens=60, completion=10)  # reserved 90, settled to 40
    _call(user, prompt=30, max_tokens=30, completion=30)  # 60: fits only because the first settled to 40

    refused = _refused(user, prompt=1, max_tokens=0)

    assert (refused.limit, refused.limit_value, refused.remaining) == ("tpm", 100, 0)
    time.sleep(refused.retry_after_ms / 1000 + 0.05)
    _call(user, prompt=50, max_tokens=50)


def test_tpm_refuses_a_request_larger_than_the_limit_as_never_satisfiable():
    user = _user(tokens_per_minute=1_000)

    refused = _refused(user, prompt=900, max_tokens=200)

    assert refused.limit == "tpm"
    assert refused.satisfiable is False


def test_concurrency_refuses_a_third_stream_until_one_finishes():
    user = _user(concurrent_streams=2)
    first = _reserve(user, stream=True)
    _reserve(user, stream=True)

    refused = _refused(user, stream=True)
    _reserve(user, stream=False)  # a non-streaming call holds no slot

    assert (refused.limit, refused.limit_value) == ("concurrency", 2)
    llm_settle(reservation=first, user=user, model=MODEL, prompt_tokens=10, completion_tokens=3, latency_ms=1,
               request_id=first.request_id)
    _reserve(user, stream=True)


def test_slot_of_a_killed_worker_lapses_after_the_slot_ttl(settings):
    settings.BILLING_SLOT_TTL_SECONDS = 1
    user = _user(concurrent_streams=1)
    _reserve(user, stream=True)  # the worker dies: never settled, never released

    assert _refused(user, stream=True).limit == "concurrency"
    time.sleep(1.1)
    _reserve(user, stream=True)


def test_heartbeat_keeps_a_long_stream_slot_past_the_ttl(settings):
    settings.BILLING_SLOT_TTL_SECONDS = 1
    user = _user(concurrent_streams=1)
    reservation = _reserve(user, stream=True)
    time.sleep(0.6)
    assert llm_heartbeat(reservation=reservation) is True
    time.sleep(0.6)  # 1.2 s after reserve: lapsed without the heartbeat

    assert _refused(user, stream=True).limit == "concurrency"


def test_quota_refuses_a_reservation_that_would_not_fit_and_recovers_at_the_period_boundary():
    user = _user(monthly_token_quota=1_000)
    _call(user, prompt=500, max_tokens=100, completion=100)  # 600 spent

    refused = _refused(user, prompt=300, max_tokens=200)  # worst case 500 > 400 left
    _call(user, prompt=300, max_tokens=100, completion=100)  # 400 fits exactly

    assert (refused.limit, refused.limit_value, refused.remaining) == ("quota", 1_000, 400)
    subscription = Subscription.objects.get(user=user)
    assert refused.retry_after == pytest.approx(
        (subscription.current_period_end - timezone.now()).total_seconds(), abs=5
    )
    assert _refused(user, prompt=1, max_tokens=0).limit == "quota"

    end_current_period(subscription)
    _call(user, prompt=500, max_tokens=400, completion=10)


def test_periods_starting_within_one_second_name_different_quota_counters():
    # CI caught this: a period that followed one started in the same second shared its (used-up) counter.
    start = timezone.now().replace(microsecond=100)
    first = Subscription(current_period_start=start)
    second = Subscription(current_period_start=start + timedelta(microseconds=1))

    assert first.period_id != second.period_id


def test_quota_check_refuses_when_the_quota_cannot_hold_the_work():
    user = _user(monthly_token_quota=1_000)
    usage_record(user=user, kind="embedding", model="text-embedding-3-small", prompt_tokens=900, request_id=_rid())

    quota_check(user=user, tokens=100)
    with pytest.raises(LimitExceeded) as caught:
        quota_check(user=user, tokens=101)

    assert caught.value.limit == "quota"
    assert caught.value.remaining == 100


def test_quota_check_refuses_any_work_once_the_quota_is_used_up():
    user = _user(monthly_token_quota=1_000)
    usage_record(user=user, kind="embedding", model="text-embedding-3-small", prompt_tokens=1_000,
                 request_id=_rid())

    with pytest.raises(LimitExceeded):
        quota_check(user=user)


def test_embeddings_count_against_the_quota_but_not_the_per_minute_limits():
    user = _user(monthly_token_quota=10_000, tokens_per_minute=1_000, requests_per_minute=1)
    for _ in range(3):
        usage_record(user=user, kind="embedding", model="text-embedding-3-small", prompt_tokens=2_000,
                     request_id=_rid())

    _call(user, prompt=500, max_tokens=500)  # rpm and tpm untouched by the embeddings
    assert _refused(user, prompt=1, max_tokens=0).limit == "rpm"
    with pytest.raises(LimitExceeded):
        quota_check(user=user, tokens=4_000)  # 6,000 embedded + 1,000 chat already


def test_override_replaces_the_plan_limit_for_one_user():
    user = _user(requests_per_minute=1)
    Subscription.objects.filter(user=user).update(overrides={"requests_per_minute": 3})
    for _ in range(3):
        _call(user)

    assert _refused(user).limit_value == 3


def test_override_of_null_makes_a_limit_unlimited():
    user = _user(concurrent_streams=1)
    Subscription.objects.filter(user=user).update(overrides={"concurrent_streams": None})

    for _ in range(5):
        _reserve(user, stream=True)


@pytest.mark.parametrize("status", [Subscription.Status.PAST_DUE, Subscription.Status.CANCELED])
def test_lapsed_subscription_falls_back_to_the_default_plan(status):
    PlanFactory(slug="basic", is_default=True, requests_per_minute=1, chat_models=[MODEL])
    user = _user(requests_per_minute=100, chat_models=[MODEL, "gpt-4.1"])
    Subscription.objects.filter(user=user).update(status=status)

    with pytest.raises(ModelNotAllowed):
        _reserve(user, model="gpt-4.1")
    _call(user)
    assert _refused(user).limit_value == 1


def test_lapsed_subscription_keeps_an_override_stricter_than_the_default_plan():
    PlanFactory(slug="basic", is_default=True, requests_per_minute=5, max_documents=100)
    user = _user(requests_per_minute=100)
    Subscription.objects.filter(user=user).update(
        status=Subscription.Status.PAST_DUE, overrides={"requests_per_minute": 1, "max_documents": 1_000}
    )
    _call(user)

    assert _refused(user).limit_value == 1
    with pytest.raises(UploadLimitExceeded):
        limits_check_upload(user=user, size_bytes=1, document_count=100, storage_bytes=0)


def test_model_outside_the_plan_is_refused_before_anything_is_charged():
    user = _user(requests_per_minute=1, chat_models=[MODEL])

    with pytest.raises(ModelNotAllowed) as caught:
        _reserve(user, model="gpt-4.1")

    assert caught.value.allowed == [MODEL]
    _call(user)  # the refused call did not use the one request per minute


def test_model_in_the_plan_without_a_price_is_refused():
    user = _user(chat_models=[MODEL, "unpriced-model"])

    with pytest.raises(ModelNotAllowed):
        _reserve(user, model="unpriced-model")


def test_release_frees_the_slot_and_charges_nothing_to_the_quota():
    user = _user(concurrent_streams=1, monthly_token_quota=1_000)
    reservation = _reserve(user, prompt=400, max_tokens=600, stream=True)
    assert _refused(user, prompt=1, max_tokens=0, stream=False).limit == "quota"

    llm_release(reservation=reservation)

    _reserve(user, prompt=400, max_tokens=600, stream=True)


def test_upload_larger_than_the_plan_allows_is_413():
    user = _user(max_file_size_mb=10)
    limits_check_upload(user=user, size_bytes=10 * MB, document_count=0, storage_bytes=0)

    with pytest.raises(UploadLimitExceeded) as caught:
        limits_check_upload(user=user, size_bytes=10 * MB + 1, document_count=0, storage_bytes=0)

    assert (caught.value.status_code, caught.value.code) == (413, "file_too_large")
    assert "10 MB" in caught.value.message


def test_upload_beyond_the_document_count_is_403():
    user = _user(max_documents=3)
    limits_check_upload(user=user, size_bytes=1, document_count=2, storage_bytes=0)

    with pytest.raises(UploadLimitExceeded) as caught:
        limits_check_upload(user=user, size_bytes=1, document_count=3, storage_bytes=0)

    assert (caught.value.status_code, caught.value.code) == (403, "document_limit")


def test_upload_beyond_the_storage_is_403():
    user = _user(max_storage_mb=100)
    limits_check_upload(user=user, size_bytes=40 * MB, document_count=5, storage_bytes=60 * MB)

    with pytest.raises(UploadLimitExceeded) as caught:
        limits_check_upload(user=user, size_bytes=40 * MB + 1, document_count=5, storage_bytes=60 * MB)

    assert (caught.value.status_code, caught.value.code) == (403, "storage_limit")


def test_quota_check_counts_the_ledger_when_redis_has_no_counter():
    user = _user(monthly_token_quota=1_000)
    UsageRecord.objects.create(user=user, kind="chat", model=MODEL, prompt_tokens=999, cost=0, request_id=_rid())

    with pytest.raises(LimitExceeded) as caught:
        quota_check(user=user, tokens=2)

    assert caught.value.remaining == 1


def test_allowed_models_are_the_plans_models_that_have_a_price():
    user = _user(chat_models=["gpt-4.1", "unpriced-model", MODEL])

    assert allowed_models(user=user) == ["gpt-4.1", MODEL]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"requests_per_hour": 5}, "unknown limit"),
        ({"tokens_per_minute": -1}, "whole number"),
        ({"tokens_per_minute": "many"}, "whole number"),
        ({"chat_models": "gpt-4.1"}, "list of model names"),
    ],
)
def test_invalid_overrides_are_rejected_with_the_reason(overrides, error):
    subscription = subscribe(user=UserFactory(), plan=PlanFactory())
    subscription.overrides = overrides

    with pytest.raises(ValidationError, match=error):
        subscription.full_clean()
