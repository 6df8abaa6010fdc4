"""The Redis limiter against a real Redis (DB 13 by default, every test under its own key prefix).

Most tests pass `now` to control time exactly; the few that check Redis server time and real slot expiry sleep
for about a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis as redis_lib
import redis.asyncio as aredis

from billing.benchmarks import CountingConnection
from billing.limiter import (
    LimiterConfig,
    LimitExceeded,
    Limits,
    QuotaCounterMissing,
    RequestAlreadySettled,
    aheartbeat,
    arebuild_quota,
    areserve,
    asettle,
    ausage,
    heartbeat,
    ratelimit_headers,
    rebuild_quota,
    release,
    reserve,
    settle,
    usage,
)
from billing.limiter import scripts as limiter_scripts

REDIS_URL = os.environ.get("LIMITER_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
T0 = 1_900_000_000.0  # injected "now" for the deterministic tests
PERIOD_END = T0 + 10 * 86_400
USER = 42


@pytest.fixture
def r() -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(REDIS_URL, max_connections=200)
    yield client
    client.close()


@pytest.fixture
def config(r: redis_lib.Redis) -> Iterator[LimiterConfig]:
    cfg = LimiterConfig(key_prefix=f"test:lim:{uuid.uuid4().hex}:", slot_ttl_seconds=1.0)
    yield cfg
    for key in r.scan_iter(match=f"{cfg.key_prefix}*", count=1000):
        r.unlink(key)


def _rid() -> str:
    return uuid.uuid4().hex


def _quota_limits(quota: int | None = 1_000, period: str = "2030-03", end: float = PERIOD_END,
                  **kw) -> Limits:
    return Limits(monthly_quota=quota, period_id=period, period_end=end, **kw)


def _refusal(r, config, limits, tokens=1, stream=False, now=T0) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        reserve(r, user_id=USER, limits=limits, tokens=tokens, request_id=_rid(), stream=stream, now=now,
                config=config)
    return caught.value


def _admit(r, config, limits, tokens=1, stream=False, now=T0, request_id=None, **kw):
    return reserve(r, user_id=USER, limits=limits, tokens=tokens, request_id=request_id or _rid(),
                   stream=stream, now=now, config=config, **kw)


def _quota_used(r, config, period="2030-03") -> int:
    return int(r.hget(f"{config.key_prefix}{{u:{USER}}}:quota:{period}", "used"))


def test_rpm_admits_exactly_the_limit_then_refuses_until_the_oldest_request_leaves_the_window(r, config):
    limits = Limits(rpm=3)
    for offset in (0, 1, 2):
        _admit(r, config, limits, now=T0 + offset)

    refused = _refusal(r, config, limits, now=T0 + 10)
    assert (refused.limit, refused.limit_value, refused.remaining) == ("rpm", 3, 0)
    assert refused.retry_after_ms == 50_000
    assert refused.retry_after == 50
    assert refused.satisfiable

    _refusal(r, config, limits, now=T0 + 59.999)
    _admit(r, config, limits, now=T0 + 60)  # the first request left the window
    assert _refusal(r, config, limits, now=T0 + 60.5).retry_after_ms == 500  # the second leaves at T0 + 61


def test_rpm_window_runs_on_redis_server_time(r, config):
    limits = Limits(rpm=2, window_seconds=1)
    for _ in range(2):
        reserve(r, user_id=USER, limits=limits, tokens=1, request_id=_rid(), stream=False, config=config)
    with pytest.raises(LimitExceeded) as caught:
        reserve(r, user_id=USER, limits=limits, tokens=1, request_id=_rid(), stream=False, config=config)
    assert 0 < caught.value.retry_after_ms <= 1_000
    assert caught.value.retry_after == 1

    time.sleep(caught.value.retry_after_ms / 1000 + 0.05)
    reserve(r, user_id=USER, limits=limits, tokens=1, request_id=_rid(), stream=False, config=config)


def test_tpm_refuses_overflowing_weights_and_retry_after_is_when_enough_weight_has_expired(r, config):
    limits = Limits(tpm=100)
    _admit(r, config, limits, tokens=30, now=T0)
    _admit(r, config, limits, tokens=50, now=T0 + 5)

    refused = _refusal(r, config, limits, tokens=30, now=T0 + 10)
    assert (refused.limit, refused.remaining) == ("tpm", 20)
    assert refused.retry_after_ms == 50_000  # the 30 admitted at T0 leaves at T0 + 60

    _admit(r, config, limits, tokens=20, now=T0 + 10)  # exactly fills the window
    # 60 more tokens need both the 30 (T0) and the 50 (T0 + 5) to expire.
    assert _refusal(r, config, limits, tokens=60, now=T0 + 20).retry_after_ms == 45_000
    _refusal(r, config, limits, tokens=60, now=T0 + 64.999)
    _admit(r, config, limits, tokens=60, now=T0 + 65)


def test_tpm_settle_returns_the_unused_part_of_a_reservation_to_the_window(r, config):
    limits = Limits(tpm=100)
    reservation = _admit(r, config, limits, tokens=80, now=T0)
    _refusal(r, config, limits, tokens=90, now=T0 + 1)

    settle(r, reservation=reservation, actual_tokens=10)
    admitted = _admit(r, config, limits, tokens=90, now=T0 + 2)
    assert admitted.states["tpm"].used == 100
    assert admitted.states["tpm"].remaining == 0


def test_request_above_the_tpm_limit_is_refused_as_never_satisfiable(r, config):
    refused = _refusal(r, config, Limits(tpm=100, rpm=10), tokens=101)
    assert refused.limit == "tpm"
    assert not refused.satisfiable


def test_concurrency_refuses_an_extra_stream_and_settle_frees_its_slot(r, config):
    limits = Limits(concurrent_streams=2)
    first = _admit(r, config, limits, stream=True)
    _admit(r, config, limits, stream=True)

    refused = _refusal(r, config, limits, stream=True)
    assert (refused.limit, refused.limit_value, refused.remaining) == ("concurrency", 2, 0)
    assert refused.retry_after == config.concurrency_retry_after
    assert refused.reset_seconds == 1  # the oldest slot would lapse on its own after the 1 s slot ttl
    _admit(r, config, limits, stream=False)  # non-streaming requests take no slot

    assert settle(r, reservation=first, actual_tokens=5)
    _admit(r, config, limits, stream=True)


def test_unsettled_slot_lapses_after_the_slot_ttl_so_a_killed_worker_leaks_nothing(r, config):
    limits = Limits(concurrent_streams=1)
    reserve(r, user_id=USER, limits=limits, tokens=1, request_id=_rid(), config=config)  # never settled
    with pytest.raises(LimitExceeded):
        reserve(r, user_id=USER, limits=limits, tokens=1, request_id=_rid(), config=config)

    time.sleep(config.slot_ttl_seconds + 0.1)
    reserve(r, user_id=USER, limits=limits, tokens=1, request_id=_rid(), config=config)


def test_heartbeat_keeps_a_long_stream_slot_and_reports_a_lapsed_one(r, config):
    limits = Limits(concurrent_streams=1)
    stream = _admit(r, config, limits, stream=True, now=T0)
    assert heartbeat(r, reservation=stream, now=T0 + 0.8)  # slot now lapses at T0 + 1.8
    _refusal(r, config, limits, stream=True, now=T0 + 1.5)

    assert not heartbeat(r, reservation=stream, now=T0 + 1.8)
    _admit(r, config, limits, stream=True, now=T0 + 1.9)


def test_quota_admits_up_to_exactly_the_quota_and_retry_after_is_the_period_end(r, config):
    limits = _quota_limits(1_000)
    _admit(r, config, limits, tokens=600, quota_baseline=0)
    last = _admit(r, config, limits, tokens=400, now=T0 + 100)
    assert last.states["quota"].remaining == 0

    refused = _refusal(r, config, limits, tokens=1, now=T0 + 200)
    assert (refused.limit, refused.limit_value, refused.remaining) == ("quota", 1_000, 0)
    assert refused.retry_after == PERIOD_END - (T0 + 200)
    assert refused.reset_seconds == refused.retry_after
    assert refused.satisfiable


def test_settle_replaces_the_reserved_tokens_by_the_actual_count_once(r, config):
    limits = _quota_limits(1_000)
    reservation = _admit(r, config, limits, tokens=500, quota_baseline=0)
    assert _quota_used(r, config) == 500

    assert settle(r, reservation=reservation, actual_tokens=120)
    assert _quota_used(r, config) == 120
    assert not settle(r, reservation=reservation, actual_tokens=300)
    assert not release(r, reservation=reservation)
    assert _quota_used(r, config) == 120


def test_duplicate_settle_after_the_tombstone_expired_changes_nothing(r, config):
    limits = _quota_limits(1_000)
    reservation = _admit(r, config, limits, tokens=500, quota_baseline=0)
    settle(r, reservation=reservation, actual_tokens=120)
    record = f"{config.key_prefix}{{u:{USER}}}:res:{reservation.request_id}"
    assert 0 < r.pttl(record) <= config.settled_ttl_seconds * 1000

    r.delete(record)  # what the tombstone's expiry does
    settle(r, reservation=reservation, actual_tokens=120)
    assert _quota_used(r, config) == 120


def test_release_refunds_every_reserved_token_but_the_request_still_counts_against_rpm(r, config):
    limits = _quota_limits(1_000, tpm=1_000)
    reservation = _admit(r, config, limits, tokens=700, quota_baseline=50)
    assert release(r, reservation=reservation)
    state = usage(r, user_id=USER, limits=limits, now=T0 + 1, config=config)
    # A failed call still counts as a request, so that retry storms stay rate limited.
    assert (state["quota"].used, state["tpm"].used, state["rpm"].used) == (50, 0, 1)


def test_actual_spend_above_the_reservation_is_still_recorded(r, config):
    limits = _quota_limits(1_000)
    reservation = _admit(r, config, limits, tokens=100, quota_baseline=0)
    settle(r, reservation=reservation, actual_tokens=150)
    assert _quota_used(r, config) == 150


def test_missing_quota_counter_is_signalled_without_recording_anything(r, config):
    limits = _quota_limits(1_000, rpm=10, tpm=10_000, concurrent_streams=2)
    with pytest.raises(QuotaCounterMissing) as caught:
        _admit(r, config, limits, tokens=200, stream=True)
    assert caught.value.period_id == "2030-03"

    state = usage(r, user_id=USER, limits=limits, now=T0, config=config)
    assert state["quota"].counter_missing
    assert (state["rpm"].used, state["tpm"].used, state["concurrency"].used) == (0, 0, 0)

    admitted = _admit(r, config, limits, tokens=200, stream=True, quota_baseline=700)
    assert admitted.states["quota"].used == 900
    assert not usage(r, user_id=USER, limits=limits, now=T0, config=config)["quota"].counter_missing


def test_missing_counter_signal_leaves_the_token_window_consistent(r, config):
    limits = _quota_limits(10_000, tpm=100)
    _admit(r, config, limits, tokens=60, quota_baseline=0)
    r.delete(f"{config.key_prefix}{{u:{USER}}}:quota:2030-03")

    with pytest.raises(QuotaCounterMissing):  # the 60 tokens have left the window by now
        _admit(r, config, limits, tokens=100, now=T0 + 61)
    admitted = _admit(r, config, limits, tokens=100, now=T0 + 61, quota_baseline=60)
    assert admitted.states["tpm"].used == 100


def test_quota_baseline_does_not_overwrite_a_counter_that_already_exists(r, config):
    limits = _quota_limits(1_000)
    rebuild_quota(r, user_id=USER, period_id="2030-03", period_end=PERIOD_END, used_tokens=100, now=T0,
                  config=config)
    admitted = _admit(r, config, limits, tokens=10, quota_baseline=0)
    assert admitted.states["quota"].used == 110


def test_rebuild_only_if_missing_leaves_an_existing_counter_alone(r, config):
    kw = {"user_id": USER, "period_id": "2030-03", "period_end": PERIOD_END, "now": T0, "config": config}
    assert rebuild_quota(r, used_tokens=300, only_if_missing=True, **kw)
    assert not rebuild_quota(r, used_tokens=5, only_if_missing=True, **kw)
    assert _quota_used(r, config) == 300
    assert rebuild_quota(r, used_tokens=5, **kw)
    assert _quota_used(r, config) == 5


@pytest.mark.parametrize("lost", ["everything", "quota_counter_only"])
def test_in_flight_request_is_counted_by_its_actual_spend_after_a_rebuild(r, config, lost):
    limits = _quota_limits(1_000)
    in_flight = _admit(r, config, limits, tokens=500, quota_baseline=0)
    if lost == "everything":  # what FLUSHDB does to this user
        for key in r.scan_iter(match=f"{config.key_prefix}*"):
            r.delete(key)
    else:
        r.delete(f"{config.key_prefix}{{u:{USER}}}:quota:2030-03")

    with pytest.raises(QuotaCounterMissing):
        _admit(r, config, limits, tokens=10)
    rebuild_quota(r, user_id=USER, period_id="2030-03", period_end=PERIOD_END, used_tokens=42, now=T0,
                  config=config)  # the ledger does not hold the in-flight request yet
    assert settle(r, reservation=in_flight, actual_tokens=100)
    assert _quota_used(r, config) == 142
    assert not settle(r, reservation=in_flight, actual_tokens=100)
    assert _quota_used(r, config) == 142


def test_new_period_starts_from_a_fresh_counter_and_the_old_one_expires_after_its_end(r, config):
    march = _quota_limits(1_000, period="2030-03", end=PERIOD_END)
    april = _quota_limits(1_000, period="2030-04", end=PERIOD_END + 30 * 86_400)
    pending = _admit(r, config, march, tokens=600, quota_baseline=0)
    _admit(r, config, march, tokens=400)
    _refusal(r, config, march, tokens=1)

    with pytest.raises(QuotaCounterMissing):
        _admit(r, config, april, tokens=1)
    assert _admit(r, config, april, tokens=1, quota_baseline=0).states["quota"].used == 1

    settle(r, reservation=pending, actual_tokens=100)  # a March request finishing after the rollover
    assert (_quota_used(r, config, "2030-03"), _quota_used(r, config, "2030-04")) == (500, 1)
    ttl_ms = r.pttl(f"{config.key_prefix}{{u:{USER}}}:quota:2030-03")
    expected_ms = (PERIOD_END - T0 + config.period_margin_seconds) * 1000
    assert expected_ms - 5_000 < ttl_ms <= expected_ms


def test_reserving_an_unsettled_request_id_again_replays_it_without_charging_twice(r, config):
    limits = _quota_limits(1_000, rpm=10)
    first = _admit(r, config, limits, tokens=300, request_id="req-1", quota_baseline=0)
    again = _admit(r, config, limits, tokens=300, request_id="req-1", now=T0 + 1)
    assert (first.replayed, again.replayed) == (False, True)
    assert (again.states["quota"].used, again.states["rpm"].used) == (300, 1)


def test_reserving_a_settled_request_id_again_is_refused(r, config):
    limits = Limits(rpm=10)
    reservation = _admit(r, config, limits, request_id="req-2")
    settle(r, reservation=reservation, actual_tokens=1)
    with pytest.raises(RequestAlreadySettled):
        _admit(r, config, limits, request_id="req-2")


def test_none_means_unlimited_and_untracked_while_zero_admits_nothing(r, config):
    for _ in range(50):
        admitted = _admit(r, config, Limits(), tokens=10**9, stream=True)
    assert all(state.limit is None for state in admitted.states.values())
    assert admitted.headers() == {}
    assert r.exists(f"{config.key_prefix}{{u:{USER}}}:log", f"{config.key_prefix}{{u:{USER}}}:slots") == 0

    rebuild_quota(r, user_id=USER, period_id="2030-03", period_end=PERIOD_END, used_tokens=0, config=config)
    for limits, name in [(Limits(rpm=0), "rpm"), (Limits(concurrent_streams=0), "concurrency"),
                         (_quota_limits(0), "quota")]:
        refused = _refusal(r, config, limits, stream=True)
        assert (refused.limit, refused.satisfiable) == (name, False)


def test_binding_limit_is_the_one_with_the_longest_wait_and_all_violations_are_listed(r, config):
    limits = _quota_limits(100, rpm=1)
    _admit(r, config, limits, tokens=90, quota_baseline=0)
    refused = _refusal(r, config, limits, tokens=20, now=T0 + 1)
    assert set(refused.violated) == {"rpm", "quota"}
    assert refused.limit == "quota"
    assert refused.retry_after == PERIOD_END - (T0 + 1)


def test_limits_refuse_inconsistent_configuration():
    with pytest.raises(ValueError, match="period_id"):
        Limits(monthly_quota=10)
    with pytest.raises(ValueError, match="period_end"):
        Limits(period_id="2030-03")
    with pytest.raises(ValueError, match="must be an int"):
        Limits(rpm=-1)


def test_headers_follow_the_ratelimit_draft_syntax(r, config):
    config = dataclasses.replace(config, slot_ttl_seconds=120)
    limits = Limits(rpm=60, tpm=40_000, concurrent_streams=4, monthly_quota=1_000_000, period_id="2030-03",
                    period_end=PERIOD_END, period_start=PERIOD_END - 31 * 86_400)
    _admit(r, config, limits, tokens=1_000, stream=True, now=T0, quota_baseline=5_000)
    reservation = _admit(r, config, limits, tokens=2_000, stream=True, now=T0 + 20)

    assert reservation.headers() == {
        "RateLimit-Policy": '"rpm";q=60;w=60, "tpm";q=40000;qu="tokens";w=60, '
        '"concurrency";q=4;qu="concurrent-requests", "quota";q=1000000;qu="tokens";w=2678400',
        "RateLimit": '"rpm";r=58;t=40, "tpm";r=37000;t=40, "concurrency";r=2, "quota";r=992000;t=863980',
    }


def test_refusal_headers_carry_retry_after_and_the_exhausted_policy(r, config):
    limits = Limits(rpm=1)
    _admit(r, config, limits, now=T0)
    headers = _refusal(r, config, limits, now=T0 + 15.2).headers()
    assert headers == {
        "Retry-After": "45",
        "RateLimit-Policy": '"rpm";q=1;w=60',
        "RateLimit": '"rpm";r=0;t=45',
    }


def test_usage_headers_use_ceiling_seconds_and_skip_unlimited_policies(r, config):
    limits = Limits(rpm=10, window_seconds=1.5)
    _admit(r, config, limits, now=T0)
    state = usage(r, user_id=USER, limits=limits, now=T0 + 0.2, config=config)
    assert (state["rpm"].used, state["rpm"].reset_seconds, state["rpm"].window_seconds) == (1, 2, 2)
    assert ratelimit_headers(state) == {"RateLimit-Policy": '"rpm";q=10;w=2', "RateLimit": '"rpm";r=9;t=2'}


def test_each_decision_is_one_round_trip_even_when_redis_lost_the_script(r, config, monkeypatch):
    pool = redis_lib.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection,
                                             max_connections=1)
    client = redis_lib.Redis(connection_pool=pool)
    client.ping()
    connection = pool.get_connection()
    pool.release(connection)
    limits = _quota_limits(10_000, rpm=100, tpm=100_000, concurrent_streams=3)
    _admit(client, config, limits, quota_baseline=0)  # Redis may not have the scripts yet

    connection.replies = 0
    for _ in range(10):
        reservation = _admit(client, config, limits, tokens=50, stream=True)
        settle(client, reservation=reservation, actual_tokens=20)
    assert connection.replies == 20

    # A server that lost its script cache answers NOSCRIPT once; EVAL then carries the body.
    monkeypatch.setattr(limiter_scripts.RESERVE, "sha", "0" * 40)
    connection.replies = 0
    _admit(client, config, limits)
    assert connection.replies == 2
    client.close()


def test_clients_that_decode_replies_get_the_same_decisions(config):
    client = redis_lib.Redis.from_url(REDIS_URL, decode_responses=True)
    limits = _quota_limits(1_000, rpm=1)
    with pytest.raises(QuotaCounterMissing):
        _admit(client, config, limits, tokens=100)
    admitted = _admit(client, config, limits, tokens=100, quota_baseline=0)
    assert (admitted.states["quota"].used, admitted.states["rpm"].used) == (100, 1)
    refused = _refusal(client, config, limits, now=T0 + 30)
    assert (refused.limit, refused.retry_after_ms) == ("rpm", 30_000)
    assert usage(client, user_id=USER, limits=limits, now=T0 + 30, config=config)["quota"].used == 100
    client.close()


def test_concurrent_requests_never_push_spend_past_the_quota_and_release_every_slot(r, config):
    quota, worst, streams = 20_000, 700, 10
    limits = _quota_limits(quota, concurrent_streams=streams)
    rebuild_quota(r, user_id=USER, period_id="2030-03", period_end=PERIOD_END, used_tokens=0, config=config)
    lock = threading.Lock()
    in_flight = max_in_flight = 0
    spent: list[int] = []
    charged_at_admission: list[int] = []
    stopped_by: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(100)

    def client_thread(seed: int) -> None:
        nonlocal in_flight, max_in_flight
        rng = random.Random(seed)
        barrier.wait()
        try:
            while True:
                try:
                    reservation = reserve(r, user_id=USER, limits=limits, tokens=worst, request_id=_rid(),
                                          config=config)
                except LimitExceeded as exc:
                    if exc.limit == "quota":
                        stopped_by.append(exc.limit)
                        return
                    time.sleep(rng.uniform(0, 0.003))
                    continue
                with lock:
                    in_flight += 1
                    max_in_flight = max(max_in_flight, in_flight)
                charged_at_admission.append(reservation.states["quota"].used)
                time.sleep(rng.uniform(0, 0.002))
                actual = rng.randint(0, worst)
                with lock:
                    in_flight -= 1
                settle(r, reservation=reservation, actual_tokens=actual)
                spent.append(actual)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]
    assert len(stopped_by) == 100

    used = _quota_used(r, config)
    assert used == sum(spent)  # nothing lost, nothing counted twice
    assert used <= quota
    # Reserve-then-settle: the counter, worst cases of in-flight requests included, never passed the quota.
    assert max(charged_at_admission) <= quota
    assert len(spent) > quota // worst  # refunds were reused, not just the first quota // worst requests
    assert max_in_flight <= streams
    assert r.zcard(f"{config.key_prefix}{{u:{USER}}}:slots") == 0


def test_async_api_reserves_heartbeats_settles_and_reads_usage_like_the_sync_one(config):
    limits = _quota_limits(1_000, rpm=5, concurrent_streams=1)

    async def scenario() -> None:
        client = aredis.Redis.from_url(REDIS_URL)
        try:
            with pytest.raises(QuotaCounterMissing):
                await areserve(client, user_id=USER, limits=limits, tokens=100, request_id=_rid(), now=T0,
                               config=config)
            await arebuild_quota(client, user_id=USER, period_id="2030-03", period_end=PERIOD_END,
                                 used_tokens=10, now=T0, config=config)
            stream = await areserve(client, user_id=USER, limits=limits, tokens=100, request_id=_rid(),
                                    now=T0, config=config)
            with pytest.raises(LimitExceeded) as caught:
                await areserve(client, user_id=USER, limits=limits, tokens=100, request_id=_rid(), now=T0,
                               config=config)
            assert caught.value.limit == "concurrency"
            assert await aheartbeat(client, reservation=stream, now=T0 + 0.5)
            assert await asettle(client, reservation=stream, actual_tokens=40)
            assert not await asettle(client, reservation=stream, actual_tokens=40)
            state = await ausage(client, user_id=USER, limits=limits, now=T0 + 1, config=config)
            assert (state["quota"].used, state["rpm"].used, state["concurrency"].used) == (50, 1, 0)
        finally:
            await client.aclose()

    asyncio.run(scenario())
