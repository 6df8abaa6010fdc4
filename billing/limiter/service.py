"""Per-user rate limits and token quota, shared by every web and worker process through Redis.

Every decision is one Lua script run (one round trip): it checks all limits against Redis server time and
records the request only if all of them pass, so concurrent processes cannot both squeeze into the last unit.

Limits (`Limits`; a limit of None is unlimited and untracked, 0 admits nothing, so that a misconfigured or
suspended plan fails closed):

- rpm / tpm: sliding-window logs over `window_seconds` (60 by default). A request admitted at t counts against
  both windows until t + window; tpm entries carry their token weight, so `retry_after` is the exact moment
  enough weight has left the window for the refused request to fit.
  A request counts against rpm even if it is later released without producing a token, so that retry
  storms stay limited.
- concurrent_streams: one slot per streaming request (`stream=True`), a sorted set scored by expiry. A slot
  lapses by itself `slot_ttl_seconds` after reserve (or after the last `heartbeat`), so a killed worker never
  leaks one. All processes must use the same slot ttl (the set's key expiry follows the newest slot).
- monthly_quota: a counter per billing period (`period_id`), expiring `period_margin_seconds` after
  `period_end`, so a new period starts from a new key. With a `period_id` the period's usage is counted even
  when `monthly_quota` is None (for /usage); without one nothing is.

`reserve` charges the worst case (prompt + max output tokens) to the tpm window and the quota; `settle`
replaces it by the actual count and frees the slot; `release` settles with 0. With actual <= reserved the
quota counter never exceeds `monthly_quota`, at any instant and under any interleaving: the script admits only
if used + worst case <= quota and settling can only lower the counter. An actual above the reservation is
still recorded (the spend happened) and may overshoot. Settling is idempotent per `request_id`: a tombstone
is kept for `settled_ttl_seconds`, and after it expired a duplicate settle still changes nothing unless the
counter was rebuilt in between. A reservation never settled keeps its worst case charged (the safe side)
until the ledger reconciles it with `rebuild_quota`. Request ids must be unique (uuid4); reserving an
admitted, unsettled id again replays it without charging twice.

The Postgres ledger is the source of truth for the quota. When a period's counter is missing (first request
of a period, Redis flushed or evicted) `reserve` records nothing and raises `QuotaCounterMissing`; the caller
sums the ledger and calls `reserve(..., quota_baseline=used)`, which creates the counter in the same atomic
step unless another process created it first::

    try:
        reservation = reserve(r, user_id=u, limits=limits, tokens=worst, request_id=rid)
    except QuotaCounterMissing:
        reservation = reserve(r, user_id=u, limits=limits, tokens=worst, request_id=rid,
                              quota_baseline=ledger_tokens(u, limits.period_id))

`rebuild_quota` overwrites a counter (reconciliation). Each counter has a generation: settlements of
reservations charged to an earlier one (before a rebuild or a Redis flush) add their actual spend rather than
subtracting a worst case the new counter never held. Between a flush and the settlement of requests that
were in flight, their worst cases are not held by the counter, so admissions can briefly overshoot by them.

`now` (epoch seconds or aware datetime) is for tests only: without it the scripts read Redis `TIME`.
Every function has an asyncio twin (`areserve`, ...) for `redis.asyncio.Redis`, running the same scripts.
"""

from __future__ import annotations

import math
import secrets
import struct
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any, Literal, NamedTuple

from billing.limiter.headers import ratelimit_headers
from billing.limiter.scripts import HEARTBEAT, REBUILD, RESERVE, SETTLE

LimitName = Literal["rpm", "tpm", "concurrency", "quota"]
POLICIES: tuple[LimitName, ...] = ("rpm", "tpm", "concurrency", "quota")
Timestamp = datetime | float | int

# When several limits refuse with the same retry time, report the one the user can least work around.
_SEVERITY = {"quota": 3, "tpm": 2, "rpm": 1, "concurrency": 0}

# Redis Lua prints numbers with 14 significant digits: larger amounts would come back rounded.
MAX_AMOUNT = 10**13

_STATUS_REFUSED, _STATUS_ADMITTED, _STATUS_SETTLED, _STATUS_REPLAY, _STATUS_QUOTA_MISSING = range(5)


