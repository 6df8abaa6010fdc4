"""Billing's write side: subscriptions, the usage ledger, and the limits every LLM call and upload passes.

The ledger (UsageRecord, Postgres) is the source of truth; the Redis counters are a fast, rebuildable view of
it. An LLM call is `llm_reserve` (its worst case: prompt + max_tokens) -> the call -> `llm_settle` (the actual
tokens; writes the ledger row, then settles Redis) or `llm_release` (failed before any token: nothing charged).
Call `llm_settle` outside any transaction the caller might roll back: Redis cannot be rolled back with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, TypeVar

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from billing import counters, limiter
from billing.exceptions import (
    BillingError,
    BillingNotConfigured,
    LimiterUnavailable,
    ModelNotAllowed,
    PlanNotFound,
    UnknownModel,
    UploadLimitExceeded,
)
from billing.limiter import LimitExceeded, QuotaCounterMissing, Reservation
from billing.models import ModelPrice, Plan, Subscription, UsageRecord
from billing.periods import period_containing
from billing.selectors import (
    EffectiveLimits,
    effective_limits,
    ledger_tokens,
    limiter_limits,
    plan_default,
    plan_get,
    price_at,
    priced_models,
)

if TYPE_CHECKING:
    from accounts.models import User

__all__ = [
    "BillingError",
    "BillingNotConfigured",
    "LimitExceeded",
    "LimiterUnavailable",
    "ModelNotAllowed",
    "PlanNotFound",
    "UnknownModel",
    "UploadLimitExceeded",
    "catalog_ensure",
    "limits_cache_clear",
    "limits_check_upload",
    "llm_heartbeat",
    "llm_heartbeat_async",
    "llm_release",
    "llm_reserve",
    "llm_settle",
    "quota_check",
    "quota_rebuild",
    "subscription_assign_plan",
    "subscription_get_or_create",
    "usage_record",
]

logger = logging.getLogger(__name__)

MB = 1024 * 1024
COST_QUANTUM = Decimal("0.00000001")
PER_MILLION = Decimal(1_000_000)


def _utc_now() -> datetime:
    return timezone.now().astimezone(UTC)


def catalog_ensure() -> None:
    """A fresh database (no `manage.py seed` yet, or a test database) gets the seeded plans and prices the
    first time a user needs a plan. An installation whose admins removed the default flag is left alone."""
    if Plan.objects.exists():
        return
    from billing.seeds import seed_catalog

    logger.warning("no billing plans in the database: seeding the default catalogue")
    seed_catalog()


def subscription_create_default(*, user: User) -> Subscription | None:
    """Puts a new user on the default plan; None when no default plan is configured (yet)."""
    plan = plan_default()
    if plan is None:
        return None
    return _subscription_create(user=user, plan=plan)


def _subscription_create(*, user: User, plan: Plan) -> Subscription:
    now = _utc_now()
    start, end = period_containing(anchor=now, moment=now)
    subscription, _ = Subscription.objects.select_related("plan").get_or_create(
        user=user,
        defaults={"plan": plan, "period_anchor": now, "current_period_start": start, "current_period_end": end},
    )
    return subscription


def subscription_get_or_create(*, user: User) -> Subscription:
    """The user's subscription with its current period: created on the default plan if missing, and moved to
    the period holding now if the stored one has ended (quotas reset at that boundary)."""
    subscription = Subscription.objects.select_related("plan").filter(user=user).first()
    if subscription is None:
        catalog_ensure()
        plan = plan_default()
        if plan is None:
            raise BillingNotConfigured("No default plan is configured: an admin has to mark one plan as default.")
        subscription = _subscription_create(user=user, plan=plan)
    if subscription.current_period_end <= timezone.now():
        subscription = _period_advance(subscription=subscription)
    return subscription


def _period_advance(*, subscription: Subscription) -> Subscription:
    now = _utc_now()
    old_end = subscription.current_period_end
    start, end = period_containing(anchor=subscription.period_anchor.astimezone(UTC), moment=now)
    # An anchor edited out of step with the stored period must not open a period overlapping the last one.
    start = max(start, old_end)
    if end <= start:
        start, end = period_containing(anchor=old_end.astimezone(UTC), moment=now)
    # Conditional: racing processes compute the same period, and only the first write lands.
    Subscription.objects.filter(pk=subscription.pk, current_period_end=old_end).update(
        current_period_start=start, current_period_end=end, updated_at=timezone.now()
    )
    limits_cache_clear(user_id=subscription.user_id)
    subscription.refresh_from_db()
    return subscription


@transaction.atomic
def subscription_assign_plan(
    *, user: User, plan_slug: str, status: str = Subscription.Status.ACTIVE
) -> Subscription:
    """An admin's or the CLI's plan change: takes effect at once and keeps the current period (and the
    tokens already used in it). Inactive plans can be assigned: they are only hidden from the plan page."""
    catalog_ensure()
    plan = plan_get(slug=plan_slug)
    if plan is None:
        slugs = ", ".join(Plan.objects.values_list("slug", flat=True)) or "none"
        raise PlanNotFound(f"There is no plan {plan_slug!r} (plans: {slugs}).")
    subscription = Subscription.objects.select_for_update().filter(user=user).first()
    if subscription is None:
        subscription = _subscription_create(user=user, plan=plan)
    subscription.plan = plan
    subscription.status = status
    subscription.save(update_fields=["plan", "status", "updated_at"])
    return subscription


def _current(user: User) -> tuple[Subscription, EffectiveLimits]:
    subscription = subscription_get_or_create(user=user)
    return subscription, effective_limits(subscription=subscription)


# ---- What every LLM call reads before it is admitted, kept briefly per process.
# A chat question would otherwise pay two queries (the subscription with its plan, the model's price) before
# the limiter's one Redis round trip: most of the admission's cost, on the path to the first token. The
# limits themselves are still enforced by the limiter's counters; what may be stale, for at most
# BILLING_LIMITS_CACHE_SECONDS, is which limits apply. A change saved through the ORM (plan assignment,
# Stripe webhook, admin edits) clears this process' copies at once; other processes pick it up when theirs
# lapse. A period boundary is never crossed with a stale copy.


T = TypeVar("T")


@dataclass(frozen=True)
class _Cached:
    expires: float  # time.monotonic()
    value: object


_admissions: dict[int, _Cached] = {}  # user id -> (Subscription, EffectiveLimits)
_price_rows: dict[str, _Cached] = {}  # model -> its ModelPrice rows, newest first
_cache_lock = threading.Lock()
# Bumped by every clear: a copy read before a clear (an admission racing a plan change) is not stored after it.
_cache_generation = 0


def _cache_seconds() -> float:
    return float(settings.BILLING_LIMITS_CACHE_SECONDS)


def _cached(store: dict, key: object, load: Callable[[], T], *, usable: Callable[[T], bool] | None = None) -> T:
    """`load()` through this process' copy in `store`, kept `BILLING_LIMITS_CACHE_SECONDS` (`usable` can refuse
    a copy before then). A copy read before a clear is not stored after it."""
    ttl = _cache_seconds()
    if ttl <= 0:
        return load()
    cached = store.get(key)
    if cached is not None and cached.expires > time.monotonic() and (usable is None or usable(cached.value)):
        return cached.value
    generation = _cache_generation
    value = load()
    with _cache_lock:
        if generation == _cache_generation:
            store[key] = _Cached(time.monotonic() + ttl, value)
    return value


def _admission(user: User) -> tuple[Subscription, EffectiveLimits]:
    # A copy never crosses the end of its period.
    return _cached(_admissions, user.pk, lambda: _current(user),
                   usable=lambda admission: admission[0].current_period_end > timezone.now())


def _price_at(*, model: str, at: datetime) -> ModelPrice | None:
    """`price_at` through the per-process copy of the model's price rows (exact for rows dated ahead)."""
    if _cache_seconds() <= 0:
        return price_at(model=model, at=at)
    rows = _cached(_price_rows, model, lambda: list(ModelPrice.objects.filter(model=model).order_by("-effective_from")))
    return next((row for row in rows if row.effective_from <= at), None)


