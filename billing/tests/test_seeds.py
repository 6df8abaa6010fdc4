from __future__ import annotations

import pytest

from billing import seeds
from billing.models import ModelPrice, Plan
from billing.selectors import model_limits, priced_models

pytestmark = pytest.mark.django_db


def test_seed_creates_the_three_plans_with_free_as_default_and_is_idempotent():
    first = list(seeds.run())
    Plan.objects.filter(slug="pro").update(requests_per_minute=77)  # an admin's edit

    second = list(seeds.run())

    assert set(Plan.objects.values_list("slug", flat=True)) == {"free", "pro", "team"}
    assert Plan.objects.get(is_default=True).slug == "free"
    assert Plan.objects.get(slug="pro").requests_per_minute == 77
    assert ModelPrice.objects.count() == len(seeds.MODEL_PRICES)
    assert first == [*(f"plan {slug}: created" for slug in ("free", "pro", "team")),
                     f"model prices: {len(seeds.MODEL_PRICES)} created, 0 already there"]
    assert not any(": created" in line for line in second)


def test_every_seeded_plan_model_has_a_chat_price_and_local_models_are_free():
    list(seeds.run())

    chat_models = priced_models(kind="chat")
    for plan in Plan.objects.all():
        assert set(plan.chat_models) <= chat_models, plan.slug
    for local in ("extractive", "all-MiniLM-L6-v2"):
        price = ModelPrice.objects.get(model=local)
        assert price.input_per_million == price.output_per_million == 0


def test_paid_plans_cover_their_whole_quota_spent_on_the_dearest_allowed_model():
    """The sizing rule in billing.seeds: at 9 input tokens per output token, revenue >= worst-case cost."""
    list(seeds.run())
    for plan in Plan.objects.exclude(monthly_price=0):
        dearest = max(
            (ModelPrice.objects.get(model=m) for m in plan.chat_models),
            key=lambda p: 9 * p.input_per_million + p.output_per_million,
        )
        worst = plan.monthly_token_quota * (9 * dearest.input_per_million + dearest.output_per_million) / 10 / 10**6
        assert worst <= plan.monthly_price, (plan.slug, dearest.model, worst)


def test_model_limits_come_from_the_price_table():
    list(seeds.run())
    price = ModelPrice.objects.get(model="gpt-4.1")

    assert model_limits(model="gpt-4.1") == (price.context_window, price.default_max_tokens)
