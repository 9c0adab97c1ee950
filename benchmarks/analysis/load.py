"""A results directory as tidy pandas frames: one row per run, one row per execution, one row per task.

A results directory (``results/runs`` by default) holds one ``<run_id>/run.json`` per run, beside its
``tasks.parquet`` (one row per execution) and, in load mode, ``requests.parquet`` (one row per HTTP
request). `load_results` reads every ``run.json`` into `Results.runs`: the spec flattened into columns,
the summary figures (``measure.flatten`` names: ``throughput_per_s``, ``e2e_ms_p95``...), the resources
(``workers_cpu_s``...), the self-checks (``check.<name>``), the environment and a ``usable`` flag.

Only runs whose status is ``ok`` or ``generator-limited`` are used for figures (`Results.usable`); the
others (failed, error, skipped, interrupted) are kept in `Results.runs` and listed in `Results.warnings`.
A directory whose runs carry different result schema versions is refused (`MixedSchemaError`): their
columns need not mean the same thing.

Per-kind figures (short vs long tasks of ``routing_mix``, payload sizes of ``payload``) are recomputed
from the raw rows with `benchmarks.measure`, using the run's own measured window; which task and
arguments a row stands for comes from its ``digest`` and the run's ``task_kinds``.

The quantile rule (`verdicts.bounds`) is applied here, once, for every reader: a latency percentile whose
sample cannot bound it (``e2e_ms_p99`` of a run with 90 tasks in its window) is NaN in every frame this
module returns, beside its sample size (``e2e_ms_count``), so no chart, headline or plan can rank, judge
or draw it; the outputs print it as ``too few samples (n=90)``. run.json keeps the raw figure.

Every file is read through `benchmarks.store`, which owns the layout; `search_table` turns the stored
search records (``queuebench search``) into a frame for the report.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import backends
from benchmarks import measure, spec, store, verdicts

#: Statuses whose figures are used: every check held, or only the load generator fell short.
USABLE_STATUSES = ("ok", "generator-limited")

# --- what the matrix spec and the backend registry declare --------------------------------------------
# Every list analysis keeps of spec keys and backends comes from the one declaration (`benchmarks.spec`)
# and the registry (`backends`).

#: Spec keys that describe the workload (what is sent, how it is measured), not the system under test.
WORKLOAD_KEYS = spec.WORKLOAD_KEYS
#: Spec keys that name the system under test: these tell two configurations apart in a label.
SYSTEM_KEYS = spec.SYSTEM_KEYS
#: Keys that only one mode has (load: rate, API; drain: tasks): their absence is no difference.
MODE_KEYS = (*spec.MODE_ONLY_KEYS, *(k for k in WORKLOAD_KEYS if k not in spec.MODE_ONLY_KEYS))
#: Everything a label may show, in the order it shows it.
LABEL_KEYS = SYSTEM_KEYS + WORKLOAD_KEYS
#: System keys (besides processes and threads) that tell two configurations of one backend apart (plan).
VARIANT_KEYS = spec.VARIANT_KEYS
#: Matrix keys copied from a configuration's runs into its covering cells (besides backend and options).
MATRIX_SYSTEM_KEYS = tuple(k for k in spec.VARIANT_KEYS if k not in ("backend", "options"))
#: Largest processes value a matrix accepts.
MAX_PROCESSES = int(spec.KEYS["processes"].domain.high)
#: Backends planned for when the results hold none: every library in the registry.
DEFAULT_BACKENDS = backends.libraries()
#: Backends never planned for: the harness's own ceiling runs no queue at all.
NOT_PLANNED = backends.HARNESS
#: Reference points rather than candidates in the report: the bare-broker floor and the harness's ceiling.
FLOORS = (*backends.FLOORS, *backends.HARNESS)

# ------------------------------------------------------------------------------------------------------

#: Figures every runs frame has (NaN where a run did not record them), so analyses need not check.
FIGURE_COLUMNS = ("finished_ok", "throughput_per_s", "littles_bound_per_s", "mean_service_ms", "offered_rate_per_s",
                  "achieved_rate_per_s", "tasks_per_cpu_s", "tasks_per_worker_cpu_s", "total_cpu_s",
                  *[f"{family}_{stat}" for family in measure.LATENCY_NAMES
                    for stat in ("count", "mean", "p50", "p90", "p95", "p99", "max")],
                  "broker_cpu_s", "workers_cpu_s", "api_cpu_s", "locust_cpu_s")
#: A percentile column: ``<family>_p<NN>``, whose sample size is ``<family>_count``.
_PERCENTILE = re.compile(r"^(?P<family>.+)_p(?P<percent>\d+)$")
#: Serializer figures of a drain run (run.json ``serialization``, `serialization_row`); NaN where absent.
SERIALIZATION_COLUMNS = ("payload_bytes", "broker_bytes_per_message", "broker_key_bytes_per_message",
                         "codec_us_per_message", "codec_us_min", "codec_us_max", "codec_encode_us",
                         "codec_decode_us", "encoded_bytes")
#: Components whose CPU seconds and peak RSS every run records.
COMPONENTS = ("broker", "workers", "api", "locust")


class ResultsError(ValueError):
    """A results directory that cannot be analysed; the message says why and where."""


class MixedSchemaError(ResultsError):
    """Runs with different result schema versions in one directory (or in two directories compared)."""


# --- small helpers ------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value if value is not None else {}, sort_keys=True, default=str)


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def percentile_of(column: str) -> tuple[str, float] | None:
    """``e2e_ms_p95`` -> (``e2e_ms``, 0.95); None for a column that is not a percentile of
    `measure.PERCENTILES`."""
    match = _PERCENTILE.match(column)
    if not match or int(match.group("percent")) not in measure.PERCENTILES:
        return None
    return match.group("family"), int(match.group("percent")) / 100


def count_column(column: str) -> str | None:
    """The sample-size column of a percentile or mean latency column (``e2e_ms_p95``, ``e2e_ms_mean`` ->
    ``e2e_ms_count``), else None."""
    found = percentile_of(column)
    if found:
        return f"{found[0]}_count"
    return column.removesuffix("_mean") + "_count" if column.endswith("_ms_mean") else None


def apply_quantile_rule(row: dict[str, Any]) -> dict[str, Any]:
    """Blank (NaN) every percentile of `row` whose family's sample cannot bound it (`verdicts.bounds`);
    a family without a recorded count bounds nothing. Returns `row`, changed in place."""
    for column in list(row):
        found = percentile_of(column)
        if found is None or is_missing(row[column]):
            continue
        family, quantile = found
        if not verdicts.bounds(row.get(f"{family}_count"), quantile):
            row[column] = np.nan
    return row


def kind_label(task: str, args: Mapping[str, Any] | None) -> str:
    """``sleep_ms(ms=10)``: a task and its arguments, as one short string."""
    inner = ", ".join(f"{k}={v}" for k, v in sorted((args or {}).items()))
    return f"{task}({inner})"


def cell_id(run_id: str) -> str:
    """The run id without its repeat suffix: every repeat of one cell shares it."""
    return re.sub(r"-rep\d+$", "", run_id)


def _value_text(key: str, value: Any) -> str:
    if key == "args":
        args = json.loads(value) if isinstance(value, str) else value
        return ",".join(f"{k}={v}" for k, v in sorted(args.items())) if args else ""
    if key == "options":
        options = json.loads(value) if isinstance(value, str) else value
        return ",".join(f"{k}={v}" for k, v in sorted(options.items())) if options else ""
    if key == "rate":
        return f"{value:g}/s"
    if key == "tasks":
        return f"{int(value)} tasks"
    if key in ("warmup_s", "duration_s", "drain_stall_s", "drain_timeout_s"):
        return f"{key.removesuffix('_s')} {value:g} s"
    if key == "acks_late":
        return "acks late" if value else "acks early"
    if key == "results":
        return "results" if value else "no results"
    if key == "prefetch":
        return f"prefetch {value:g}"
    if key in ("api_workers", "api_threads"):
        return f"{key.replace('_', ' ')} {value:g}"
    if key == "long_threshold_ms":
        return f"long >= {value:g} ms"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def labels(frame: pd.DataFrame, keys: Iterable[str] = LABEL_KEYS, always: Iterable[str] = ("backend",)) -> pd.Series:
    """A readable label per row from the keys whose values differ between rows (plus `always`).

    Processes and threads show together as ``p2t1``; a task shows with its arguments.
    """
    keys = [k for k in keys if k in frame.columns]
    always = set(always)

    def varies(key: str) -> bool:
        values = frame[key]
        if key in MODE_KEYS:  # absent in one mode by design (no rate in drain mode): not a difference
            values = values[values.map(lambda v: not is_missing(v))]
        return values.map(lambda v: "" if is_missing(v) else str(v)).nunique() > 1

    shown = [k for k in keys if k in always or varies(k)]
    if "processes" in shown or "threads" in shown:
        shown = [k for k in shown if k != "threads"]
    if "args" in shown and "task" not in shown:
        shown.insert(shown.index("args"), "task")

    def one(row: pd.Series) -> str:
        parts = []
        for key in shown:
            value = row.get(key)
            if key == "processes":
                parts.append(f"p{int(row['processes'])}t{int(row.get('threads', 1) or 1)}")
            elif key == "task" and "args" in shown:
                args = json.loads(row["args"]) if isinstance(row.get("args"), str) else {}
                parts.append(kind_label(str(value), args) if not is_missing(value) else "")
            elif key == "args":
                continue
            elif not is_missing(value):
                text = _value_text(key, value)
                if text:
                    parts.append(text)
        return " ".join(p for p in parts if p) or "all runs"

    if frame.empty:
        return pd.Series([], dtype="object")
    return frame.apply(one, axis=1)


# --- one run.json as one row --------------------------------------------------------------------------


def run_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One run.json as one flat row (spec, status, environment, figures, resources, checks)."""
    spec = dict(record.get("spec") or {})
    row: dict[str, Any] = {
        "run_id": record.get("run_id"), "cell_id": cell_id(str(record.get("run_id"))),
        "matrix": record.get("matrix"), "repeat": record.get("repeat"),
        "schema_version": record.get("schema_version"), "harness_version": record.get("harness_version"),
        "status": record.get("status"), "detail": record.get("detail") or "",
        # A fault run's figures measure a fault, not a capacity: it is reported in its own section
        # (analysis/faults.py, "When things fail") and kept out of every other figure.
        "fault_run": bool(spec.get("fault")),
        "usable": record.get("status") in USABLE_STATUSES and not spec.get("fault"), "slots": record.get("slots"),
        "started_at": record.get("started_at"),
    }
    # The cell: the whole spec (repeats share it); key order does not matter.
    row["cell"] = _json(spec)
    options = spec.pop("options", None) or {}
    row["args"] = _json(spec.pop("args", None) or {})
    row["options"] = _json(options)
    for key, value in spec.items():
        row[key] = value
    for key, value in options.items():
        row[f"option.{key}"] = value

    env = record.get("environment") or {}
    row |= {"host": env.get("host"), "cpu_model": env.get("cpu_model"),
            "cpu_count_logical": env.get("cpu_count_logical"), "python": env.get("python"),
            "git_commit": (env.get("git") or {}).get("commit"), "git_dirty": (env.get("git") or {}).get("dirty")}
    for name, version in (env.get("packages") or {}).items():
        row[f"pkg.{name}"] = version
    # A backend with a private environment records its library's versions there (they win).
    for name, version in ((record.get("backend_environment") or {}).get("packages") or {}).items():
        row[f"pkg.{name}"] = version
    broker = (record.get("brokers") or {}).get("broker") or {}
    row |= {"broker_kind": broker.get("kind"), "broker_version": broker.get("version")}

    summary = record.get("summary") or {}
    figures = dict(summary.get("figures") or {})
    resources = figures.pop("resources", None) or {}
    row |= apply_quantile_rule(measure.flatten(figures))
    for component, use in resources.items():
        row[f"{component}_cpu_s"] = use.get("cpu_s")
        row[f"{component}_peak_rss_mib"] = use.get("peak_rss_mib")
    cpu = [use.get("cpu_s") for use in resources.values() if use.get("cpu_s") is not None]
    row["total_cpu_s"] = float(sum(cpu)) if cpu else None
    for name, check in (summary.get("checks") or {}).items():
        row[f"check.{name}"] = bool(check.get("ok"))
    row |= serialization_row(record)
    row["verdict"] = summary.get("verdict")
    row["failed_checks"] = ",".join(summary.get("failed_checks") or [])
    # Checks that did not hold, soft ones included (generator_kept_up), for warnings.
    row["checks_not_held"] = ",".join(n for n, c in (summary.get("checks") or {}).items() if not c.get("ok"))
    return row


