"""The rules that turn measured figures into verdicts, each declared once for every command that judges.

- The SLO (`Slo`, `parse_slo`): an end-to-end latency quantile and its limit, as ``--slo p95=1s`` says it.
- The sustained rule (`kept_up`): a run kept up with its load when it finished at least
  `SUSTAINED_RATIO` of the tasks the generator sent in its window. `queuebench search` judges its steps
  with it, ``queuebench plan`` its measured cells, the latency chart its curves.
- The knee (`latency_grew`, `knee_index`): the lowest offered rate from which every higher rate is bent
  (backlog grew, or p95 grew more than `KNEE_LATENCY_GROWTH` x the lowest rate's); the chart and the
  report's capacity notes name the same knee.

A leaf: it imports only the generator check's share from `benchmarks.measure`, so the search, the
planner, the report and the charts can all depend on it without depending on each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
