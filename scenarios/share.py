"""How the Locust processes of one distributed run share one open-loop schedule. No Locust import here,
so tests load the file as it is.

With N Locust worker processes (``load_workers = N``), each sends rate / N, so the offered rate is their
sum. Poisson arrivals need nothing more: N independent Poisson processes of rate R / N merge into one
Poisson process of rate R. Constant arrivals would merge into bunches if each process kept its own
phase, so they share one grid instead: slot j is due j / R seconds after the Unix epoch, and the worker
with Locust's worker index i (0 to N - 1) sends slots i, i + N, i + 2N, ... Every process computes the
grid alike from the clock the processes share (one host, or hosts with synchronised clocks), so no
message lines them up, and the merged arrivals are evenly spaced at R whenever each worker started.

Slot times are exact integer nanoseconds (the rate as a fraction), so two processes never disagree on
a slot by a rounding.
"""

from __future__ import annotations

from fractions import Fraction

NS_PER_S = 1_000_000_000
#: The rate is taken as a fraction with at most this denominator (a rate of 1/3 task/s stays exact).
RATE_DENOMINATOR_MAX = 1_000_000


def _rate(total_rate: float) -> Fraction:
    if total_rate <= 0:
        raise ValueError(f"a shared schedule needs a rate > 0, not {total_rate!r}")
    return Fraction(total_rate).limit_denominator(RATE_DENOMINATOR_MAX)


def first_slot(now_ns: int, total_rate: float, index: int, count: int) -> int:
    """The first slot of process `index` (of `count`) due at or after `now_ns`, on the grid of
    `total_rate` slots per second."""
    if count < 1 or index < 0:
        raise ValueError(f"process index {index} of {count}: needs count >= 1 and index >= 0")
    rate = _rate(total_rate)
    # ceil(now_ns * rate / 1e9) in integers: the first slot at or after now
    slot = -(-now_ns * rate.numerator // (NS_PER_S * rate.denominator))
    return slot + (index - slot) % count


def slot_ns(slot: int, total_rate: float) -> int:
    """When `slot` is due, in nanoseconds since the Unix epoch (the slot's time rounded down)."""
    rate = _rate(total_rate)
    return slot * NS_PER_S * rate.denominator // rate.numerator
