"""The report's "Capacity notes": what the measured runs say about capacity, in sentences.

Per task kind with single-kind load runs (status ok), per backend configuration: the highest rate
sustained per slot count, the knee where visible (the same rule as the latency chart's:
`verdicts.knee_index`), the capacity per slot, and planning sentences from `planner.plan_capacity` for
rates and an SLO derived from the data, measured beside M/M/c. Markdown paragraphs and bullet lists
only, as the report renders them.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.analysis.load import Results, load_results
from benchmarks.analysis.planner import (
    CANDIDATE_STATES,
    BackendPlan,
    TaskKind,
    kinds_in,
    measured_points,
    plan_capacity,
    runs_frame,
    slots_text,
)
from benchmarks.analysis.uncertainty import quantile_text, runs_text
from benchmarks.verdicts import (
    KNEE_LATENCY_GROWTH,
    MIN_REPEATS,
    RHO_WARN,
    SUSTAINED_RATIO,
    Slo,
    knee_index,
    latency_grew,
    min_samples,
)


def _nice_ceil_ms(value_ms: float) -> float:
    """The next value of the 1-2-5 series (ms) at or above `value_ms`."""
    exponent = math.floor(math.log10(max(value_ms, 1e-3)))
    for base in (1, 2, 5, 10):
        candidate = base * 10.0**exponent
        if candidate >= value_ms - 1e-9:
            return candidate
    return 10.0 ** (exponent + 1)


def notes_slo(points: pd.DataFrame) -> Slo:
    """The SLO the notes plan for, derived from the data: p95 under 5x the kind's mean service time,
    rounded up to the 1-2-5 series, and at least 50 ms (below that the HTTP path dominates)."""
    service = points["mean_service_ms"].dropna()
    base_ms = 5 * float(service.median()) if len(service) else 1000.0
    return Slo("p95", _nice_ceil_ms(max(base_ms, 50.0)) / 1e3)


def representative_rates(points: pd.DataFrame) -> list[float]:
    """Rates the notes plan for: the highest offered rate measured for the kind and, if more than one was,
    the median of the distinct rates below it (both from the data)."""
    rates = sorted(points.loc[points["mode"] == "load", "offered_rate_per_s"].dropna().unique())
    if not rates:
        return []
    picked = [float(rates[-1])]
    lower = rates[:-1]
    if lower:
        picked.insert(0, float(lower[len(lower) // 2]))
    return picked


def knee(config: pd.DataFrame) -> str:
    """Where a configuration's load cells bend: the lowest offered rate at which throughput fell below
    95 % of the rate sent (the cell saturated) or p95 grew more than `KNEE_LATENCY_GROWTH` x the
    lowest-rate cell's p95, and stayed so at every higher rate measured."""
    load = config[config["mode"] == "load"].sort_values("offered_rate_per_s")
    if load.empty:
        return "no load cells"
    base = load.iloc[0]
    reasons = []
    for point in load.itertuples(index=False):
        # A p95 its tasks cannot bound is NaN (the quantile rule), so it never shows growth.
        grew = latency_grew(point.e2e_p95_ms, base["e2e_p95_ms"])
        if point.saturated:
            reasons.append(f"{point.throughput_per_s:.1f}/s done of {point.sent_rate_per_s:.1f}/s sent "
                           f"({_over(point.repeats)})")
        elif grew:
            reasons.append(f"p95 {quantile_text(point.e2e_p95_ms, point.e2e_tasks, 0.95)}, "
                           f"{point.e2e_p95_ms / base['e2e_p95_ms']:.1f}x the {base['offered_rate_per_s']:g}/s cell's")
        else:
            reasons.append("")
    bent_from = knee_index([bool(r) for r in reasons])
    if bent_from is not None:
        point = load.iloc[bent_from]
        first = " (already at the lowest rate measured)" if bent_from == 0 else ""
        return f"knee at {point['offered_rate_per_s']:g}/s{first}: {reasons[bent_from]}"
    if len(load) == 1:
        return f"knee not visible: one rate measured ({base['offered_rate_per_s']:g}/s)"
    untestable = ""
    if not np.isfinite(base["e2e_p95_ms"]):  # growth from a p95 its tasks could not bound is not tested
        untestable = (f" (only saturation tested: p95 at {base['offered_rate_per_s']:g}/s is "
                      f"{quantile_text(base['e2e_p95_ms'], base['e2e_tasks'], 0.95)})")
    return f"no knee up to {load['offered_rate_per_s'].max():g}/s{untestable}"


