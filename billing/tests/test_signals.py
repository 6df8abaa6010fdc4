"""New users get the default plan; `issue_api_key --plan` assigns one through accounts' signal."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import Subscription
from billing.periods import add_months
from billing.services import subscription_get_or_create
from billing.tests.factories import PlanFactory

pytestmark = pytest.mark.django_db


def test_new_user_is_subscribed_to_the_default_plan():
    default = PlanFactory(slug="starter", is_default=True)
    PlanFactory(slug="other")

    user = UserFactory()

    subscription = Subscription.objects.get(user=user)
    assert (subscription.plan, subscription.status) == (default, "active")
    assert abs(subscription.current_period_start - user.date_joined) < timedelta(seconds=5)
    assert subscription.current_period_end == add_months(subscription.current_period_start, 1)


def test_user_created_before_any_plan_existed_gets_the_seeded_default_plan_when_first_needed():
    user = UserFactory()
    assert not Subscription.objects.filter(user=user).exists()

    subscription = subscription_get_or_create(user=user)

    assert subscription.plan.slug == "free"
    assert subscription.plan.is_default


def test_issue_api_key_with_plan_assigns_the_plan():
    PlanFactory(slug="free", is_default=True)
    PlanFactory(slug="pro", name="Pro")
    out = io.StringIO()

    call_command("issue_api_key", "new@example.com", "--create", "--plan", "pro", stdout=out)

    user = User.objects.get(email="new@example.com")
    assert Subscription.objects.get(user=user).plan.slug == "pro"
    assert "new@example.com is now on the Pro plan." in out.getvalue()


def test_issue_api_key_with_an_unknown_plan_fails_and_names_the_plans():
    PlanFactory(slug="free", is_default=True)
    user = UserFactory()

    with pytest.raises(CommandError, match=r"no plan 'gold'.*free"):
        call_command("issue_api_key", user.email, "--plan", "gold", stdout=io.StringIO())

    assert Subscription.objects.get(user=user).plan.slug == "free"
