"""Capacity planning from measured runs: how many slots of which backend serve a rate within an SLO.

The question: "R tasks/s of this kind with end-to-end pXX under L: how many slots (processes x threads)
of which backend?" The answer comes from stored runs first (`plan_capacity`, ``queuebench plan``) and
the M/M/c model second (`benchmarks.analysis.queueing`), so the two can be compared at the points that
were measured. What the runs cannot answer, `benchmarks.analysis.cover` writes a matrix to measure; the
report's "Capacity notes" (`benchmarks.analysis.notes`) state the same answers in prose.

What counts as measured (`measured_points`): runs of the task kind (task and args equal) with status
``ok``; load-mode runs of the single-kind scenarios (``latency``, ``throughput``) are latency points;
drain-mode runs of the kind only tell capacity. A cell (all repeats of one spec) is *sustained* when
every repeat kept up (`verdicts.kept_up`: finished >= 95 % of the rate that arrived in the window) and
has an end-to-end figure; its latency is the worst repeat's (conservative). "Arrived" is the achieved
rate (what the generator sent in the window), not the offered one: Poisson arrivals put 10 % more or
fewer tasks in a 5 s window than the offered rate says, and the queue can only finish what it was sent.
A cell that did not keep up saturated its slots; when it is also the configuration's highest throughput,
that throughput is the configuration's measured capacity (a single noisy cell at a low rate is not).
Without one, the capacity per slot is Little's bound 1 / mean service time, an upper bound, labelled so.

How a slot configuration is judged at the requested rate R (`plan_capacity`), assuming latency never
improves when the rate grows nor when slots shrink:

- *fails*: R is at or above the configuration's Little's bound (slots / mean service: no window, however
  lucky, makes that sustainable) or its measured capacity; or a repeat of a cell offered about R (within
  5 %) or less fell behind or had a bounded quantile over the limit;
- otherwise the cell offered at least R (5 % below counts: `RATE_TOLERANCE`) closest to R is judged by the
  plan rule (`verdicts.judge_repeats`), each repeat on its own, with the upper end of its quantile's 95 %
  interval from its raw rows (`load.Results.quantile_interval`) and rho = R x slot time / slots: *meets*
  (>= 3 repeats, every upper end under the limit, a next repeat's 95 % prediction under it, rho <= 0.85),
  *marginal* (point estimates meet, the rest does not), *too few repeats*, or *unknown* (its tasks cannot
  bound the quantile, or nothing measured at R).

The recommendation is the fewest slots that meet; without one, the fewest marginal (or too few repeats)
slots are named as a candidate and never as a recommendation, and anything else is labelled
*extrapolated*. The slot time is 1 / the measured capacity per slot (saturated cells, drains): what a slot
spends per task, per-task overhead such as RQ's fork included; M/M/c is shown with it and with the task
body's mean service. Without a saturated cell or a drain, rho uses the body time and says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backends import workload
from benchmarks import store
from benchmarks.analysis.load import (
    DEFAULT_BACKENDS,
    MATRIX_SYSTEM_KEYS,
    NOT_PLANNED,
    VARIANT_KEYS,
    MixedSchemaError,
    Results,
    ResultsError,
    labels,
    load_results,
)
from benchmarks.analysis.queueing import min_servers, mmc_response_quantile
from benchmarks.analysis.uncertainty import quantile_text, runs_text
from benchmarks.verdicts import (
    CONFIDENCE,
    CONFIDENCE_TEXT,
    MIN_REPEATS,
    RHO_WARN,
    SLO_QUANTILES,
    Slo,
    judge_repeats,
    kept_up,
    min_samples,
    window_tasks,
)

#: A cell offered this share below the requested rate still counts as "at the requested rate".
RATE_TOLERANCE = 0.05
#: Load scenarios that send exactly the cell's task: their run figures are that task kind's figures.
SINGLE_KIND_SCENARIOS = ("latency", "throughput")
#: Service time assumed, in ms, for a task without a duration argument when nothing was measured.
ASSUMED_SERVICE_MS = 1.0
#: Utilisation assumed for an extrapolated slot count when the model cannot meet the SLO at any count.
FALLBACK_UTILISATION = 0.8


def slots_text(count: int | None) -> str:
    """``1 slot``, ``4 slots``."""
    return "no slot count" if count is None else f"{count} slot{'' if count == 1 else 's'}"


# --- requests: task kinds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskKind:
    """A task and its arguments, as a matrix cell sends it (`sleep_ms:50` is sleep_ms with ms = 50)."""

    task: str
    args_items: tuple[tuple[str, int], ...] = ()

    @property
    def args(self) -> dict[str, int]:
        """The arguments as a matrix cell's ``args`` holds them."""
        return dict(self.args_items)

    @property
    def label(self) -> str:
        """``sleep_ms(ms=50)``, as the report labels kinds."""
        return f"{self.task}({', '.join(f'{k}={v}' for k, v in self.args_items)})"

    @property
    def spoken(self) -> str:
        """``sleep_ms 50``: for sentences."""
        if len(self.args_items) == 1:
            return f"{self.task} {self.args_items[0][1]}"
        return self.label if self.args_items else self.task

    @property
    def cli(self) -> str:
        """``sleep_ms:50``: as `parse_task` reads it (``add:x=1,y=2`` when there are several arguments)."""
        if len(self.args_items) == 1:
            return f"{self.task}:{self.args_items[0][1]}"
        return self.task + (":" + ",".join(f"{k}={v}" for k, v in self.args_items) if self.args_items else "")

    @property
    def slug(self) -> str:
        """``sleep_ms-ms50``: for file names (as run ids spell it)."""
        return self.task + "".join(f"-{k}{v}" for k, v in self.args_items)

    @property
    def nominal_service_ms(self) -> float | None:
        """The work the task is asked to do (sleep_ms / cpu_ms), if it says."""
        return float(self.args["ms"]) if self.task in workload.TIMED_TASKS and "ms" in self.args else None

    @classmethod
    def of(cls, task: str, args: Mapping[str, Any] | None) -> TaskKind:
        """The kind a run's task and args stand for (argument order does not matter)."""
        return cls(str(task), tuple(sorted((str(k), int(v)) for k, v in (args or {}).items())))


