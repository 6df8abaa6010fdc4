"""Per-user rate limits and token quota, shared by every web and worker process through Redis.

Every decision is one Lua script run (one round trip): it checks all limits against Redis server time and
records the request only if all of them pass, so concurrent processes cannot both squeeze into the last unit.

Limits (`Limits`; a limit of None is unlimited and untracked, 0 admits nothing, so that a misconfigured or
suspended plan fails closed):

- rpm / tpm: sliding-window logs over `window_seconds` (60 by default). A request admitted at t counts against
  both windows until t + window; tpm entries carry their token weight, so `retry_after` is the exact moment
  enough weight has left the window for the refused request to fit.
- concurrent_streams: one slot per streaming request, a sorted set scored by expiry. A slot lapses by itself
  `slot_ttl_seconds` after reserve (or after the last `heartbeat`), so a killed worker never leaks one.
- monthly_quota: a counter per billing period (`period_id`), expiring `period_margin_seconds` after
  `period_end`, so a new period starts from a new key.

`reserve` charges the worst case (prompt + max output tokens) to the tpm window and the quota; `settle`
replaces it by the actual count and frees the slot. With actual <= reserved the quota counter therefore never
exceeds `monthly_quota`, at any instant and under any interleaving. An actual above the reservation is still
recorded (the spend happened) and may overshoot.

The Postgres ledger is the source of truth for the quota. When a period's counter is missing (first request of
a period, Redis flushed or evicted) `reserve` records nothing and raises `QuotaCounterMissing`; the caller sums
the ledger and calls `reserve(..., quota_baseline=used)`, which creates the counter in the same atomic step
unless another process created it first::

    try:
        reservation = reserve(r, user_id=u, limits=limits, tokens=worst, request_id=rid)
    except QuotaCounterMissing:
        reservation = reserve(r, user_id=u, limits=limits, tokens=worst, request_id=rid,
                              quota_baseline=ledger_tokens(u, limits.period_id))

`rebuild_quota` overwrites a counter (reconciliation); settlements of reservations made before a rebuild add
their actual spend rather than subtracting a worst case the new counter never held.

`now` (epoch seconds or aware datetime) is for tests only: without it the scripts read Redis `TIME`.
Every function has an asyncio twin (`areserve`, ...) for `redis.asyncio.Redis`, running the same scripts.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from billing.limiter.headers import ratelimit_headers
from billing.limiter.scripts import HEARTBEAT, REBUILD, RESERVE, SETTLE

LimitName = Literal["rpm", "tpm", "concurrency", "quota"]
POLICIES: tuple[LimitName, ...] = ("rpm", "tpm", "concurrency", "quota")
Timestamp = datetime | float | int

_UNITS = {"rpm": "requests", "tpm": "tokens", "concurrency": "concurrent-requests", "quota": "tokens"}
# When several limits refuse with the same retry time, report the one the user can least work around.
_SEVERITY = {"quota": 3, "tpm": 2, "rpm": 1, "concurrency": 0}

_STATUS_REFUSED, _STATUS_ADMITTED, _STATUS_SETTLED, _STATUS_REPLAY, _STATUS_QUOTA_MISSING = range(5)


@dataclass(frozen=True)
class LimiterConfig:
    key_prefix: str = "docent:lim:"
    # A stream that neither settles nor heartbeats within this time is presumed dead and its slot lapses.
    slot_ttl_seconds: float = 120.0
    # How long a reservation is remembered, both to settle it and to make a second settle a no-op.
    reservation_ttl_seconds: float = 86_400.0
    # A period's counter outlives its end by this much so that late settlements still land in it.
    period_margin_seconds: float = 86_400.0
    # Slots free when streams end, which cannot be predicted: refused callers get this short polling hint.
    concurrency_retry_after: int = 1


DEFAULT_CONFIG = LimiterConfig()


def _ms(value: Timestamp) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetimes given to the limiter must be timezone-aware")
        return round(value.timestamp() * 1000)
    return round(float(value) * 1000)


def _ceil_seconds(ms: int) -> int:
    return max(0, math.ceil(ms / 1000))


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrent_streams: int | None = None
    monthly_quota: int | None = None
    # Identifies the billing period; with it the period's usage is counted even when monthly_quota is None.
    period_id: str | None = None
    period_end: Timestamp | None = None
    # Optional: only used to advertise the quota window (`w`) in RateLimit-Policy.
    period_start: Timestamp | None = None
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrent_streams", "monthly_quota"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
        if self.monthly_quota is not None and self.period_id is None:
            raise ValueError("monthly_quota needs a period_id")
        if self.period_id is not None and self.period_end is None:
            raise ValueError("period_id needs a period_end")
        if not self.window_seconds > 0:
            raise ValueError("window_seconds must be positive")

    @property
    def window_ms(self) -> int:
        return max(1, round(self.window_seconds * 1000))

    def _limit(self, name: LimitName) -> int | None:
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "concurrency": self.concurrent_streams,
            "quota": self.monthly_quota,
        }[name]

    def _window(self, name: LimitName) -> int | None:
        if name in ("rpm", "tpm"):
            return math.ceil(self.window_seconds)
        if name == "quota" and self.period_start is not None and self.period_end is not None:
            return _ceil_seconds(_ms(self.period_end) - _ms(self.period_start))
        return None


@dataclass(frozen=True)
class LimitState:
    name: LimitName
    limit: int | None  # None: unlimited
    used: int
    # Seconds until the oldest charge leaves the window (rpm, tpm), the period ends (quota), or the oldest
    # slot lapses on its own (concurrency; None when no slot is held).
    reset_seconds: int | None
    window_seconds: int | None
    unit: str
    counter_missing: bool = False  # quota only: no counter in Redis for this period (used is then 0)

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def as_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "used": self.used,
            "remaining": self.remaining,
            "reset_seconds": self.reset_seconds,
            "window_seconds": self.window_seconds,
            "unit": self.unit,
            **({"counter_missing": True} if self.counter_missing else {}),
        }


@dataclass(frozen=True)
class Reservation:
    user_id: str
    request_id: str
    tokens: int
    stream: bool
    holds_slot: bool
    period_id: str | None
    key_prefix: str
    slot_ttl_ms: int
    reservation_ttl_ms: int
    server_time_ms: int
    # True when the request id had already been admitted and not settled: nothing was charged again.
    replayed: bool
    states: Mapping[str, LimitState] = field(repr=False)

    def headers(self) -> dict[str, str]:
        return ratelimit_headers(self.states)


class LimiterError(Exception):
    pass


class LimitExceeded(LimiterError):
    """A refusal, with what an HTTP 429 needs. `limit` is the binding limit: the one whose retry time is
    longest, since the request passes only when all do; `violated` lists every limit that refused.
    `satisfiable` is False when the request can never pass as asked (more tokens than the tpm limit or the
    whole quota, a limit of 0): answer 400/402 rather than asking the client to retry."""

    def __init__(
        self,
        *,
        limit: LimitName,
        retry_after: int,
        retry_after_ms: int,
        limit_value: int,
        remaining: int,
        reset_seconds: int | None,
        satisfiable: bool,
        violated: tuple[LimitName, ...],
        states: Mapping[str, LimitState],
    ) -> None:
        super().__init__(f"{limit} limit exceeded (limit {limit_value}, remaining {remaining}); "
                         f"retry after {retry_after}s")
        self.limit = limit
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.limit_value = limit_value
        self.remaining = remaining
        self.reset_seconds = reset_seconds
        self.satisfiable = satisfiable
        self.violated = violated
        self.states = states

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after), **ratelimit_headers(self.states)}


class QuotaCounterMissing(LimiterError):
    """The period's counter is not in Redis: sum the ledger and retry with `quota_baseline`."""

    def __init__(self, *, user_id: str, period_id: str) -> None:
        super().__init__(f"no quota counter for user {user_id} period {period_id}")
        self.user_id = user_id
        self.period_id = period_id