def serialization_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """The serializer figures of one run.json (its ``serialization`` record, written in drain mode by
    ``benchmarks/serialization.py``) as flat columns; None where the run has none or a part was not measured.

    ``payload_bytes``: the echo payload's size (``args.size``); ``broker_bytes_per_message``: the broker's
    own count per preloaded message (Redis used_memory delta, RabbitMQ message_bytes, SQLite file growth);
    ``broker_key_bytes_per_message``: Redis only, MEMORY USAGE of the keys; ``codec_us_per_message`` (with
    ``codec_us_min``/``codec_us_max`` over its batches, ``codec_encode_us``, ``codec_decode_us``) and
    ``encoded_bytes``: the library's own codec, timed in its own interpreter."""
    found = record.get("serialization") or {}
    broker = found.get("broker") or {}
    codec = found.get("codec") or {}
    spec = record.get("spec") or {}
    echo = spec.get("task") == "echo"

    def stat(part: str, name: str) -> Any:
        return (codec.get(part) or {}).get(name)

    return {
        "payload_bytes": (spec.get("args") or {}).get("size") if echo else None,
        "broker_bytes_per_message": broker.get("bytes_per_message"),
        "broker_key_bytes_per_message": broker.get("key_bytes_per_message"),
        "codec_us_per_message": stat("us_per_message", "median"),
        "codec_us_min": stat("us_per_message", "min"),
        "codec_us_max": stat("us_per_message", "max"),
        "codec_encode_us": stat("encode_us", "median"),
        "codec_decode_us": stat("decode_us", "median"),
        "encoded_bytes": codec.get("encoded_bytes"),
    }


