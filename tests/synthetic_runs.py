"""Synthetic stored runs: run directories shaped like the runner's, whose raw rows a test chooses.

Like tests/fixtures/results (copies of real runs), each run directory holds ``run.json``,
``tasks.parquet`` and ``requests.parquet``; unlike them, the rows are drawn from a seeded distribution,
so a test can ask for a 3x effect, a few percent, single runs or too few tasks. ``run.json``'s figures
and checks are computed from those rows by `benchmarks.measure.summarise`, the runner's own code, so
the stored figures and the raw rows agree exactly as in a real run. No test asserts the numbers drawn:
only what the outputs must say about them (a winner, no clear winner, too few samples).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import matrix, measure, store

#: Every synthetic run's warm-up (discarded, as in a real load run).
WARMUP_S = 1.0
#: The task every synthetic run sends, and the service time it takes (ms).
TASK, ARGS, SERVICE_MS = "sleep_ms", {"ms": 20}, 20.0
#: Spread of the end-to-end latencies within a run (sigma of their log): a right-skewed tail.
WITHIN_RUN_SIGMA = 0.3
#: Spread of a run's latency scale from repeat to repeat (sigma of its log): run-to-run noise.
BETWEEN_RUNS_SIGMA = 0.02


def _digest(task: str, args: dict[str, Any]) -> str:
    return hashlib.sha256(f"{task}{sorted(args.items())}".encode()).hexdigest()[:16]


def write_run(root: Path, *, backend: str = "rq", serializer: str = "json", processes: int = 2, rate: float = 30.0,
              tasks: int = 150, median_e2e_ms: float = 40.0, repeat: int = 0, seed: int = 0) -> str:
    """One load run of `backend` (latency scenario, `TASK` at `rate`/s) whose `tasks` tasks scheduled in
    the measured window have end-to-end latencies around `median_e2e_ms` (log-normal); returns its run id.

    `seed` and `repeat` pick the draw: the same arguments always write the same run.
    """
    spec: dict[str, Any] = {
        "backend": backend, "broker": "redis", "serializer": serializer, "processes": processes, "threads": 1,
        "prefetch": None, "acks_late": None, "routing": "shared", "long_threshold_ms": 100, "results": True,
        "scenario": "latency", "mode": "load", "task": TASK, "args": ARGS, "rate": rate, "arrival": "constant",
        "warmup_s": WARMUP_S, "duration_s": tasks / rate, "drain_timeout_s": 60, "api_workers": 2,
        "api_threads": 4, "options": {}}
    run_id = matrix.run_id(spec, repeat)
    rng = np.random.default_rng([seed, repeat, int(median_e2e_ms * 1000), tasks, processes])
    scale_ms = median_e2e_ms * float(np.exp(rng.normal(0.0, BETWEEN_RUNS_SIGMA)))
    start_ns = 1_000_000_000_000
    count = int(round((WARMUP_S + spec["duration_s"]) * rate))
    scheduled = start_ns + (np.arange(count) * 1e9 / rate).astype("int64")
    e2e_ms = np.maximum(scale_ms * np.exp(rng.normal(0.0, WITHIN_RUN_SIGMA, size=count)), SERVICE_MS + 2.0)
    table, requests = raw_tables(run_id, scheduled, e2e_ms)
    digest = _digest(TASK, ARGS)
    window = measure.load_window(table, requests, WARMUP_S, spec["duration_s"])
    summary = measure.summarise(table, requests, window, slots=processes, offered_rate_per_s=rate)
    # One CPU-second per run, all in the workers: tasks per CPU-second is then the tasks that finished.
    summary["figures"]["resources"] = {"workers": {"cpu_s": 1.0, "peak_rss_mib": 50.0}}
    summary["figures"]["tasks_per_cpu_s"] = summary["figures"]["finished_ok"] / 1.0
    record = {
        "schema_version": store.RESULT_SCHEMA_VERSION, "harness_version": "0.1.0", "run_id": run_id,
        "matrix": "synthetic", "repeat": repeat, "spec": spec, "slots": processes, "status": summary["verdict"],
        "detail": "", "started_at": "2026-01-01T00:00:00+00:00",
        "environment": {"host": "synthetic", "cpu_model": "synthetic CPU", "cpu_count_logical": 2,
                        "python": "3.11", "packages": {}},
        "task_kinds": [{"task": TASK, "args": ARGS, "digest": digest}],
        "summary": summary,
    }
    run_dir = Path(root) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    store.write_tasks_table(run_dir, table)
    store.write_requests_table(run_dir, requests)
    store.write_run(run_dir, record)
    return run_id


def raw_tables(run_id: str, scheduled_ns: np.ndarray, e2e_ms: np.ndarray, task: str = TASK,
               args: dict[str, Any] | None = None, service_ms: float = SERVICE_MS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tasks, requests) as the runner stores them: one task per scheduled time, finished `e2e_ms` after it
    (its last `service_ms` in the worker), sent 0.1 ms late and enqueued 1 ms later."""
    args = ARGS if args is None else args
    count = len(scheduled_ns)
    scheduled = np.asarray(scheduled_ns, dtype="int64")
    sent = scheduled + 100_000  # 0.1 ms of schedule lag
    enqueued = sent + 1_000_000  # 1 ms through the API
    finished = scheduled + (np.asarray(e2e_ms) * 1e6).astype("int64")
    started = np.maximum(finished - int(service_ms * 1e6), enqueued)
    ids = [f"{run_id}-{i}" for i in range(count)]
    table = pd.DataFrame({
        "id": ids, "task": task, "digest": _digest(task, args), "queue": "default",
        "scheduled_ns": pd.array(scheduled, dtype="Int64"), "sent_ns": pd.array(sent, dtype="Int64"),
        "enqueued_ns": pd.array(enqueued, dtype="Int64"), "attempt": 1,
        "started_ns": pd.array(started, dtype="Int64"), "n_started": 1, "worker_pid": pd.array([1] * count, dtype="Int64"),
        "worker_host": "synthetic", "finished_ns": pd.array(finished, dtype="Int64"), "n_finished": 1,
        "outcome": "ok", "error": None})
    requests = pd.DataFrame({"scheduled_ns": scheduled, "sent_ns": sent, "done_ns": enqueued,
                             "status": np.full(count, 202, dtype="int64"), "task": pd.array([task] * count, dtype="string"),
                             "task_id": pd.array(ids, dtype="string")})
    return table, requests


