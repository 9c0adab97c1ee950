"""The rules that turn measured figures into verdicts, each declared once for every command that judges.

- The SLO (`Slo`, `parse_slo`): an end-to-end latency quantile and its limit, as ``--slo p95=1s`` says it.
- The sustained rule (`kept_up`): a run kept up with its load when it finished at least
  `SUSTAINED_RATIO` of the tasks the generator sent in its window. `queuebench search` judges its steps
  with it, ``queuebench plan`` its measured cells, the latency chart its curves.
- The knee (`latency_grew`, `knee_index`): the lowest offered rate from which every higher rate is bent
  (backlog grew, or p95 grew more than `KNEE_LATENCY_GROWTH` x the lowest rate's); the chart and the
  report's capacity notes name the same knee.
- The quantile rule (`quantile_interval`, `bounds`, `min_samples`): a latency quantile is shown, and
  judged, only when its sample bounds it: its 95 % distribution-free interval has both ends inside the
  sample. Otherwise it reads ``too few samples (n=27)`` (`too_few_samples`) and decides nothing.
- The winner rule (`difference`, `pick_best`): configuration B differs from A on a figure only when both
  have at least `MIN_REPEATS` repeats, Welch's t-test on the logs of the per-repeat figures gives
  p < `ALPHA`, and the ratio of geometric means differs from 1 by more than `NOISE_FLOOR`. Which way is
  better is declared per figure (`higher_is_better`).
- The plan rule (`judge_repeats`): a configuration is recommended for an SLO only when at least
  `MIN_REPEATS` repeats each bound the quantile (`min_samples`), each kept up, each has the *upper* end of
  its quantile's interval under the limit, the repeats' spread does not let a next window cross it
  (`next_repeat_upper`: the 95 % prediction interval of one more repeat's figure, on logs), and its
  utilisation rho = rate x slot time / slots is at most `RHO_WARN`. Point estimates that meet the SLO
  without all of that are *marginal*; fewer repeats are *too few repeats*.

A leaf: it imports only the generator check's share from `benchmarks.measure`, so the search, the
planner, the report and the charts can all depend on it without depending on each other.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.measure import ACHIEVED_MIN_RATIO

#: Quantiles an SLO may name, and the run.json figure each reads (end to end, from the scheduled time).
SLO_QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
#: A run kept up when its throughput is at least this share of the rate sent: the same share the
#: generator check asks of the load generator, so a queue is held to what its generator is held to.
SUSTAINED_RATIO = ACHIEVED_MIN_RATIO
#: The knee: the lowest offered rate whose p95 exceeds this many times the lowest-rate cell's p95 (or
#: whose throughput fell below `SUSTAINED_RATIO` of the rate sent), and every higher rate's too.
KNEE_LATENCY_GROWTH = 3.0


# --- the SLO ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slo:
    """An end-to-end latency objective: the `name` quantile (p50/p90/p95/p99) at most `limit_s`."""

    name: str
    limit_s: float

    @property
    def quantile(self) -> float:
        """0.95 for p95."""
        return SLO_QUANTILES[self.name]

    @property
    def limit_ms(self) -> float:
        """The limit in milliseconds, as run figures give latencies."""
        return self.limit_s * 1e3

    @property
    def column(self) -> str:
        """The run figure it reads: ``e2e_ms_p95``."""
        return f"e2e_ms_{self.name}"

    @property
    def limit_text(self) -> str:
        """``1 s``, ``250 ms``: for sentences."""
        return f"{self.limit_s:g} s" if self.limit_s >= 1 else f"{self.limit_ms:g} ms"

    @property
    def label(self) -> str:
        """``p95 ≤ 1 s``: for headings."""
        return f"{self.name} ≤ {self.limit_text}"

    @property
    def slug(self) -> str:
        """``p95-1s``: for file names."""
        return f"{self.name}-{self.limit_text.replace(' ', '')}"

    @property
    def cli(self) -> str:
        """``p95=1s``: as `parse_slo` reads it."""
        return f"{self.name}={self.limit_text.replace(' ', '')}"


_SLO = re.compile(r"^\s*(p\d+)\s*=\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*$")


def parse_slo(text: str) -> Slo:
    """``p95=1s``, ``p99=250ms``, ``p50=0.5s``: a quantile of p50/p90/p95/p99 and a limit in ms or s."""
    match = _SLO.match(text)
    if not match or match.group(1) not in SLO_QUANTILES:
        raise ValueError("SLO must look like p95=1s or p99=250ms (quantile one of "
                         f"{', '.join(SLO_QUANTILES)}, "
                         f"unit ms or s); got {text!r}")
    value = float(match.group(2)) * (1e-3 if match.group(3) == "ms" else 1.0)
    if value <= 0:
        raise ValueError(f"SLO limit must be > 0 (got {text!r})")
    return Slo(match.group(1), value)


# --- the sustained rule -------------------------------------------------------------------------------


def kept_up(throughput_per_s: Any, sent_per_s: Any) -> Any:
    """Whether a run finished at least `SUSTAINED_RATIO` of what was sent in its window (else its backlog
    grew). A missing figure (NaN) never counts as keeping up. Elementwise on numpy arrays and pandas
    Series, a plain bool on two numbers."""
    return throughput_per_s >= SUSTAINED_RATIO * sent_per_s


# --- the knee -----------------------------------------------------------------------------------------


def latency_grew(p95_ms: float, lowest_rate_p95_ms: float) -> bool:
    """Whether p95 grew more than `KNEE_LATENCY_GROWTH` x the lowest offered rate's p95 (False when
    either figure is missing: a missing figure shows no growth)."""
    return bool(math.isfinite(p95_ms) and math.isfinite(lowest_rate_p95_ms)
                and p95_ms > KNEE_LATENCY_GROWTH * lowest_rate_p95_ms)


def knee_index(bent: Sequence[bool]) -> int | None:
    """The knee among rates in rising order, given which are bent (saturated, or p95 grown more than
    `KNEE_LATENCY_GROWTH` x the lowest rate's): the first bent rate after which every rate is bent too
    (one noisy cell is not a knee); None without one. The chart and the notes both use it."""
    start = len(bent)
    while start > 0 and bent[start - 1]:
        start -= 1
    return start if start < len(bent) else None


# --- the quantile rule --------------------------------------------------------------------------------
# A percentile of a handful of tasks is a number, but not a fact about the queue: p95 of 3 tasks is their
# largest. The rule asks the sample whether it can bound the quantile at all: the exact, distribution-free
# interval of a quantile is a pair of order statistics whose ranks come from the binomial distribution
# (scipy.stats.quantile_test). When a rank falls outside the sample, that side cannot be bounded (scipy
# returns nan for it) and the figure is not shown. A bootstrap is not used for quantiles: resampling 20
# values can never produce anything above their maximum, so a bootstrap interval of p95 or p99 collapses
# onto the largest few values and looks narrow exactly when the sample is too small to say anything.

#: Two-sided confidence of every interval the verdicts give (quantiles, ratios of geometric means).
CONFIDENCE = 0.95
#: ``95 %``: the confidence as sentences give it.
CONFIDENCE_TEXT = f"{CONFIDENCE * 100:g} %"
#: What a quantile the sample cannot bound reads instead of a number.
TOO_FEW_SAMPLES = "too few samples"


def quantile_interval(values: Iterable[float], quantile: float,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The `confidence` distribution-free interval of the `quantile` (0.95 for p95) of `values`, from
    `scipy.stats.quantile_test` (order statistics with binomial ranks; nothing assumed about the
    distribution). A side the sample cannot bound is nan; NaNs in `values` are dropped first."""
    # scipy.stats costs about half a second to import: the CLI loads this module at start-up, so scipy
    # loads when a verdict first needs it, not then.
    from scipy import stats

    array = np.asarray([v for v in values if v is not None], dtype="float64")
    array = array[np.isfinite(array)]
    if array.size == 0:
        return math.nan, math.nan
    # q (the hypothesised value) only matters for the test's p-value; the interval depends on the sample.
    interval = stats.quantile_test(array, q=float(np.median(array)), p=quantile).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


@functools.cache
def min_samples(quantile: float, confidence: float = CONFIDENCE) -> int:
    """The fewest values whose `confidence` interval of `quantile` has both ends inside the sample.

    Computed with the same scipy interval the rule uses (on 0, 1, ..., n-1: which ends exist depends only
    on n and the quantile, not on the values). Above it every sample size bounds the quantile too: the
    lower end needs (1 - quantile)^n below the tail's share and the upper end quantile^n at most that, and
    both only shrink as n grows. 6 for p50, 36 for p90, 72 for p95, 368 for p99 at 95 %.
    """
    n = 1
    while True:
        low, high = quantile_interval(np.arange(n, dtype="float64"), quantile, confidence)
        if math.isfinite(low) and math.isfinite(high):
            return n
        n += 1


def bounds(n: Any, quantile: float) -> bool:
    """Whether a sample of `n` values bounds the `quantile` (`min_samples`); a missing n does not."""
    try:
        count = int(n)
    except (TypeError, ValueError):
        return False
    return count >= min_samples(quantile)


def too_few_samples(n: Any) -> str:
    """``too few samples (n=27)``: what a quantile reads when its sample cannot bound it."""
    try:
        return f"{TOO_FEW_SAMPLES} (n={int(n)})"
    except (TypeError, ValueError):
        return f"{TOO_FEW_SAMPLES} (n=0)"


# --- the winner rule ----------------------------------------------------------------------------------
# Run-to-run noise on a shared machine is larger than the sampling noise within one run, so only repeats
# can tell two configurations apart. Latencies and rates are positive and their noise is multiplicative
# (a busy core slows everything by a share), so the test runs on logs: the difference of mean logs is the
# log of the ratio of geometric means, and its Welch t interval (no equal-variance assumption: one
# configuration may be far noisier than another) exponentiates to an interval of that ratio.

#: Fewest repeats per configuration before a difference can be called: two values give a variance with
#: one degree of freedom, whose t interval is too wide to mean anything, and are narrow by luck as often.
MIN_REPEATS = 3
#: Significance level of Welch's t-test on the logs.
ALPHA = 0.05
#: The run-to-run noise floor: the ratio of geometric means must differ from 1 by more than this (as
#: max(ratio, 1 / ratio) - 1). Single runs of one cell were seen to differ by up to 10 % in drain
#: throughput and end-to-end p95 on 2 shared cores (benchmarks/NOTES.md); a t-test on three repeats can
#: call a smaller change significant by luck.
NOISE_FLOOR = 0.10
#: What a comparison of single runs says instead of a verdict...
SINGLE_RUNS = f"single runs: spread not measured; rerun with --repeats {MIN_REPEATS}"
#: ...and one with two repeats somewhere, but fewer than `MIN_REPEATS` on a side.
FEW_REPEATS = f"fewer than {MIN_REPEATS} repeats: spread not measured well enough; rerun with --repeats {MIN_REPEATS}"


def repeats_notice(*repeats: int) -> str:
    """Why nothing is called with these repeat counts: `SINGLE_RUNS` when every side ran once, else
    `FEW_REPEATS`."""
    return SINGLE_RUNS if max(repeats, default=0) <= 1 else FEW_REPEATS

#: Figures where more is better; every other figure a verdict is asked about must be in `LOWER_IS_BETTER`.
HIGHER_IS_BETTER = ("throughput_per_s", "executions_per_s", "tasks_per_cpu_s", "tasks_per_worker_cpu_s",
                    "achieved_rate_per_s", "per_slot_per_s")
#: Figures where less is better, besides every latency (a name ending ``_ms`` or ``_ms_<stat>``).
LOWER_IS_BETTER = ("total_cpu_s", "cpu_s_per_1000", "total_cpu_s_per_1000", "broker_bytes_per_message",
                   "broker_key_bytes_per_message", "encoded_bytes", "codec_us_per_message", "codec_encode_us",
                   "codec_decode_us")


def higher_is_better(figure: str) -> bool:
    """Which way is better for `figure` (a runs-frame column): True for throughputs and tasks per
    CPU-second, False for latencies (``*_ms``, ``*_ms_p95``...) and CPU costs. Raises KeyError for a figure
    not declared here, so no comparison guesses a direction."""
    if figure in HIGHER_IS_BETTER:
        return True
    if (figure in LOWER_IS_BETTER or figure.endswith(("_cpu_s", "_cpu_s_per_1000"))
            or re.search(r"_ms(_(mean|max|p\d+))?$", figure)):
        return False
    raise KeyError(f"{figure}: no declared direction (verdicts.HIGHER_IS_BETTER / LOWER_IS_BETTER)")


def direction_text(figure: str) -> str:
    """``higher is better`` or ``lower is better``."""
    return "higher is better" if higher_is_better(figure) else "lower is better"


def geometric_mean(values: Iterable[float]) -> float:
    """The geometric mean of the positive finite values (nan when there is none)."""
    array = _positive(values)
    return float(np.exp(np.log(array).mean())) if array.size else math.nan


def _positive(values: Iterable[float]) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype="float64")
    return array[np.isfinite(array) & (array > 0)]


