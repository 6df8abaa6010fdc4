"""Billing's answers to other apps' signals (connected in BillingConfig.ready)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from billing.exceptions import PlanNotFound
from billing.services import subscription_assign_plan, subscription_create_default


def subscription_for_new_user(sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
    """New users start on the default plan. Without one (before `manage.py seed`) the subscription is created
    the first time it is needed instead."""
    if created and not raw:
        subscription_create_default(user=instance)


def plan_assign_requested(sender: Any, user: Any, plan_slug: str, **kwargs: Any) -> str:
    """`issue_api_key --plan SLUG`: the line returned is printed by the command."""
    try:
        subscription = subscription_assign_plan(user=user, plan_slug=plan_slug)
    except PlanNotFound as exc:
        raise CommandError(exc.message) from exc
    return f"{user.email} is now on the {subscription.plan.name} plan."
