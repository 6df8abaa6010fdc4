from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone
from redis.exceptions import RedisError

from billing import counters, limiter
from billing.exceptions import UnknownModel
from billing.models import OVERRIDABLE_LIMITS, ModelPrice, Plan, Subscription, UsageRecord
from billing.periods import add_months

if TYPE_CHECKING:
    from accounts.models import User

logger = logging.getLogger(__name__)

ZERO = Decimal("0")
# Subscriptions in these states pay and get their plan; the others fall back to the default plan.
GOOD_STANDING = (Subscription.Status.ACTIVE, Subscription.Status.TRIALING)
NUMERIC_LIMITS = tuple(name for name, kind in OVERRIDABLE_LIMITS.items() if kind is int)


@dataclass(frozen=True)
class EffectiveLimits:
    """What a subscription may do right now, after its status and per-user overrides. None is unlimited."""

    plan: Plan | None  # the plan the limits come from
    restricted: bool  # past due or canceled: the default plan's limits apply
    monthly_token_quota: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_streams: int | None
    max_documents: int | None
    max_storage_mb: int | None
    max_file_size_mb: int | None
    chat_models: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in NUMERIC_LIMITS} | {"chat_models": list(self.chat_models)}


def plan_default() -> Plan | None:
    return Plan.objects.filter(is_default=True).first()


def plan_list_offered() -> QuerySet[Plan]:
    return Plan.objects.filter(is_active=True)


def plan_get(*, slug: str) -> Plan | None:
    return Plan.objects.filter(slug=slug).first()


def _stricter(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def effective_limits(*, subscription: Subscription) -> EffectiveLimits:
    """Active and trialing subscriptions get their plan with the overrides applied. Past-due and canceled
    ones get the default plan's limits: service continues at the free level until payment is sorted out,
    and an override still applies where it is stricter (a support-imposed restriction must survive a lapse).
    With no default plan configured they get nothing at all, failing closed."""
    overrides = subscription.overrides or {}
    if subscription.status in GOOD_STANDING:
        plan: Plan | None = subscription.plan
        restricted = False
    else:
        plan = plan_default()
        restricted = True
    values: dict[str, Any] = {}
    for name in NUMERIC_LIMITS:
        base = getattr(plan, name) if plan is not None else 0
        if name in overrides:
            values[name] = _stricter(base, overrides[name]) if restricted else overrides[name]
        else:
            values[name] = base
    models = list(plan.chat_models) if plan is not None else []
    if "chat_models" in overrides:
        override_models = overrides["chat_models"]
        if override_models is None:
            pass  # "unlimited" models makes no sense without prices: keep the plan's list
        elif restricted:
            models = [m for m in models if m in override_models]
        else:
            models = list(override_models)
    return EffectiveLimits(plan=plan, restricted=restricted, chat_models=tuple(models), **values)


def limiter_limits(*, subscription: Subscription, limits: EffectiveLimits) -> limiter.Limits:
    return limiter.Limits(
        rpm=limits.requests_per_minute,
        tpm=limits.tokens_per_minute,
        concurrent_streams=limits.concurrent_streams,
        monthly_quota=limits.monthly_token_quota,
        period_id=subscription.period_id,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        window_seconds=settings.BILLING_RATE_WINDOW_SECONDS,
    )


def price_at(*, model: str, at: datetime) -> ModelPrice | None:
    """The price in effect at `at`: the latest row for the model that had taken effect by then."""
    return ModelPrice.objects.filter(model=model, effective_from__lte=at).order_by("-effective_from").first()


def model_limits(*, model: str) -> tuple[int, int]:
    """(context_window, default_max_tokens) of the model's current price row; UnknownModel if it has none."""
    price = price_at(model=model, at=timezone.now())
    if price is None:
        raise UnknownModel(model)
    return price.context_window, price.default_max_tokens


def priced_models(*, kind: str, at: datetime | None = None) -> set[str]:
    at = at or timezone.now()
    return set(
        ModelPrice.objects.filter(kind=kind, effective_from__lte=at).values_list("model", flat=True).distinct()
    )


def allowed_models(*, user: User) -> list[str]:
    """Chat models the user's plan allows and that have a price (an unpriced call could not be billed)."""
    from billing.services import subscription_get_or_create

    limits = effective_limits(subscription=subscription_get_or_create(user=user))
    return _allowed(limits)


def _allowed(limits: EffectiveLimits) -> list[str]:
    priced = priced_models(kind=ModelPrice.Kind.CHAT)
    return [model for model in limits.chat_models if model in priced]


def ledger_tokens(*, user: User, start: datetime, end: datetime) -> int:
    """Tokens the ledger holds for [start, end): what the Redis quota counter is rebuilt from."""
    total = UsageRecord.objects.filter(user=user, created_at__gte=start, created_at__lt=end).aggregate(
        total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0)
    )["total"]
    return int(total)