@dataclass(frozen=True)
class Difference:
    """B against A on one figure, by the winner rule: B's geometric mean over A's, its interval, and
    whether B is clearly better, clearly worse, within noise, or not judged (too few repeats)."""

    figure: str
    higher_is_better: bool
    a_repeats: int
    b_repeats: int
    #: Geometric mean of B / geometric mean of A (nan when a side has no positive value).
    ratio: float
    #: `CONFIDENCE` interval of the ratio, from Welch's t on the logs (nan with too few repeats).
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    #: "better" or "worse" (B against A, clearly), "within noise", or "too few repeats".
    outcome: str = "too few repeats"

    @property
    def judged(self) -> bool:
        """Whether both sides had enough repeats for the rule to speak."""
        return self.outcome != "too few repeats"

    @property
    def clear(self) -> bool:
        """Whether the rule calls B clearly better or clearly worse than A."""
        return self.outcome in ("better", "worse")

    @property
    def change(self) -> float:
        """max(ratio, 1 / ratio) - 1: the size of the difference whichever way it goes."""
        return max(self.ratio, 1 / self.ratio) - 1 if math.isfinite(self.ratio) and self.ratio > 0 else math.nan

    @property
    def interval_text(self) -> str:
        """``x1.32 (95 % CI 1.10 to 1.58)``, or ``x1.32 (interval not measured)`` with too few repeats."""
        if not math.isfinite(self.ratio):
            return "no ratio (a side has no value)"
        if math.isfinite(self.ci_low) and math.isfinite(self.ci_high):
            return f"x{self.ratio:.2f} ({CONFIDENCE_TEXT} CI {self.ci_low:.2f} to {self.ci_high:.2f})"
        return f"x{self.ratio:.2f} (interval not measured)"

    @property
    def text(self) -> str:
        """The ratio, its interval and what the rule makes of it, for a table cell or a sentence."""
        repeats = f"{self.a_repeats} vs {self.b_repeats} repeats"
        if not self.judged:
            return f"{self.interval_text}; {repeats_notice(self.a_repeats, self.b_repeats)} ({repeats})"
        p = f"p={self.p_value:.2g}" if math.isfinite(self.p_value) else "identical repeats, no spread"
        meaning = {"better": "clearly better", "worse": "clearly worse"}.get(self.outcome, "within noise")
        return f"{self.interval_text}, {p}, {repeats}: {meaning}"

    def inverse(self) -> Difference:
        """The same comparison read the other way: A against B."""
        flip = {"better": "worse", "worse": "better"}
        return Difference(self.figure, self.higher_is_better, self.b_repeats, self.a_repeats,
                          1 / self.ratio if self.ratio else math.nan,
                          1 / self.ci_high if self.ci_high else math.nan,
                          1 / self.ci_low if self.ci_low else math.nan,
                          self.p_value, flip.get(self.outcome, self.outcome))


