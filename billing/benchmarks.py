"""Limiter throughput and round trips per decision, against the real Redis.

Every decision is its own request, as in production: no pipelining across decisions. Round trips are counted
on the client connection (requests written, responses read) and cross-checked with the server's
`INFO commandstats` EVALSHA/EVAL counts (which other clients of the same server could inflate, never lower).
The baseline is a bare PING loop on the same connection: the ceiling for any design needing one round trip.
Throughput loops run in several rounds and report the best one (as timeit does): on a shared 2-core machine
the other rounds measure the neighbours; the median round is given in the note.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis as redis_lib
import redis.asyncio as aredis
from redis.connection import Connection

from billing.limiter import LimiterConfig, Limits, areserve, asettle, rebuild_quota, reserve, settle
from config.bench import Row, benchmark

NAME = "billing.limiter"
USERS = 500
ROUNDS = 5
PER_ROUND = 4_000
THREADS = 4
THREAD_PAIRS = 2_000  # per thread
ASYNC_PAIRS = 4_000


class CountingConnection(Connection):
    """Counts what goes over the wire: one send plus one awaited reply is one round trip."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = 0
        self.replies = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.sent += 1
        super().send_packed_command(command, check_health=check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self.replies += 1
        return super().read_response(*args, **kwargs)


def redis_url() -> str:
    url = os.environ.get("LIMITER_BENCH_REDIS_URL")
    if url:
        return url
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return settings.REDIS_URL
    except ImproperlyConfigured:
        # Outside Django: the database number reserved for the limiter's tests.
        return "redis://127.0.0.1:6379/13"


def counting_client(url: str) -> tuple[redis_lib.Redis, CountingConnection]:
    """A client pinned to a single counting connection (a pool of one)."""
    pool = redis_lib.ConnectionPool.from_url(url, connection_class=CountingConnection, max_connections=1)
    client = redis_lib.Redis(connection_pool=pool)
    client.ping()
    connection = pool.get_connection()
    pool.release(connection)
    return client, connection


def _server_script_calls(client: redis_lib.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def _limits(period_end: datetime, *, stream: bool) -> Limits:
    # Every limit on, generous enough that nothing is refused: the figure is the cost of an admitted decision.
    return Limits(rpm=100_000, tpm=10**9, concurrent_streams=8 if stream else None, monthly_quota=10**12,
                  period_id="bench", period_end=period_end)


def _rounds(step: Callable[[int], None]) -> tuple[float, float, list[float]]:
    """(best, median) rounds in operations per second, and every operation's latency in seconds."""
    rates, latencies = [], []
    counter = 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(PER_ROUND):
            t0 = time.perf_counter()
            step(counter)
            latencies.append(time.perf_counter() - t0)
            counter += 1
        rates.append(PER_ROUND / (time.perf_counter() - started))
    return max(rates), statistics.median(rates), latencies


@benchmark(NAME)
def limiter_benchmark() -> list[Row]:
    url = redis_url()
    config = LimiterConfig(key_prefix=f"bench:lim:{uuid.uuid4().hex[:8]}:")
    period_end = datetime.now(UTC) + timedelta(days=30)
    client, conn = counting_client(url)
    rows: list[Row] = []
    try:
        for user in range(USERS):
            rebuild_quota(client, user_id=user, period_id="bench", period_end=period_end, used_tokens=0,
                          config=config)
        # Warm-up loads the scripts (NOSCRIPT then EVAL) so that the loops measure the steady state.
        plain, streaming = _limits(period_end, stream=False), _limits(period_end, stream=True)
        warm = reserve(client, user_id=0, limits=streaming, tokens=1, request_id="warm", config=config)
        settle(client, reservation=warm, actual_tokens=1)

        ping_best, ping_median, _ = _rounds(lambda i: client.ping())

        server_before = _server_script_calls(client)
        conn.sent = conn.replies = 0
        def reserve_only(i: int) -> None:
            reserve(client, user_id=i % USERS, limits=plain, tokens=500, request_id=f"r{i}", stream=False,
                    config=config)

        best, median, latencies = _rounds(reserve_only)
        decisions = ROUNDS * PER_ROUND
        reserve_trips = max(conn.sent, conn.replies) / decisions  # read before INFO adds its own round trip
        server_calls = (_server_script_calls(client) - server_before) / decisions
        rows.append(Row(NAME, "reserve decisions/s, 1 thread", best, "ops/s", baseline=ping_best,
                        target=">= 5000", note=f"median round {median:.0f}/s; baseline: PING/s (median "
                        f"{ping_median:.0f}); all four limits on"))
        quantiles = statistics.quantiles(latencies, n=100)
        rows.append(Row(NAME, "reserve latency p50", quantiles[49] * 1e6, "us"))
        rows.append(Row(NAME, "reserve latency p99", quantiles[98] * 1e6, "us"))
        rows.append(Row(NAME, "round trips per reserve (client count)", reserve_trips, "rt", target="<= 1"))
        rows.append(Row(NAME, "script calls per reserve (server commandstats)", server_calls, "calls",
                        note="other clients of this Redis can only inflate it"))

        conn.sent = conn.replies = 0
        settle_trips: list[int] = []

        def pair(i: int) -> None:
            res = reserve(client, user_id=i % USERS, limits=streaming, tokens=800, request_id=f"p{i}",
                          config=config)
            before = conn.replies
            settle(client, reservation=res, actual_tokens=300)
            settle_trips.append(conn.replies - before)

        best, median, _ = _rounds(pair)
        rows.append(Row(NAME, "reserve+settle pairs/s, 1 thread", best, "pairs/s", baseline=ping_best / 2,
                        target=">= 2500",
                        note=f"median round {median:.0f}/s; baseline: PING/s / 2; streaming"))
        rows.append(Row(NAME, "round trips per reserve+settle pair", max(conn.sent, conn.replies) / decisions,
                        "rt", target="<= 2"))
        rows.append(Row(NAME, "round trips per settle", sum(settle_trips) / decisions, "rt", target="<= 1"))
        rows.append(_threaded_pairs(url, config, streaming))
        rows.append(_async_pairs(url, config, streaming))
        leaked = sum(client.zcard(f"{config.key_prefix}{{u:{u}}}:slots") for u in range(USERS))
        rows.append(Row(NAME, "concurrency slots left after all settles", leaked, "slots", target="<= 0"))
    finally:
        for key in client.scan_iter(match=f"{config.key_prefix}*", count=1000):
            client.unlink(key)
        client.close()
    return rows


def _threaded_pairs(url: str, config: LimiterConfig, limits: Limits) -> Row:
    client = redis_lib.Redis.from_url(url, max_connections=THREADS * 2)
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        barrier.wait()
        try:
            for i in range(THREAD_PAIRS):
                res = reserve(client, user_id=(index * THREAD_PAIRS + i) % USERS, limits=limits, tokens=800,
                              request_id=f"t{index}-{i}", config=config)
                settle(client, reservation=res, actual_tokens=300)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    client.close()
    if errors:
        raise errors[0]
    rate = THREADS * THREAD_PAIRS / elapsed
    return Row(NAME, f"reserve+settle pairs/s, {THREADS} threads", rate, "pairs/s",
               note=f"{os.cpu_count()} cores shared with Redis; the GIL serialises the client side")


def _async_pairs(url: str, config: LimiterConfig, limits: Limits) -> Row:
    async def run() -> float:
        client = aredis.Redis.from_url(url)
        try:
            warm = await areserve(client, user_id=0, limits=limits, tokens=1, request_id="awarm",
                                  config=config)
            await asettle(client, reservation=warm, actual_tokens=1)
            started = time.perf_counter()
            for i in range(ASYNC_PAIRS):
                res = await areserve(client, user_id=i % USERS, limits=limits, tokens=800, request_id=f"a{i}",
                                     config=config)
                await asettle(client, reservation=res, actual_tokens=300)
            return time.perf_counter() - started
        finally:
            await client.aclose()

    elapsed = asyncio.run(run())
    return Row(NAME, "reserve+settle pairs/s, asyncio, sequential", ASYNC_PAIRS / elapsed, "pairs/s")