def parse_task(text: str) -> TaskKind:
    """``noop``, ``sleep_ms:50`` (the task's single argument), ``echo:size=1000``, ``add:x=1,y=2``.

    Checked against the task catalogue (`backends.workload.CATALOGUE`): names, arguments and bounds.
    """
    name, _, rest = text.strip().partition(":")
    if name not in workload.CATALOGUE:
        raise ValueError(f"task must be one of: {', '.join(workload.CATALOGUE)} (got {name!r})")
    specs = {spec.name: spec for spec in workload.CATALOGUE[name]}
    args: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            if len(specs) != 1:
                raise ValueError(f"{name} takes {', '.join(specs) or 'no arguments'}: name them, e.g. "
                                 f"{name}:" + ",".join(f"{k}=1" for k in specs))
            key, value = next(iter(specs)), part
        key = key.strip()
        if key not in specs:
            raise ValueError(f"{key!r} is not an argument of {name}; allowed: {', '.join(specs) or 'none'}")
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError(f"{name} {key} must be an integer (got {value.strip()!r})") from None
        if not specs[key].low <= number <= specs[key].high:
            low, high = specs[key].low, specs[key].high
            raise ValueError(f"{name} {key} must be from {low} to {high} (got {number})")
        args[key] = number
    missing = [k for k in specs if k not in args]
    if missing:
        example = ",".join(f"{k}=50" for k in specs)
        raise ValueError(f"{name} needs {', '.join(missing)}, e.g. {name}:{example}")
    return TaskKind.of(name, args)


# --- measured points ----------------------------------------------------------------------------------


def runs_frame(source: pd.DataFrame | Path | str) -> pd.DataFrame:
    """One row per run: `source` as given (a frame like `load.Results.runs`), or loaded from a results
    directory. A directory that does not exist or holds no run gives an empty frame (nothing measured);
    a directory mixing result schema versions raises `load.MixedSchemaError`."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_dir():
        return pd.DataFrame()
    try:
        return load_results(path).runs
    except MixedSchemaError:
        raise
    except ResultsError:
        return pd.DataFrame()


def _args_of(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value.strip():
        return json.loads(value)
    return {}


def _column(frame: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series([default] * len(frame), index=frame.index)


def _variants(frame: pd.DataFrame) -> pd.Series:
    """The backend, plus whatever else tells this row's configuration apart (`load.labels`)."""
    if frame.empty:
        return pd.Series([], dtype="object")
    keys = [k for k in VARIANT_KEYS if k in frame.columns]
    return labels(frame, keys=keys, always=("backend",)).astype("object")


def kinds_in(runs: pd.DataFrame) -> list[TaskKind]:
    """Task kinds with single-kind load runs (status ok) in `runs`, most runs first."""
    usable = _single_kind_runs(runs)
    usable = usable[usable["mode"] == "load"]
    counts: dict[TaskKind, int] = {}
    for task, args in zip(usable["task"], usable["args"], strict=True):
        kind = TaskKind.of(task, _args_of(args))
        counts[kind] = counts.get(kind, 0) + 1
    return [k for k, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0].label))]


def _single_kind_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with status ok whose figures are one task kind's: single-kind load scenarios and drains."""
    needed = ("run_id", "status", "task", "mode", "backend")
    if runs.empty or not set(needed) <= set(runs.columns):
        return pd.DataFrame(columns=[*needed, "args", "scenario"])
    ok = runs[(runs["status"] == "ok") & runs["task"].notna() & ~runs["backend"].isin(NOT_PLANNED)]
    scenario = _column(ok, "scenario", None)
    keep = (ok["mode"] == "drain") | ((ok["mode"] == "load") & scenario.isin(SINGLE_KIND_SCENARIOS))
    ok = ok[keep].copy()
    if "args" not in ok.columns:
        ok["args"] = "{}"
    return ok


def _of_kind(runs: pd.DataFrame, kind: TaskKind) -> pd.DataFrame:
    """The single-kind runs of `kind` (task and args equal), with their configuration `variant`."""
    runs = _single_kind_runs(runs)
    match = [t == kind.task and TaskKind.of(t, _args_of(a)) == kind
             for t, a in zip(runs["task"], runs["args"], strict=True)]
    runs = runs[match]
    if runs.empty:
        return runs.assign(variant=pd.Series(dtype="object"))
    return runs.assign(variant=_variants(runs))