def difference(a_values: Iterable[float], b_values: Iterable[float], figure: str) -> Difference:
    """B against A on `figure` by the winner rule, from each configuration's per-repeat figures.

    B is clearly better or worse only when both sides have at least `MIN_REPEATS` positive values, Welch's
    t-test on their logs (`scipy.stats.ttest_ind`, ``equal_var=False``) gives p < `ALPHA`, and the ratio
    of geometric means differs from 1 by more than `NOISE_FLOOR`; its interval is the t interval of the
    difference of mean logs, exponentiated. NaNs (a repeat without the figure) are dropped first.
    """
    higher = higher_is_better(figure)
    a, b = _positive(a_values), _positive(b_values)
    ratio = geometric_mean(b) / geometric_mean(a) if a.size and b.size else math.nan
    if a.size < MIN_REPEATS or b.size < MIN_REPEATS:
        return Difference(figure, higher, int(a.size), int(b.size), ratio)
    log_a, log_b = np.log(a), np.log(b)
    if np.ptp(log_a) == 0 and np.ptp(log_b) == 0:
        # Identical repeats on both sides leave no spread to test against (never seen in a real
        # measurement): no p-value, so nothing is called.
        return Difference(figure, higher, int(a.size), int(b.size), ratio, outcome="within noise")
    from scipy import stats  # see quantile_interval: scipy loads when a verdict first needs it

    with warnings.catch_warnings():
        # One side's identical repeats make scipy warn of precision loss in its variance: that variance
        # is exactly 0, and Welch's test takes its degrees of freedom from the other side.
        warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
        test = stats.ttest_ind(log_b, log_a, equal_var=False)
        interval = test.confidence_interval(CONFIDENCE)
    p_value = float(test.pvalue)
    low, high = float(np.exp(interval.low)), float(np.exp(interval.high))
    change = max(ratio, 1 / ratio) - 1
    outcome = "within noise"
    if p_value < ALPHA and change > NOISE_FLOOR:
        outcome = "better" if (ratio > 1) == higher else "worse"
    return Difference(figure, higher, int(a.size), int(b.size), ratio, low, high, p_value, outcome)