@dataclass(frozen=True)
class LimiterConfig:
    key_prefix: str = "docent:lim:"
    # A stream that neither settles nor heartbeats within this time is presumed dead and its slot lapses.
    slot_ttl_seconds: float = 120.0
    # How long an unsettled reservation is remembered (so that it can still be settled), and how long a
    # settled one is (so that a second settle is a no-op): every request holds a small key for that long.
    reservation_ttl_seconds: float = 86_400.0
    settled_ttl_seconds: float = 3_600.0
    # A period's counter outlives its end by this much so that late settlements still land in it.
    period_margin_seconds: float = 86_400.0
    # Slots free when streams end, which cannot be predicted: refused callers get this short polling hint.
    concurrency_retry_after: int = 1

    def __post_init__(self) -> None:
        if "{" in self.key_prefix or "}" in self.key_prefix:
            raise ValueError("key_prefix must not contain braces: they would break the per-user hash tag")
        ttls = (self.slot_ttl_seconds, self.reservation_ttl_seconds, self.settled_ttl_seconds)
        if min(ttls) <= 0 or self.period_margin_seconds < 0:
            raise ValueError("ttls must be positive")


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
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value <= MAX_AMOUNT):
                raise ValueError(f"{name} must be an int in [0, {MAX_AMOUNT}] or None, got {value!r}")
        if self.monthly_quota is not None and self.period_id is None:
            raise ValueError("monthly_quota needs a period_id")
        if self.period_id is not None and self.period_end is None:
            raise ValueError("period_id needs a period_end")
        if not self.window_seconds > 0:
            raise ValueError("window_seconds must be positive")

    @property
    def window_ms(self) -> int:
        return max(1, round(self.window_seconds * 1000))

    @property
    def quota_window_seconds(self) -> int | None:
        if self.period_start is None or self.period_end is None:
            return None
        return _ceil_seconds(_ms(self.period_end) - _ms(self.period_start))

    def limit_of(self, name: LimitName) -> int | None:
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "concurrency": self.concurrent_streams,
            "quota": self.monthly_quota,
        }[name]


class LimitState(NamedTuple):
    name: LimitName
    limit: int | None  # None: unlimited
    used: int
    # Seconds until the oldest charge leaves the window (rpm, tpm), the period ends (quota), or the oldest
    # slot lapses on its own (concurrency: only reported on refusals and by usage(), else None).
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


def _states(limits: Limits, values: tuple[int, ...]) -> dict[str, LimitState]:
    """Reply layout (see reserve.lua): status, now, quota missing, then used/reset ms/failed/retry ms for
    rpm, tpm, concurrency and quota."""
    window = math.ceil(limits.window_seconds)
    rpm_used, log_reset, tpm_used = values[3], values[4], values[7]
    slots_used, slot_reset, quota_used, quota_reset = values[11], values[12], values[15], values[16]
    tracked = limits.period_id is not None
    return {
        "rpm": LimitState("rpm", limits.rpm, rpm_used, _ceil_seconds(log_reset), window, "requests"),
        "tpm": LimitState("tpm", limits.tpm, tpm_used, _ceil_seconds(log_reset), window, "tokens"),
        "concurrency": LimitState("concurrency", limits.concurrent_streams, slots_used,
                                  _ceil_seconds(slot_reset) if slot_reset > 0 else None, None,
                                  "concurrent-requests"),
        "quota": LimitState("quota", limits.monthly_quota, quota_used,
                            _ceil_seconds(quota_reset) if tracked else None, limits.quota_window_seconds,
                            "tokens", bool(values[2])),
    }


@dataclass(frozen=True)
class Reservation:
    user_id: str
    request_id: str
    tokens: int
    stream: bool
    limits: Limits
    config: LimiterConfig = field(repr=False)
    server_time_ms: int = 0
    # True when the request id had already been admitted and not settled: nothing was charged again.
    replayed: bool = False
    # The quota counter incarnation charged (0: none); lets settle tell a rebuilt counter from the same one.
    quota_gen: int = 0
    reply: tuple[int, ...] = field(default=(), repr=False)

    @property
    def holds_slot(self) -> bool:
        return self.stream and self.limits.concurrent_streams is not None

    @property
    def period_id(self) -> str | None:
        return self.limits.period_id

    @cached_property
    def states(self) -> dict[str, LimitState]:
        """Counters right after this admission, for headers. Built on first use: most callers never look."""
        return _states(self.limits, self.reply)

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