def measured_points(runs: pd.DataFrame, kind: TaskKind) -> pd.DataFrame:
    """One row per measured cell of `kind` (repeats aggregated), load cells and drain cells.

    Columns: variant, backend, mode, processes, threads, slots, offered_rate_per_s and sent_rate_per_s
    (load: the achieved rate, mean over repeats), throughput_per_s (mean) and throughput_min_per_s,
    e2e_p50_ms .. e2e_p99_ms (the worst repeat; NaN when any repeat's tasks could not bound it, the
    quantile rule `load` applies), e2e_tasks (the fewest end-to-end latencies a repeat had: the n those
    figures rest on), mean_service_ms (mean), repeats, run_ids (list, in run id order), per repeat in that
    order e2e_p50_each .. e2e_p99_each, e2e_tasks_each and kept_up_each (lists),
    sustained (every repeat finished >= 95 % of what it was sent and has an end-to-end figure),
    saturated (a repeat did not, or a drain), capacity_cell (saturated and the highest throughput of its
    configuration: the configuration's measured capacity) and capacity_per_slot_per_s (capacity cells).
    """
    columns = ["variant", "backend", "mode", "processes", "threads", "slots", "offered_rate_per_s",
               "sent_rate_per_s", "throughput_per_s", "throughput_min_per_s",
               *[f"e2e_{p}_ms" for p in SLO_QUANTILES], "e2e_tasks",
               "mean_service_ms", "repeats", "run_ids", *[f"e2e_{p}_each" for p in SLO_QUANTILES],
               "e2e_tasks_each", "kept_up_each", "sustained", "saturated", "capacity_cell",
               "capacity_per_slot_per_s"]
    runs = _of_kind(runs, kind)
    if runs.empty:
        return pd.DataFrame(columns=columns)
    runs = runs.assign(
        cell_key=_column(runs, "cell_id", None).fillna(
            runs["run_id"].str.replace(r"-rep\d+$", "", regex=True)),
        processes=pd.to_numeric(_column(runs, "processes", 1)).fillna(1).astype(int),
        threads=pd.to_numeric(_column(runs, "threads", 1)).fillna(1).astype(int),
    )
    slots = pd.to_numeric(_column(runs, "slots"))
    runs["slots"] = slots.fillna(runs["processes"] * runs["threads"]).astype(int)
    rows = []
    for (_, variant), group in runs.groupby(["cell_key", "variant"], sort=False):
        group = group.sort_values("run_id")
        first = group.iloc[0]
        drain = first["mode"] == "drain"
        offered = np.nan if drain else float(first["rate"])
        throughput = pd.to_numeric(group["throughput_per_s"], errors="coerce").astype("float64")
        e2e = {p: pd.to_numeric(_column(group, f"e2e_ms_{p}"), errors="coerce").astype("float64")
               for p in SLO_QUANTILES}
        tasks = pd.to_numeric(_column(group, "e2e_ms_count"), errors="coerce")
        # Some task finished end to end: its count says so even when too few to bound a percentile.
        has_e2e = tasks > 0 if tasks.notna().all() else e2e["p50"].notna()
        sent = pd.to_numeric(_column(group, "achieved_rate_per_s"), errors="coerce").astype("float64")
        sent = sent.fillna(offered)
        kept = kept_up(throughput, sent) if not drain else pd.Series(False, index=group.index)
        saturated = drain or bool((~kept & throughput.notna()).any())
        slots = int(first["slots"])
        row = {
            "variant": variant, "backend": first["backend"], "mode": first["mode"],
            "processes": int(first["processes"]), "threads": int(first["threads"]), "slots": slots,
            "offered_rate_per_s": offered, "sent_rate_per_s": float(sent.mean()) if not drain else np.nan,
            "throughput_per_s": float(throughput.mean()),
            "throughput_min_per_s": float(throughput.min()),
            # The worst repeat's figure; a repeat without one (its tasks could not bound it) leaves the
            # cell without one too, rather than letting the other repeats speak for it.
            **{f"e2e_{p}_ms": float(values.max()) if values.notna().all() else np.nan
               for p, values in e2e.items()},
            "e2e_tasks": int(tasks.min()) if tasks.notna().any() else None,
            "mean_service_ms": float(pd.to_numeric(_column(group, "mean_service_ms"),
                                                   errors="coerce").mean()),
            "repeats": int(len(group)), "run_ids": list(group["run_id"].astype(str)),
            # Per repeat, in run_ids' order: each quantile (NaN where its tasks cannot bound it), the
            # tasks it rests on, and whether the repeat kept up (the plan rule judges repeats one by one).
            **{f"e2e_{p}_each": [float(v) for v in values] for p, values in e2e.items()},
            "e2e_tasks_each": [None if pd.isna(n) else int(n) for n in tasks],
            "kept_up_each": [bool(k) for k in kept] if not drain else [],
            "sustained": (not drain) and bool((kept & has_e2e).all()),
            "saturated": saturated, "capacity_cell": False, "capacity_per_slot_per_s": np.nan,
        }
        rows.append(row)
    points = pd.DataFrame(rows, columns=columns)
    for _, config in points.groupby(["variant", "slots", "processes", "threads"]):
        top = config["throughput_per_s"].idxmax()
        if points.at[top, "saturated"]:
            points.at[top, "capacity_cell"] = True
            per_slot = points.at[top, "throughput_per_s"] / points.at[top, "slots"]
            points.at[top, "capacity_per_slot_per_s"] = per_slot
    return points.sort_values(["variant", "slots", "processes", "mode", "offered_rate_per_s"],
                              na_position="first").reset_index(drop=True)


# --- the plan -----------------------------------------------------------------------------------------

#: Config states that recommend nothing but name a candidate: the fewest slots whose point estimates met.
CANDIDATE_STATES = ("marginal", "too few repeats")


@dataclass
class ConfigVerdict:
    """How one measured slot configuration fares at the requested rate, by the plan rule
    (`verdicts.judge_repeats`): meets, marginal, too few repeats, fails or unknown."""

    processes: int
    threads: int
    slots: int
    state: str
    reason: str
    evidence: list[str] = field(default_factory=list)  # run ids the verdict rests on
    #: Utilisation at the requested rate: rate x slot time / slots (`BackendPlan.occupancy_source` says
    #: which slot time: the measured one, else the task body's).
    rho: float | None = None
    #: The judged cell's repeats: run_id, e2e_ms (the SLO's quantile), upper_ms (its interval's upper end),
    #: tasks (n) and kept_up, one dict each.
    repeats: list[dict[str, Any]] = field(default_factory=list)
    #: Upper end of the 95 % prediction interval of a next repeat's quantile (ms), when judged.
    next_repeat_upper_ms: float | None = None

    @property
    def shape(self) -> str:
        """``p2t1``: processes and threads, as run ids spell them."""
        return f"p{self.processes}t{self.threads}"