@dataclass(frozen=True)
class Pick:
    """The best of several configurations on one figure, named only when the data supports it."""

    figure: str
    #: The configuration with the best geometric mean (None when none has a value).
    leader: str | None
    #: The leader, when it beats every other configuration by the winner rule; else None.
    winner: str | None
    #: Every other configuration against the leader (`Difference` of it against the leader), best first.
    others: dict[str, Difference] = field(default_factory=dict)
    #: Why no winner is named ("" when one is).
    reason: str = ""

    @property
    def judged(self) -> bool:
        """Whether every configuration had the repeats the winner rule needs (False also with nothing to
        compare)."""
        return bool(self.others) and all(diff.judged for diff in self.others.values())

    @property
    def runner_up(self) -> str | None:
        """The configuration with the second-best geometric mean."""
        return next(iter(self.others), None)

    @property
    def within_noise(self) -> list[str]:
        """Configurations the rule cannot separate from the leader (not clearly worse), best first."""
        return [label for label, diff in self.others.items() if not diff.clear]


def pick_best(candidates: Mapping[str, Sequence[float]], figure: str) -> Pick:
    """The best configuration on `figure` from each one's per-repeat figures (label -> values).

    The leader has the best geometric mean; it is the winner only when every other configuration is
    clearly worse than it by `difference` (so in particular the runner-up). A single configuration is
    nobody's winner; with fewer than `MIN_REPEATS` repeats anywhere the reason is `repeats_notice`'s.
    Configurations without a positive value are left out.
    """
    higher = higher_is_better(figure)
    means = {label: geometric_mean(values) for label, values in candidates.items()}
    ordered = sorted((label for label, mean in means.items() if math.isfinite(mean)),
                     key=lambda label: -means[label] if higher else means[label])
    if not ordered:
        return Pick(figure, None, None, reason="no configuration has this figure")
    leader = ordered[0]
    others = {label: difference(candidates[leader], candidates[label], figure) for label in ordered[1:]}
    if not others:
        return Pick(figure, leader, None, reason="one configuration measured: nothing to beat")
    if not all(diff.judged for diff in others.values()):
        counts = [d.a_repeats for d in others.values()] + [d.b_repeats for d in others.values()]
        return Pick(figure, leader, None, others, repeats_notice(*counts))
    if all(diff.outcome == "worse" for diff in others.values()):
        return Pick(figure, leader, leader, others)
    return Pick(figure, leader, None, others, "no clear winner: the leader does not beat every other "
                                              "configuration beyond noise")


