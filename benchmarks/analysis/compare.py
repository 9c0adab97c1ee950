"""B against A, cell by cell, with bootstrap confidence intervals (``queuebench compare A B``).

Cells match when their specs are equal apart from the repeat. A key of the system under test
(`load.SYSTEM_KEYS`: backend, processes, serializer...) that holds one value in all of A and another in all
of B is the *treatment*: it is left out of the match and printed, so when only the worker count differs
(``processes`` 1 in A, 2 in B) the same workloads are compared at the two worker counts. Workload keys
(mode, scenario, task, rate...) always have to match; ``--ignore KEY`` leaves a key out of the match.

For each matching cell and figure (throughput, end-to-end p95), the ratio B / A with a 95 % bootstrap
confidence interval:

- over repeats when both sides have at least two usable runs of the cell (resampling runs, comparing the
  means of their run.json figures);
- else over raw rows (tasks.parquet): throughput from the successful finishes in `THROUGHPUT_BINS` equal
  bins of each run's measured window (the mean bin rate is the throughput), end-to-end p95 from the
  per-task latencies of the tasks scheduled in the window (the same definitions as `benchmarks.measure`).

A change is significant when its interval excludes 1 *and* it exceeds the run-to-run noise floor
(`MIN_CHANGE`): an interval from raw rows only covers the sampling within one run, and one from two or
three repeats is narrow by luck as often as not, while on 2 shared cores single runs of the same cell
were seen to differ by up to 10 % in drain throughput and end-to-end p95 (benchmarks/NOTES.md). A change
inside the floor whose interval excludes 1 is reported as "within noise". Sets with different result
schema versions, or with no cell in common, are refused (`IncomparableError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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

#: Bootstrap resamples per interval.
N_BOOT = 2000
#: Two-sided confidence level of the intervals.
CONFIDENCE = 0.95
#: Equal bins of the measured window whose finish counts stand for a single run's throughput.
THROUGHPUT_BINS = 20
#: Fewest usable runs per side for the interval to resample runs rather than raw rows.
MIN_REPEATS = 2
#: Most values resampled at once (bounds memory on large runs).
CHUNK_VALUES = 4_000_000
#: Smallest change marked significant, by interval method: |ratio - 1| (or |1 / ratio - 1| below 1) must
#: exceed it. Raw-row intervals do not see run-to-run noise at all, so their floor is twice the 10 %
#: seen between single runs of one cell; repeats do see it, but through two or three values.
MIN_CHANGE = {"repeats": 0.10, "raw rows": 0.20}
#: (figure, readable name, higher is better)
METRICS = (("throughput_per_s", "throughput (/s)", True), ("e2e_ms_p95", "e2e p95 (ms)", False))


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


def bootstrap(values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator,
              n_boot: int = N_BOOT) -> np.ndarray:
    """`n_boot` values of `stat` (applied along axis 1) over resamples of `values` with replacement."""
    values = np.asarray(values, dtype="float64")
    if values.size == 0:
        return np.full(n_boot, np.nan)
    per_chunk = max(1, CHUNK_VALUES // values.size)
    out = []
    for start in range(0, n_boot, per_chunk):
        count = min(per_chunk, n_boot - start)
        out.append(stat(values[rng.integers(0, values.size, size=(count, values.size))]))
    return np.concatenate(out)


def ratio_interval(a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray], np.ndarray],
                   rng: np.random.Generator, n_boot: int = N_BOOT) -> tuple[float, float]:
    """A `CONFIDENCE` percentile interval of stat(B) / stat(A), resampling each side independently."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = bootstrap(b, stat, rng, n_boot) / bootstrap(a, stat, rng, n_boot)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _p95(x: np.ndarray) -> np.ndarray:
    return np.percentile(x, 95, axis=-1)


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


RAW_ROWS: dict[str, tuple[Callable[[Results, str], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "throughput_per_s": (throughput_bins, _mean),
    "e2e_ms_p95": (e2e_rows, _p95),
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
    rng = np.random.default_rng(seed)
    cell_labels = labels(pd.concat([runs_a, runs_b]).drop_duplicates("match").set_index("match").loc[common]
                         .reset_index(), match)
    rows = []
    for key, label in zip(common, cell_labels, strict=True):
        side_a, side_b = runs_a[runs_a["match"] == key], runs_b[runs_b["match"] == key]
        for metric, name, higher in METRICS:
            rows.append(_compare_cell(a, b, side_a, side_b, metric, name, higher, rng, n_boot) | {"cell": label})
    frame = pd.DataFrame(rows)
    frame = frame[["cell", *[c for c in frame.columns if c != "cell"]]]
    only_a = runs_a.loc[~runs_a["match"].isin(common), "match"].nunique()
    only_b = runs_b.loc[~runs_b["match"].isin(common), "match"].nunique()
    return Comparison(a.root, b.root, frame, treatment, int(only_a), int(only_b))


def _compare_cell(a: Results, b: Results, side_a: pd.DataFrame, side_b: pd.DataFrame, metric: str, name: str,
                  higher: bool, rng: np.random.Generator, n_boot: int) -> dict[str, object]:
    values_a = pd.to_numeric(side_a[metric], errors="coerce").dropna().to_numpy(dtype="float64") \
        if metric in side_a else np.array([])
    values_b = pd.to_numeric(side_b[metric], errors="coerce").dropna().to_numpy(dtype="float64") \
        if metric in side_b else np.array([])
    if len(values_a) >= MIN_REPEATS and len(values_b) >= MIN_REPEATS:
        method = "repeats"
        stat_a, stat_b = float(values_a.mean()), float(values_b.mean())
        low, high = ratio_interval(values_a, values_b, _mean, rng, n_boot)
    else:
        method = "raw rows"
        fetch, stat = RAW_ROWS[metric]
        rows_a = np.concatenate([fetch(a, r) for r in side_a["run_id"]] or [np.array([])])
        rows_b = np.concatenate([fetch(b, r) for r in side_b["run_id"]] or [np.array([])])
        stat_a = float(stat(rows_a)) if rows_a.size else float("nan")
        stat_b = float(stat(rows_b)) if rows_b.size else float("nan")
        low, high = ratio_interval(rows_a, rows_b, stat, rng, n_boot)
    ratio = stat_b / stat_a if stat_a and np.isfinite(stat_a) and np.isfinite(stat_b) else float("nan")
    excludes_one = bool(np.isfinite(low) and np.isfinite(high) and (low > 1 or high < 1))
    change = max(ratio, 1 / ratio) - 1 if np.isfinite(ratio) and ratio > 0 else float("nan")
    significant = excludes_one and bool(change > MIN_CHANGE[method])
    verdict = "-"
    if significant:
        verdict = "better" if (ratio > 1) == higher else "worse"
    elif excludes_one:
        verdict = "within noise"
    return {"metric": metric, "figure": name, "a": stat_a, "a_runs": len(side_a), "b": stat_b, "b_runs": len(side_b),
            "ratio": ratio, "ci_low": low, "ci_high": high, "method": method, "significant": significant,
            "verdict": verdict}