def task_kind(task: str = TASK, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run.json ``task_kinds`` entry whose digest matches `raw_tables`' rows."""
    args = ARGS if args is None else args
    return {"task": task, "args": args, "digest": _digest(task, args)}


def write_configuration(root: Path, repeats: int, **kwargs: Any) -> list[str]:
    """`repeats` runs of one configuration (repeat 0, 1, ...): its run ids."""
    return [write_run(root, repeat=repeat, **kwargs) for repeat in range(repeats)]


# --- tune runs: drains of no-op tasks and the routing mix, with knob settings ----------------------------


def _tune_spec(backend: str, mode: str, settings: dict[str, Any], slots: int) -> dict[str, Any]:
    """A resolved spec as `queuebench tune` writes it, with `settings` (knob -> value) applied: spec keys
    (prefetch, acks_late, threads at equal slots) at the top, the rest as options."""
    threads = int(settings.get("threads", 1))
    spec: dict[str, Any] = {
        "backend": backend, "broker": "redis", "serializer": "json", "processes": slots // threads,
        "threads": threads, "prefetch": settings.get("prefetch"), "acks_late": settings.get("acks_late"),
        "routing": "shared", "long_threshold_ms": 100, "results": False, "mode": mode,
        "drain_stall_s": 30, "drain_timeout_s": 600,
        "options": {k: v for k, v in settings.items() if k not in ("prefetch", "acks_late", "threads")}}
    if mode == "drain":
        spec |= {"task": "noop", "args": {}, "tasks": 600}
    else:
        spec |= {"scenario": "routing_mix", "rate": 10, "arrival": "constant", "warmup_s": WARMUP_S,
                 "duration_s": 10.0, "api_workers": 2, "api_threads": 4}
    return spec


def _store(root: Path, spec: dict[str, Any], repeat: int, matrix_name: str, table: pd.DataFrame,
           requests: pd.DataFrame | None, window: measure.Window, kinds: list[dict[str, Any]],
           offered: float | None) -> str:
    run_id = matrix.run_id(spec, repeat)
    slots = spec["processes"] * spec["threads"]
    summary = measure.summarise(table, requests, window, slots=slots, offered_rate_per_s=offered)
    record = {
        "schema_version": store.RESULT_SCHEMA_VERSION, "harness_version": "0.1.0", "run_id": run_id,
        "matrix": matrix_name, "repeat": repeat, "spec": spec, "slots": slots, "status": "ok", "detail": "",
        "started_at": "2026-01-01T00:00:00+00:00",
        "environment": {"host": "synthetic", "cpu_model": "synthetic CPU", "cpu_count_logical": 2,
                        "python": "3.11", "packages": {}},
        "task_kinds": kinds, "summary": summary}
    run_dir = Path(root) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    store.write_tasks_table(run_dir, table)
    if requests is not None:
        store.write_requests_table(run_dir, requests)
    store.write_run(run_dir, record)
    return run_id


def write_tune_drain(root: Path, *, backend: str = "dramatiq", settings: dict[str, Any] | None = None,
                     throughput_per_s: float = 500.0, repeat: int = 0, slots: int = 2, matrix_name: str = "tune-x",
                     noise: float = 0.03, seed: int = 0) -> str:
    """One drain of 600 no-op tasks whose throughput is about `throughput_per_s` (log-normal noise of
    sigma `noise` from repeat to repeat); returns its run id."""
    settings = dict(settings or {})
    spec = _tune_spec(backend, "drain", settings, slots)
    rng = np.random.default_rng([seed, repeat, int(throughput_per_s * 1000), len(json_key(settings))])
    rate = throughput_per_s * float(np.exp(rng.normal(0.0, noise)))
    count = spec["tasks"]
    start_ns = 1_000_000_000_000
    starts = start_ns + (np.arange(count) * 1e9 / rate).astype("int64")
    run_id = matrix.run_id(spec, repeat)
    # Scheduled = started here (a drain has no schedule); each task takes 0.1 ms and ends the rate's step.
    table, _ = raw_tables(run_id, starts, np.full(count, 1e3 / rate), task="noop", args={}, service_ms=0.1)
    table["scheduled_ns"] = pd.array([None] * count, dtype="Int64")
    window = measure.drain_window(table)
    return _store(root, spec, repeat, matrix_name, table, None, window, [task_kind("noop", {})], None)


def write_tune_routing(root: Path, *, backend: str = "dramatiq", settings: dict[str, Any] | None = None,
                       short_p95_ms: float = 50.0, repeat: int = 0, slots: int = 2, matrix_name: str = "tune-x",
                       noise: float = 0.03, seed: int = 0) -> str:
    """One routing-mix run (9/s of sleep_ms 10, 1/s of sleep_ms 1000) whose short tasks' end-to-end p95 is
    about `short_p95_ms`; returns its run id."""
    settings = dict(settings or {})
    spec = _tune_spec(backend, "load", settings, slots)
    rng = np.random.default_rng([seed, repeat, int(short_p95_ms * 1000), len(json_key(settings))])
    scale = short_p95_ms / float(np.exp(1.645 * WITHIN_RUN_SIGMA)) * float(np.exp(rng.normal(0.0, noise)))
    run_id = matrix.run_id(spec, repeat)
    seconds = WARMUP_S + spec["duration_s"]
    start_ns = 1_000_000_000_000
    short_at = start_ns + (np.arange(int(seconds * 9)) * 1e9 / 9).astype("int64")
    long_at = start_ns + 50_000_000 + (np.arange(int(seconds)) * 1e9).astype("int64")
    short_e2e = np.maximum(scale * np.exp(rng.normal(0.0, WITHIN_RUN_SIGMA, size=len(short_at))), 12.0)
    short_t, short_r = raw_tables(run_id + "-s", short_at, short_e2e, task="sleep_ms", args={"ms": 10},
                                  service_ms=10.0)
    long_t, long_r = raw_tables(run_id + "-l", long_at, np.full(len(long_at), 1100.0), task="sleep_ms",
                                args={"ms": 1000}, service_ms=1000.0)
    table = pd.concat([short_t, long_t], ignore_index=True).sort_values("scheduled_ns", ignore_index=True)
    requests = pd.concat([short_r, long_r], ignore_index=True).sort_values("scheduled_ns", ignore_index=True)
    window = measure.load_window(table, requests, WARMUP_S, spec["duration_s"])
    kinds = [task_kind("sleep_ms", {"ms": 10}), task_kind("sleep_ms", {"ms": 1000})]
    return _store(root, spec, repeat, matrix_name, table, requests, window, kinds, 10.0)


def json_key(settings: dict[str, Any]) -> str:
    return str(sorted(settings.items()))