# --- the plan rule ------------------------------------------------------------------------------------
# A capacity plan is a promise about windows nobody has measured yet. One window that met the SLO says
# little near saturation, where the tail swings by seconds from window to window; so a recommendation
# asks more of its evidence than a point estimate under the limit: repeats, each bounding the quantile
# with its upper end under the limit (within-run sampling), a spread between repeats that does not let a
# next window cross it (run-to-run noise), and headroom (utilisation at most `RHO_WARN`).

#: Utilisation above which a configuration is never recommended outright (at least *marginal*): near
#: rho = 1 the wait's tail grows as 1 / (1 - rho), so a few per cent more load or a slower window moves
#: the quantile by multiples.
RHO_WARN = 0.85
#: Tasks a measured window should hold, as a multiple of `min_samples` of the SLO's quantile, when a
#: matrix is written to decide a plan (covering and verification matrices): at 3 x 72 = 216 tasks the
#: upper end of a p95's 95 % interval sits near the sample's 98th percentile, not at its maximum (as at 72).
SAMPLE_MARGIN = 3


def next_repeat_upper(values: Iterable[float], confidence: float = CONFIDENCE) -> float:
    """The upper end of the two-sided `confidence` prediction interval of one more repeat's figure, from
    the per-repeat figures: on logs (multiplicative noise, as the winner rule's), exp(mean +
    t_{(1+c)/2, n-1} s sqrt(1 + 1/n)). nan with fewer than 2 positive values; the value itself when all
    repeats are identical."""
    logs = np.log(_positive(values))
    if logs.size < 2:
        return math.nan
    from scipy import stats  # see quantile_interval

    spread = float(np.std(logs, ddof=1))
    t = float(stats.t.ppf((1 + confidence) / 2, logs.size - 1))
    return float(np.exp(logs.mean() + t * spread * math.sqrt(1 + 1 / logs.size)))


