"""The results store: what a results directory holds, and every read and write of it.

The runner writes through this module and analysis reads through it; neither imports the other (as
ann-benchmarks' ``results.py`` sits between its runner and its plots). Layout (results/README.md says
what each file holds):

    <results>/
      summary.csv                 one tidy row per run directory (`write_summary`, from run.json files)
      <run_id>/                   one directory per measured point (cell x repeat)
        run.json                  the run's record, written last and atomically (`write_run`)
        tasks.parquet             one row per execution (`write_tasks_table`, `read_tasks_table`)
        requests.parquet          load mode: one row per HTTP request (`write_requests_table`, ...)
        requests/*.csv            the scenario's raw request logs, one per Locust process (`read_requests`)
        locust*                   Locust's own CSV, HTML and JSON output (`locust_post_counts` reads it)
        locust_workers.json       load_workers > 1: the Locust master's roll call of its workers
                                  (`read_locust_workers`)
        resources.csv             the sampler's CPU and memory rows (`read_resources`; on an inventory, every
                                  host's rows on the coordinator's clock, with a host column)
        machine.csv               inventory runs: each host's whole-machine CPU and memory (`read_machine`)
        queue_depths.csv          the sampler's queue depths
        ledger/ logs/             the stack's raw ledger and process logs (`benchmarks.stack` names them)
      searches/<search_id>.json   `queuebench search` records (`write_search`, `read_searches`)
      sweep.json                  the last sweep into this directory: where its wall time went (`write_sweep`)

Pure file handling: nothing here starts a process or computes a verdict.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import measure

#: Version of what a run directory holds. Changes:
#:   1 - first version: run.json, tasks.parquet, requests.parquet, resources.csv, queue_depths.csv.
#:       Added later without changing any figure (readers may find them absent): run.json's phases_s,
#:       drain_ended_by, drain_idle_s, drain_outstanding (and drain_workers_gone); the spec's drain_stall_s;
#:       fault runs: the spec's fault keys, run.json's ``faults`` (docs/FAULTS.md), drain_ended_by
#:       ``fault-deadline``, and ``replaced_by`` on the checks a fault breaks by design. Later: run.json's
#:       ``retry_policy``, the check ``retries_as_promised`` and the figure ``failed_as_promised`` (the
#:       ``poison`` task); ``faults.failed_as_promised``, ``faults.e2e_max_during_fault_ms``,
#:       ``e2e_p99_during_fault_interval_ms`` and ``_note``; ``faults.e2e_p99_during_fault_ms`` is null when its
#:       n cannot bound a p99 (the quantile rule; runs before this printed the nearest-rank value anyway).
#:       run.json's generator (overload policy, max_in_flight, stop_wait_s, processes) and the figures
#:       unanswered_at_stop, unanswered_accepted, not_202_accepted; request_id in tasks.parquet and
#:       requests.parquet, and status -1 (unanswered at stop) in requests.parquet.
#:       run.json's brokers records each broker's topology (single | sentinel | cluster), persistence,
#:       queue type (RabbitMQ), role, eviction policy and rtt_ms (the fastest of a few round trips from the
#:       coordinator, rtt_from); the spec's queue_type (present only when not classic).
#:       Distributed load (the spec's load_workers > 1): locust_workers.json, run.json's generator
#:       load_workers and workers, and the figure load_workers (the roll call's verdict).
#:       Runs on an inventory (`benchmarks.deploy`): run.json's deployment, clocks and queue_leftovers (and
#:       stop_error), the broker's rtt_ms_by_host and rtt_method (and rtt_errors), the figure
#:       executions_by_host, and the run directory's hosts/<host>/ (collected files). Several loadgen and
#:       api hosts: run.json's generator.hosts and generator.workers.by_host, api.hosts, the figures
#:       requests_by_loadgen_host and load_workers.by_host, and request ids ``<host>:<pid>-<n>``.
#:       ``faults.contract.publish_confirms`` (a RabbitMQ restart's ``persistence`` now follows it) and
#:       Celery's ``settings.recovery``.
#:       Inventory runs sample resources on every host: resources.csv gains a ``host`` column (its other
#:       columns and figures["resources"] as a local run's, summed over hosts), machine.csv (each host's
#:       whole machine), the figure resources_by_host, and the manifests' resource_files/resource_rows.
#:       Drain cells on an inventory: the coordinator's sent rows in ledger/ beside the hosts' corrected rows.
RESULT_SCHEMA_VERSION = 1
#: Version of a search record (``searches/<search_id>.json``). Changes:
#:   1 - first version: config, slo, factor, steps, knee_rate_per_s, first_unsustained_rate_per_s,
#:       evidence_run_ids, stopped_because.
#:   2 - steps carry e2e_tasks (the fewest end-to-end latencies a repeat's quantile rests on); a step whose
#:       tasks cannot bound the SLO's quantile has verdict "too-few-samples" and e2e_ms null (the quantile
#:       rule, `verdicts.bounds`), where version 1 judged it on the raw figure.
SEARCH_SCHEMA_VERSION = 2
#: Search record versions this code reads: version 2 only adds to version 1 (its knees were judged
#: without the quantile rule, and the report says so beside them).
READABLE_SEARCH_VERSIONS = (1, 2)
#: Version of ``sweep.json``. Changes:
#:   1 - first version: matrix, started_at, finished_at, ended, wall_s, window_s, measured_fraction,
#:       cells_run, phases_s (summed over the cells), cells (run_id, status, wall_s, window_s, phases_s).
SWEEP_SCHEMA_VERSION = 1

RUN_JSON = "run.json"
TASKS_TABLE = "tasks.parquet"
REQUESTS_TABLE = "requests.parquet"
#: The scenario's raw request logs (a directory of CSV files, one per Locust process).
REQUEST_LOGS_DIR = "requests"
#: Prefix of Locust's own output files (``locust_stats.csv``..., ``locust.html``, ``locust.json``).
LOCUST_PREFIX = "locust"
#: A distributed run's roll call of Locust workers, kept by its master (scenarios/openloop.py's RollCall).
LOCUST_WORKERS_JSON = "locust_workers.json"
RESOURCES_CSV = "resources.csv"
#: An inventory run's whole-machine samples, per host (`benchmarks.deploy.host` ``sample`` says the columns).
MACHINE_CSV = "machine.csv"
QUEUE_DEPTHS_CSV = "queue_depths.csv"
SUMMARY_CSV = "summary.csv"
SEARCHES_DIR = "searches"
SWEEP_JSON = "sweep.json"
#: Statuses after which a cell is done (not redone without --force); any other status, or no run.json
#: at all, means the cell is measured again on the next invocation.
DONE = ("ok", "generator-limited", "failed", "skipped")


# --- run.json -----------------------------------------------------------------------------------------


def run_dirs(root: Path) -> list[Path]:
    """Every run directory directly under `root` (one holding a run.json), in name order."""
    return [path.parent for path in sorted(Path(root).glob(f"*/{RUN_JSON}"))]


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a run directory (holds a run.json)."""
    return (Path(path) / RUN_JSON).exists()