def _over(repeats: int) -> str:
    """``1 run``, ``mean of 2 repeats``: what a figure over a cell's repeats rests on."""
    return "1 run" if repeats == 1 else f"mean of {repeats} repeats"


def _slots_text(config: pd.DataFrame) -> str:
    first = config.iloc[0]
    slots = int(first["slots"])
    return f"{slots} slot{'s' if slots != 1 else ''} (p{int(first['processes'])}t{int(first['threads'])})"


def _variant_line(variant: str, points: pd.DataFrame) -> str:
    parts = []
    for _, config in points.groupby(["slots", "processes", "threads"], sort=True):
        load = config[config["mode"] == "load"]
        sustained = load[load["sustained"]]
        if len(sustained):
            best = sustained.sort_values("offered_rate_per_s").iloc[-1]
            highest = (f"sustained up to {best['offered_rate_per_s']:g}/s (p95 "
                       f"{quantile_text(best['e2e_p95_ms'], best['e2e_tasks'], 0.95)}, worst of "
                       f"{runs_text(int(best['repeats']))})")
        elif len(load):
            highest = "no rate sustained"
        else:
            highest = "drain only"
        drains = config[config["mode"] == "drain"]
        drain = (f"; drained at {drains['throughput_per_s'].mean():.1f}/s ({_over(int(drains['repeats'].sum()))})"
                 if len(drains) else "")
        parts.append(f"{_slots_text(config)}: {highest}; {knee(config)}{drain}")
    return f"{variant}: " + "; ".join(parts) + "."


def _plan_sentence(backend: BackendPlan, rate: float, kind: TaskKind, slo: Slo) -> str:
    model = slots_text(backend.model_slots) if backend.model_slots is not None else "no slot count meets it"
    head = (f"To serve {rate:g} tasks/s of {kind.spoken} with {slo.name} under {slo.limit_text} on "
            f"{backend.variant}")
    if backend.slot_time_ms is not None:
        # The slot time is 1 / the capacity per slot stated above; the body's is the mean service.
        model += f" with the task body's mean service, {backend.model_slot_time_answer} with the measured slot time"
    rho = f", rho {backend.rho:.2f}" if backend.rho is not None else ""
    if backend.covered:
        untested = range(backend.lower_bound_slots, backend.measured_slots or 0)
        fewer = f"; fewer than {backend.measured_slots} not measured at this rate" if len(untested) else ""
        return (f"{head} you need {slots_text(backend.measured_slots)} (measured, "
                f"{backend.measured_shape}{rho}{fewer}) / "
                f"{model} (M/M/c).")
    if backend.verdict in CANDIDATE_STATES:
        return (f"{head}: no recommendation; {slots_text(backend.measured_slots)} ({backend.measured_shape}"
                f"{rho}) is {backend.verdict} ({backend.reason}); M/M/c says {model}.")
    extra = f"; extrapolated ~{slots_text(backend.extrapolated_slots)}" if backend.extrapolated_slots else ""
    return (f"{head}: not covered by these results, {backend.reason}{extra} (not measured); "
            f"M/M/c says {model}.")