class RequestAlreadySettled(LimiterError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} was already settled; use a new request id")
        self.request_id = request_id


def _user_key(prefix: str, user_id: int | str) -> str:
    user = str(user_id)
    if not user or "{" in user or "}" in user:
        raise ValueError(f"invalid user id {user_id!r}")
    # The hash tag keeps all of a user's keys in one Redis Cluster slot, as multi-key scripts require.
    return f"{prefix}{{u:{user}}}:"


def _quota_key(base: str, period_id: str | None) -> str:
    return f"{base}quota:{period_id or ''}"


def _check_request_id(request_id: str) -> None:
    if not request_id:
        raise ValueError("request_id must be a non-empty string")


class _ReserveCall:
    def __init__(
        self,
        *,
        user_id: int | str,
        limits: Limits,
        tokens: int,
        request_id: str,
        stream: bool,
        now: Timestamp | None,
        quota_baseline: int | None,
        config: LimiterConfig,
        peek: bool,
    ) -> None:
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        if quota_baseline is not None and quota_baseline < 0:
            raise ValueError("quota_baseline must be >= 0")
        _check_request_id(request_id)
        base = _user_key(config.key_prefix, user_id)
        self.user_id, self.limits, self.tokens, self.request_id = str(user_id), limits, tokens, request_id
        self.stream, self.config = stream, config
        self.keys = (
            f"{base}log",
            f"{base}log:total",
            f"{base}slots",
            _quota_key(base, limits.period_id),
            f"{base}res:{request_id}",
        )

        def limit(value: int | None) -> int:
            return -1 if value is None else value

        tracked = limits.period_id is not None
        numbers = (
            -1 if now is None else _ms(now),
            limits.window_ms,
            limit(limits.rpm),
            limit(limits.tpm),
            limit(limits.concurrent_streams),
            limit(limits.monthly_quota),
            1 if tracked else 0,
            tokens,
            1 if stream else 0,
            _ms(config.slot_ttl_seconds),
            _ms(limits.period_end) if tracked and limits.period_end is not None else 0,
            _ms(config.period_margin_seconds),
            -1 if quota_baseline is None else quota_baseline,
            _ms(config.reservation_ttl_seconds),
            1 if peek else 0,
        )
        self.args = (request_id, " ".join(map(str, numbers)))

    def states(self, reply: list[Any]) -> dict[str, LimitState]:
        values = [int(v) for v in reply]
        quota_missing = bool(values[2])
        states: dict[str, LimitState] = {}
        for index, name in enumerate(POLICIES):
            used, reset_ms = values[3 + 4 * index], values[4 + 4 * index]
            limit = self.limits._limit(name)
            if name == "concurrency":
                reset = _ceil_seconds(reset_ms) if used else None
            elif name == "quota":
                reset = _ceil_seconds(reset_ms) if self.limits.period_id is not None else None
            else:
                reset = _ceil_seconds(reset_ms)
            states[name] = LimitState(
                name=name,
                limit=limit,
                used=used,
                reset_seconds=reset,
                window_seconds=self.limits._window(name),
                unit=_UNITS[name],
                counter_missing=name == "quota" and quota_missing,
            )
        return states

    def reservation(self, reply: list[Any]) -> Reservation:
        status = int(reply[0])
        if status == _STATUS_SETTLED:
            raise RequestAlreadySettled(self.request_id)
        if status == _STATUS_QUOTA_MISSING:
            raise QuotaCounterMissing(user_id=self.user_id, period_id=str(self.limits.period_id))
        states = self.states(reply)
        if status == _STATUS_REFUSED:
            raise self._refusal(reply, states)
        return Reservation(
            user_id=self.user_id,
            request_id=self.request_id,
            tokens=self.tokens,
            stream=self.stream,
            holds_slot=self.stream and self.limits.concurrent_streams is not None,
            period_id=self.limits.period_id,
            key_prefix=self.config.key_prefix,
            slot_ttl_ms=_ms(self.config.slot_ttl_seconds),
            reservation_ttl_ms=_ms(self.config.reservation_ttl_seconds),
            server_time_ms=int(reply[1]),
            replayed=status == _STATUS_REPLAY,
            states=states,
        )

    def _refusal(self, reply: list[Any], states: dict[str, LimitState]) -> LimitExceeded:
        values = [int(v) for v in reply]
        failures: list[tuple[LimitName, int, bool]] = []
        for index, name in enumerate(POLICIES):
            if not values[5 + 4 * index]:
                continue
            retry_ms = values[6 + 4 * index]
            limit = self.limits._limit(name)
            assert limit is not None
            if name == "concurrency":
                retry_ms = self.config.concurrency_retry_after * 1000
                satisfiable = limit > 0
            elif name == "rpm":
                satisfiable = limit > 0
            else:
                satisfiable = self.tokens <= limit
            failures.append((name, retry_ms, satisfiable))
        unsatisfiable = [f for f in failures if not f[2]]
        pool = unsatisfiable or failures
        name, retry_ms, _ = max(pool, key=lambda f: (f[1], _SEVERITY[f[0]]))
        state = states[name]
        assert state.limit is not None and state.remaining is not None
        return LimitExceeded(
            limit=name,
            retry_after=max(1, _ceil_seconds(retry_ms)),
            retry_after_ms=retry_ms,
            limit_value=state.limit,
            remaining=state.remaining,
            reset_seconds=state.reset_seconds,
            satisfiable=not unsatisfiable,
            violated=tuple(f[0] for f in failures),
            states=states,
        )


