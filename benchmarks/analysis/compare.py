"""B against A, cell by cell, judged by the winner rule where repeats allow (``queuebench compare A B``).

Cells match when their specs are equal apart from the repeat. A key of the system under test
(`load.SYSTEM_KEYS`: backend, processes, serializer...) that holds one value in all of A and another in all
of B is the *treatment*: it is left out of the match and printed, so when only the worker count differs
(``processes`` 1 in A, 2 in B) the same workloads are compared at the two worker counts. Workload keys
(mode, scenario, task, rate...) always have to match; ``--ignore KEY`` leaves a key out of the match.

For each matching cell and figure (throughput, higher is better; end-to-end p95, lower is better), the
ratio B / A with a 95 % interval, by one of two methods, named in every row:

- ``repeats``, when both sides have at least `verdicts.MIN_REPEATS` usable runs with the figure: the
  winner rule itself (`verdicts.difference`: Welch's t-test on the logs of the per-run figures, the ratio of
  geometric means and its t interval, beyond the `verdicts.NOISE_FLOOR`). A change is significant exactly
  when the report's headline would call it.
- ``raw rows`` otherwise (single runs, or two): the sampling within the runs only, pooled per side. It
  cannot see run-to-run noise, so it is labelled as such and needs a change beyond `RAW_ROWS_MIN_CHANGE`
  (twice the run-to-run floor) with an interval that excludes 1. Throughput: the mean of the successful
  finishes per second in `THROUGHPUT_BINS` equal bins of each run's window, its ratio's interval from
  `scipy.stats.bootstrap`. End-to-end p95: over the tasks scheduled in the windows (as `benchmarks.measure`
  defines it), shown only when the quantile rule says their number bounds it; its ratio's interval is the
  ratio of the two sides' distribution-free intervals (`verdicts.quantile_interval`), each at
  sqrt(95 %) so that both hold together with 95 % (the sides are independent samples). No bootstrap of a
  quantile: resampling never goes past a sample's largest value, so it is narrowest exactly when the
  sample is too small.

Sets with different result schema versions, or with no cell in common, are refused (`IncomparableError`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import verdicts
from benchmarks.analysis.load import (
    LABEL_KEYS,
    SYSTEM_KEYS,
    Results,
    ResultsError,
    is_missing,
    labels,
    load_results,
    row_key,
)

#: Bootstrap resamples per raw-row throughput interval.
N_BOOT = 2000
#: Equal bins of the measured window whose finish counts stand for a single run's throughput.
THROUGHPUT_BINS = 20
#: Smallest change a raw-row comparison marks significant, as max(ratio, 1 / ratio) - 1: raw rows do not
#: see run-to-run noise at all, so twice the floor the winner rule asks of repeats.
RAW_ROWS_MIN_CHANGE = 2 * verdicts.NOISE_FLOOR
#: The figures compared: (column, readable name). Which way is better is `verdicts.higher_is_better`'s.
METRICS = (("throughput_per_s", "throughput (/s)"), ("e2e_ms_p95", "e2e p95 (ms)"))
#: What the method column says, and why the raw-row one is weaker.
METHODS = {"repeats": f"repeats (winner rule: >= {verdicts.MIN_REPEATS} runs a side, Welch's t on logs)",
           "raw rows": "raw rows (within-run sampling only; run-to-run noise not measured: rerun with "
                       f"--repeats {verdicts.MIN_REPEATS})"}


class IncomparableError(ResultsError):
    """Two result sets that cannot be compared; the message says why."""


@dataclass
class Comparison:
    """Every matched cell's ratios, and what told the two sets apart."""

    a_root: Path
    b_root: Path
    rows: pd.DataFrame
    treatment: dict[str, tuple[str, str]] = field(default_factory=dict)
    only_a: int = 0
    only_b: int = 0

    @property
    def significant(self) -> pd.DataFrame:
        return self.rows[self.rows["significant"]]


def _norm(value: object) -> str:
    return "" if is_missing(value) else str(value)