def capacity_notes(source: Results | pd.DataFrame | Path | str) -> str:
    """The report's "Capacity notes" (Markdown: paragraphs and bullet lists only, as the report renders).

    Per task kind with single-kind load runs (status ok), per backend configuration: the highest rate
    sustained per slot count, the knee where visible, the capacity per slot, and planning sentences for
    rates and an SLO derived from the data (`representative_rates`, `notes_slo`), measured beside M/M/c.
    """
    if isinstance(source, (Path, str)) and Path(source).is_dir():
        with contextlib.suppress(ValueError):  # no run in it: nothing to plan from, as runs_frame says
            source = load_results(source)
    runs = runs_frame(source.usable if isinstance(source, Results) else source)
    # The plan rule reads each repeat's raw rows (its quantile's interval): from a Results, not a frame.
    planned = source if isinstance(source, Results) else runs
    kinds = kinds_in(runs)
    if not kinds:
        return ("Capacity notes need load-mode runs of a single task kind (scenario latency or throughput) "
                "with status ok; these results have none, so no capacity can be stated. Run "
                "benchmarks/matrices/capacity.toml for a first set, or queuebench plan for a request.")
    paragraphs = [
        "How these are computed: a rate is sustained when every repeat of the cell had status ok, finished "
        f"≥ {SUSTAINED_RATIO:.0%} of the tasks sent in its window and finished tasks end to end. A cell's "
        "percentile is its worst repeat's, with n the fewest tasks a repeat had; one its tasks cannot bound "
        f"(p95 needs n ≥ {min_samples(0.95)}) reads too few samples and neither meets nor misses an SLO. The knee "
        f"is the lowest offered rate where throughput fell below {SUSTAINED_RATIO:.0%} of the rate sent or p95 "
        f"grew more than {KNEE_LATENCY_GROWTH:g}x from the lowest-rate cell, and stayed so above it. A rate at or "
        "above slots / mean service (Little's bound) is never planned for, however a short window looked. "
        f"A slot count is recommended only when each of at least {MIN_REPEATS} repeats kept up with the upper "
        "end of its quantile's 95 % interval under the limit, the repeats' spread does not let a next window "
        f"cross it, and rho = rate x slot time / slots is at most {RHO_WARN:g}; point estimates under the limit "
        "without all of that are marginal, or too few repeats. "
        "M/M/c uses each backend's measured mean service time with exponential service, so it overstates the "
        "tail of near-constant tasks (sleep_ms, cpu_ms), and beside it the measured slot time (1 / capacity "
        "per slot, per-task overhead included) where a saturated cell or a drain measured it; the model "
        "error is model / measured - 1 at the measured cells."]
    for kind in kinds:
        points = measured_points(runs, kind)
        load = points[points["mode"] == "load"]
        rates = sorted(load["offered_rate_per_s"].unique())
        slo = notes_slo(points)
        paragraphs.append(
            f"{kind.label}: {int(load['repeats'].sum())} load runs over {len(load)} cells, offered "
            f"{', '.join(f'{r:g}' for r in rates)} tasks/s, "
            f"{', '.join(str(s) for s in sorted(load['slots'].unique()))} "
            f"slots. Planning SLO for this kind: {slo.label} (5x the median mean service time, rounded up).")
        bullets = []
        for variant, own in points.groupby("variant", sort=True):
            line = _variant_line(str(variant), own)
            saturated = own[own["capacity_cell"]]
            service = own["mean_service_ms"].dropna()
            if len(saturated) and len(service):
                per_slot = float(saturated["capacity_per_slot_per_s"].median())
                line += (f" Capacity per slot {per_slot:.1f}/s when saturated (median of {len(saturated)} "
                         f"saturated cell{'s' if len(saturated) != 1 else ''}), "
                         f"{per_slot * service.mean() / 1e3:.0%} "
                         f"of 1 / mean service ({1e3 / service.mean():.1f}/s).")
            else:
                line += (f" No cell saturated: capacity per slot is at most 1 / mean service "
                         f"({1e3 / service.mean():.1f}/s)." if len(service) else "")
            bullets.append(line)
        sentences, errors = [], []
        picked = representative_rates(points)
        for rate in picked:
            plan = plan_capacity(planned, rate, kind, slo, backends=None)
            for backend in plan.backends:
                if backend.variant not in set(points["variant"]):
                    continue
                sentences.append(_plan_sentence(backend, rate, kind, slo))
                if backend.model_error_range is not None and rate == picked[-1]:
                    low, high = backend.model_error_range
                    errors.append(f"{backend.variant} {backend.model_error_median_abs:.0%} "
                                  f"({low:+.0%} to {high:+.0%})")
        if len(rates) < 2:
            bullets.append("Data insufficient for a knee: each configuration was measured at one rate only; "
                           "run a rate sweep (benchmarks/matrices/capacity.toml) to see where it bends.")
        paragraphs.append("\n".join(f"- {b}" for b in bullets))
        if sentences:
            paragraphs.append("\n".join(f"- {s}" for s in sentences))
        if errors:
            paragraphs.append(f"M/M/c error in the {slo.name} at the measured cells (model / measured - 1), "
                              "median of its size and range: " + ", ".join(errors) + ".")
    return "\n\n".join(paragraphs) + "\n"
