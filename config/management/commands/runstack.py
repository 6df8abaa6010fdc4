"""`make run`: the ASGI server and both Celery workers in one foreground command, with prefixed logs.

Ctrl-C stops them all; if one of them dies, the others are stopped too so that a half-running stack never
pretends to be healthy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.redis_service import RedisUnavailable, redis_reachable, redis_server_command, wait_for_redis

COLORS = {"web": "36", "ingest": "33", "llm": "35", "redis": "32"}
# Token events are a few dozen bytes each: compressing every one of them (permessage-deflate, which browsers
# offer) costs the server and the client CPU per token and saves almost nothing on the wire.
WEB_SERVER_OPTIONS = ["--ws-per-message-deflate", "false"]
# The llm worker's pool: Celery's threads pool with its threads started up front (chat.runtime.TaskPool).
# Celery's command line takes a pool class only as `-P custom` with this variable set.
LLM_POOL_ENV = {"CELERY_CUSTOM_WORKER_POOL": "chat.runtime:TaskPool"}


class Command(BaseCommand):
    help = "Serve Docent: the ASGI server on 127.0.0.1:$PORT plus the ingest and llm workers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.PORT)

    def handle(self, *args, host: str, port: int, **options) -> None:
        self.processes: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()
        self._ensure_redis()
        python = sys.executable
        celery = [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--without-gossip",
                  "--without-mingle"]
        commands = {
            "web": [python, "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", str(port),
                    "--no-access-log" if not settings.DEBUG else "--access-log", "--timeout-graceful-shutdown", "5",
                    *WEB_SERVER_OPTIONS],
            "ingest": [*celery, "-Q", "ingest", "-P", "prefork", "-c", str(settings.INGEST_CONCURRENCY),
                       "-n", "ingest@%h", "--prefetch-multiplier", "1", "--max-tasks-per-child", "50",
                       # beat runs the periodic sweeps (stuck documents); docker-compose runs it as its own service
                       "-B", "-s", str(settings.DATA_DIR / "celerybeat-schedule")],
            "llm": [*celery, "-Q", "llm", "-P", "custom", "-c", str(settings.LLM_CONCURRENCY),
                    "-n", "llm@%h", "--prefetch-multiplier", "1"],
        }
        for name, command in commands.items():
            self._spawn(name, command, env=LLM_POOL_ENV if name == "llm" else None)
        self.stdout.write(f"Docent is starting on http://{host}:{port}/ (Ctrl-C stops everything)")
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        exit_code = 0
        try:
            while not self.stopping.is_set():
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with code {process.returncode}; stopping the others.")
                        exit_code = process.returncode or 1
                        self.stopping.set()
                        break
                time.sleep(0.3)
        except KeyboardInterrupt:
            pass
        finally:
            self._stop_all()
        if exit_code:
            raise CommandError(f"a process exited with code {exit_code}")

    def _ensure_redis(self) -> None:
        url = settings.REDIS_URL
        if redis_reachable(url):
            return
        try:
            self._spawn("redis", redis_server_command(url))  # a child: Ctrl-C stops it with the rest
            wait_for_redis(url)
        except RedisUnavailable as exc:
            self._stop_all()
            raise CommandError(str(exc)) from exc

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}), start_new_session=True,
        )
        self.processes[name] = process
        prefix = f"\033[{COLORS.get(name, '0')}m{name:<7}|\033[0m " if sys.stdout.isatty() else f"{name:<7}| "
        threading.Thread(target=self._pump, args=(process, prefix), daemon=True).start()

    def _pump(self, process: subprocess.Popen, prefix: str) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()

    def _stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