def load_run(run_dir: Path) -> dict[str, Any]:
    """The run's record; raises OSError or ValueError when run.json is missing or unreadable."""
    return json.loads((Path(run_dir) / RUN_JSON).read_text())


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when run.json is missing or unreadable (the run is not done)."""
    try:
        return load_run(run_dir)
    except (OSError, ValueError):
        return None


def is_done(run_dir: Path) -> bool:
    """Whether the run needs no measuring again: its run.json exists with a status in `DONE`."""
    record = read_run(run_dir)
    return record is not None and record.get("status") in DONE


def plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (strict JSON has neither), numpy scalars and arrays
    plain numbers and lists, mappings plain dicts with string keys."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` as strict JSON, atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plain(data), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_run(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write the run's record; the runner writes it last, so a run.json means the run ended."""
    path = Path(run_dir) / RUN_JSON
    write_json(path, record)
    return path


# --- raw tables ---------------------------------------------------------------------------------------


def write_tasks_table(run_dir: Path, tasks: pd.DataFrame) -> Path:
    """Store one row per execution as ``tasks.parquet``."""
    path = Path(run_dir) / TASKS_TABLE
    tasks.to_parquet(path, index=False)
    return path


def read_tasks_table(run_dir: Path) -> pd.DataFrame:
    """The run's ``tasks.parquet`` (one row per execution); an empty frame when the run has none."""
    path = Path(run_dir) / TASKS_TABLE
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def write_requests_table(run_dir: Path, requests: pd.DataFrame) -> Path:
    """Store one row per HTTP request as ``requests.parquet``."""
    path = Path(run_dir) / REQUESTS_TABLE
    requests.to_parquet(path, index=False)
    return path


def read_requests_table(run_dir: Path) -> pd.DataFrame | None:
    """The run's ``requests.parquet`` (load mode), else None (drain mode sends no request)."""
    path = Path(run_dir) / REQUESTS_TABLE
    return pd.read_parquet(path) if path.exists() else None


def read_requests(directory: Path) -> pd.DataFrame:
    """The scenario's raw request rows (one CSV per Locust process) as one frame, ns as int64. Status -1: the
    request was unanswered when the load phase ended (`scenarios/inflight.py`); request_id is its
    ``X-Request-Id`` (absent in runs made before it existed).

    A Locust process killed before its buffered log was written leaves an empty file, or a last line cut
    short: those hold no complete row and are skipped (its requests then lack raw rows, which the
    ledger check reports)."""
    numbers = ("scheduled_ns", "sent_ns", "done_ns", "status")
    frames = [pd.read_csv(p, dtype={"task_id": "string", "task": "string", "request_id": "string"})
              for p in sorted(directory.glob("*.csv")) if p.stat().st_size]
    frames = [f.dropna(subset=[c for c in numbers if c in f]) for f in frames if len(f)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in numbers})
    frame = pd.concat(frames, ignore_index=True)
    for column in numbers:
        frame[column] = frame[column].astype("int64")
    return frame.sort_values("scheduled_ns").reset_index(drop=True)


