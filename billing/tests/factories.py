"""Billing test data. Other apps' tests can put a user on a roomy plan with `subscribe(user=..., plan=...)`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import factory
from django.db.models import F
from django.utils import timezone

from accounts.tests.factories import UserFactory
from billing.models import ModelPrice, Plan, Subscription, UsageRecord
from billing.periods import period_containing

PRICES_FROM = datetime(2024, 1, 1, tzinfo=UTC)


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan

    slug = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.LazyAttribute(lambda plan: plan.slug.title())
    monthly_price = Decimal("10.00")
    monthly_token_quota = 1_000_000
    requests_per_minute = 1_000
    tokens_per_minute = 10_000_000
    concurrent_streams = 50
    max_documents = 100
    max_storage_mb = 1_000
    max_file_size_mb = 50
    chat_models = factory.LazyFunction(lambda: ["gpt-4o-mini", "gpt-4.1", "extractive"])
    is_default = False


class ModelPriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelPrice
        django_get_or_create = ("model", "effective_from")

    model = "gpt-4o-mini"
    kind = ModelPrice.Kind.CHAT
    input_per_million = Decimal("0.15")
    output_per_million = Decimal("0.60")
    effective_from = PRICES_FROM
    context_window = 128_000
    default_max_tokens = 1024


class SubscriptionFactory(factory.django.DjangoModelFactory):
    """Creates or replaces the user's subscription (a new user may already have one on the default plan)."""

    class Meta:
        model = Subscription

    user = factory.SubFactory(UserFactory)
    plan = factory.SubFactory(PlanFactory)
    status = Subscription.Status.ACTIVE
    period_anchor = factory.LazyFunction(timezone.now)
    overrides = factory.LazyFunction(dict)

    @classmethod
    def _create(cls, model_class, *args, user, **kwargs):
        anchor = kwargs["period_anchor"].astimezone(UTC)
        start, end = period_containing(anchor=anchor, moment=timezone.now().astimezone(UTC))
        kwargs.setdefault("current_period_start", start)
        kwargs.setdefault("current_period_end", end)
        subscription, _ = model_class.objects.update_or_create(user=user, defaults=kwargs)
        return subscription


def subscribe(*, user, plan: Plan | None = None, **kwargs) -> Subscription:
    return SubscriptionFactory(user=user, plan=plan or PlanFactory(), **kwargs)


class UsageRecordFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = UsageRecord

    user = factory.SubFactory(UserFactory)
    kind = UsageRecord.Kind.CHAT
    model = "gpt-4o-mini"
    prompt_tokens = 100
    completion_tokens = 20
    cost = Decimal("0.00002700")
    request_id = factory.Sequence(lambda n: f"req-factory-{n}")


def end_current_period(subscription: Subscription) -> None:
    """Travels to just after the end of the current period: the subscription and its usage move back in time."""
    shift = subscription.current_period_end - timezone.now() + timedelta(seconds=1)
    Subscription.objects.filter(pk=subscription.pk).update(
        period_anchor=F("period_anchor") - shift,
        current_period_start=F("current_period_start") - shift,
        current_period_end=F("current_period_end") - shift,
    )
    UsageRecord.objects.filter(user_id=subscription.user_id).update(created_at=F("created_at") - shift)
