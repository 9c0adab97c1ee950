"""What the harness costs, measured as ratios in one run (`queuebench overhead`; see benchmarks/NOTES.md).

0. The bare floor (`measure_floor`): `benchmarks/floor_app.py` (Flask, one Redis INCR per request) under
   the API's own gunicorn settings, on a private redis-server started for it, driven by plain Locust
   (`scenarios/floor.py`: `FastHttpUser`, closed loop, `FLOOR_USERS` users). Its rate is counted by the
   server (the INCR counter, read at the start and end of the measured window), as the harness's
   achieved rate is (the API's `sent` rows in the window). Measured before and after the harness runs,
   so drift of a shared machine shows; each harness path is reported as a ratio to it.

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
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import redis

from api import wsgi
from backends import ledger, workload
from benchmarks import brokers
from benchmarks.procs import Supervisor, wait_until

#: Locust users of the floor's closed loop: each posts as soon as its last answer came. 20 keeps the API's
#: 8 threads (2 workers x 4) busy with requests waiting behind them, as the harness's in-flight bound does.
FLOOR_USERS = 20
#: Seconds of the floor's load before its window opens, and the window's length.
FLOOR_WARMUP_S = 2.0
FLOOR_DURATION_S = 8.0
FLOOR_APP = "benchmarks.floor_app:app"


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


def floor_summary(floors: list[dict[str, Any]]) -> dict[str, Any]:
    """The floor's measurements before and after the harness runs, and their mean (the reference)."""
    rates = [f["requests_per_s"] for f in floors]
    return {"requests_per_s": statistics.mean(rates), "min": min(rates), "max": max(rates),
            "before": rates[0], "after": rates[-1], "runs": floors}


def with_floor_ratios(rows: list[dict[str, Any]], floor_per_s: float) -> list[dict[str, Any]]:
    """Each ceiling row with ``over_floor``: its median achieved rate / the floor's requests per second."""
    return [row | {"over_floor": row["achieved_per_s"] / floor_per_s if floor_per_s else None,
                   "over_floor_min": row["achieved_min"] / floor_per_s if floor_per_s else None,
                   "over_floor_max": row["achieved_max"] / floor_per_s if floor_per_s else None} for row in rows]


def over_offered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend, the achieved rate at its highest offered rate / at the next lower one: an over-offered
    generator that keeps sending at its ceiling gives about 1, a collapse far less."""
    out = []
    for backend in sorted({r["backend"] for r in rows}):
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["offered_per_s"])
        if len(mine) < 2 or not mine[-2]["achieved_per_s"]:
            continue
        low, high = mine[-2], mine[-1]
        out.append({"backend": backend, "low_per_s": low["offered_per_s"], "high_per_s": high["offered_per_s"],
                    "ratio": high["achieved_per_s"] / low["achieved_per_s"]})
    return out


def matrix_path() -> Path:
    return Path(__file__).resolve().parent / "matrices" / "overhead.toml"


def _tree_cpu_s(proc: Any) -> float:
    """CPU seconds of a supervised process and its live children."""
    total = 0.0
    for p in proc.tree():
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def measure_floor(workdir: Path, *, users: int = FLOOR_USERS, warmup_s: float = FLOOR_WARMUP_S,
                  duration_s: float = FLOOR_DURATION_S, locust_processes: int = 1) -> dict[str, Any]:
    """The bare floor's requests/s: floor_app under the API's gunicorn settings, on a private redis-server,
    driven by plain Locust; counted by the server over `duration_s` after `warmup_s`. Everything it
    starts is stopped before it returns."""
    workdir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor()
    try:
        broker = brokers.start_private_redis(supervisor, workdir, name="floor-redis")
        port = brokers.free_port()
        argv = wsgi.gunicorn_argv(port, wsgi.DEFAULT_WORKERS, wsgi.DEFAULT_THREADS)
        argv[-1] = FLOOR_APP
        env = dict(os.environ, FLOOR_REDIS_URL=broker.url, PYTHONUNBUFFERED="1")
        api = supervisor.start("floor-api", argv, env=env, log_path=workdir / "logs" / "floor-api.log")
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if not api.alive():
                raise RuntimeError(f"the floor app exited:\n{api.log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout_s=30, interval_s=0.05, what="the floor app")
        run_s = int(warmup_s + duration_s + 2)
        locust_argv = [str(Path(sys.executable).parent / "locust"), "-f",
                       str(wsgi.PROJECT_ROOT / "scenarios" / "floor.py"), "--host", url, "--headless",
                       "-u", str(users), "-r", str(users), "-t", f"{run_s}s", "--only-summary",
                       "--loglevel", "WARNING", "--stop-timeout", "2"]
        if locust_processes > 1:
            locust_argv += ["--processes", str(locust_processes)]
        client = redis.Redis.from_url(broker.url)
        locust = supervisor.start("floor-locust", locust_argv, env=env, cwd=workdir,
                                  log_path=workdir / "logs" / "floor-locust.log")
        time.sleep(warmup_s)
        count0, t0 = int(client.get("queuebench:floor:requests") or 0), time.monotonic()
        cpu0 = {"api": _tree_cpu_s(api), "locust": _tree_cpu_s(locust)}
        time.sleep(duration_s)
        count1, t1 = int(client.get("queuebench:floor:requests") or 0), time.monotonic()
        cpu1 = {"api": _tree_cpu_s(api), "locust": _tree_cpu_s(locust)}
        client.close()
        wait_until(lambda: not locust.alive(), timeout_s=run_s + 30, interval_s=0.1, what="the floor's Locust")
        n = count1 - count0
        return {"requests_per_s": n / (t1 - t0), "requests": n, "window_s": t1 - t0, "users": users,
                "locust_processes": locust_processes,
                "cpu_us_per_request": {k: (cpu1[k] - cpu0[k]) / n * 1e6 if n else None for k in cpu0},
                "api": {"server": "gunicorn gthread", "workers": wsgi.DEFAULT_WORKERS,
                        "threads": wsgi.DEFAULT_THREADS}}
    finally:
        supervisor.stop_all(timeout_s=2)
