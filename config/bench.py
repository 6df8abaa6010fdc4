"""`make bench`: runs every registered benchmark, prints one table and writes var/bench/latest.json.

Each app keeps its benchmarks in `<app>/benchmarks.py` and registers them with `@benchmark("name")`. A benchmark
returns a list of `Row`s: one figure each, with the baseline measured in the same run and the target it is held to.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

APPS_WITH_BENCHMARKS = ("billing", "documents", "chat")


@dataclass
class Row:
    benchmark: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    target: str | None = None  # e.g. ">= 200" or "<= 20"; compared against value
    note: str = ""

    @property
    def ok(self) -> bool | None:
        if not self.target:
            return None
        op, _, number = self.target.partition(" ")
        limit = float(number)
        return self.value >= limit if op == ">=" else self.value <= limit


BenchFn = Callable[[], list[Row]]
_REGISTRY: dict[str, BenchFn] = {}


def benchmark(name: str) -> Callable[[BenchFn], BenchFn]:
    def register(fn: BenchFn) -> BenchFn:
        _REGISTRY[name] = fn
        return fn

    return register


def _format_table(rows: list[Row]) -> str:
    header = ("benchmark", "metric", "value", "unit", "baseline", "target", "ok")
    lines = [header]
    for row in rows:
        ok = {True: "yes", False: "NO", None: "-"}[row.ok]
        baseline = "-" if row.baseline is None else f"{row.baseline:.4g}"
        lines.append(
            (row.benchmark, row.metric, f"{row.value:.4g}", row.unit, baseline, row.target or "-", ok)
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines
    )


def run(selected: list[str] | None = None, out_dir: Path | None = None) -> list[Row]:
    for app in APPS_WITH_BENCHMARKS:
        try:
            importlib.import_module(f"{app}.benchmarks")
        except ModuleNotFoundError as exc:
            if exc.name != f"{app}.benchmarks":
                raise
    rows: list[Row] = []
    timings: dict[str, float] = {}
    for name, fn in _REGISTRY.items():
        if selected and not any(name.startswith(s) for s in selected):
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        rows.extend(fn())
        timings[name] = round(time.perf_counter() - started, 2)
    print(_format_table(rows))
    out_dir = out_dir or Path(os.environ.get("DATA_DIR", "var")) / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "seconds": timings,
        "rows": [asdict(row) | {"ok": row.ok} for row in rows],
    }
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out_dir / 'latest.json'}")
    return rows
