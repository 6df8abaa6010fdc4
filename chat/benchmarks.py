"""Chat latency and concurrency against real processes: the fake OpenAI server, uvicorn serving the ASGI app,
and one llm worker (`celery worker -Q llm -c 200` on chat.runtime.TaskPool, as `make run` starts it), all on
this machine, with the dev database and a throwaway user (deleted afterwards) and a Redis database of their own
(`CHAT_BENCH_REDIS_DB`, default 12). The client side is one asyncio process; its CPU is reported beside the
servers', and the machine's load averages beside the results (other work on it shows in every latency).

chat.ttft: 200 questions, one at a time, each on its own conversation over a WebSocket opened beforehand.
  Added time to first token = (first token at the client - ask sent) - the model's own time to first token
  (the same prompt sent straight to the fake server). It splits into retrieval (query embedding + hybrid
  search, timed by the worker) and transport (everything else: edge, billing, queue, worker, Redis, socket).
  Added per-token latency: how much later than the model's schedule each token reaches the client, relative
  to the answer's first token, minus the same for a client reading the model directly.
chat.concurrency: 200 chats at once against a model that takes 10 s per answer; every token must arrive and no
  chat may take more than 20% longer than the model alone, while a client keeps loading the documents page.
  The same 200 chats then arrive at an even pace over CHAT_BENCH_PACED_SECONDS (8 s), still all streaming
  together: the burst of 200 questions in the same instant is CPU-bound on 2 cores (the report says how busy the
  machine was until the last first token), the paced run shows the cost per chat without that queue.
  The same load then runs against a synchronous baseline: a plain WSGI view that calls the model inline
  (`CHAT_BENCH_SYNC_THREADS` threads, as a gthread server would run), serving the page too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.bench import Row, benchmark
from config.testing.datasets import SQUAD

ROOT = Path(__file__).resolve().parent.parent
TTFT_REQUESTS = 200
PER_TOKEN_REQUESTS = 20
PER_TOKEN_MS = 20
CONCURRENT_CHATS = 200
MODEL_TOKENS = 100
MODEL_TOKEN_MS = 100  # first token after 100 ms, then 99 more 100 ms apart: 10 s per answer
MODEL_FIRST_TOKEN_MS = 100
PAGE_PATH = "/documents/"
# How long any one request of a load may take. Under the synchronous baseline a page load waits in the same
# queue as the chats, up to CONCURRENT_CHATS x 10 s / threads (125 s at 16 threads): that wait is the measurement,
# so the page and the chats share this bound, which only stops a run that hangs.
LOAD_TIMEOUT_SECONDS = 1200
# Arriving at this even pace (25 questions a second), the last chat starts before the first ends, so all of them
# still stream together. Over 4 s (50 a second) the machine is at its CPU's limit again.
PACED_ARRIVALS_SECONDS = float(os.environ.get("CHAT_BENCH_PACED_SECONDS", "8"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(coro: Any) -> Any:
    """The benchmark's client side: one process, on uvloop when installed, so that as little of the machine's
    CPU as possible goes to the load generator (its own CPU use is reported with the results)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _processes_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each benchmark process, this client included."""
    return stack.cpu_seconds() | {"client": _own_cpu_seconds()}


def _cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: seconds - before.get(name, 0.0) for name, seconds in after.items()}


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _wait_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


@dataclass
class Corpus:
    contexts: list[tuple[str, list[str]]]  # (article title, paragraphs)
    questions: list[str]


def _corpus(articles: int = 3) -> Corpus:
    data = json.loads(SQUAD.read_text())["data"][:articles]
    contexts = [(a["title"].replace("_", " "), [p["context"] for p in a["paragraphs"]]) for a in data]
    questions = [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return Corpus(contexts=contexts, questions=questions)


@dataclass
class Account:
    user: Any
    plan: Any
    session: str
    conversations: list[int] = field(default_factory=list)


@contextlib.contextmanager
def _throwaway_account(corpus: Corpus) -> Iterator[Account]:
    """A user on an unlimited plan with the corpus as ready documents; everything it made is deleted after."""
    from django.test import Client
    from django.utils import timezone

    from accounts.models import User
    from billing.models import ModelPrice, Plan, Subscription, UsageRecord
    from billing.periods import period_containing
    from billing.seeds import seed_catalog
    from documents.benchmarking.common import document_from_texts

    if not ModelPrice.objects.filter(model="gpt-4o-mini").exists():
        seed_catalog()
    tag = uuid.uuid4().hex[:8]
    user = User.objects.create_user(email=f"bench-{tag}@example.invalid", password=None)
    plan = Plan.objects.create(slug=f"bench-{tag}", name=f"Bench {tag}", monthly_price=0, is_active=False,
                               chat_models=["gpt-4o-mini"])
    now = timezone.now()
    start, end = period_containing(anchor=now, moment=now)
    Subscription.objects.update_or_create(user=user, defaults={
        "plan": plan, "period_anchor": now, "current_period_start": start, "current_period_end": end})
    try:
        for title, paragraphs in corpus.contexts:
            document_from_texts(owner=user, title=title, texts=paragraphs)
        client = Client()
        client.force_login(user)
        yield Account(user=user, plan=plan, session=client.cookies["sessionid"].value)
    finally:
        UsageRecord.objects.filter(user=user).delete()
        user.delete()
        plan.delete()


class Stack:
    """The fake model, uvicorn and one llm worker as subprocesses sharing the dev database."""

    worker_loglevel = "WARNING"

    def __init__(self) -> None:
        self.redis_db = int(os.environ.get("CHAT_BENCH_REDIS_DB", "12"))
        self.fake_port, self.web_port = _free_port(), _free_port()
        self.processes: list[subprocess.Popen] = []
        self.names: dict[int, str] = {}
        self.env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:6379/{self.redis_db}",
            "LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{self.fake_port}/v1",
            "OPENAI_API_KEY": "bench",
            "LLM_MODEL": "gpt-4o-mini",
            "BILLING_LIMITER_KEY_PREFIX": "bench:chat:lim:",
            "LOG_LEVEL": "WARNING",
            "DEBUG": "0",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.env.pop("PYTEST_VERSION", None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def fake_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}/v1"

    def _spawn(self, command: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(Path(os.environ.get("DATA_DIR", ROOT / "var")) / f"bench-{log}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(command, cwd=ROOT, env=self.env | (env or {}), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        self.names[process.pid] = log
        return process

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each running subprocess (user + system)."""
        import psutil

        used = {}
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(process.pid).cpu_times()
                used[self.names[process.pid]] = times.user + times.system
        return used

    def start_fake(self, *, first_token_ms: float = 0, token_ms: float = 0, tokens: int = 20) -> None:
        fake = self._spawn([sys.executable, "-m", "config.testing.fake_openai", "--port", str(self.fake_port),
                            "--first-token-ms", str(first_token_ms), "--token-ms", str(token_ms),
                            "--tokens", str(tokens), "--log-level", "WARNING"], "fake")
        _wait_port(self.fake_port, fake)

    def start_app(self) -> None:
        from config.management.commands.runstack import LLM_POOL_ENV, WEB_SERVER_OPTIONS

        web = self._spawn([sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
                           "--port", str(self.web_port), "--no-access-log", "--log-level", "warning",
                           "--backlog", "4096", *WEB_SERVER_OPTIONS], "web")
        self._spawn([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "llm", "-P", "custom",
                     "-c", "200", "--prefetch-multiplier", "1", "-n", f"bench-llm-{self.web_port}@%h",
                     "--without-gossip", "--without-mingle", "--loglevel", self.worker_loglevel], "llm",
                    env=LLM_POOL_ENV)
        _wait_port(self.web_port, web)

    def start_sync_baseline(self, threads: int) -> None:
        web = self._spawn([sys.executable, "-m", "chat.benchmarks", "sync-baseline", str(self.web_port),
                           str(threads)], "sync")
        _wait_port(self.web_port, web)

    def stop(self, *, keep_fake: bool = False) -> None:
        keep = self.processes[:1] if keep_fake else []
        for process in self.processes:
            if process in keep or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            if process in keep:
                continue
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.processes = keep
        if not keep_fake:
            self._clean_redis()

    def _clean_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.env["REDIS_URL"])
        for pattern in ("docent:chat:*", "bench:chat:lim:*", "docent:workers:*", "_kombu.*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.unlink(key)
        client.delete("llm", "celery")
        client.close()


async def _socket(stack: Stack, account: Account, conversation_id: int):
    from websockets.asyncio.client import connect

    return await connect(f"ws://127.0.0.1:{stack.web_port}/ws/chat/{conversation_id}/",
                         additional_headers={"Cookie": f"sessionid={account.session}"}, origin=stack.base_url,
                         open_timeout=30, max_size=None)


@dataclass
class AskResult:
    message_id: int = 0
    sent_at: float = 0.0
    first_token_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    done_at: float | None = None
    finish_reason: str | None = None
    error: str | None = None


_TOKEN_PREFIX = '{"type": "token", "seq": '  # how chat.events writes a token event


async def _ask(ws, question: str, on_first_token: Callable[[], None] | None = None) -> AskResult:
    result = AskResult()
    result.sent_at = time.perf_counter()
    await ws.send(json.dumps({"type": "ask", "message": question}))
    async for raw in ws:
        now = time.perf_counter()
        if raw.startswith(_TOKEN_PREFIX):  # most messages: read the seq without parsing the event (client CPU)
            end = raw.find(",", len(_TOKEN_PREFIX))
            result.seqs.append(int(raw[len(_TOKEN_PREFIX):end]))
        else:
            event = json.loads(raw)
            if "seq" in event:
                result.seqs.append(event["seq"])
            kind = event["type"]
            if kind == "start":
                result.message_id = event["message_id"]
            elif kind == "error":
                result.error = f"{event.get('code')}: {event.get('message')}"
                if "message_id" not in event:
                    return result
            elif kind == "done":
                result.done_at, result.finish_reason = now, event["finish_reason"]
                return result
            if kind != "token":
                continue
        if result.first_token_at is None:
            result.first_token_at = now
            if on_first_token is not None:
                on_first_token()
        result.token_times.append(now)
    result.error = result.error or "socket closed"
    return result


async def _direct_first_tokens(stack: Stack, messages_list: list[list[dict]]) -> list[list[float]]:
    """Token arrival times (relative to sending) reading the fake model directly with the official client."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=stack.fake_url, api_key="bench", max_retries=0)
    runs = []
    for messages in messages_list:
        started = time.perf_counter()
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                      stream_options={"include_usage": True}, max_tokens=1024)
        arrivals = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter() - started)
        runs.append(arrivals)
    await client.close()
    return runs


def _prompt_for(account: Account, question: str) -> list[dict]:
    from chat.prompting import build_prompt
    from documents.selectors import chunk_search

    hits = chunk_search(user=account.user, query=question, k=8).hits
    return build_prompt(question=question, hits=hits, history=[], budget=8000, context_budget=3000).messages


def _new_conversations(account: Account, count: int) -> list[int]:
    from chat.services import conversation_create

    return [conversation_create(user=account.user, title=f"bench {i}").id for i in range(count)]


@benchmark("chat.ttft")
def chat_ttft() -> list[Row]:
    from chat.models import Message

    corpus = _corpus()
    stack = Stack()
    load_before = _load()
    try:
        stack.start_fake()
        stack.start_app()
        with _throwaway_account(corpus) as account:
            questions = [corpus.questions[i % len(corpus.questions)] for i in range(TTFT_REQUESTS)]
            marker = f" [[fake:tokens=50,token_ms={PER_TOKEN_MS}]]"
            paced = [q + marker for q in corpus.questions[:PER_TOKEN_REQUESTS]]
            conversations = _new_conversations(account, 20 + TTFT_REQUESTS + PER_TOKEN_REQUESTS)

            async def run() -> tuple[list[AskResult], list[AskResult]]:
                sockets = [await _socket(stack, account, cid) for cid in conversations]
                for ws, question in zip(sockets[:20], corpus.questions[-20:], strict=True):
                    await _ask(ws, question)  # warm-up: clients, embedder, connections
                timed, per_token = [], []
                for ws, question in zip(sockets[20:20 + TTFT_REQUESTS], questions, strict=True):
                    timed.append(await _ask(ws, question))
                for ws, question in zip(sockets[20 + TTFT_REQUESTS:], paced, strict=True):
                    per_token.append(await _ask(ws, question))
                for ws in sockets:
                    await ws.close()
                return timed, per_token

            timed, per_token = _run(run())
            failures = [r.error for r in timed + per_token if r.error or r.finish_reason != "stop"]
            if failures:
                raise RuntimeError(f"{len(failures)} answers failed, e.g. {failures[0]}")
            retrieval = dict(Message.objects.filter(id__in=[r.message_id for r in timed])
                             .values_list("id", "retrieval_ms"))
            prompts = [_prompt_for(account, q) for q in questions[:50]]
            direct = _run(_direct_first_tokens(stack, prompts))
            paced_prompts = [_prompt_for(account, q) for q in paced]
            direct_paced = _run(_direct_first_tokens(stack, paced_prompts))
    finally:
        stack.stop()

    model_ttft = statistics.median(run[0] for run in direct) * 1000
    added = [(r.first_token_at - r.sent_at) * 1000 - model_ttft for r in timed]
    missing = [r.message_id for r in timed if retrieval.get(r.message_id) is None]
    if missing:  # counted as 0 ms it would flatter retrieval and charge its time to transport
        raise RuntimeError(f"{len(missing)} answers saved no retrieval time (e.g. message {missing[0]})")
    retrieval_ms = [float(retrieval[r.message_id]) for r in timed]
    transport = [a - b for a, b in zip(added, retrieval_ms, strict=True)]

    def lateness(arrivals: list[float]) -> list[float]:
        return [(t - arrivals[0]) * 1000 - i * PER_TOKEN_MS for i, t in enumerate(arrivals)][1:]

    system_late = [x for r in per_token for x in lateness(r.token_times)]
    direct_late = [x for run in direct_paced for x in lateness(run)]
    per_token_added = [s - statistics.median(direct_late) for s in system_late]
    name = "chat.ttft"
    # Other work on the machine shows in every latency here: the load averages say how busy it was.
    note = (f"{TTFT_REQUESTS} questions one at a time; model TTFT {model_ttft:.1f} ms subtracted; "
            f"load {load_before} before, {_load()} after")
    return [
        Row(name, "transport added TTFT p50", _percentile(transport, 50), "ms", target="<= 10", note=note),
        Row(name, "transport added TTFT p99", _percentile(transport, 99), "ms", target="<= 30"),
        Row(name, "retrieval p50", _percentile(retrieval_ms, 50), "ms", target="<= 30",
            note="local embedder + hybrid search, timed in the worker"),
        Row(name, "retrieval p99", _percentile(retrieval_ms, 99), "ms"),
        Row(name, "total added TTFT p50", _percentile(added, 50), "ms"),
        Row(name, "model TTFT (direct) p50", model_ttft, "ms", note="the fake model read directly"),
        Row(name, "added per-token latency p50", _percentile(per_token_added, 50), "ms", target="<= 1",
            note=f"{PER_TOKEN_REQUESTS} answers x 50 tokens {PER_TOKEN_MS} ms apart, vs reading the model directly"),
        Row(name, "added per-token latency p99", _percentile(per_token_added, 99), "ms"),
    ]


async def _page_poller(url: str, cookies: dict[str, str], stop: asyncio.Event) -> list[float]:
    import httpx

    latencies = []
    async with httpx.AsyncClient(cookies=cookies, timeout=LOAD_TIMEOUT_SECONDS) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = await client.get(url)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")
            await asyncio.sleep(0.05)
    return latencies


@dataclass
class LoadResult:
    durations: list[float]  # seconds per chat
    tokens: list[int]
    failures: list[str]
    page_ms: list[float]
    wall: float
    cpu: dict[str, float] = field(default_factory=dict)  # seconds of CPU per process during the load
    start_burst: StartBurst | None = None

    def cpu_note(self) -> str:
        return _cpu_note(self.cpu)


def _cpu_note(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(cpu.items()))


@dataclass
class StartBurst:
    """From the first question sent until the last chat's first token: how long, and how busy the machine was.

    Near 100% busy, the start is bound by CPU (every question's edge, queue, retrieval and model call, beside
    the tokens of the answers already streaming), not by waiting anywhere: the last first token then comes
    about as late as the machine's cores need to do that work."""

    seconds: float
    machine_busy: float  # share of all cores' time, every process on the machine counted
    cpu: dict[str, float]  # CPU seconds per benchmark process, "other" for the rest (Postgres, Redis, ...)


class _MachineCpu:
    def __init__(self, stack: Stack) -> None:
        import psutil

        self.stack, self.psutil = stack, psutil
        self.at, self.machine, self.processes = self._read()

    def _read(self) -> tuple[float, Any, dict[str, float]]:
        return time.perf_counter(), self.psutil.cpu_times(), _processes_cpu(self.stack)

    def since(self) -> StartBurst:
        at, machine, processes = self._read()
        fields = machine._fields
        # Steal (time the hypervisor gave to other guests) counts as busy: those cycles were not this machine's.
        busy_fields = [f for f in fields if f not in ("idle", "iowait", "guest", "guest_nice")]
        total = sum(getattr(machine, f) - getattr(self.machine, f) for f in fields if f not in ("guest", "guest_nice"))
        busy = sum(getattr(machine, f) - getattr(self.machine, f) for f in busy_fields)
        cpu = _cpu_used(self.processes, processes)
        cpu["other"] = max(0.0, busy - sum(cpu.values()))
        return StartBurst(seconds=at - self.at, machine_busy=busy / total if total else float("nan"), cpu=cpu)


def _concurrent_ws_load(stack: Stack, account: Account, conversations: list[int], question: str,
                        arrivals_over: float = 0.0) -> LoadResult:
    """One chat per conversation, each on its own socket, all asked at once or, with `arrivals_over`, at an even
    pace over that many seconds."""

    async def run() -> LoadResult:
        gate = asyncio.Semaphore(50)

        async def open_socket(cid: int):
            async with gate:
                return await _socket(stack, account, cid)

        sockets = await asyncio.gather(*(open_socket(cid) for cid in conversations))
        cpu_before = _processes_cpu(stack)
        stop = asyncio.Event()
        poller = asyncio.create_task(_page_poller(stack.base_url + PAGE_PATH, {"sessionid": account.session}, stop))
        await asyncio.sleep(0.5)
        burst_cpu = _MachineCpu(stack)
        burst: list[StartBurst] = []
        waiting_for_first_token = len(sockets)

        def first_token() -> None:
            nonlocal waiting_for_first_token
            waiting_for_first_token -= 1
            if waiting_for_first_token == 0:
                burst.append(burst_cpu.since())

        started = time.perf_counter()
        pace = arrivals_over / len(sockets)

        async def ask_in_turn(index: int, ws) -> AskResult:
            if pace:  # asked at once: nothing in front of the ask, as before the paced run existed
                await asyncio.sleep(started + index * pace - time.perf_counter())
            return await _ask(ws, question, first_token)

        results = await asyncio.gather(*(ask_in_turn(i, ws) for i, ws in enumerate(sockets)))
        wall = time.perf_counter() - started
        stop.set()
        page_ms = await poller
        await asyncio.gather(*(ws.close() for ws in sockets))
        failures = []
        for r in results:
            gapless = r.seqs == list(range(1, len(r.seqs) + 1))
            if r.error or r.finish_reason != "stop" or not gapless:
                failures.append(r.error or f"finish {r.finish_reason}, gapless {gapless}")
        cpu = _cpu_used(cpu_before, _processes_cpu(stack))
        return LoadResult(durations=[(r.done_at or time.perf_counter()) - r.sent_at for r in results],
                          tokens=[len(r.token_times) for r in results], failures=failures, page_ms=page_ms, wall=wall,
                          cpu=cpu, start_burst=burst[0] if burst else None)

    return _run(run())


def _concurrent_sync_load(stack: Stack, account: Account, question: str) -> LoadResult:
    import httpx

    async def run() -> LoadResult:
        limits = httpx.Limits(max_connections=CONCURRENT_CHATS + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=LOAD_TIMEOUT_SECONDS, limits=limits) as client:
            stop = asyncio.Event()
            poller = asyncio.create_task(
                _page_poller(stack.base_url + PAGE_PATH, {"sessionid": account.session}, stop))
            await asyncio.sleep(0.5)
            cpu_before = _processes_cpu(stack)

            async def one() -> tuple[float, int, str | None]:
                started = time.perf_counter()
                response = await client.post("/bench/ask", json={"user_id": account.user.id, "message": question})
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    return elapsed, 0, f"HTTP {response.status_code}"
                return elapsed, response.json()["tokens"], None

            started = time.perf_counter()
            results = await asyncio.gather(*(one() for _ in range(CONCURRENT_CHATS)))
            wall = time.perf_counter() - started
            stop.set()
            page_ms = await poller
            cpu = _cpu_used(cpu_before, _processes_cpu(stack))
        return LoadResult(durations=[r[0] for r in results], tokens=[r[1] for r in results],
                          failures=[r[2] for r in results if r[2]], page_ms=page_ms, wall=wall, cpu=cpu)

    return _run(run())


@benchmark("chat.concurrency")
def chat_concurrency() -> list[Row]:
    corpus = _corpus(articles=1)
    # The model's pace is the fake server's default, not a [[fake:...]] marker in the question: a marker
    # more than doubles a question's length, and so the work of embedding, searching and counting it.
    question = corpus.questions[0]
    threads = int(os.environ.get("CHAT_BENCH_SYNC_THREADS", "20"))
    stack = Stack()
    load_before = _load()
    try:
        stack.start_fake(first_token_ms=MODEL_FIRST_TOKEN_MS, token_ms=MODEL_TOKEN_MS, tokens=MODEL_TOKENS)
        with _throwaway_account(corpus) as account:
            model_alone = _run(_direct_first_tokens(stack, [_prompt_for(account, question)]))[0][-1]
            stack.start_app()
            warm = _new_conversations(account, 10)
            warm_question = f"{corpus.questions[1]} [[fake:first_token_ms=0,token_ms=0,tokens=20]]"
            _concurrent_ws_load(stack, account, warm, warm_question)
            asynced = _concurrent_ws_load(stack, account, _new_conversations(account, CONCURRENT_CHATS), question)
            paced = _concurrent_ws_load(stack, account, _new_conversations(account, CONCURRENT_CHATS), question,
                                        arrivals_over=PACED_ARRIVALS_SECONDS)
            stack.stop(keep_fake=True)
            if threads:
                stack.web_port = _free_port()
                stack.start_sync_baseline(threads)
                synced = _concurrent_sync_load(stack, account, question)
            else:  # CHAT_BENCH_SYNC_THREADS=0 skips the baseline
                synced = None
    finally:
        stack.stop()

    name = "chat.concurrency"
    expected = CONCURRENT_CHATS * MODEL_TOKENS
    worst = max(asynced.durations) / model_alone

    def baseline(measure: Callable[[LoadResult], float]) -> float | None:
        return None if synced is None else measure(synced)

    baseline_note = (f"baseline: WSGI view calling the model inline, {threads} threads" if synced is not None
                     else "baseline skipped (CHAT_BENCH_SYNC_THREADS=0)")
    note = (f"{CONCURRENT_CHATS} chats at once, model alone {model_alone:.2f} s; {baseline_note}; "
            f"load {load_before} before, {_load()} after")
    return [
        Row(name, "chats completed", CONCURRENT_CHATS - len(asynced.failures), "chats",
            baseline=baseline(lambda r: CONCURRENT_CHATS - len(r.failures)), target=f">= {CONCURRENT_CHATS}",
            note=note + (f"; first failure: {asynced.failures[0]}" if asynced.failures else "")),
        Row(name, "tokens delivered", sum(asynced.tokens), "tokens", baseline=baseline(lambda r: sum(r.tokens)),
            target=f">= {expected}"),
        Row(name, "slowest chat / model alone", worst, "x",
            baseline=baseline(lambda r: max(r.durations) / model_alone), target="<= 1.2"),
        Row(name, "median chat / model alone", statistics.median(asynced.durations) / model_alone, "x",
            baseline=baseline(lambda r: statistics.median(r.durations) / model_alone)),
        *_start_burst_rows(name, asynced.start_burst),
        Row(name, f"arriving over {PACED_ARRIVALS_SECONDS:g} s: slowest chat / model alone",
            max(paced.durations) / model_alone, "x",
            note=(f"the same {CONCURRENT_CHATS} chats asked {PACED_ARRIVALS_SECONDS / CONCURRENT_CHATS * 1000:.0f} ms "
                  f"apart, all still in flight together; {len(paced.failures)} failed, "
                  f"{sum(paced.tokens)} tokens; page p99 {_percentile(paced.page_ms, 99):.0f} ms")),
        Row(name, f"arriving over {PACED_ARRIVALS_SECONDS:g} s: median chat / model alone",
            statistics.median(paced.durations) / model_alone, "x"),
        Row(name, "all chats wall time", asynced.wall, "s", baseline=baseline(lambda r: r.wall),
            note=f"CPU s: {asynced.cpu_note()}" + (f"; baseline: {synced.cpu_note()}" if synced is not None else "")),
        Row(name, f"GET {PAGE_PATH} p99 during load", _percentile(asynced.page_ms, 99), "ms",
            baseline=baseline(lambda r: _percentile(r.page_ms, 99)), target="<= 200",
            note=f"{len(asynced.page_ms)} page loads"
            + (f" (baseline: {len(synced.page_ms)})" if synced is not None else "")),
        Row(name, f"GET {PAGE_PATH} p50 during load", _percentile(asynced.page_ms, 50), "ms",
            baseline=baseline(lambda r: _percentile(r.page_ms, 50))),
    ]


def _start_burst_rows(name: str, burst: StartBurst | None) -> list[Row]:
    if burst is None:  # some chat never got a token; the failures say why
        return []
    cores = os.cpu_count() or 1
    return [
        Row(name, "last first token after", burst.seconds, "s",
            note=f"CPU s until then: {_cpu_note(burst.cpu)}; {cores} cores"),
        Row(name, "machine CPU busy until then", burst.machine_busy * 100, "%"),
    ]


def _sync_baseline_server(port: int, threads: int) -> None:
    """The synchronous baseline: a threaded WSGI server whose /bench/ask view retrieves, then calls the model
    inline and answers when it is done; every other path is the Django app (WSGI) itself."""
    import concurrent.futures
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.db import close_old_connections
    from openai import OpenAI

    from accounts.models import User
    from chat.prompting import build_prompt
    from documents.selectors import chunk_search

    django_app = get_wsgi_application()
    client = OpenAI(base_url=settings.OPENAI_BASE_URL, api_key="bench", max_retries=0)

    def ask(environ, start_response):
        close_old_connections()
        try:
            body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            user = User.objects.get(id=body["user_id"])
            hits = chunk_search(user=user, query=body["message"], k=8).hits
            prompt = build_prompt(question=body["message"], hits=hits, history=[], budget=8000,
                                  context_budget=3000)
            tokens, parts = 0, []
            stream = client.chat.completions.create(model=settings.LLM_MODEL, messages=prompt.messages,
                                                    stream=True, max_tokens=1024)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens += 1
                    parts.append(chunk.choices[0].delta.content)
        finally:
            close_old_connections()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"content": "".join(parts), "tokens": tokens}).encode()]

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/bench/ask":
            return ask(environ, start_response)
        return django_app(environ, start_response)

    class PooledServer(socketserver.ThreadingMixIn, WSGIServer):
        """A fixed pool of request threads, like a gthread worker: requests beyond it wait in the queue."""

        daemon_threads = True
        request_queue_size = 1024
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)

        def process_request(self, request, client_address):
            self.pool.submit(self.process_request_thread, request, client_address)

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    with make_server("127.0.0.1", port, app, server_class=PooledServer, handler_class=QuietHandler) as server:
        server.serve_forever()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "sync-baseline":
    _sync_baseline_server(int(sys.argv[2]), int(sys.argv[3]))