def _kind_totals() -> dict[str, Any]:
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": ZERO}


def usage_summary(*, user: User) -> dict[str, Any]:
    """The current period: tokens by kind and model, cost, the quota and what remains of it, every limit,
    and the live rate-limit counters. `used` comes from the ledger (settled calls); the live quota counter
    also holds in-flight reservations."""
    from billing.services import subscription_get_or_create

    subscription = subscription_get_or_create(user=user)
    limits = effective_limits(subscription=subscription)
    start, end = subscription.current_period_start, subscription.current_period_end
    rows = (
        UsageRecord.objects.filter(user=user, created_at__gte=start, created_at__lt=end)
        .values("kind", "model")
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost"),
        )
        .order_by("kind", "model")
    )
    by_kind = {kind: _kind_totals() for kind in UsageRecord.Kind.values}
    by_model = []
    for row in rows:
        entry = {
            "model": row["model"],
            "kind": row["kind"],
            "requests": row["requests"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
            "cost": row["cost"],
        }
        by_model.append(entry)
        totals = by_kind[row["kind"]]
        for key in ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"):
            totals[key] += entry[key]
    used = sum(k["total_tokens"] for k in by_kind.values())
    cost = sum((k["cost"] for k in by_kind.values()), ZERO)
    quota = limits.monthly_token_quota
    percent = None if not quota else round(100 * used / quota, 1)
    warning_threshold = settings.BILLING_QUOTA_WARNING_PERCENT
    return {
        "plan": {
            "slug": subscription.plan.slug,
            "name": subscription.plan.name,
            "monthly_price": subscription.plan.monthly_price,
        },
        "status": subscription.status,
        "limits_from": limits.plan.slug if limits.plan is not None else None,
        "restricted": limits.restricted,
        "period": {"start": start, "end": end},
        "requests": sum(k["requests"] for k in by_kind.values()),
        "tokens": {"total": used, "by_kind": by_kind, "by_model": by_model},
        "cost": cost,
        "quota": quota,
        "used": used,
        "remaining": None if quota is None else max(0, quota - used),
        "percent_used": percent,
        "warning_80": quota is not None and (quota == 0 or used * 100 >= quota * warning_threshold),
        "exhausted": quota is not None and used >= quota,
        "limits": limits.as_dict() | {"chat_models": _allowed(limits)},
        "current": _live_counters(user=user, subscription=subscription, limits=limits, ledger_used=used),
    }


def _live_counters(*, user: User, subscription: Subscription, limits: EffectiveLimits,
                   ledger_used: int) -> dict | None:
    try:
        states = limiter.usage(
            counters.redis_client(),
            user_id=user.pk,
            limits=limiter_limits(subscription=subscription, limits=limits),
            config=counters.limiter_config(),
        )
    except RedisError:
        logger.warning("usage summary without live counters: Redis unavailable", exc_info=True)
        return None
    current = {}
    for name, state in states.items():
        # No counter yet this period (nothing reserved since it began): the ledger is the count.
        used = ledger_used if name == "quota" and state.counter_missing else state.used
        remaining = None if state.limit is None else max(0, state.limit - used)
        current[name] = {"limit": state.limit, "used": used, "remaining": remaining,
                         "reset_seconds": state.reset_seconds}
    return current


@dataclass(frozen=True)
class DailyUsage:
    day: date
    requests: int
    tokens: int
    cost: Decimal


def usage_daily(*, user: User, start: datetime, end: datetime) -> list[DailyUsage]:
    """One entry per UTC day from start to end (days without calls included, as zeros)."""
    rows = (
        UsageRecord.objects.filter(user=user, created_at__gte=start, created_at__lt=end)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(requests=Count("id"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")), cost=Sum("cost"))
    )
    found = {row["day"]: row for row in rows}
    days = []
    day, last = start.astimezone(UTC).date(), (end - timedelta(microseconds=1)).astimezone(UTC).date()
    while day <= last:
        row = found.get(day)
        days.append(
            DailyUsage(
                day=day,
                requests=row["requests"] if row else 0,
                tokens=int(row["tokens"]) if row else 0,
                cost=row["cost"] if row else ZERO,
            )
        )
        day += timedelta(days=1)
    return days


@dataclass
class MarginLine:
    name: str  # plan name, or the user's email
    plan: str
    subscribers: int = 0
    paying: int = 0
    revenue: Decimal = ZERO
    cost: Decimal = ZERO
    tokens: int = 0
    requests: int = 0

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def margin_percent(self) -> Decimal | None:
        if not self.revenue:
            return None
        return (100 * self.margin / self.revenue).quantize(Decimal("0.1"))


@dataclass
class MarginReport:
    month: date
    start: datetime
    end: datetime
    plans: list[MarginLine] = field(default_factory=list)
    users: list[MarginLine] = field(default_factory=list)  # everyone with revenue or cost, top spenders first
    total: MarginLine = field(default_factory=lambda: MarginLine(name="Total", plan=""))

    def top_spenders(self, limit: int = 20) -> list[MarginLine]:
        return [line for line in self.users if line.cost > 0][:limit]


def margin_report(*, month: date) -> MarginReport:
    """Revenue, LLM cost and margin for one calendar month (UTC), per plan and per user.

    Revenue is the plan's monthly price for each subscription that is active (trialing, past-due and canceled
    ones bring nothing in) and existed before the month ended. A user's cost counts towards their current
    plan: the ledger does not record which plan a call was made under.
    """
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = add_months(start, 1)
    report = MarginReport(month=start.date(), start=start, end=end)

    usage = {
        row["user"]: row
        for row in UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .values("user")
        .annotate(cost=Sum("cost"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")), requests=Count("id"))
    }
    plans = {plan.pk: MarginLine(name=plan.name, plan=plan.slug) for plan in Plan.objects.all()}
    users: list[MarginLine] = []
    subscriptions = Subscription.objects.filter(created_at__lt=end).select_related("plan", "user")
    seen = set()
    for subscription in subscriptions:
        seen.add(subscription.user_id)
        paying = subscription.status == Subscription.Status.ACTIVE
        line = MarginLine(name=subscription.user.email, plan=subscription.plan.slug, subscribers=1,
                          paying=int(paying), revenue=subscription.plan.monthly_price if paying else ZERO)
        _add_usage(line, usage.get(subscription.user_id))
        plan_line = plans[subscription.plan_id]
        _accumulate(plan_line, line)
        if line.revenue or line.cost or line.tokens:
            users.append(line)
    for user_id, row in usage.items():
        if user_id in seen:
            continue
        # Users deleted since (their records keep a NULL user) or never given a subscription.
        line = MarginLine(name="(deleted user)" if user_id is None else f"user #{user_id}", plan="")
        _add_usage(line, row)
        users.append(line)
        unassigned = plans.setdefault(-1, MarginLine(name="(no plan)", plan=""))
        _accumulate(unassigned, line)
    report.plans = [line for line in plans.values() if line.subscribers or line.cost or line.tokens]
    report.users = sorted(users, key=lambda line: (-line.cost, -line.tokens, line.name))
    for line in report.plans:
        _accumulate(report.total, line)
    return report


def _add_usage(line: MarginLine, row: dict | None) -> None:
    if row:
        line.cost += row["cost"] or ZERO
        line.tokens += int(row["tokens"] or 0)
        line.requests += row["requests"]


def _accumulate(into: MarginLine, line: MarginLine) -> None:
    into.subscribers += line.subscribers
    into.paying += line.paying
    into.revenue += line.revenue
    into.cost += line.cost
    into.tokens += line.tokens
    into.requests += line.requests
