"""Every figure as the outputs print it: its value with its sample size, and no value when the sample
cannot bound it.

The rules themselves live in `benchmarks.verdicts` (the quantile rule, the winner rule); this module only
words their answers, so the report's tables, its chart sentences, its capacity notes, ``compare`` and
``plan`` say the same thing the same way:

- a latency percentile of one run: ``39.6 ms (n=90)``, with its distribution-free interval from the raw
  rows where the reader needs it (``39.6 ms (95 % CI 35.1 to 44.0, n=90)``), or
  ``too few samples (n=27)`` when the quantile rule says the sample cannot bound it;
- a figure over repeats: ``39.6 ms (mean of 2 repeats, 39.5 to 39.7; n=88 to 90 tasks each)``,
  ``524/s (1 run)``;
- a mean latency: ``12.3 ms (mean of n=90 tasks)``.

The sample size always sits in the parenthesis right after the number, so a reader (and a test) finds it
next to the figure it qualifies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks import verdicts
from benchmarks.analysis.load import is_missing, percentile_of


def num(value: float | None, unit: str = "") -> str:
    """A figure with sensible precision: 1234/s, 38.2 ms, 0.42 ms."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    magnitude = abs(value)
    text = f"{value:.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"
    if unit in ("/s",):
        return text + unit
    return f"{text} {unit}".rstrip()


def _int(value: Any) -> int:
    return 0 if is_missing(value) else int(value)


def quantile_text(value: Any, n: Any, quantile: float, unit: str = "ms",
                  interval: tuple[float, float] | None = None) -> str:
    """One run's percentile with its sample size: ``39.6 ms (n=90)``, with `interval` (low, high)
    ``39.6 ms (95 % CI 35.1 to 44.0, n=90)``; ``too few samples (n=27)`` when the quantile rule says the
    `n` values cannot bound it (whatever `value` is)."""
    if not verdicts.bounds(n, quantile) or is_missing(value):
        return verdicts.too_few_samples(_int(n))
    if interval is not None and all(math.isfinite(v) for v in interval):
        low, high = interval
        return f"{num(value, unit)} ({verdicts.CONFIDENCE_TEXT} CI {num(low)} to {num(high)}, n={_int(n)})"
    return f"{num(value, unit)} (n={_int(n)})"


def column_text(row: Mapping[str, Any], column: str, unit: str = "ms") -> str:
    """A percentile column (``e2e_ms_p95``) of one run's row (or one kind's) with its sample size."""
    found = percentile_of(column)
    if found is None:
        raise ValueError(f"{column}: not a percentile column")
    return quantile_text(row.get(column), row.get(f"{found[0]}_count"), found[1], unit)


def mean_text(value: Any, n: Any, unit: str = "ms") -> str:
    """A mean over raw values with their number: ``12.3 ms (mean of n=90 tasks)``."""
    if is_missing(value) or not _int(n):
        return f"no value (n={_int(n)})"
    return f"{num(value, unit)} (mean of n={_int(n)} tasks)"


def repeats_text(cell: Mapping[str, Any], metric: str, unit: str = "", centre: str = "mean") -> str:
    """A figure over a cell's repeats (an `load.over_repeats` row) with how many there were, and for a
    percentile how many values each repeat's figure rests on:

    ``524/s (1 run)``, ``95.1/s (mean of 3 repeats, 93.0 to 97.2)``,
    ``39.6 ms (mean of 2 repeats, 39.5 to 39.7; n=88 to 90 tasks each)``, ``too few samples (n=27)``.
    `centre` names the centre `cell[metric]` holds (``mean``; the headline passes ``geometric mean``).
    """
    found = percentile_of(metric)
    tasks, tasks_max = cell.get(f"{metric}_tasks"), cell.get(f"{metric}_tasks_max")
    value, repeats = cell.get(metric), _int(cell.get(f"{metric}_n"))
    if found is not None and tasks is not None and (not verdicts.bounds(tasks, found[1]) or is_missing(value)):
        return verdicts.too_few_samples(_int(tasks))
    if is_missing(value) or not repeats:
        return "no value"
    samples = ""
    if tasks is not None:  # a percentile or a mean over tasks: how many each repeat's figure rests on
        each = f"n={_int(tasks)}" if _int(tasks) == _int(tasks_max) else f"n={_int(tasks)} to {_int(tasks_max)}"
        samples = f"; {each} tasks" + (" each" if repeats > 1 else "")
    if repeats == 1:
        return f"{num(value, unit)} (1 run{samples})"
    low, high = cell.get(f"{metric}_min"), cell.get(f"{metric}_max")
    return (f"{num(value, unit)} ({centre} of {repeats} repeats, {num(low)} to {num(high)}"
            f"{samples})")