def limits_cache_clear(*, user_id: int | None = None) -> None:
    """Forget this process' copies: one user's admission, or everything (plans and prices changed)."""
    global _cache_generation
    with _cache_lock:
        _cache_generation += 1
        if user_id is None:
            _admissions.clear()
            _price_rows.clear()
        else:
            _admissions.pop(user_id, None)


# Cleared when the row is saved and again when its transaction commits: in between, an admission elsewhere in
# the process may still read (and cache) the committed, older row.
def _subscription_changed(sender: type, instance: Subscription, **kwargs: object) -> None:
    limits_cache_clear(user_id=instance.user_id)
    transaction.on_commit(lambda: limits_cache_clear(user_id=instance.user_id))


def _catalogue_changed(sender: type, instance: object, **kwargs: object) -> None:
    limits_cache_clear()
    transaction.on_commit(limits_cache_clear)


for _signal in (post_save, post_delete):
    _signal.connect(_subscription_changed, sender=Subscription, dispatch_uid=f"billing.cache.subscription.{_signal}")
    _signal.connect(_catalogue_changed, sender=Plan, dispatch_uid=f"billing.cache.plan.{_signal}")
    _signal.connect(_catalogue_changed, sender=ModelPrice, dispatch_uid=f"billing.cache.price.{_signal}")