def window_tasks(quantile: float) -> int:
    """Tasks a window written to decide a plan should hold: `SAMPLE_MARGIN` x `min_samples`."""
    return SAMPLE_MARGIN * min_samples(quantile)


@dataclass(frozen=True)
class RepeatsVerdict:
    """The plan rule on one configuration's repeats at one rate: its state and every reason for it."""

    #: "meets" (recommendable), "marginal" (point estimates meet, the rule does not), "too few repeats"
    #: (point estimates meet in fewer than `MIN_REPEATS`), "misses" (a repeat missed or fell behind),
    #: "too few samples" (a repeat's tasks cannot bound the quantile).
    state: str
    reasons: tuple[str, ...] = ()
    #: The worst repeat's point estimate, the worst upper end of the repeats' intervals, the next-repeat
    #: prediction's upper end (ms; nan when not known).
    worst_ms: float = math.nan
    worst_upper_ms: float = math.nan
    next_repeat_upper_ms: float = math.nan


def judge_repeats(figures_ms: Sequence[float], uppers_ms: Sequence[float], counts: Sequence[Any],
                  kept: Sequence[bool], quantile: float, limit_ms: float,
                  rho: float | None = None) -> RepeatsVerdict:
    """The plan rule on one configuration's repeats at the requested rate.

    `figures_ms`: each repeat's quantile (nan where its sample cannot bound it); `uppers_ms`: the upper end
    of each repeat's `CONFIDENCE` interval of it (`quantile_interval` on its raw rows; nan when the rows are
    not there); `counts`: each repeat's sample size; `kept`: whether each repeat kept up (`kept_up`);
    `rho`: the utilisation rate x slot time / slots, when known.
    """
    figures = np.asarray(figures_ms, dtype="float64")
    uppers = np.asarray(uppers_ms, dtype="float64")
    worst = float(figures.max()) if figures.size and np.isfinite(figures).all() else math.nan
    if not all(kept):
        return RepeatsVerdict("misses", (f"{sum(not k for k in kept)} of {len(kept)} repeats fell behind "
                                         "(finished < 95 % of what was sent)",), worst)
    if np.isfinite(figures).any() and float(np.nanmax(figures)) > limit_ms:
        over = int((figures > limit_ms).sum())
        return RepeatsVerdict("misses", (f"{over} of {figures.size} repeats over the limit "
                                         f"(worst {float(np.nanmax(figures)):.0f} ms)",), worst)
    if not all(bounds(n, quantile) for n in counts):
        fewest = min((int(n) if n is not None and not (isinstance(n, float) and math.isnan(n)) else 0)
                     for n in counts)
        return RepeatsVerdict("too few samples", (f"a repeat had {fewest} tasks in its window; the quantile "
                                                  f"needs n ≥ {min_samples(quantile)}",), worst)
    reasons = []
    if figures.size < MIN_REPEATS:
        reasons.append(f"met in {figures.size} run{'s' if figures.size != 1 else ''}: the rule needs "
                       f"{MIN_REPEATS} repeats")
    worst_upper = float(uppers.max()) if uppers.size and np.isfinite(uppers).all() else math.nan
    if not np.isfinite(uppers).all():
        reasons.append("no raw rows to bound the quantile (tasks.parquet missing)")
    elif worst_upper >= limit_ms:
        crossing = int((uppers >= limit_ms).sum())
        reasons.append(f"the {CONFIDENCE_TEXT} upper bound crosses the limit in {crossing} of {uppers.size} "
                       f"repeats (up to {worst_upper:.0f} ms)")
    # With fewer than MIN_REPEATS the spread is not measured well enough to speak (t with 1 degree of
    # freedom is 12.7): the repeat count already says so.
    upcoming = next_repeat_upper(figures) if figures.size >= MIN_REPEATS else math.nan
    if math.isfinite(upcoming) and upcoming >= limit_ms:
        reasons.append(f"the repeats spread so that a next window could reach {upcoming:.0f} ms "
                       f"({CONFIDENCE_TEXT} prediction from {figures.size} repeats)")
    if rho is not None and math.isfinite(rho) and rho > RHO_WARN:
        reasons.append(f"rho {rho:.2f} > {RHO_WARN:g}: too close to saturation")
    state = "too few repeats" if figures.size < MIN_REPEATS else "marginal" if reasons else "meets"
    return RepeatsVerdict(state, tuple(reasons), worst, worst_upper, upcoming)
