"""The M/M/c model against independent computations: exact sums, sums in logs and a simulated queue."""

from __future__ import annotations

import heapq
import math
from fractions import Fraction

import numpy as np
import pytest

from benchmarks.analysis.queueing import (
    erlang_c,
    min_servers,
    mmc_response_quantile,
    mmc_response_survival,
    mmc_wait_quantile,
)


def erlang_c_by_summation(c: int, load: Fraction) -> Fraction:
    """Erlang C from its textbook definition, in exact rational arithmetic."""
    tail = load**c / math.factorial(c) * Fraction(c) / (c - load)
    return tail / (sum(load**k / math.factorial(k) for k in range(c)) + tail)


def erlang_c_in_logs(c: int, load: float) -> float:
    """Erlang C from the same definition, summed in log space (for counts whose factorials overflow)."""
    logs = np.array([k * math.log(load) - math.lgamma(k + 1) for k in range(c)])
    log_tail = c * math.log(load) - math.lgamma(c + 1) + math.log(c / (c - load))
    top = max(logs.max(), log_tail)
    head = np.exp(logs - top).sum()
    tail = math.exp(log_tail - top)
    return tail / (head + tail)


def simulated_response_times(rate_per_s: float, service_s: float, c: int, n: int, seed: int) -> np.ndarray:
    """A first-come-first-served M/M/c queue, simulated: each arrival takes the earliest free server."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate_per_s, n))
    services = rng.exponential(service_s, n)
    free_at = [0.0] * c
    out = np.empty(n)
    for i, (arrival, service) in enumerate(zip(arrivals, services, strict=True)):
        start = max(arrival, heapq.heappop(free_at))
        heapq.heappush(free_at, start + service)
        out[i] = start + service - arrival
    return out[n // 10:]  # drop the start, when the queue was still empty


def test_erlang_c_gives_the_textbook_values():
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3, rel=1e-12)
    for rho in (0.1, 0.5, 0.9, 0.99):
        assert erlang_c(1, rho) == pytest.approx(rho, rel=1e-12)  # one server: the probability it is busy


def test_erlang_c_equals_the_exact_sum_for_small_server_counts():
    for c in (1, 2, 3, 5, 8, 13, 30):
        for share in (Fraction(1, 10), Fraction(1, 2), Fraction(9, 10), Fraction(99, 100)):
            load = share * c
            assert erlang_c(c, float(load)) == pytest.approx(float(erlang_c_by_summation(c, load)), rel=1e-9)


def test_erlang_c_stays_exact_and_finite_for_a_thousand_servers():
    for load in (500.0, 950.0, 999.0):
        value = erlang_c(1000, load)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(erlang_c_in_logs(1000, load), rel=1e-8)


def test_erlang_c_is_one_when_the_servers_cannot_keep_up_and_zero_without_load():
    assert erlang_c(4, 4.0) == 1.0
    assert erlang_c(4, 9.0) == 1.0
    assert erlang_c(4, 0.0) == 0.0


def test_the_model_refuses_impossible_arguments():
    with pytest.raises(ValueError, match="c must be"):
        erlang_c(0, 1.0)
    with pytest.raises(ValueError, match="offered load"):
        erlang_c(2, -1.0)
    with pytest.raises(ValueError, match="quantile"):
        mmc_response_quantile(10, 0.05, 2, 1.5)
    with pytest.raises(ValueError, match="rate"):
        min_servers(0, 0.05, 1.0, 0.95)


def test_one_server_response_time_is_exponential_with_rate_mu_minus_lambda():
    for rate, service_s, q in ((10.0, 0.05, 0.95), (30.0, 0.02, 0.99), (1.0, 0.5, 0.5)):
        expected = -math.log(1 - q) / (1 / service_s - rate)
        assert mmc_response_quantile(rate, service_s, 1, q) == pytest.approx(expected, rel=1e-9)


def test_response_time_survival_at_the_quantile_is_one_minus_q_even_when_the_two_rates_coincide():
    # c = 2, service 1 s, rate 1/s: theta = 2 - 1 = 1 = mu, the repeated-root case of the formula.
    for rate, service_s, c in ((1.0, 1.0, 2), (1.0 + 1e-9, 1.0, 2), (35.0, 0.05, 2), (300.0, 0.05, 20)):
        for q in (0.5, 0.9, 0.95, 0.99):
            t = mmc_response_quantile(rate, service_s, c, q)
            assert mmc_response_survival(t, rate, service_s, c) == pytest.approx(1 - q, rel=1e-9)


def test_response_time_quantiles_agree_with_a_simulated_queue():
    for rate, service_s, c in ((15.0, 0.05, 1), (60.0, 0.05, 4), (150.0, 0.05, 9)):
        simulated = simulated_response_times(rate, service_s, c, 200_000, seed=c)
        for q in (0.5, 0.95):
            expected = np.quantile(simulated, q)
            assert mmc_response_quantile(rate, service_s, c, q) == pytest.approx(expected, rel=0.05)


def test_wait_quantile_is_zero_when_few_wait_and_follows_the_exponential_tail_otherwise():
    assert mmc_wait_quantile(1.0, 0.05, 4, 0.95) == 0.0  # almost nobody waits at 5 % load
    rate, service_s, c, q = 70.0, 0.05, 4, 0.95
    waits = erlang_c(c, rate * service_s)
    t = mmc_wait_quantile(rate, service_s, c, q)
    assert waits * math.exp(-(c / service_s - rate) * t) == pytest.approx(1 - q, rel=1e-12)
    assert mmc_wait_quantile(80.0, 0.05, 4, q) == math.inf  # 4 erlangs on 4 servers: unstable


def test_min_servers_is_the_fewest_that_meet_the_slo():
    for rate in (5.0, 40.0, 400.0, 5000.0):
        c = min_servers(rate, 0.05, 1.0, 0.95)
        assert c is not None and c > rate * 0.05
        assert mmc_response_quantile(rate, 0.05, c, 0.95) <= 1.0
        if c > rate * 0.05 + 1:
            assert mmc_response_quantile(rate, 0.05, c - 1, 0.95) > 1.0


def test_min_servers_never_falls_as_the_rate_grows():
    rates = np.linspace(1, 2000, 60)
    counts = [min_servers(float(r), 0.05, 0.5, 0.99) for r in rates]
    assert all(a <= b for a, b in zip(counts, counts[1:], strict=False))


def test_min_servers_is_none_when_the_slo_is_below_the_service_time_tail():
    # An exponential 50 ms service alone has p95 = 3 x 50 ms: no number of servers brings it under 100 ms.
    assert min_servers(10.0, 0.05, 0.1, 0.95) is None