def limits_check_upload(*, user: User, size_bytes: int, document_count: int, storage_bytes: int) -> None:
    """Raises UploadLimitExceeded (413 file size, 403 document count or storage) unless a file of
    `size_bytes` may be added to the user's `document_count` documents holding `storage_bytes`."""
    subscription, limits = _current(user)
    plan = limits.plan.name if limits.plan is not None else subscription.plan.name
    if limits.max_file_size_mb is not None and size_bytes > limits.max_file_size_mb * MB:
        raise UploadLimitExceeded(
            status_code=413,
            code="file_too_large",
            message=f"This file is {_mb(size_bytes)}; the {plan} plan accepts files up to "
                    f"{limits.max_file_size_mb} MB. Split it or upgrade your plan.",
        )
    if limits.max_documents is not None and document_count + 1 > limits.max_documents:
        raise UploadLimitExceeded(
            status_code=403,
            code="document_limit",
            message=f"You have {document_count} documents, the most the {plan} plan allows "
                    f"({limits.max_documents}). Delete some or upgrade your plan.",
        )
    if limits.max_storage_mb is not None and storage_bytes + size_bytes > limits.max_storage_mb * MB:
        raise UploadLimitExceeded(
            status_code=403,
            code="storage_limit",
            message=f"Your documents use {_mb(storage_bytes)} of the {limits.max_storage_mb} MB the {plan} plan "
                    f"allows, and this file needs {_mb(size_bytes)} more. Delete some or upgrade your plan.",
        )


def _mb(size: int) -> str:
    return f"{size / MB:.1f} MB"


def _limiter_states(*, user: User, subscription: Subscription, limits: EffectiveLimits) -> dict:
    """Live counters; a missing quota counter is first rebuilt from the ledger."""
    redis, config = counters.redis_client(), counters.limiter_config()
    lim = limiter_limits(subscription=subscription, limits=limits)
    states = limiter.usage(redis, user_id=user.pk, limits=lim, config=config)
    if states["quota"].counter_missing:
        used = ledger_tokens(user=user, start=subscription.current_period_start, end=subscription.current_period_end)
        limiter.rebuild_quota(redis, user_id=user.pk, period_id=subscription.period_id,
                              period_end=subscription.current_period_end, used_tokens=used, only_if_missing=True,
                              config=config)
        states = limiter.usage(redis, user_id=user.pk, limits=lim, config=config)
    return states


def quota_check(*, user: User, tokens: int = 0) -> None:
    """Raises LimitExceeded("quota") when the monthly quota is used up, or cannot hold `tokens` more.
    Charges nothing: for work whose size is known only roughly in advance (ingestion, embedding)."""
    subscription, limits = _current(user)
    if limits.monthly_token_quota is None:
        return
    try:
        states = _limiter_states(user=user, subscription=subscription, limits=limits)
    except RedisError as exc:
        raise LimiterUnavailable() from exc
    quota = states["quota"]
    if quota.used + tokens <= quota.limit and quota.used < quota.limit:
        return
    reset = quota.reset_seconds or 0
    raise LimitExceeded(
        limit="quota",
        retry_after=max(1, reset),
        retry_after_ms=reset * 1000,
        limit_value=quota.limit,
        remaining=quota.remaining,
        reset_seconds=quota.reset_seconds,
        satisfiable=tokens <= quota.limit,
        violated=("quota",),
        states=states,
    )


def llm_reserve(
    *, user: User, model: str, prompt_tokens: int, max_tokens: int, request_id: str, stream: bool = True
) -> Reservation:
    """Admits one LLM call and charges its worst case (prompt + max_tokens) against every limit, atomically
    across processes. Raises ModelNotAllowed, LimitExceeded (nothing charged), or LimiterUnavailable when Redis
    cannot be reached (fails closed)."""
    subscription, limits = _admission(user)
    price = _price_at(model=model, at=timezone.now()) if model in limits.chat_models else None
    if price is None or price.kind != ModelPrice.Kind.CHAT:
        plan = limits.plan.name if limits.plan is not None else subscription.plan.name
        priced = priced_models(kind=ModelPrice.Kind.CHAT)
        raise ModelNotAllowed(model=model, plan=plan, allowed=[m for m in limits.chat_models if m in priced])
    lim = limiter_limits(subscription=subscription, limits=limits)
    return _reserve(user=user, subscription=subscription, lim=lim, tokens=prompt_tokens + max_tokens,
                    request_id=request_id, stream=stream)