@dataclass
class BackendPlan:
    """The answer for one backend (configuration variant) at the requested rate and SLO."""

    variant: str
    backend: str
    #: "measured" (a measured configuration meets the plan rule: the recommendation), "marginal" (the
    #: fewest slots whose point estimates met are marginal by the rule), "too few repeats" (they met in
    #: fewer than 3 repeats), "not covered" (results exist, none met), "no runs" (nothing of this task kind
    #: was measured on this backend).
    verdict: str
    measured_slots: int | None = None
    measured_shape: str | None = None
    #: The fewest slots no measurement excludes (a measured failure excludes its count and every smaller one).
    lower_bound_slots: int = 1
    #: M/M/c with the measured mean service time of the task body (or the assumed one, see
    #: model_service_source).
    model_slots: int | None = None
    model_service_ms: float | None = None
    model_service_source: str = "measured"
    #: M/M/c with the measured slot time per task (1 / capacity per slot: per-task overhead included);
    #: None when no saturated cell or drain measured the capacity.
    model_slot_time_slots: int | None = None
    slot_time_ms: float | None = None
    per_slot_capacity_per_s: float | None = None
    capacity_source: str = ""
    #: Measured capacity per slot / Little's bound per slot (1 / mean service), when saturated cells exist.
    efficiency: float | None = None
    #: Labelled extrapolation (not a measurement): used when the verdict is not "measured".
    extrapolated_slots: int | None = None
    threads: int = 1
    #: The configuration's system keys (broker, serializer, knobs...), as its runs had them.
    system: dict[str, Any] = field(default_factory=dict)
    configs: list[ConfigVerdict] = field(default_factory=list)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Model / measured - 1 of the SLO's quantile over the measured load cells: median of |error|, min, max.
    model_error_median_abs: float | None = None
    model_error_range: tuple[float, float] | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        """Whether a measured configuration meets the plan rule (the answer is a recommendation)."""
        return self.verdict == "measured"

    @property
    def occupancy_ms(self) -> float | None:
        """The slot time per task rho and the occupancy model use: measured when it was, else the body's."""
        return self.slot_time_ms if self.slot_time_ms is not None else self.model_service_ms

    @property
    def occupancy_source(self) -> str:
        """Which slot time rho uses, in words."""
        if self.slot_time_ms is not None:
            return "measured slot time (1 / capacity per slot)"
        return "task body time (slot time not measured: rho may be understated)"

    @property
    def answer_config(self) -> ConfigVerdict | None:
        """The configuration the answer names: the recommendation, else the candidate (marginal or too few
        repeats), else None."""
        if self.measured_slots is None:
            return None
        return next((c for c in self.configs if c.slots == self.measured_slots and c.shape == self.measured_shape),
                    None)

    @property
    def rho(self) -> float | None:
        """Utilisation of the configuration the answer names (None without one)."""
        config = self.answer_config
        return None if config is None else config.rho

    @property
    def needs_verify(self) -> bool:
        """Whether the answer is marginal or rests on fewer than 3 repeats (`queuebench plan --verify`
        would settle it)."""
        return self.verdict in CANDIDATE_STATES

    @property
    def to_verify(self) -> tuple[int, int, str] | None:
        """(processes, threads, what it is) that ``plan --verify`` runs: the recommendation, else the
        candidate, else the extrapolation (with the matrix's threads); None when there is nothing."""
        if self.measured_slots is not None and self.measured_shape is not None:
            config = self.answer_config
            what = "recommended" if self.covered else self.verdict
            return (config.processes, config.threads, what) if config else None
        if self.extrapolated_slots:
            threads = self.threads if self.backend != "rq" else 1
            return max(1, math.ceil(self.extrapolated_slots / threads)), threads, "extrapolated"
        return None

    @property
    def model_answer(self) -> str:
        """M/M/c's fewest slots as a phrase: ``3 slots``, or ``none meets it``."""
        return "none meets it" if self.model_slots is None else slots_text(self.model_slots)

    @property
    def model_slot_time_answer(self) -> str:
        """M/M/c's fewest slots with the measured slot time: ``4 slots``, ``none meets it``, or
        ``slot time not measured``."""
        if self.slot_time_ms is None:
            return "slot time not measured"
        return "none meets it" if self.model_slot_time_slots is None else slots_text(self.model_slot_time_slots)

    @property
    def answer(self) -> str:
        """One line: the recommendation, or the candidate and why it is not one, or why there is none and
        the labelled extrapolation."""
        config = self.answer_config
        rho = f"rho {config.rho:.2f}" if config is not None and config.rho is not None else ""
        if self.covered:
            text = f"{slots_text(self.measured_slots)} ({self.measured_shape}), measured"
            if config is not None:
                text += f" ({len(config.repeats)} repeats" + (f", {rho})" if rho else ")")
            untested = range(self.lower_bound_slots, self.measured_slots or 0)
            weaker = [c for c in self.configs if c.slots < (self.measured_slots or 0) and c.state in CANDIDATE_STATES]
            if weaker:
                text += "; " + ", ".join(f"{c.shape} {c.state}" for c in weaker)
            elif len(untested):
                counts = f"{untested[0]}" if len(untested) == 1 else f"{untested[0]}..{untested[-1]}"
                text += f"; {counts} not measured at this rate (may suffice)"
            return text
        if self.verdict in CANDIDATE_STATES:
            return (f"{self.verdict}: {slots_text(self.measured_slots)} ({self.measured_shape}) met the SLO's point "
                    f"estimate, not the plan rule: {self.reason}; not a recommendation")
        extra = (f"; extrapolated ~{slots_text(self.extrapolated_slots)} (not measured)"
                 if self.extrapolated_slots else "")
        return f"{self.verdict}: {self.reason}{extra}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``queuebench plan --json``): the answer, the models, the capacity, the cells used."""
        return store.plain({
            "variant": self.variant, "backend": self.backend, "verdict": self.verdict,
            "covered": self.covered, "needs_verify": self.needs_verify,
            "answer": self.answer, "reason": self.reason,
            "measured": {"slots": self.measured_slots, "shape": self.measured_shape,
                         "lower_bound_slots": self.lower_bound_slots, "rho": self.rho},
            "model": {"kind": "M/M/c", "slots": self.model_slots, "service_ms": self.model_service_ms,
                      "service_source": self.model_service_source,
                      "median_abs_relative_error": self.model_error_median_abs,
                      "relative_error_range": self.model_error_range},
            "model_slot_time": {"kind": "M/M/c", "slots": self.model_slot_time_slots,
                                "slot_time_ms": self.slot_time_ms},
            "occupancy": {"slot_time_ms": self.occupancy_ms, "source": self.occupancy_source,
                          "rho_warn": RHO_WARN},
            "capacity": {"per_slot_per_s": self.per_slot_capacity_per_s, "source": self.capacity_source,
                         "efficiency": self.efficiency},
            "extrapolated_slots": self.extrapolated_slots, "system": self.system,
            "configs": [{"shape": c.shape, "slots": c.slots, "state": c.state, "reason": c.reason,
                         "rho": c.rho, "repeats": c.repeats, "next_repeat_upper_ms": c.next_repeat_upper_ms,
                         "run_ids": c.evidence} for c in self.configs],
            "points": self.points.to_dict(orient="records"),
            "notes": self.notes,
        })