# --- the results directory ----------------------------------------------------------------------------


@dataclass
class Results:
    """Every run of one results directory; raw tables are read on demand and cached."""

    root: Path
    runs: pd.DataFrame
    records: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    dirs: dict[str, Path] = field(default_factory=dict)
    _tasks: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    _requests: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)
    _kind_figures: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The directory's name (a report's default set name)."""
        return self.root.resolve().name

    @property
    def schema_version(self) -> int | None:
        versions = self.runs["schema_version"].dropna().unique() if len(self.runs) else []
        return int(versions[0]) if len(versions) else None

    @cached_property
    def usable(self) -> pd.DataFrame:
        """Runs whose figures are used (status ok or generator-limited)."""
        return self.runs[self.runs["usable"]].reset_index(drop=True)

    def run_dir(self, run_id: str) -> Path:
        """Where the run's files are (its directory is normally named by its run id)."""
        return self.dirs.get(run_id, self.root / run_id)

    def kinds(self, run_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """digest -> (task, args) for one run, from its ``task_kinds`` (older runs: their single task)."""
        record = self.records[run_id]
        kinds = {k["digest"]: (k["task"], dict(k.get("args") or {})) for k in record.get("task_kinds") or []}
        if not kinds:
            spec = record.get("spec") or {}
            digests = self.tasks(run_id)["digest"].dropna().unique()
            if spec.get("task") and len(digests) == 1:  # one kind only: no ambiguity
                kinds = {str(digests[0]): (spec["task"], dict(spec.get("args") or {}))}
        return kinds

    def tasks(self, run_id: str) -> pd.DataFrame:
        """The run's ``tasks.parquet`` (one row per execution); empty when absent."""
        if run_id not in self._tasks:
            tasks = store.read_tasks_table(self.run_dir(run_id))
            if len(tasks) and "digest" not in tasks.columns:  # ledgers before digests: one kind per task
                tasks["digest"] = tasks["task"]
            self._tasks[run_id] = tasks
        return self._tasks[run_id]

    def requests(self, run_id: str) -> pd.DataFrame | None:
        """The run's ``requests.parquet`` (load mode), else None."""
        if run_id not in self._requests:
            self._requests[run_id] = store.read_requests_table(self.run_dir(run_id))
        return self._requests[run_id]

    def window(self, run_id: str) -> measure.Window | None:
        """The run's measured window, as its run.json recorded it."""
        figures = (self.records[run_id].get("summary") or {}).get("figures") or {}
        start, end = figures.get("window_start_ns"), figures.get("window_end_ns")
        return measure.Window(int(start), int(end)) if start is not None and end is not None else None

    def executions(self, *, usable_only: bool = True) -> pd.DataFrame:
        """One row per execution of every (usable) run: tasks.parquet + run_id + spec + kind columns."""
        runs = self.usable if usable_only else self.runs
        spec_columns = ["run_id", "cell_id", "repeat", "status", "slots",
                        *[c for c in LABEL_KEYS if c in runs.columns]]
        frames = []
        for run in runs.itertuples(index=False):
            tasks = self.tasks(run.run_id)
            if tasks.empty:
                continue
            frames.append(_with_kinds(tasks, self.kinds(run.run_id)).assign(run_id=run.run_id))
        if not frames:
            return pd.DataFrame(columns=[*spec_columns, "id", "digest", "kind"])
        rows = pd.concat(frames, ignore_index=True)
        # The row's own task (and kind_args) say what ran; the spec's task/args would only repeat it.
        spec_columns = [c for c in spec_columns if c == "run_id" or c not in rows.columns and c != "args"]
        return rows.merge(runs[spec_columns], on="run_id", how="left")

    def task_latencies(self, run_id: str) -> pd.DataFrame:
        """One row per task of one run: kind, whether it was scheduled in the measured window, and its
        queue wait, service, end-to-end and (load mode) HTTP enqueue latencies in milliseconds.

        Same definitions as `benchmarks.measure.latencies`; in drain mode every task counts as in the
        window (all were sent before it), as there.
        """
        tasks = self.tasks(run_id)
        if tasks.empty:
            return pd.DataFrame(columns=["id", "digest", "kind", "in_window", "e2e_ms"])
        each = measure.per_task(tasks)
        each = each.merge(tasks.drop_duplicates("id")[["id", "digest"]], on="id", how="left")
        each = _with_kinds(each, self.kinds(run_id))
        requests = self.requests(run_id)
        window = self.window(run_id)
        if requests is not None and window is not None:
            each["in_window"] = window.contains(each["arrival_ns"]).fillna(False).astype(bool)
        else:
            each["in_window"] = True
        each["queue_wait_ms"] = _ms(each["first_started_ns"], each["enqueued_ns"])
        each["service_ms"] = _ms(each["ok_finished_ns"], each["ok_started_ns"])
        each["e2e_ms"] = _ms(each["ok_finished_ns"], each["arrival_ns"])
        if requests is not None and "task_id" in requests.columns:
            req = requests.dropna(subset=["task_id"]).drop_duplicates("task_id")
            enqueue = pd.Series(_ms(req["done_ns"], req["sent_ns"]).to_numpy(), index=req["task_id"].astype(str))
            each["http_enqueue_ms"] = each["id"].astype(str).map(enqueue).astype("float64")
        return each

    def latency_values(self, run_id: str, family: str, digests: Iterable[str] | None = None) -> np.ndarray:
        """The raw values (ms) a run's `family` figures are computed from: one per task scheduled in the
        measured window that has the figure (`task_latencies`), of the kinds `digests` (None: all)."""
        each = self.task_latencies(run_id)
        if each.empty or family not in each.columns:
            return np.array([])
        inside = each[each["in_window"]]
        if digests is not None:
            inside = inside[inside["digest"].isin(list(digests))]
        return inside[family].dropna().to_numpy(dtype="float64")

    def quantile_interval(self, run_id: str, column: str,
                          digests: Iterable[str] | None = None) -> tuple[float, float, int]:
        """(low, high, n): the distribution-free interval (`verdicts.quantile_interval`) of a percentile
        column (``e2e_ms_p95``) from the run's raw rows, and the number of values it rests on."""
        found = percentile_of(column)
        if found is None:
            raise ValueError(f"{column}: not a percentile column")
        values = self.latency_values(run_id, found[0], digests)
        low, high = verdicts.quantile_interval(values, found[1])
        return low, high, int(values.size)

    def kind_figures(self, run_id: str) -> pd.DataFrame:
        """Per task kind of one run: tasks in the window, throughput and latency percentiles (ms).

        Throughput of a kind = its successful executions finished in the measured window / the window's
        length; latencies are over the kind's tasks scheduled in the window (`task_latencies`), each family
        with its sample size (``e2e_ms_count``) and the quantile rule applied (`apply_quantile_rule`).
        """
        if run_id in self._kind_figures:
            return self._kind_figures[run_id]
        each = self.task_latencies(run_id)
        tasks = self.tasks(run_id)
        window = self.window(run_id)
        rows = []
        for digest, group in each.groupby("digest", sort=False):
            inside = group[group["in_window"]]
            row: dict[str, Any] = {"run_id": run_id, "digest": digest, "kind": group["kind"].iloc[0],
                                   "kind_task": group["kind_task"].iloc[0], "kind_args": group["kind_args"].iloc[0],
                                   "payload_bytes": group["payload_bytes"].iloc[0],
                                   "work_ms": group["work_ms"].iloc[0], "window_tasks": int(len(inside))}
            if window is not None and window.length_s > 0:
                ok = tasks[(tasks["digest"] == digest) & (tasks["attempt"] > 0) & (tasks["outcome"] == "ok")]
                row["throughput_per_s"] = int(window.contains(ok["finished_ns"]).fillna(False).sum()) / window.length_s
            for family in ("http_enqueue_ms", "queue_wait_ms", "service_ms", "e2e_ms"):
                if family in inside.columns:
                    figures = measure.stats(inside[family].astype("float64"))
                    row |= {f"{family}_{k}": v for k, v in figures.items()}
            rows.append(apply_quantile_rule(row))
        self._kind_figures[run_id] = pd.DataFrame(rows)
        return self._kind_figures[run_id]


def _ms(later: pd.Series, earlier: pd.Series) -> pd.Series:
    return ((later - earlier).astype("Float64") / 1e6).astype("float64")


def _with_kinds(frame: pd.DataFrame, kinds: Mapping[str, tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Add kind_task, kind_args (JSON), kind (label), payload_bytes (echo) and work_ms (sleep/cpu)."""
    digests = frame["digest"].astype("object")
    task = digests.map(lambda d: kinds[d][0] if d in kinds else None)
    args = digests.map(lambda d: kinds[d][1] if d in kinds else None)
    return frame.assign(
        kind_task=task,
        kind_args=args.map(lambda a: _json(a) if a is not None else None),
        kind=[kind_label(t, a) if t is not None else "unknown" for t, a in zip(task, args, strict=True)],
        payload_bytes=args.map(lambda a: float(a["size"]) if a and "size" in a else np.nan).astype("float64"),
        work_ms=args.map(lambda a: float(a["ms"]) if a and "ms" in a else np.nan).astype("float64"),
    )


def load_results(root: Path | str) -> Results:
    """Read every ``<root>/<run_id>/run.json``; refuse a directory mixing result schema versions.

    Raises `ResultsError` when `root` holds no run, `MixedSchemaError` when versions differ.
    """
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root}: not a directory")
    records: dict[str, dict[str, Any]] = {}
    dirs: dict[str, Path] = {}
    warnings: list[str] = []
    for run_dir in store.run_dirs(root):
        try:
            record = store.load_run(run_dir)
        except (OSError, ValueError) as exc:
            warnings.append(f"{run_dir.name}: {store.RUN_JSON} unreadable ({exc}); not used")
            continue
        run_id = str(record.get("run_id") or run_dir.name)
        records[run_id] = record
        dirs[run_id] = run_dir
    if not records:
        raise ResultsError(f"{root}: no run directories (no */run.json); give the directory `queuebench run` "
                           "wrote, e.g. results/runs")
    versions: dict[Any, list[str]] = {}
    for run_id, record in records.items():
        versions.setdefault(record.get("schema_version"), []).append(run_id)
    if len(versions) > 1:
        found = "; ".join(f"version {v}: {len(ids)} run(s), e.g. {ids[0]}" for v, ids in sorted(
            versions.items(), key=lambda item: str(item[0])))
        raise MixedSchemaError(f"{root} mixes result schema versions ({found}); analyse each version in its "
                               "own directory")
    runs = pd.DataFrame([run_row(r) for r in records.values()]).sort_values("run_id").reset_index(drop=True)
    for column in (*LABEL_KEYS, *FIGURE_COLUMNS, *SERIALIZATION_COLUMNS):  # drain runs have no rate...
        if column not in runs.columns:
            runs[column] = None if column in LABEL_KEYS else np.nan
    for run in runs[~runs["usable"] & ~runs["fault_run"]].itertuples(index=False):
        warnings.append(f"{run.run_id}: status {run.status}" + (f" ({run.detail})" if run.detail else "")
                        + "; not used for figures")
    return Results(root=root, runs=runs, records=records, warnings=warnings, dirs=dirs)


def load_runs(root: Path | str) -> pd.DataFrame:
    """One row per run (all statuses; see the ``usable`` column)."""
    return load_results(root).runs


def load_executions(root: Path | str) -> pd.DataFrame:
    """One row per execution of every usable run."""
    return load_results(root).executions()


def row_key(frame: pd.DataFrame, keys: Iterable[str]) -> pd.Series:
    """One hashable string per row from `keys` (missing values compare equal, absent columns are missing)."""
    keys = list(keys)
    if frame.empty:
        return pd.Series([], dtype="object")
    columns = [frame[k] if k in frame.columns else pd.Series([None] * len(frame), index=frame.index) for k in keys]
    values = zip(*columns, strict=True) if columns else ([] for _ in range(len(frame)))
    return pd.Series([json.dumps(["" if is_missing(v) else str(v) for v in row]) for row in values],
                     index=frame.index, dtype="object")


# --- repeats ------------------------------------------------------------------------------------------


def over_repeats(runs: pd.DataFrame, metrics: Iterable[str], by: str = "cell") -> pd.DataFrame:
    """Per cell: mean, min, max, std, coefficient of variation and count over repeats of each metric.

    Columns ``<metric>`` (the mean), ``<metric>_min``, ``<metric>_max``, ``<metric>_cv``, ``<metric>_n``
    (repeats with the figure), ``<metric>_values`` (the per-repeat figures, for `verdicts.difference`),
    plus the cell's first row for its spec columns and ``run_ids`` (comma-separated). A percentile with a
    sample-size column also gets ``<metric>_tasks`` and ``<metric>_tasks_max`` (the fewest and most
    values a repeat's figure rests on), and is NaN for the whole cell when any repeat's sample could not
    bound it (the quantile rule): a mean over the other repeats would hide that repeat.
    """
    metrics = [m for m in metrics if m in runs.columns]
    rows = []
    for _, group in runs.groupby(by, sort=False):
        row = group.iloc[0].to_dict()
        row["run_ids"] = ",".join(group["run_id"])
        row["repeats"] = int(len(group))
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").astype("float64")
            counts = count_column(metric)
            if counts is not None and counts in group.columns:
                tasks = pd.to_numeric(group[counts], errors="coerce").fillna(0)
                row |= {f"{metric}_tasks": int(tasks.min()), f"{metric}_tasks_max": int(tasks.max())}
                if values.isna().any():  # a repeat's sample could not bound it (or had none)
                    values = values.iloc[0:0]
            values = values.dropna()
            row[f"{metric}_values"] = values.tolist()
            mean = float(values.mean()) if len(values) else np.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            row |= {metric: mean, f"{metric}_min": float(values.min()) if len(values) else np.nan,
                    f"{metric}_max": float(values.max()) if len(values) else np.nan,
                    f"{metric}_std": std, f"{metric}_n": int(len(values)),
                    f"{metric}_cv": std / mean if len(values) > 1 and mean else np.nan}
        rows.append(row)
    return pd.DataFrame(rows)


# --- search records -----------------------------------------------------------------------------------


def search_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per search record (`store.read_searches`): backend, slots, task, SLO, knee and the repeats
    its step ran, first unsustained rate, evidence, why it stopped, and the record's schema version."""
    rows = []
    for record in records:
        config = record["config"]
        args = config.get("args") or {}
        knee = next((s for s in record.get("steps", []) if s.get("rate_per_s") == record.get("knee_rate_per_s")),
                    None)
        rows.append({
            "search_id": record["search_id"], "backend": config["backend"], "broker": config["broker"],
            "processes": config["processes"], "threads": config["threads"],
            "slots": config["processes"] * config["threads"],
            "task": config.get("task", "") + "".join(f" {k}={v}" for k, v in sorted(args.items())),
            "slo": record["slo"], "knee_rate_per_s": record.get("knee_rate_per_s"),
            "knee_repeats": len(knee.get("run_ids", [])) if knee else 0,
            "knee_e2e_ms": knee.get("e2e_ms") if knee else None,
            "knee_e2e_tasks": knee.get("e2e_tasks") if knee else None,
            "schema_version": record.get("schema_version"),
            "first_unsustained_rate_per_s": record.get("first_unsustained_rate_per_s"),
            "steps": len(record.get("steps", [])), "evidence_run_ids": record.get("evidence_run_ids", []),
            "stopped_because": record.get("stopped_because", ""),
        })
    return pd.DataFrame(rows)