def embedding_reserve(*, user: User, tokens: int, request_id: str) -> Reservation:
    """Admits an embedding call of a known size against the monthly quota, atomically across processes, and
    charges it (settle with `llm_settle(kind="embedding")`, or `llm_release` if it fails). A check followed by
    a later record let parallel calls all pass against the same remaining quota. The per-minute budgets and
    stream slots stay chat's, as for ingestion."""
    subscription, limits = _admission(user)
    lim = dataclasses.replace(limiter_limits(subscription=subscription, limits=limits),
                              rpm=None, tpm=None, concurrent_streams=None)
    return _reserve(user=user, subscription=subscription, lim=lim, tokens=tokens, request_id=request_id,
                    stream=False)


def _reserve(
    *, user: User, subscription: Subscription, lim: limiter.Limits, tokens: int, request_id: str, stream: bool
) -> Reservation:
    try:
        return _reserve_in_redis(user=user, subscription=subscription, lim=lim, tokens=tokens,
                                 request_id=request_id, stream=stream)
    except RedisError as exc:
        logger.error("limiter unavailable, refusing %s: %s", request_id, exc)
        raise LimiterUnavailable() from exc


def _reserve_in_redis(
    *, user: User, subscription: Subscription, lim: limiter.Limits, tokens: int, request_id: str, stream: bool
) -> Reservation:
    redis, config = counters.redis_client(), counters.limiter_config()
    try:
        return limiter.reserve(redis, user_id=user.pk, limits=lim, tokens=tokens, request_id=request_id,
                               stream=stream, config=config)
    except QuotaCounterMissing:
        # First call of the period, or Redis lost the counter: start it from the ledger, atomically with this
        # reservation (a racing process that created it first wins and its counter is used instead).
        used = ledger_tokens(user=user, start=subscription.current_period_start, end=subscription.current_period_end)
        return limiter.reserve(redis, user_id=user.pk, limits=lim, tokens=tokens, request_id=request_id,
                               stream=stream, config=config, quota_baseline=used)


def llm_heartbeat(*, reservation: Reservation) -> bool:
    """Keeps a long stream's concurrency slot alive; False if it had already lapsed (the stream should stop)."""
    return limiter.heartbeat(counters.redis_client(), reservation=reservation)


async def llm_heartbeat_async(*, reservation: Reservation) -> bool:
    """`llm_heartbeat` for a caller on an event loop (an llm worker's streams), without a thread hop."""
    return await limiter.aheartbeat(_async_redis(), reservation=reservation)


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis] = weakref.WeakKeyDictionary()


def _async_redis() -> AsyncRedis:
    """The running loop's client: asyncio connections belong to the loop that opened them."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = AsyncRedis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30,
            driver_info=None,  # no CLIENT SETINFO round trip (and metadata read) per new connection
        )
    return client


def llm_release(*, reservation: Reservation) -> None:
    """The call failed before producing any token: nothing is charged and the slot is freed."""
    try:
        limiter.release(counters.redis_client(), reservation=reservation)
    except RedisError:
        # The slot lapses by itself; the quota keeps the worst case until the next rebuild (the safe side).
        logger.exception("could not release reservation %s", reservation.request_id)


def llm_settle(
    *,
    reservation: Reservation | None,
    user: User,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: int,
    request_id: str,
    message_id: int | None = None,
    kind: str = UsageRecord.Kind.CHAT,
) -> UsageRecord:
    """Records the call in the ledger (once per request_id: a repeat returns the first row) and settles the
    limiter to what was really spent. A cancelled or broken stream is settled with the tokens generated so far.
    Without a reservation (lost by a restarted worker) the tokens are added to the quota like usage_record's."""
    started = _reservation_time(reservation)
    record, created = _ledger_write(
        user=user, kind=kind, model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        latency_ms=latency_ms, request_id=request_id, message_id=message_id, document_id=None, priced_at=started,
    )
    try:
        if reservation is not None:
            # Settled with the ledger's count, so that a repeated settle cannot disagree with the ledger.
            limiter.settle(counters.redis_client(), reservation=reservation, actual_tokens=record.total_tokens)
        elif created:
            _quota_add(user=user, tokens=record.total_tokens, request_id=request_id)
    except RedisError:
        # The ledger row is written, which is what matters; the counter is reconciled by the next rebuild.
        logger.exception("could not settle %s in Redis", request_id)
    return record