def treatment_keys(a: pd.DataFrame, b: pd.DataFrame, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Keys with one value throughout A and another throughout B: what the comparison is about."""
    out = {}
    for key in keys:
        values_a = {_norm(v) for v in (a[key] if key in a.columns else [None])}
        values_b = {_norm(v) for v in (b[key] if key in b.columns else [None])}
        if len(values_a) == 1 and len(values_b) == 1 and values_a != values_b:
            out[key] = (values_a.pop() or "(unset)", values_b.pop() or "(unset)")
    return out


def throughput_ratio_interval(a_bins: np.ndarray, b_bins: np.ndarray, seed: int = 0,
                              n_boot: int = N_BOOT) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval (`scipy.stats.bootstrap`, each side resampled on its own) of
    mean(B's bin rates) / mean(A's)."""
    from scipy import stats  # loaded when a comparison needs it, not when the CLI starts

    if len(a_bins) < 2 or len(b_bins) < 2 or not np.mean(a_bins) > 0:
        return math.nan, math.nan

    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(b, axis=axis) / np.mean(a, axis=axis)

    # A run whose window saw few finishes has empty bins, and a resample of only those divides by zero:
    # that resample's ratio is infinite, and so is the interval's end it lands in (shown as n/a).
    with np.errstate(divide="ignore", invalid="ignore"):
        found = stats.bootstrap((np.asarray(a_bins, dtype="float64"), np.asarray(b_bins, dtype="float64")),
                                ratio, vectorized=True, paired=False, method="percentile", n_resamples=n_boot,
                                confidence_level=verdicts.CONFIDENCE, rng=np.random.default_rng(seed))
    low, high = float(found.confidence_interval.low), float(found.confidence_interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (math.nan, math.nan)


def quantile_ratio_interval(a_rows: np.ndarray, b_rows: np.ndarray, quantile: float) -> tuple[float, float]:
    """A 95 % distribution-free interval of quantile(B) / quantile(A): B's interval over A's, each at
    sqrt(95 %) so both hold together with 95 % (independent samples); nan when a side cannot bound it."""
    each = math.sqrt(verdicts.CONFIDENCE)
    a_low, a_high = verdicts.quantile_interval(a_rows, quantile, each)
    b_low, b_high = verdicts.quantile_interval(b_rows, quantile, each)
    if not all(math.isfinite(v) for v in (a_low, a_high, b_low, b_high)) or a_low <= 0:
        return math.nan, math.nan
    return b_low / a_high, b_high / a_low


def throughput_bins(results: Results, run_id: str, bins: int = THROUGHPUT_BINS) -> np.ndarray:
    """Successful finishes per second in each of `bins` equal parts of the run's measured window."""
    window = results.window(run_id)
    tasks = results.tasks(run_id)
    if window is None or tasks.empty or window.length_s <= 0:
        return np.array([])
    ok = tasks[(tasks["attempt"] > 0) & (tasks["outcome"] == "ok")]
    finished = ok["finished_ns"].dropna().astype("int64").to_numpy()
    finished = finished[(finished >= window.start_ns) & (finished < window.end_ns)]
    edges = np.linspace(window.start_ns, window.end_ns, bins + 1)
    counts, _ = np.histogram(finished, bins=edges)
    return counts / (window.length_s / bins)


def e2e_rows(results: Results, run_id: str) -> np.ndarray:
    """End-to-end latencies (ms) of the run's tasks scheduled in its measured window."""
    each = results.task_latencies(run_id)
    if each.empty:
        return np.array([])
    return each.loc[each["in_window"], "e2e_ms"].dropna().to_numpy(dtype="float64")


RAW_ROWS: dict[str, Callable[[Results, str], np.ndarray]] = {
    "throughput_per_s": throughput_bins,
    "e2e_ms_p95": e2e_rows,
}


def compare(a_root: Path | str, b_root: Path | str, *, ignore: Iterable[str] = (), n_boot: int = N_BOOT,
            seed: int = 0) -> Comparison:
    """Compare result set B with result set A cell by cell (see the module docstring)."""
    a, b = load_results(a_root), load_results(b_root)
    if a.schema_version != b.schema_version:
        raise IncomparableError(f"result schema versions differ: {a.root} has version {a.schema_version}, "
                                f"{b.root} has version {b.schema_version}; their figures need not mean the same")
    runs_a, runs_b = a.usable, b.usable
    if runs_a.empty or runs_b.empty:
        empty = a.root if runs_a.empty else b.root
        raise IncomparableError(f"{empty} has no usable run (status ok or generator-limited)")
    ignore = set(ignore)
    unknown = ignore - set(LABEL_KEYS)
    if unknown:
        raise IncomparableError(f"--ignore {', '.join(sorted(unknown))}: not a spec key; keys: {', '.join(LABEL_KEYS)}")
    # Only the system under test can be the treatment: the workloads compared must be the same.
    treatment = treatment_keys(runs_a, runs_b, [k for k in SYSTEM_KEYS if k not in ignore])
    match = [k for k in LABEL_KEYS if k not in treatment and k not in ignore]
    runs_a = runs_a.assign(match=row_key(runs_a, match))
    runs_b = runs_b.assign(match=row_key(runs_b, match))
    common = sorted(set(runs_a["match"]) & set(runs_b["match"]))
    if not common:
        differing = sorted(k for k in match if {_norm(v) for v in runs_a.get(k, [])} !=
                           {_norm(v) for v in runs_b.get(k, [])})
        raise IncomparableError(f"no cell in common between {a.root} and {b.root}"
                                + (f": they differ in {', '.join(differing)}" if differing else "")
                                + "; use --ignore KEY to leave a key out of the match")
    cell_labels = labels(pd.concat([runs_a, runs_b]).drop_duplicates("match").set_index("match").loc[common]
                         .reset_index(), match)
    rows = []
    for key, label in zip(common, cell_labels, strict=True):
        side_a, side_b = runs_a[runs_a["match"] == key], runs_b[runs_b["match"] == key]
        for metric, name in METRICS:
            rows.append(_compare_cell(a, b, side_a, side_b, metric, name, seed, n_boot) | {"cell": label})
    frame = pd.DataFrame(rows)
    frame = frame[["cell", *[c for c in frame.columns if c != "cell"]]]
    only_a = runs_a.loc[~runs_a["match"].isin(common), "match"].nunique()
    only_b = runs_b.loc[~runs_b["match"].isin(common), "match"].nunique()
    return Comparison(a.root, b.root, frame, treatment, int(only_a), int(only_b))


def _tasks_range(side: pd.DataFrame, metric: str) -> str:
    """``88-90``: how many tasks each run's percentile rests on ("" for a figure that is not one)."""
    column = "e2e_ms_count" if metric == "e2e_ms_p95" else None
    if column is None or column not in side:
        return ""
    counts = pd.to_numeric(side[column], errors="coerce").dropna().astype(int)
    if counts.empty:
        return "0"
    return f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"


def _compare_cell(a: Results, b: Results, side_a: pd.DataFrame, side_b: pd.DataFrame, metric: str, name: str,
                  seed: int, n_boot: int) -> dict[str, object]:
    higher = verdicts.higher_is_better(metric)
    values_a = pd.to_numeric(side_a[metric], errors="coerce").dropna().to_numpy(dtype="float64") \
        if metric in side_a else np.array([])
    values_b = pd.to_numeric(side_b[metric], errors="coerce").dropna().to_numpy(dtype="float64") \
        if metric in side_b else np.array([])
    row: dict[str, object] = {"metric": metric, "figure": name, "better": "higher" if higher else "lower",
                              "a_runs": len(side_a), "b_runs": len(side_b),
                              "a_tasks": _tasks_range(side_a, metric), "b_tasks": _tasks_range(side_b, metric),
                              "p_value": math.nan}
    if len(values_a) >= verdicts.MIN_REPEATS and len(values_b) >= verdicts.MIN_REPEATS:
        # The winner rule itself, so compare marks a change exactly where the report would call one.
        found = verdicts.difference(values_a, values_b, metric)
        verdict = found.outcome if found.clear else ("within noise" if found.judged else "-")
        return row | {"a": verdicts.geometric_mean(values_a), "b": verdicts.geometric_mean(values_b),
                      "ratio": found.ratio, "ci_low": found.ci_low, "ci_high": found.ci_high,
                      "p_value": found.p_value, "method": "repeats", "significant": found.clear,
                      "verdict": verdict}
    rows_a = np.concatenate([RAW_ROWS[metric](a, r) for r in side_a["run_id"]] or [np.array([])])
    rows_b = np.concatenate([RAW_ROWS[metric](b, r) for r in side_b["run_id"]] or [np.array([])])
    if metric == "e2e_ms_p95":
        row |= {"a_tasks": str(rows_a.size), "b_tasks": str(rows_b.size)}
        bounded = verdicts.bounds(rows_a.size, 0.95) and verdicts.bounds(rows_b.size, 0.95)
        stat_a = float(np.percentile(rows_a, 95)) if bounded else math.nan
        stat_b = float(np.percentile(rows_b, 95)) if bounded else math.nan
        low, high = quantile_ratio_interval(rows_a, rows_b, 0.95) if bounded else (math.nan, math.nan)
        if not bounded:
            return row | {"a": stat_a, "b": stat_b, "ratio": math.nan, "ci_low": low, "ci_high": high,
                          "method": "raw rows", "significant": False,
                          "verdict": verdicts.too_few_samples(min(rows_a.size, rows_b.size))}
    else:
        stat_a = float(rows_a.mean()) if rows_a.size else math.nan
        stat_b = float(rows_b.mean()) if rows_b.size else math.nan
        low, high = throughput_ratio_interval(rows_a, rows_b, seed, n_boot)
    ratio = stat_b / stat_a if stat_a and np.isfinite(stat_a) and np.isfinite(stat_b) else math.nan
    excludes_one = bool(np.isfinite(low) and np.isfinite(high) and (low > 1 or high < 1))
    change = max(ratio, 1 / ratio) - 1 if np.isfinite(ratio) and ratio > 0 else math.nan
    significant = excludes_one and bool(change > RAW_ROWS_MIN_CHANGE)
    verdict = "-"
    if significant:
        verdict = "better" if (ratio > 1) == higher else "worse"
    elif excludes_one:
        verdict = "within noise"
    return row | {"a": stat_a, "b": stat_b, "ratio": ratio, "ci_low": low, "ci_high": high, "method": "raw rows",
                  "significant": significant, "verdict": verdict}