def runs_text(count: int) -> str:
    """``1 run``, ``3 repeats``."""
    return "1 run" if count == 1 else f"{count} repeats"


def verdict_phrase(diff: verdicts.Difference) -> str:
    """What the winner rule makes of a difference, for a sentence: ``clearly better, x0.71 (95 % CI 0.60
    to 0.85)``, ``within noise, x1.03 (95 % CI 0.95 to 1.12)``, or the single-runs notice with the ratio."""
    if not diff.judged:
        return f"{diff.interval_text}; {verdicts.repeats_notice(diff.a_repeats, diff.b_repeats)}"
    word = {"better": "clearly better", "worse": "clearly worse"}.get(diff.outcome, "within noise")
    return f"{word}, {diff.interval_text}"


def values_of(cell: Mapping[str, Any], metric: str) -> Sequence[float]:
    """The per-repeat figures `load.over_repeats` kept for `metric` (empty when none)."""
    values = cell.get(f"{metric}_values")
    return list(values) if isinstance(values, list | tuple) else []


def ratio_phrase(diff: verdicts.Difference) -> str:
    """A ratio for a list in a sentence: ``x1.92 (95 % CI 1.80 to 2.05, clear)``, ``x1.03 (95 % CI 0.95
    to 1.12, within noise)`` or ``x1.92 (1 vs 1 runs, not judged)``."""
    if not math.isfinite(diff.ratio):
        return "no ratio"
    if not diff.judged:
        return f"x{diff.ratio:.2f} ({diff.a_repeats} vs {diff.b_repeats} runs, not judged)"
    word = "clear" if diff.clear else "within noise"
    return f"x{diff.ratio:.2f} ({verdicts.CONFIDENCE_TEXT} CI {diff.ci_low:.2f} to {diff.ci_high:.2f}, {word})"


def leader_phrase(pick: verdicts.Pick) -> str:
    """What the winner rule says of the leader of `pick`, as a clause: ``clearly ahead of every other
    configuration (runner-up rq p2t1 at x1.32 (95 % CI 1.10 to 1.58, clear))``, ``within noise of rq
    p2t1``, ``not separable from the rest (single runs: ...)``, or "" when it had nothing to beat."""
    if pick.leader is None or not pick.others:
        return ""
    runner = pick.runner_up
    if pick.winner is not None:
        return (f"clearly ahead of every other configuration (runner-up {runner} at "
                f"{ratio_phrase(pick.others[runner])})")
    if not pick.judged:
        return f"not separable from the rest ({pick.reason})"
    close = pick.within_noise
    return ("no clear winner: within noise of " + ", ".join(f"{label} ({ratio_phrase(pick.others[label])})"
                                                          for label in close))


def pick_cells(cells: Sequence[Mapping[str, Any]], metric: str, label: str) -> verdicts.Pick:
    """`verdicts.pick_best` over `load.over_repeats` rows, keyed by their `label` column."""
    return verdicts.pick_best({str(cell[label]): values_of(cell, metric) for cell in cells}, metric)