def _reservation_time(reservation: Reservation | None) -> datetime:
    if reservation is not None and reservation.server_time_ms:
        return datetime.fromtimestamp(reservation.server_time_ms / 1000, tz=UTC)
    return _utc_now()


def usage_record(
    *,
    user: User,
    kind: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int = 0,
    latency_ms: int = 0,
    request_id: str,
    message_id: int | None = None,
    document_id: int | None = None,
) -> UsageRecord:
    """Records a call made without a reservation (embeddings): a ledger row priced at the current ModelPrice,
    once per request_id, and its tokens added to the period's quota counter. Never refused: check
    `quota_check` before doing the work."""
    record, created = _ledger_write(
        user=user, kind=kind, model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        latency_ms=latency_ms, request_id=request_id, message_id=message_id, document_id=document_id,
        priced_at=_utc_now(),
    )
    if created:
        try:
            _quota_add(user=user, tokens=record.total_tokens, request_id=request_id)
        except RedisError:
            logger.exception("could not count %s in Redis", request_id)
    return record


def _quota_add(*, user: User, tokens: int, request_id: str) -> None:
    """Adds already-spent tokens to the period counter only: embedding batches must not consume the per-minute
    budgets that keep chat responsive."""
    subscription = subscription_get_or_create(user=user)
    lim = limiter.Limits(
        period_id=subscription.period_id,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
    )
    redis, config = counters.redis_client(), counters.limiter_config()
    try:
        reservation = limiter.reserve(redis, user_id=user.pk, limits=lim, tokens=tokens, request_id=request_id,
                                      stream=False, config=config)
    except QuotaCounterMissing:
        # The ledger already holds this call, so the counter starts from the ledger total; a process that
        # created the counter meanwhile keeps its own (only_if_missing).
        used = ledger_tokens(user=user, start=subscription.current_period_start, end=subscription.current_period_end)
        limiter.rebuild_quota(redis, user_id=user.pk, period_id=subscription.period_id,
                              period_end=subscription.current_period_end, used_tokens=used, only_if_missing=True,
                              config=config)
        return
    except limiter.RequestAlreadySettled:
        return
    limiter.settle(redis, reservation=reservation, actual_tokens=tokens)


def _cost(price: ModelPrice | None, prompt_tokens: int, completion_tokens: int) -> Decimal:
    if price is None:
        return Decimal(0)
    cost = (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / PER_MILLION
    return cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


def _ledger_write(
    *,
    user: User,
    kind: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: int,
    request_id: str,
    message_id: int | None,
    document_id: int | None,
    priced_at: datetime,
) -> tuple[UsageRecord, bool]:
    if kind not in UsageRecord.Kind.values:
        raise ValueError(f"unknown usage kind {kind!r}")
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts cannot be negative")
    price = _price_at(model=model, at=priced_at)
    if price is None:
        # The call happened and is recorded; an operator sees the unpriced model in the admin.
        logger.error("no price for model %r at %s: usage %s recorded at cost 0", model, priced_at, request_id)
    # A repeated request id (a redelivered task settling again) is the rare case: the row is inserted
    # straight away and the unique request_id turns a repeat into the first row. Outside a transaction
    # that is one round trip; inside one, a savepoint keeps the caller's transaction usable.
    guard = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with guard:
            record = UsageRecord.objects.create(
                user=user,
                kind=kind,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=_cost(price, prompt_tokens, completion_tokens),
                price=price,
                latency_ms=max(0, math.ceil(latency_ms)),
                request_id=request_id,
                message_id=message_id,
                document_id=document_id,
            )
    except IntegrityError:
        existing = UsageRecord.objects.filter(request_id=request_id).first()
        if existing is None:
            raise
        return existing, False
    return record, True


def quota_rebuild(*, user: User) -> int:
    """Resets the user's current quota counter to the ledger total (reconciliation); returns that total."""
    subscription = subscription_get_or_create(user=user)
    used = ledger_tokens(user=user, start=subscription.current_period_start, end=subscription.current_period_end)
    limiter.rebuild_quota(counters.redis_client(), user_id=user.pk, period_id=subscription.period_id,
                          period_end=subscription.current_period_end, used_tokens=used,
                          config=counters.limiter_config())
    return used