@dataclass
class Plan:
    """`plan_capacity`'s answer: one `BackendPlan` per backend configuration found (or assumed)."""

    rate_per_s: float
    kind: TaskKind
    slo: Slo
    backends: list[BackendPlan]
    warnings: list[str] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        """Whether every backend's answer is a recommendation by the plan rule."""
        return bool(self.backends) and all(b.covered for b in self.backends)

    @property
    def needs_verify(self) -> bool:
        """Whether some backend's answer is marginal or rests on fewer than 3 repeats."""
        return any(b.needs_verify for b in self.backends)

    @property
    def plan_id(self) -> str:
        """``sleep_ms-ms50-r20-p95-500ms``: names the request (``plan --verify`` stores its runs under it)."""
        return f"{self.kind.slug}-r{self.rate_per_s:g}-{self.slo.slug}"

    @property
    def request_text(self) -> str:
        """``200 tasks/s of sleep_ms 50 with p95 under 1 s``: the request in words."""
        slo = self.slo
        return f"{self.rate_per_s:g} tasks/s of {self.kind.spoken} with {slo.name} under {slo.limit_text}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``queuebench plan --json``): the request, the rule, one entry per backend."""
        return store.plain({
            "request": {"rate_per_s": self.rate_per_s, "task": self.kind.task, "args": self.kind.args,
                        "kind": self.kind.label,
                        "slo": {"quantile": self.slo.name, "limit_ms": self.slo.limit_ms,
                                # The quantile rule: a cell whose runs had fewer tasks (e2e_tasks) has no
                                # figure for this quantile (null) and neither meets nor misses the SLO.
                                "min_tasks_per_run": min_samples(self.slo.quantile)}},
            "plan_id": self.plan_id,
            "rule": {"min_repeats": MIN_REPEATS, "confidence": CONFIDENCE, "rho_warn": RHO_WARN,
                     "min_tasks_per_run": min_samples(self.slo.quantile),
                     "window_tasks_written": window_tasks(self.slo.quantile)},
            "covered": self.covered, "needs_verify": self.needs_verify,
            "backends": [b.to_dict() for b in self.backends],
            "warnings": self.warnings,
        })


def _judge(config: pd.DataFrame, rate_per_s: float, slo: Slo, capacity_per_s: float | None,
           littles_bound_per_s: float | None, rho: float | None) -> ConfigVerdict:
    """The plan rule for one slot configuration (its cells, sorted by rate) at the requested rate."""
    first = config.iloc[0]
    verdict = ConfigVerdict(int(first["processes"]), int(first["threads"]), int(first["slots"]), "unknown",
                            "", rho=rho)
    column = f"e2e_{slo.name}_ms"
    each = f"e2e_{slo.name}_each"
    upper = f"e2e_{slo.name}_upper_each"

    def missed(point: pd.Series) -> bool:
        """Fell behind, or a repeat's bounded figure over the limit: a repeat whose figure rests on too
        few tasks neither meets nor misses the SLO."""
        return not point["sustained"] or any(math.isfinite(v) and v > slo.limit_ms for v in point[each])

    def describe(point: pd.Series) -> str:
        latency = f"{slo.name} {quantile_text(point[column], point['e2e_tasks'], slo.quantile)}"
        return (f"at {point['offered_rate_per_s']:g}/s: {point['throughput_per_s']:.1f}/s done of "
                f"{point['sent_rate_per_s']:.1f}/s sent ({runs_text(int(point['repeats']))}), worst {latency}"
                + ("" if point["sustained"] else ", saturated"))

    if littles_bound_per_s is not None and littles_bound_per_s <= rate_per_s:
        verdict.state = "fails"
        verdict.reason = (f"slots / mean service = {littles_bound_per_s:.1f}/s <= {rate_per_s:g}/s: "
                          "the queue grows without bound")
        return verdict
    if capacity_per_s is not None and capacity_per_s < rate_per_s:
        verdict.state = "fails"
        verdict.reason = f"measured capacity {capacity_per_s:.1f}/s < {rate_per_s:g}/s"
        verdict.evidence = [r for ids in config.loc[config["capacity_cell"], "run_ids"] for r in ids]
        return verdict
    load = config[config["mode"] == "load"]
    near_or_below = load[load["offered_rate_per_s"] <= rate_per_s * (1 + RATE_TOLERANCE)]
    failing = near_or_below[[missed(p) for _, p in near_or_below.iterrows()]]
    if len(failing):  # a miss at the rate or below it: latency never improves as the rate grows
        worst = failing.sort_values("offered_rate_per_s").iloc[0]  # the lowest rate that already fails
        verdict.state, verdict.reason, verdict.evidence = "fails", describe(worst), worst["run_ids"]
        return verdict
    above = load[load["offered_rate_per_s"] >= rate_per_s * (1 - RATE_TOLERANCE)]
    if not len(above):
        rates = ", ".join(f"{r:g}" for r in sorted(load["offered_rate_per_s"].unique()))
        verdict.reason = f"measured only at {rates}/s" if rates else "only drained, never loaded at a rate"
        if len(load):  # the cell closest to the request: what a covering run would extend
            closest = load.iloc[(load["offered_rate_per_s"] - rate_per_s).abs().argsort()[:1]].iloc[0]
            verdict.evidence = closest["run_ids"]
        return verdict
    closest_rate = float(above["offered_rate_per_s"].min())
    judged = []
    for _, point in above[above["offered_rate_per_s"] == closest_rate].iterrows():
        uppers = point[upper] if upper in point.index and isinstance(point[upper], list) else \
            [math.nan] * len(point[each])
        judged.append((judge_repeats(point[each], uppers, point["e2e_tasks_each"], point["kept_up_each"],
                                     slo.quantile, slo.limit_ms, rho), point, uppers))
    rank = {"meets": 0, "marginal": 1, "too few repeats": 2, "too few samples": 3, "misses": 4}
    found, point, uppers = min(judged, key=lambda item: (rank[item[0].state], -int(item[1]["repeats"])))
    verdict.evidence = point["run_ids"]
    verdict.repeats = [{"run_id": r, "e2e_ms": v, "upper_ms": u, "tasks": n, "kept_up": k}
                       for r, v, u, n, k in zip(point["run_ids"], point[each], uppers, point["e2e_tasks_each"],
                                                point["kept_up_each"], strict=True)]
    verdict.next_repeat_upper_ms = found.next_repeat_upper_ms if math.isfinite(found.next_repeat_upper_ms) else None
    why = "; ".join(found.reasons)
    if found.state in ("meets", "marginal", "too few repeats"):
        verdict.state = found.state
        bound = (f", {CONFIDENCE_TEXT} upper bound ≤ {found.worst_upper_ms:.0f} ms"
                 if math.isfinite(found.worst_upper_ms) else "")
        verdict.reason = describe(point) + bound + (f": {why}" if why else "")
    elif found.state == "too few samples":
        verdict.reason = (f"{describe(point)}: its {slo.name} needs n ≥ {min_samples(slo.quantile)} tasks per "
                          "run (a longer measured window, duration_s)")
    else:  # missed at a rate above the request's tolerance: says nothing of the requested rate
        verdict.reason = f"{describe(point)}: {why} (above the requested rate; not measured at it)"
    return verdict