def _settle_call(reservation: Reservation, actual_tokens: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    if actual_tokens < 0:
        raise ValueError("actual_tokens must be >= 0")
    base = _user_key(reservation.key_prefix, reservation.user_id)
    keys = (
        f"{base}log",
        f"{base}log:total",
        f"{base}slots",
        _quota_key(base, reservation.period_id),
        f"{base}res:{reservation.request_id}",
    )
    args = (
        reservation.request_id,
        actual_tokens,
        reservation.reservation_ttl_ms,
        1 if reservation.period_id is not None else 0,
    )
    return keys, args


def _heartbeat_call(reservation: Reservation, now: Timestamp | None) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    base = _user_key(reservation.key_prefix, reservation.user_id)
    keys = (f"{base}slots", f"{base}res:{reservation.request_id}")
    args = (
        reservation.request_id,
        -1 if now is None else _ms(now),
        reservation.slot_ttl_ms,
        reservation.reservation_ttl_ms,
    )
    return keys, args


def _rebuild_call(
    *,
    user_id: int | str,
    period_id: str,
    period_end: Timestamp,
    used_tokens: int,
    only_if_missing: bool,
    now: Timestamp | None,
    config: LimiterConfig,
) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    if used_tokens < 0:
        raise ValueError("used_tokens must be >= 0")
    keys = (_quota_key(_user_key(config.key_prefix, user_id), period_id),)
    args = (
        used_tokens,
        "r" + uuid.uuid4().hex,
        -1 if now is None else _ms(now),
        _ms(period_end),
        _ms(config.period_margin_seconds),
        1 if only_if_missing else 0,
    )
    return keys, args


def reserve(
    redis: Any,
    *,
    user_id: int | str,
    limits: Limits,
    tokens: int,
    request_id: str,
    stream: bool = True,
    now: Timestamp | None = None,
    quota_baseline: int | None = None,
    config: LimiterConfig = DEFAULT_CONFIG,
) -> Reservation:
    """Admit one request and charge `tokens` (its worst case) or raise `LimitExceeded`; one round trip.

    Raises `QuotaCounterMissing` (nothing recorded) when the period's counter is absent and no
    `quota_baseline` is given, and `RequestAlreadySettled` when `request_id` was used and settled before.
    Reserving an admitted, unsettled request id again returns it with `replayed=True` without charging twice.
    """
    call = _ReserveCall(user_id=user_id, limits=limits, tokens=tokens, request_id=request_id, stream=stream,
                        now=now, quota_baseline=quota_baseline, config=config, peek=False)
    return call.reservation(RESERVE(redis, call.keys, call.args))


def settle(redis: Any, *, reservation: Reservation, actual_tokens: int) -> bool:
    """Replace the reserved worst case by `actual_tokens` and free the slot. False if already settled."""
    keys, args = _settle_call(reservation, actual_tokens)
    return bool(int(SETTLE(redis, keys, args)[0]))


def release(redis: Any, *, reservation: Reservation) -> bool:
    """Settle a request that failed before producing any token."""
    return settle(redis, reservation=reservation, actual_tokens=0)


def heartbeat(redis: Any, *, reservation: Reservation, now: Timestamp | None = None) -> bool:
    """Push a long stream's slot expiry to now + slot ttl. False if the slot had already lapsed or been
    released: the stream is then running outside the concurrency limit and should stop."""
    if not reservation.holds_slot:
        return True
    keys, args = _heartbeat_call(reservation, now)
    return bool(int(HEARTBEAT(redis, keys, args)))


def usage(
    redis: Any,
    *,
    user_id: int | str,
    limits: Limits,
    now: Timestamp | None = None,
    config: LimiterConfig = DEFAULT_CONFIG,
) -> dict[str, LimitState]:
    """Current counters per limit ("rpm", "tpm", "concurrency", "quota"); charges nothing."""
    call = _ReserveCall(user_id=user_id, limits=limits, tokens=0, request_id="-", stream=False, now=now,
                        quota_baseline=None, config=config, peek=True)
    return call.states(RESERVE(redis, call.keys, call.args))


def rebuild_quota(
    redis: Any,
    *,
    user_id: int | str,
    period_id: str,
    period_end: Timestamp,
    used_tokens: int,
    only_if_missing: bool = False,
    now: Timestamp | None = None,
    config: LimiterConfig = DEFAULT_CONFIG,
) -> bool:
    """Set the period's counter to the ledger total `used_tokens`. With `only_if_missing` an existing counter
    is left alone (returns False), so racing rebuilders cannot erase each other's reservations."""
    keys, args = _rebuild_call(user_id=user_id, period_id=period_id, period_end=period_end,
                               used_tokens=used_tokens, only_if_missing=only_if_missing, now=now, config=config)
    return bool(int(REBUILD(redis, keys, args)))


async def areserve(
    redis: Any,
    *,
    user_id: int | str,
    limits: Limits,
    tokens: int,
    request_id: str,
    stream: bool = True,
    now: Timestamp | None = None,
    quota_baseline: int | None = None,
    config: LimiterConfig = DEFAULT_CONFIG,
) -> Reservation:
    call = _ReserveCall(user_id=user_id, limits=limits, tokens=tokens, request_id=request_id, stream=stream,
                        now=now, quota_baseline=quota_baseline, config=config, peek=False)
    return call.reservation(await RESERVE.run_async(redis, call.keys, call.args))


async def asettle(redis: Any, *, reservation: Reservation, actual_tokens: int) -> bool:
    keys, args = _settle_call(reservation, actual_tokens)
    return bool(int((await SETTLE.run_async(redis, keys, args))[0]))


async def arelease(redis: Any, *, reservation: Reservation) -> bool:
    return await asettle(redis, reservation=reservation, actual_tokens=0)


async def aheartbeat(redis: Any, *, reservation: Reservation, now: Timestamp | None = None) -> bool:
    if not reservation.holds_slot:
        return True
    keys, args = _heartbeat_call(reservation, now)
    return bool(int(await HEARTBEAT.run_async(redis, keys, args)))


async def ausage(
    redis: Any,
    *,
    user_id: int | str,
    limits: Limits,
    now: Timestamp | None = None,
    config: LimiterConfig = DEFAULT_CONFIG,
) -> dict[str, LimitState]:
    call = _ReserveCall(user_id=user_id, limits=limits, tokens=0, request_id="-", stream=False, now=now,
                        quota_baseline=None, config=config, peek=True)
    return call.states(await RESERVE.run_async(redis, call.keys, call.args))


async def arebuild_quota(
    redis: Any,
    *,
    user_id: int | str,
    period_id: str,
    period_end: Timestamp,
    used_tokens: int,
    only_if_missing: bool = False,
    now: Timestamp | None = None,
    config: LimiterConfig = DEFAULT_CONFIG,
) -> bool:
    keys, args = _rebuild_call(user_id=user_id, period_id=period_id, period_end=period_end,
                               used_tokens=used_tokens, only_if_missing=only_if_missing, now=now, config=config)
    return bool(int(await REBUILD.run_async(redis, keys, args)))
