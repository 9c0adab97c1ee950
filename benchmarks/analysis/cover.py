"""Covering matrices: a matrix file that measures what a capacity plan could not answer from the runs.

For each backend configuration the plan did not cover, the matrix runs the requested task at the
requested rate (latency scenario, Poisson arrivals) at slot counts around the plan's labelled
extrapolation, so the next ``queuebench plan`` on the same results directory can answer from
measurements. The file is written with a TOML writer (`tomli_w`): a few leading comment lines a user
reads, then the data. Nothing here reads or runs matrices: the tests parse every covering matrix with the
matrix parser and check it expands to exactly the cells `covering_cells` intends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from benchmarks.analysis.load import MAX_PROCESSES
from benchmarks.analysis.planner import Plan
from benchmarks.verdicts import MIN_REPEATS, SAMPLE_MARGIN, Slo, min_samples, window_tasks

#: Slot counts a covering matrix tries, as multiples of the estimate...
CANDIDATE_FACTORS = (0.5, 0.75, 1.0, 1.5)
#: ...and, when nothing of the kind was measured on that backend, skewed upwards: that estimate knows the
#: task's own duration at most, and a library only adds overhead to it.
NO_DATA_FACTORS = (0.75, 1.0, 1.5, 2.0)
#: Measured window of a covering cell, in seconds (at least, at most): long enough for
#: `verdicts.window_tasks` (`SAMPLE_MARGIN` x the fewest tasks that bound the SLO's quantile) at the rate.
COVER_DURATION_S = (10, 600)
#: Warm-up of a covering cell, in seconds (discarded).
COVER_WARMUP_S = 2
#: Seconds a covering cell may drain: saturated cells drain their backlog and still count (status ok).
COVER_DRAIN_TIMEOUT_S = 120
#: Repeats of each covering cell: the plan rule needs this many, each meeting the SLO (interleaved: the
#: matrix runs every cell once, then every cell again).
COVER_REPEATS = MIN_REPEATS
#: Seconds a load cell takes beyond its warm-up and measured window (start-up, Locust's tail), as
#: `benchmarks.runner.cell_seconds` counts them; a test holds the two together.
CELL_OVERHEAD_S = 4
#: Where `queuebench plan` writes covering matrices by default (relative to the working directory).
PLANS_DIR = Path("results/plans")


@dataclass
class CoveringMatrix:
    """A matrix file that measures what a plan could not answer, and how to run it."""

    path: Path
    text: str
    cells: int
    minutes: float
    command: str


def candidate_slots(estimate: int, lower_bound: int = 1, threads: int = 1,
                    factors: Sequence[float] = CANDIDATE_FACTORS) -> list[int]:
    """Slot counts around `estimate` (`factors`), none below `lower_bound`, multiples of `threads`."""
    counts = set()
    for factor in factors:
        slots = max(lower_bound, math.ceil(estimate * factor - 1e-9), 1)
        processes = min(MAX_PROCESSES, math.ceil(slots / threads))
        counts.add(processes * threads)
    return sorted(counts)


def covering_cells(plan: Plan) -> list[dict[str, Any]]:
    """One entry per uncovered backend configuration: its system keys, threads and candidate processes."""
    out = []
    for backend in plan.backends:
        if backend.covered or backend.extrapolated_slots is None:
            continue
        threads = backend.threads if backend.backend != "rq" else 1
        factors = NO_DATA_FACTORS if backend.verdict == "no runs" else CANDIDATE_FACTORS
        slots = candidate_slots(backend.extrapolated_slots, backend.lower_bound_slots, threads, factors)
        if backend.measured_slots is not None:  # a marginal candidate, or one with too few repeats: again
            slots = sorted(set(slots) | {backend.measured_slots})
        out.append({"variant": backend.variant, "spec": dict(backend.system or {"backend": backend.backend}),
                    "threads": threads, "processes": sorted({s // threads for s in slots})})
    return out


def cover_duration_s(rate_per_s: float, slo: Slo) -> int:
    """A measured window whose tasks bound the SLO's quantile with a margin: rate x duration >=
    `verdicts.window_tasks` (3 x 72 = 216 tasks for p95, 3 x 368 for p99), within `COVER_DURATION_S`."""
    low, high = COVER_DURATION_S
    return int(min(high, max(low, math.ceil(window_tasks(slo.quantile) / rate_per_s - 1e-9))))


def matrix_name(plan: Plan) -> str:
    """``capacity-sleep_ms-ms50-r200-p95-1s``: the matrix's name and its file's stem."""
    return f"capacity-{plan.kind.slug}-r{plan.rate_per_s:g}-{plan.slo.slug}"


def _toml_value(value: Any) -> Any:
    """Plain values for the TOML writer: numpy scalars as Python numbers, whole floats as integers (a
    matrix's run ids hash the spec, so ``rate = 200`` must stay 200, not 200.0)."""
    if isinstance(value, Mapping):
        return {str(k): _toml_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_toml_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _configuration(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One configuration's keys; its library knobs go in the backend's own table (``[celery]``)."""
    spec = dict(entry["spec"])
    options = spec.pop("options", {})
    table = spec | {"threads": entry["threads"], "processes": entry["processes"]}
    if options:
        table[spec["backend"]] = dict(options)
    return table


def covering_matrix(plan: Plan) -> dict[str, Any]:
    """The matrix that measures every uncovered backend at the requested rate (latency scenario), as data:
    the workload and the first configuration at the top level, every other configuration an include."""
    entries = covering_cells(plan)
    if not entries:
        raise ValueError("every backend is covered by measurements: nothing to measure")
    data: dict[str, Any] = {
        "name": matrix_name(plan), "description": "Capacity check: " + plan.request_text,
        "mode": "load", "scenario": "latency", "task": plan.kind.task, "args": plan.kind.args,
        "rate": float(plan.rate_per_s),
        "arrival": "poisson",  # as M/M/c assumes, and closer to real traffic than a metronome
        "warmup_s": COVER_WARMUP_S, "duration_s": cover_duration_s(plan.rate_per_s, plan.slo),
        "drain_timeout_s": COVER_DRAIN_TIMEOUT_S, "repeats": COVER_REPEATS,
    }
    data |= _configuration(entries[0])
    if len(entries) > 1:
        data["include"] = [_configuration(entry) for entry in entries[1:]]
    return _toml_value(data)


def covering_matrix_text(plan: Plan) -> str:
    """The covering matrix as TOML: comment lines saying what it is for and why each setting, then the
    data (`covering_matrix`) as the TOML writer writes it."""
    data = covering_matrix(plan)
    variants = [entry["variant"] for entry in covering_cells(plan)]
    includes = (f"; {', '.join(variants[1:])} (one [[include]] each)" if len(variants) > 1 else "")
    header = [
        f"{data['name']}: written by `queuebench plan` to cover a request the results could not answer:",
        f"{plan.request_text}.",
        "Each uncovered backend runs at slot counts around its estimate (0.5x to 1.5x; 0.75x to 2x when",
        "nothing was measured; the smaller ones may saturate, which measures the capacity per slot) and at",
        "any marginal candidate's, at the requested rate, in the latency scenario. Run it, then ask",
        "`queuebench plan` again with the same results directory.",
        f"Configurations: {variants[0]} (top level){includes}.",
        "arrival: poisson, as M/M/c assumes, and closer to real traffic than a metronome.",
        f"duration_s: rate x duration >= {SAMPLE_MARGIN} x {min_samples(plan.slo.quantile)} tasks (the fewest "
        f"that bound a {plan.slo.name}, with a margin), within {COVER_DURATION_S[0]}..{COVER_DURATION_S[1]} s.",
        "drain_timeout_s: saturated cells drain their backlog and still count (status ok).",
        f"repeats: the plan recommends only on {MIN_REPEATS} repeats that each meet the SLO with the upper end of "
        "its 95 % interval.",
    ]
    return "".join(f"# {line}\n" for line in header) + "\n" + tomli_w.dumps(data)


def covering_cell_count(plan: Plan) -> int:
    """How many cells (repeats included) the covering matrix runs."""
    return sum(len(entry["processes"]) for entry in covering_cells(plan)) * COVER_REPEATS


def covering_minutes(plan: Plan) -> float:
    """A rough duration of the covering matrix, in minutes (for the ETA printed beside the command)."""
    seconds_per_cell = CELL_OVERHEAD_S + COVER_WARMUP_S + cover_duration_s(plan.rate_per_s, plan.slo)
    return covering_cell_count(plan) * seconds_per_cell / 60


def default_matrix_path(plan: Plan) -> Path:
    """Where `queuebench plan` writes the covering matrix unless told: ``results/plans/<name>.toml``."""
    return PLANS_DIR / f"{matrix_name(plan)}.toml"


def write_covering_matrix(plan: Plan, path: Path | None = None,
                          results_dir: Path | None = None) -> CoveringMatrix:
    """Write the covering matrix and say how to run it (the command, its cells and a rough duration)."""
    path = Path(path) if path is not None else default_matrix_path(plan)
    text = covering_matrix_text(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    command = f"queuebench run {path}"
    if results_dir is not None and Path(results_dir) != Path("results/runs"):
        command += f" --out {results_dir}"
    return CoveringMatrix(path, text, covering_cell_count(plan), covering_minutes(plan), command)


# --- the verification matrix (``queuebench plan --verify``) --------------------------------------------


@dataclass(frozen=True)
class VerifyTarget:
    """One configuration ``plan --verify`` runs: a backend plan's answer, or the one with one slot fewer."""

    variant: str
    spec: dict[str, Any]
    processes: int
    threads: int
    #: "recommended", "marginal", "too few repeats", "extrapolated", or "one slot fewer".
    role: str

    @property
    def slots(self) -> int:
        """processes x threads."""
        return self.processes * self.threads

    @property
    def shape(self) -> str:
        """``p3t1``."""
        return f"p{self.processes}t{self.threads}"


def verify_targets(plan: Plan) -> list[VerifyTarget]:
    """Per backend, the configuration its answer names (`BackendPlan.to_verify`: the recommendation, else
    the marginal candidate, else the extrapolation) and the one with one slot fewer (one process fewer
    when a process runs several threads), when there is one."""
    targets = []
    for backend in plan.backends:
        found = backend.to_verify
        if found is None:
            continue
        processes, threads, what = found
        spec = dict(backend.system or {"backend": backend.backend})
        targets.append(VerifyTarget(backend.variant, spec, processes, threads, what))
        if processes > 1:
            targets.append(VerifyTarget(backend.variant, spec, processes - 1, threads, "one slot fewer"
                                        if threads == 1 else f"one process fewer ({threads} slots)"))
    return targets


def verify_duration_s(rate_per_s: float, slo: Slo) -> int:
    """The verification window: as a covering cell's (`cover_duration_s`)."""
    return cover_duration_s(rate_per_s, slo)


def verification_matrix_text(plan: Plan, duration_s: float | None = None) -> str:
    """The matrix ``plan --verify`` runs, as TOML: every `verify_targets` configuration at the requested
    rate (latency scenario, Poisson), `COVER_REPEATS` repeats interleaved, a window of `duration_s`
    (default `verify_duration_s`)."""
    targets = verify_targets(plan)
    if not targets:
        raise ValueError("the plan names no configuration to verify")
    duration = duration_s if duration_s is not None else verify_duration_s(plan.rate_per_s, plan.slo)
    data: dict[str, Any] = {
        "name": f"verify-{plan.plan_id}", "description": "Verification: " + plan.request_text,
        "mode": "load", "scenario": "latency", "task": plan.kind.task, "args": plan.kind.args,
        "rate": float(plan.rate_per_s), "arrival": "poisson",
        "warmup_s": COVER_WARMUP_S, "duration_s": duration,
        "drain_timeout_s": COVER_DRAIN_TIMEOUT_S, "repeats": COVER_REPEATS,
    }
    tables = [_configuration({"spec": t.spec, "threads": t.threads, "processes": t.processes}) for t in targets]
    data |= tables[0]
    if len(tables) > 1:
        data["include"] = tables[1:]
    header = [
        f"{data['name']}: written by `queuebench plan --verify`, the plan's acceptance test:",
        f"{plan.request_text}.",
        "Configurations: " + "; ".join(f"{t.variant} {t.shape} ({t.role})" for t in targets) + ".",
        f"{COVER_REPEATS} repeats, interleaved (every configuration once, then again); the SLO held for a "
        "configuration when every repeat kept up with the upper end of its quantile's 95 % interval under "
        "the limit.",
        f"duration_s: {duration:g} s ({window_tasks(plan.slo.quantile)} tasks for the {plan.slo.name} at this "
        "rate take " f"{window_tasks(plan.slo.quantile) / plan.rate_per_s:.1f} s).",
    ]
    return "".join(f"# {line}\n" for line in header) + "\n" + tomli_w.dumps(_toml_value(data))