def _model_columns(points: pd.DataFrame, service_s: float | None, slot_s: float | None,
                   slo: Slo) -> pd.DataFrame:
    """Add the M/M/c figure at each measured load cell (c = slots, rate = offered) with the body's
    service time (and its relative error) and with the measured slot time."""
    points = points.copy()
    model, error, with_slot = [], [], []
    for point in points.itertuples(index=False):
        measured = getattr(point, f"e2e_{slo.name}_ms")
        if point.mode != "load":
            model.append(np.nan)
            error.append(np.nan)
            with_slot.append(np.nan)
            continue
        figures = [1e3 * mmc_response_quantile(point.offered_rate_per_s, s, int(point.slots), slo.quantile)
                   if s is not None else np.nan for s in (service_s, slot_s)]
        model.append(figures[0])
        with_slot.append(figures[1])
        ok = math.isfinite(figures[0]) and np.isfinite(measured) and measured > 0
        error.append(figures[0] / measured - 1.0 if ok else np.nan)
    points[f"model_{slo.name}_ms"] = model
    points["model_error"] = error
    points[f"model_slot_{slo.name}_ms"] = with_slot
    return points


def _roles(points: pd.DataFrame, configs: Sequence[ConfigVerdict]) -> list[str]:
    """What each point was used for: the verdict it decided, or capacity (capacity cells)."""
    decided = {run_id: f"{c.state} ({c.shape})" for c in configs for run_id in c.evidence}
    roles = []
    for point in points.itertuples(index=False):
        role = next((decided[r] for r in point.run_ids if r in decided), "")
        if point.capacity_cell and "capacity" not in role:
            role = f"{role}; capacity" if role else "capacity"
        roles.append(role)
    return roles


def _min_servers_or_note(rate_per_s: float, service_s: float, slo: Slo, notes: list[str]) -> int | None:
    try:
        return min_servers(rate_per_s, service_s, slo.limit_s, slo.quantile)
    except ValueError as exc:  # beyond max_servers
        notes.append(f"M/M/c: {exc}")
        return None


def occupancy(rate_per_s: float, slot_time_s: float, slots: int) -> float:
    """rho = rate x slot time per task / slots: the share of the slots' time the rate keeps busy."""
    return rate_per_s * slot_time_s / slots


def _estimate_slots(rate_per_s: float, per_slot_per_s: float, slo: Slo, lower_bound: int) -> int:
    """Extrapolated slot count (labelled, never reported as measured): M/M/c with the measured capacity
    per slot as its service rate; if that model cannot meet the SLO at any count, the capacity at
    `FALLBACK_UTILISATION`; never below what the measurements exclude nor above `RHO_WARN` utilisation."""
    needed = math.ceil(rate_per_s / (per_slot_per_s * RHO_WARN) - 1e-9)
    model = _min_servers_or_note(rate_per_s, 1.0 / per_slot_per_s, slo, [])
    estimate = model if model is not None else math.ceil(rate_per_s / (per_slot_per_s * FALLBACK_UTILISATION))
    return max(lower_bound, needed, estimate, 1)


