"""What the harness costs, measured as ratios in one run (`queuebench overhead`; see benchmarks/NOTES.md).

1. The ledger: one task writes three rows (sent, started, finished). A tight in-process loop submits a
   no-op task's rows with the ledger on and with it off, alternating, and reports the difference per
   task, beside what one task costs the baseline backend end to end in CPU (from step 2's runs).
2. The API + Locust path: `benchmarks/matrices/overhead.toml` drives the `discard` backend (tasks accepted
   and dropped: no broker) and the `baseline` backend (bare Redis) at rising offered rates. The
   achieved rate of `discard` is the ceiling of the harness's own path on this machine; the ratio
   baseline / discard at each offered rate is how much of it a minimal queue leaves.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from backends import ledger, workload


def _loop(n: int) -> float:
    """Seconds for `n` no-op tasks' worth of ledger calls plus the task body."""
    started = time.perf_counter()
    for i in range(n):
        meta = {"id": f"{i:032x}", "sent_ns": 0}
        ledger.record_sent(task_id=meta["id"], task="noop", args={}, queue="default", scheduled_ns=None,
                           sent_ns=0, enqueued_ns=0)
        workload.execute("noop", {}, meta, 1)
    return time.perf_counter() - started


def ledger_cost(n: int = 20_000, rounds: int = 5) -> dict[str, Any]:
    """Microseconds per task with the ledger writing and with it off (median of alternating rounds)."""
    on, off = [], []
    before = os.environ.get(ledger.LEDGER_ENV)
    try:
        with tempfile.TemporaryDirectory(prefix="queuebench-ledger-cost-") as directory:
            for _ in range(rounds):
                os.environ[ledger.LEDGER_ENV] = directory
                on.append(_loop(n) / n * 1e6)
                os.environ.pop(ledger.LEDGER_ENV, None)
                off.append(_loop(n) / n * 1e6)
    finally:
        if before is None:
            os.environ.pop(ledger.LEDGER_ENV, None)
        else:
            os.environ[ledger.LEDGER_ENV] = before
    with_us, without_us = statistics.median(on), statistics.median(off)
    return {"tasks_per_round": n, "rounds": rounds, "with_ledger_us_per_task": with_us,
            "without_ledger_us_per_task": without_us, "ledger_us_per_task": with_us - without_us,
            "spread_us": [min(on), max(on)]}


def ceiling_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend and offered rate: achieved rates over repeats (median, min, max) and CPU per task."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for record in records:
        figures = (record.get("summary") or {}).get("figures") or {}
        if figures.get("achieved_rate_per_s") is None:
            continue
        groups.setdefault((record["spec"]["backend"], float(record["spec"]["rate"])), []).append(record)
    rows = []
    for (backend, rate), group in sorted(groups.items()):
        achieved = [r["summary"]["figures"]["achieved_rate_per_s"] for r in group]
        cpu_per_task = []
        for r in group:
            figures = r["summary"]["figures"]
            total = sum(c["cpu_s"] for c in (figures.get("resources") or {}).values())
            if figures.get("finished_ok"):
                cpu_per_task.append(total / figures["finished_ok"] * 1e6)
        rows.append({"backend": backend, "offered_per_s": rate, "achieved_per_s": statistics.median(achieved),
                     "achieved_min": min(achieved), "achieved_max": max(achieved), "repeats": len(group),
                     "cpu_us_per_task": statistics.median(cpu_per_task) if cpu_per_task else None,
                     "verdicts": sorted({r["status"] for r in group})})
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """baseline / discard achieved rate at each offered rate."""
    by = {(r["backend"], r["offered_per_s"]): r for r in rows}
    out = []
    for (backend, rate), row in sorted(by.items()):
        if backend != "baseline" or ("discard", rate) not in by:
            continue
        ceiling = by[("discard", rate)]["achieved_per_s"]
        out.append({"offered_per_s": rate, "discard_per_s": ceiling, "baseline_per_s": row["achieved_per_s"],
                    "baseline_over_discard": row["achieved_per_s"] / ceiling if ceiling else None})
    return out


def matrix_path() -> Path:
    return Path(__file__).resolve().parent / "matrices" / "overhead.toml"