def locust_post_counts(run_dir: Path) -> tuple[int, int] | None:
    """Locust's own final (requests, failures) of ``POST /tasks`` (its --json-file), or None if absent."""
    path = Path(run_dir) / f"{LOCUST_PREFIX}.json"
    if not path.exists():
        return None
    entries = [e for e in json.loads(path.read_text()) if e.get("name") == "POST /tasks"]
    return (sum(int(e.get("num_requests", 0)) for e in entries),
            sum(int(e.get("num_failures", 0)) for e in entries))


def read_locust_workers(run_dir: Path) -> dict[str, Any] | None:
    """The Locust master's roll call of its workers (``locust_workers.json``: expected, max_wait_s, and per
    client id its worker index, whether it reported the end of its load and the raw rows it wrote), or
    None when the run has none (one Locust process, or a master that never started)."""
    try:
        return json.loads((Path(run_dir) / LOCUST_WORKERS_JSON).read_text())
    except (OSError, ValueError):
        return None


def read_resources(run_dir: Path) -> pd.DataFrame:
    """The sampler's ``resources.csv``; an empty frame when the run has none."""
    return _read_csv(Path(run_dir) / RESOURCES_CSV)


def read_machine(run_dir: Path) -> pd.DataFrame:
    """An inventory run's ``machine.csv``; an empty frame when the run has none."""
    return _read_csv(Path(run_dir) / MACHINE_CSV)


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


# --- summary.csv --------------------------------------------------------------------------------------


def summary_rows(out_dir: Path) -> list[dict[str, Any]]:
    """One flat row per run directory under `out_dir`: spec, status, figures, resources, failed checks."""
    rows = []
    for run_dir in run_dirs(out_dir):
        record = read_run(run_dir)
        if record is None:
            continue
        row: dict[str, Any] = {"run_id": record["run_id"], "matrix": record.get("matrix"),
                               "repeat": record.get("repeat"), "status": record.get("status"),
                               "detail": record.get("detail"), "schema_version": record.get("schema_version"),
                               "slots": record.get("slots"), "drain_ended_by": record.get("drain_ended_by")}
        spec = dict(record.get("spec", {}))
        options = spec.pop("options", {}) or {}
        args = spec.pop("args", {}) or {}
        row |= spec
        row["args"] = json.dumps(args, sort_keys=True)
        row |= {f"{spec.get('backend')}.{k}": v for k, v in options.items()}
        summary = record.get("summary") or {}
        row |= measure.flatten({k: v for k, v in (summary.get("figures") or {}).items() if k != "resources"})
        for component, use in ((summary.get("figures") or {}).get("resources") or {}).items():
            row[f"{component}_cpu_s"] = use.get("cpu_s")
            row[f"{component}_peak_rss_mib"] = use.get("peak_rss_mib")
        row["failed_checks"] = ",".join(summary.get("failed_checks", []))
        rows.append(row)
    return rows


def write_summary(out_dir: Path, path: Path | None = None) -> Path:
    """``summary.csv``: one tidy row per run directory under `out_dir` (a pure function of run.json files).

    Written into `out_dir` unless `path` says where (a report keeps its own copy beside it).
    """
    path = Path(out_dir) / SUMMARY_CSV if path is None else Path(path)
    pd.DataFrame(summary_rows(out_dir)).to_csv(path, index=False)
    return path


# --- search records -----------------------------------------------------------------------------------


def write_search(out_dir: Path, record: Mapping[str, Any]) -> Path:
    """Store a search record as ``<out_dir>/searches/<search_id>.json``."""
    path = Path(out_dir) / SEARCHES_DIR / f"{record['search_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def read_searches(results_dir: Path | str) -> list[dict[str, Any]]:
    """Every search record under ``<results_dir>/searches/``, refusing versions not in
    `READABLE_SEARCH_VERSIONS`."""
    records = []
    for path in sorted(Path(results_dir).glob(f"{SEARCHES_DIR}/*.json")):
        record = json.loads(path.read_text())
        if record.get("schema_version") not in READABLE_SEARCH_VERSIONS:
            raise ValueError(f"{path}: search schema version {record.get('schema_version')!r}, this queuebench "
                             f"reads {', '.join(map(str, READABLE_SEARCH_VERSIONS))}")
        records.append(record)
    return records


# --- sweep.json ---------------------------------------------------------------------------------------


def write_sweep(out_dir: Path, record: Mapping[str, Any]) -> Path:
    """Store where the last sweep into `out_dir` spent its wall time as ``<out_dir>/sweep.json``."""
    path = Path(out_dir) / SWEEP_JSON
    write_json(path, {"schema_version": SWEEP_SCHEMA_VERSION, **record})
    return path


def read_sweep(out_dir: Path) -> dict[str, Any] | None:
    """The last sweep's record in `out_dir`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(out_dir) / SWEEP_JSON).read_text())
    except (OSError, ValueError):
        return None