def _plan_variant(variant: str, backend: str, points: pd.DataFrame, rate_per_s: float, kind: TaskKind,
                  slo: Slo) -> BackendPlan:
    plan = BackendPlan(variant=variant, backend=backend, verdict="no runs")
    services = points["mean_service_ms"].dropna()
    if len(services):
        plan.model_service_ms = float(services.mean())
    else:
        plan.model_service_ms = kind.nominal_service_ms or ASSUMED_SERVICE_MS
        plan.model_service_source = "assumed: the task's own duration" if kind.nominal_service_ms else (
            f"assumed: {ASSUMED_SERVICE_MS:g} ms (nothing measured)")
    service_s = plan.model_service_ms / 1e3
    plan.model_slots = _min_servers_or_note(rate_per_s, service_s, slo, plan.notes)
    if plan.model_slots is None and not plan.notes:
        plan.notes.append(f"M/M/c: no slot count meets {slo.label}: an exponential service of mean "
                          f"{plan.model_service_ms:.1f} ms alone has {slo.name} "
                          f"{-math.log(1 - slo.quantile) * plan.model_service_ms:.0f} ms")

    saturated = points[points["capacity_cell"]] if len(points) else points
    if len(saturated):
        plan.per_slot_capacity_per_s = float(saturated["capacity_per_slot_per_s"].median())
        plan.capacity_source = (f"measured: median over {len(saturated)} saturated configuration(s)"
                                + (" (drain)" if (saturated["mode"] == "drain").all() else ""))
        plan.efficiency = plan.per_slot_capacity_per_s * service_s if len(services) else None
        plan.slot_time_ms = 1e3 / plan.per_slot_capacity_per_s
        plan.model_slot_time_slots = _min_servers_or_note(rate_per_s, plan.slot_time_ms / 1e3, slo, plan.notes)
    else:
        plan.per_slot_capacity_per_s = 1.0 / service_s
        plan.capacity_source = ("Little's bound 1 / mean service: an upper bound (no cell saturated)"
                                if len(services) else f"1 / service time ({plan.model_service_source})")
        if len(points):
            plan.notes.append("slot time not measured (no saturated cell and no drain of this kind): rho uses "
                              "the task body's mean service, which leaves out per-task overhead (a fork per "
                              "job, polling); a drain of this task measures it")
    occupancy_s = (plan.occupancy_ms or plan.model_service_ms) / 1e3

    if points.empty:
        plan.reason = f"no run of {kind.label} with status ok on {variant}"
    else:
        plan.verdict = "not covered"
        for _, config in points.groupby(["slots", "processes", "threads"], sort=True):
            own = config[config["capacity_cell"]]
            capacity = float(own["throughput_per_s"].iloc[0]) if len(own) else None
            slots = int(config["slots"].iloc[0])
            bound = slots / service_s if len(services) else None
            plan.configs.append(_judge(config.sort_values("offered_rate_per_s"), rate_per_s, slo, capacity,
                                       bound, occupancy(rate_per_s, occupancy_s, slots)))
        failing = [c.slots for c in plan.configs if c.state == "fails"]
        meeting = [c for c in plan.configs if c.state == "meets"]
        candidates = [c for c in plan.configs if c.state in CANDIDATE_STATES]
        plan.lower_bound_slots = max(failing, default=0) + 1
        if meeting or candidates:
            best = min(meeting or candidates, key=lambda c: (c.slots, c.processes))
            plan.verdict = "measured" if meeting else best.state
            plan.measured_slots, plan.measured_shape, plan.threads = best.slots, best.shape, best.threads
            plan.lower_bound_slots = min(plan.lower_bound_slots, best.slots)
            if not meeting:
                plan.reason = best.reason
            inconsistent = [c.shape for c in plan.configs if c.state == "fails" and c.slots > best.slots]
            if inconsistent:
                plan.notes.append(f"more slots failed where fewer met ({', '.join(inconsistent)} vs "
                                  f"{best.shape}): the measurements are noisy here; repeat them")
        else:
            load = points[points["mode"] == "load"]
            top_rate = float(load["offered_rate_per_s"].max()) if len(load) else math.nan
            top_slots = int(points["slots"].max())
            if not len(load):
                plan.reason = "only drain runs of this kind: no latency was measured"
            elif top_rate < rate_per_s * (1 - RATE_TOLERANCE):
                plan.reason = f"beyond the largest measured rate ({top_rate:g}/s)"
            elif failing and max(failing) == top_slots:
                plan.reason = f"beyond the largest measured slots ({top_slots} fail at this rate)"
            else:
                unknown = "; ".join(f"{c.shape} {c.reason}" for c in plan.configs if c.state == "unknown")
                plan.reason = f"not decided by the measurements ({unknown or 'no configuration meets it'})"
            plan.threads = int(points["threads"].mode().iloc[0])  # covering cells keep the runs' threads
        for config in plan.configs:
            if config.rho is not None and config.rho > RHO_WARN and config.state != "fails":
                plan.notes.append(f"{config.shape}: rho {config.rho:.2f} > {RHO_WARN:g} at {rate_per_s:g}/s "
                                  f"({plan.occupancy_source}): never recommended that close to saturation")
    if not plan.covered:
        per_slot = 1e3 / plan.occupancy_ms if plan.occupancy_ms else plan.per_slot_capacity_per_s
        plan.extrapolated_slots = _estimate_slots(rate_per_s, per_slot, slo, plan.lower_bound_slots)
    if len(points):
        slot_s = plan.slot_time_ms / 1e3 if plan.slot_time_ms is not None else None
        points = _model_columns(points, service_s if len(services) else None, slot_s, slo)
        points["role"] = _roles(points, plan.configs)
        errors = points["model_error"].dropna()
        if len(errors):
            plan.model_error_median_abs = float(errors.abs().median())
            plan.model_error_range = (float(errors.min()), float(errors.max()))
    plan.points = points
    return plan


def _source(source: Results | pd.DataFrame | Path | str) -> tuple[pd.DataFrame, Results | None]:
    """The runs frame and, when the raw rows can be read, the `load.Results` they came from."""
    if isinstance(source, Results):
        return source.runs, source
    if isinstance(source, pd.DataFrame):
        return source, None
    path = Path(source)
    if not path.is_dir():
        return pd.DataFrame(), None
    try:
        results = load_results(path)
    except MixedSchemaError:
        raise
    except ResultsError:
        return pd.DataFrame(), None
    return results.runs, results


def _add_upper_bounds(points: pd.DataFrame, results: Results | None, slo: Slo) -> pd.DataFrame:
    """Each load cell's per-repeat upper end of the SLO quantile's interval (`verdicts.quantile_interval`
    on the repeat's raw rows), as ``e2e_<q>_upper_each``; NaN where the rows cannot be read."""
    column = f"e2e_{slo.name}_upper_each"
    uppers = []
    for point in points.itertuples(index=False):
        if point.mode != "load" or results is None:
            uppers.append([math.nan] * len(point.run_ids))
            continue
        found = []
        for run_id in point.run_ids:
            try:
                _, high, _ = results.quantile_interval(run_id, slo.column)
            except (OSError, ValueError, KeyError):
                high = math.nan
            found.append(high)
        uppers.append(found)
    return points.assign(**{column: uppers})


