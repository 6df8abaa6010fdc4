"""Billing around real calls to the fake OpenAI server, the way the chat worker uses it: the ledger row holds
exactly what the model reported, a broken stream is billed for what was generated, a failed call for nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
from openai import OpenAI

from accounts.tests.factories import UserFactory
from billing.models import ModelPrice, UsageRecord
from billing.selectors import usage_summary
from billing.services import llm_release, llm_reserve, llm_settle
from billing.tests.factories import ModelPriceFactory, PlanFactory, subscribe
from config.testing.fake_openai import count_prompt_tokens, pytest_fixtures

llm_server, llm = pytest_fixtures(name="llm")

pytestmark = pytest.mark.django_db

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "system", "content": "Answer from the documents."}, {"role": "user", "content": "What is it?"}]


@pytest.fixture
def client(llm) -> Iterator[OpenAI]:
    with OpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def price() -> ModelPrice:
    return ModelPriceFactory(model=MODEL)


@pytest.fixture
def user():
    user = UserFactory()
    subscribe(user=user, plan=PlanFactory(monthly_token_quota=100_000, concurrent_streams=1))
    return user


def _cost(price: ModelPrice, prompt: int, completion: int) -> Decimal:
    exact = (prompt * price.input_per_million + completion * price.output_per_million) / Decimal(1_000_000)
    return exact.quantize(Decimal("0.00000001"))


def test_completed_stream_is_billed_with_the_usage_the_model_reported(client, llm, user, price):
    request_id = uuid.uuid4().hex
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=count_prompt_tokens(MESSAGES), max_tokens=200,
                              request_id=request_id)
    usage = None
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        usage = chunk.usage or usage

    record = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens, latency_ms=20, request_id=request_id)

    served = llm.chat_requests[-1]
    assert (record.prompt_tokens, record.completion_tokens) == (served.prompt_tokens, served.completion_tokens)
    assert record.completion_tokens > 0
    assert record.cost == _cost(price, served.prompt_tokens, served.completion_tokens)
    assert usage_summary(user=user)["current"]["concurrency"]["used"] == 0


def test_stream_broken_mid_answer_is_billed_for_the_deltas_received(client, llm, user, price):
    llm.enqueue(tokens=40, drop_after=7)
    request_id = uuid.uuid4().hex
    prompt_tokens = count_prompt_tokens(MESSAGES)  # no usage arrives: counted with the same tokenizer
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=prompt_tokens, max_tokens=200,
                              request_id=request_id)
    received = 0
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200, stream=True):
            received += bool(chunk.choices and chunk.choices[0].delta.content)

    record = llm_settle(reservation=reservation, user=user, model=MODEL, prompt_tokens=prompt_tokens,
                        completion_tokens=received, latency_ms=20, request_id=request_id)

    assert received == llm.chat_requests[-1].tokens_sent == 7
    assert (record.prompt_tokens, record.completion_tokens) == (llm.chat_requests[-1].prompt_tokens, 7)
    assert usage_summary(user=user)["current"]["quota"]["used"] == prompt_tokens + 7


def test_call_failing_before_any_token_is_not_charged(client, llm, user, price):
    llm.enqueue(error=500)
    reservation = llm_reserve(user=user, model=MODEL, prompt_tokens=50, max_tokens=200,
                              request_id=uuid.uuid4().hex)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200, stream=True)

    llm_release(reservation=reservation)

    assert not UsageRecord.objects.exists()
    current = usage_summary(user=user)["current"]
    assert (current["quota"]["used"], current["concurrency"]["used"]) == (0, 0)