_REQUEST_ARGS = struct.Struct("<6q")
_PLAN_ARGS = struct.Struct("<10q")
_replies_decoded: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=4096)
def _plan_args(limits: Limits, config: LimiterConfig) -> bytes:
    """The part of reserve's packed argument that depends only on the plan and the configuration."""

    def limit(value: int | None) -> int:
        return -1 if value is None else value

    tracked = limits.period_id is not None
    return _PLAN_ARGS.pack(
        limits.window_ms,
        limit(limits.rpm),
        limit(limits.tpm),
        limit(limits.concurrent_streams),
        limit(limits.monthly_quota),
        1 if tracked else 0,
        _ms(config.slot_ttl_seconds),
        _ms(limits.period_end) if tracked and limits.period_end is not None else 0,
        _ms(config.period_margin_seconds),
        _ms(config.reservation_ttl_seconds),
    )


def _decodes_replies(client: Any) -> bool:
    """Whether the client turns bulk replies into str (decode_responses=True), which binary replies break."""
    try:
        return _replies_decoded[client]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable: ask every time
        return bool(getattr(client.get_encoder(), "decode_responses", True))
    decoded = bool(getattr(client.get_encoder(), "decode_responses", True))
    _replies_decoded[client] = decoded
    return decoded


def _unpack_reply(reply: Any) -> tuple[int, ...]:
    if isinstance(reply, bytes):
        return struct.unpack(f"<{len(reply) // 8}q", reply)
    return tuple(map(int, reply.split()))


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
        binary: bool,
    ) -> None:
        if not 0 <= tokens <= MAX_AMOUNT:
            raise ValueError(f"tokens must be in [0, {MAX_AMOUNT}]")
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
        self.binary = binary
        request = _REQUEST_ARGS.pack(
            -1 if now is None else _ms(now),
            tokens,
            1 if stream else 0,
            -1 if quota_baseline is None else quota_baseline,
            1 if peek else 0,
            1 if binary else 0,
        )
        self.args = (request_id, request + _plan_args(limits, config))

    def states(self, reply: Any) -> dict[str, LimitState]:
        return _states(self.limits, _unpack_reply(reply))

    def reservation(self, reply: Any) -> Reservation:
        values = _unpack_reply(reply)
        status = values[0]
        if status == _STATUS_SETTLED:
            raise RequestAlreadySettled(self.request_id)
        if status == _STATUS_QUOTA_MISSING:
            raise QuotaCounterMissing(user_id=self.user_id, period_id=str(self.limits.period_id))
        if status == _STATUS_REFUSED:
            raise self._refusal(values)
        return Reservation(
            user_id=self.user_id,
            request_id=self.request_id,
            tokens=self.tokens,
            stream=self.stream,
            limits=self.limits,
            config=self.config,
            server_time_ms=values[1],
            replayed=status == _STATUS_REPLAY,
            quota_gen=values[19],
            reply=values,
        )

    def _refusal(self, values: tuple[int, ...]) -> LimitExceeded:
        states = _states(self.limits, values)
        failures: list[tuple[LimitName, int, bool]] = []
        for index, name in enumerate(POLICIES):
            if not values[5 + 4 * index]:
                continue
            retry_ms = values[6 + 4 * index]
            limit = self.limits.limit_of(name)
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
    base = _user_key(reservation.config.key_prefix, reservation.user_id)
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
        _ms(reservation.config.settled_ttl_seconds),
        1 if reservation.period_id is not None else 0,
        reservation.quota_gen,
    )
    return keys, args


def _heartbeat_call(
    reservation: Reservation, now: Timestamp | None
) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    base = _user_key(reservation.config.key_prefix, reservation.user_id)
    keys = (f"{base}slots", f"{base}res:{reservation.request_id}")
    args = (
        reservation.request_id,
        -1 if now is None else _ms(now),
        _ms(reservation.config.slot_ttl_seconds),
        _ms(reservation.config.reservation_ttl_seconds),
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
        # Generations travel through Lua numbers: 40 random bits stay exact (and never look like a server
        # time in ms, which is what counters created from a baseline use).
        secrets.randbits(40),
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
                        now=now, quota_baseline=quota_baseline, config=config, peek=False,
                        binary=not _decodes_replies(redis))
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
                        quota_baseline=None, config=config, peek=True, binary=not _decodes_replies(redis))
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
                               used_tokens=used_tokens, only_if_missing=only_if_missing, now=now,
                               config=config)
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
                        now=now, quota_baseline=quota_baseline, config=config, peek=False,
                        binary=not _decodes_replies(redis))
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
                        quota_baseline=None, config=config, peek=True, binary=not _decodes_replies(redis))
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
                               used_tokens=used_tokens, only_if_missing=only_if_missing, now=now,
                               config=config)
    return bool(int(await REBUILD.run_async(redis, keys, args)))