def plan_capacity(source: Results | pd.DataFrame | Path | str, rate_per_s: float, kind: TaskKind, slo: Slo,
                  backends: Iterable[str] | None = None) -> Plan:
    """The fewest slots per backend for `rate_per_s` tasks/s of `kind` within `slo`, from measured runs.

    `source`: a results directory, a `load.Results`, or a runs frame (`load.Results.runs`; without the raw
    rows no quantile interval can be computed, so nothing is recommended beyond *marginal*). Every backend
    found in it is planned for (the three libraries when it holds nothing), or only `backends`. Writes
    nothing.
    """
    if not rate_per_s > 0 or math.isinf(rate_per_s):
        raise ValueError(f"rate must be a finite number > 0 tasks/s (got {rate_per_s!r})")
    runs, results = _source(source)
    wanted = list(dict.fromkeys(backends)) if backends else None
    points = _add_upper_bounds(measured_points(runs, kind), results, slo)
    warnings: list[str] = []
    if len(runs) and "backend" in runs.columns:
        found = [b for b in dict.fromkeys(runs["backend"].dropna().astype(str)) if b not in NOT_PLANNED]
    else:
        found = []
        warnings.append("no runs in the results: every answer below is the model's, and a matrix covers it")
    names = wanted or found or list(DEFAULT_BACKENDS)
    plans = []
    kind_runs = _of_kind(runs, kind)
    for backend in names:
        own = points[points["backend"] == backend]
        variants = list(dict.fromkeys(own["variant"])) or [backend]
        for variant in variants:
            plan = _plan_variant(variant, backend, own[own["variant"] == variant].reset_index(drop=True),
                                 rate_per_s, kind, slo)
            plan.system = _system_keys(backend, kind_runs[kind_runs["variant"] == variant])
            plans.append(plan)
    if len(runs) and points.empty:
        warnings.append(f"the results hold no run of {kind.label} with status ok in load or drain mode "
                        f"(scenarios {', '.join(SINGLE_KIND_SCENARIOS)})")
    return Plan(rate_per_s=float(rate_per_s), kind=kind, slo=slo, backends=plans, warnings=warnings)



def _system_keys(backend: str, runs: pd.DataFrame) -> dict[str, Any]:
    """The system keys of a configuration's first run (so covering cells measure that configuration)."""
    spec: dict[str, Any] = {"backend": backend}
    if runs.empty:
        return spec
    row = runs.iloc[0]
    for key in MATRIX_SYSTEM_KEYS:
        value = row.get(key)
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            continue
        value = value.item() if isinstance(value, np.generic) else value
        spec[key] = int(value) if isinstance(value, float) and value.is_integer() and key != "rate" else value
    options = _args_of(row.get("options"))
    if options:
        spec["options"] = options
    return spec


# --- the acceptance test (``queuebench plan --verify``) ------------------------------------------------


@dataclass
class Acceptance:
    """Whether the SLO held for one verified configuration: every repeat, with its quantile's interval."""

    variant: str
    shape: str
    slots: int
    role: str
    #: "held" (every repeat kept up with the upper end of its interval under the limit), "missed" (a repeat
    #: fell behind or its point estimate is over the limit), "not shown" (point estimates under the limit,
    #: an upper end at or over it, or a repeat too short to bound the quantile), "incomplete" (a repeat's
    #: run did not end ok), "not run".
    outcome: str
    repeats: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        """Whether the SLO held in every repeat."""
        return self.outcome == "held"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return store.plain({"variant": self.variant, "shape": self.shape, "slots": self.slots, "role": self.role,
                            "outcome": self.outcome, "held": self.held, "repeats": self.repeats,
                            "statuses": self.statuses})


def acceptance(source: Results | Path | str, kind: TaskKind, slo: Slo,
               runs: Sequence[tuple[str, str, int, str, Sequence[str]]]) -> list[Acceptance]:
    """The acceptance test of a plan on the runs ``plan --verify`` made: per (variant, shape, slots, role,
    run ids), each repeat's quantile with its interval and n, and whether the SLO held in every one."""
    results = source if isinstance(source, Results) else load_results(source)
    frame = results.runs
    out = []
    for variant, shape, slots, role, run_ids in runs:
        mine = frame[frame["run_id"].isin(list(run_ids))]
        statuses = [str(s) for s in mine.sort_values("run_id")["status"]]
        points = measured_points(mine, kind)
        points = points[points["mode"] == "load"]
        if points.empty:
            out.append(Acceptance(variant, shape, slots, role, "not run", statuses=statuses))
            continue
        repeats = []
        for point in points.itertuples(index=False):
            for run_id, value, n, kept in zip(point.run_ids, getattr(point, f"e2e_{slo.name}_each"),
                                             point.e2e_tasks_each, point.kept_up_each, strict=True):
                low, high, _ = results.quantile_interval(run_id, slo.column)
                repeats.append({"run_id": run_id, "e2e_ms": value, "low_ms": low, "upper_ms": high, "tasks": n,
                                "kept_up": kept, "text": quantile_text(value, n, slo.quantile, interval=(low, high))})
        behind = not all(r["kept_up"] for r in repeats)
        over = any(math.isfinite(r["e2e_ms"]) and r["e2e_ms"] > slo.limit_ms for r in repeats)
        if behind or over:
            outcome = "missed"
        elif len(repeats) < len(run_ids):
            outcome = "incomplete"  # a repeat's run did not end ok (its status says why)
        elif all(math.isfinite(r["e2e_ms"]) and math.isfinite(r["upper_ms"]) and r["upper_ms"] < slo.limit_ms
                 for r in repeats):
            outcome = "held"
        else:
            outcome = "not shown"
        out.append(Acceptance(variant, shape, slots, role, outcome, repeats, statuses))
    return out
