"""The M/M/c queueing model: Erlang B and C, the wait and response-time distributions, the fewest servers.

Pure maths, no data: the planner puts its figures beside the measured ones, never in their place.

M/M/c: Poisson arrivals at ``rate_per_s``, ``c`` servers (slots), exponential service of mean
``service_s``, first come first served. With offered load A = rate x service (erlangs), mu = 1 / service
and theta = c mu - rate > 0, the probability of waiting is Erlang C, C(c, A), and the waiting time W has
P(W > t) = C exp(-theta t). A task's own service S is exponential (rate mu) and independent of its wait,
so the response time R = W + S has the exact distribution

    P(R > t) = (1 - C) exp(-mu t) + C P(E_theta + E_mu > t),
    P(E_theta + E_mu > t) = (theta exp(-mu t) - mu exp(-theta t)) / (theta - mu)
                          [= (1 + mu t) exp(-mu t) when theta = mu]

and `mmc_response_quantile` inverts it numerically (bisection; no approximation beyond float precision).
Caveat, visible in every comparison: `sleep_ms` and `cpu_ms` have nearly constant service, so the
exponential service assumption overstates both the wait and the service tail (the p95 of an exponential
is 3x its mean); the model is pessimistic for them, and the reported model error says by how much. The
model also leaves out what the harness measures on top of queue wait + service: the HTTP enqueue and
the broker's delivery delay.
"""

from __future__ import annotations

import math

import numpy as np


def _check_servers(c: int) -> None:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
        raise ValueError(f"c must be an integer >= 1 (got {c!r})")


def erlang_b(c: int, offered_load_erlangs: float) -> float:
    """Erlang B: the blocking probability of c servers offered A erlangs (no waiting room).

    The recursion B(0) = 1, B(k) = A B(k-1) / (k + A B(k-1)) is stable for any c (no factorials, no
    powers), so c in the thousands is fine.
    """
    _check_servers(c)
    load = float(offered_load_erlangs)
    if not load >= 0 or math.isinf(load):
        raise ValueError(f"offered load must be a finite number >= 0 erlangs (got {offered_load_erlangs!r})")
    blocking = 1.0
    for k in range(1, int(c) + 1):
        blocking = load * blocking / (k + load * blocking)
    return blocking


def erlang_c(c: int, offered_load_erlangs: float) -> float:
    """Erlang C: the probability that an arrival waits in M/M/c offered A = rate x service erlangs.

    C = c B / (c - A (1 - B)) with B = `erlang_b`; 1 when A >= c (the queue grows without bound).
    """
    blocking = erlang_b(c, offered_load_erlangs)
    load = float(offered_load_erlangs)
    if load >= c:
        return 1.0
    return c * blocking / (c - load * (1.0 - blocking))


def _check_rates(rate_per_s: float, service_s: float, q: float | None = None) -> None:
    if not rate_per_s > 0 or math.isinf(rate_per_s):
        raise ValueError(f"rate must be a finite number > 0 per second (got {rate_per_s!r})")
    if not service_s > 0 or math.isinf(service_s):
        raise ValueError(f"service time must be a finite number > 0 seconds (got {service_s!r})")
    if q is not None and not 0 < q < 1:
        raise ValueError(f"quantile must be between 0 and 1, exclusive (got {q!r})")


def mmc_wait_survival(t_s: float, rate_per_s: float, service_s: float, c: int) -> float:
    """P(W > t) in M/M/c: C(c, A) exp(-(c mu - rate) t); 1 when the queue is unstable."""
    _check_rates(rate_per_s, service_s)
    theta = c / service_s - rate_per_s
    if theta <= 0:
        return 1.0
    return erlang_c(c, rate_per_s * service_s) * math.exp(-theta * max(t_s, 0.0))


def _sum_of_exponentials_survival(t_s: float, rate_a: float, rate_b: float) -> float:
    """P(E_a + E_b > t) for independent exponentials, written to stay exact when the rates are close."""
    low, high = sorted((rate_a, rate_b))
    gap = high - low
    if gap <= 1e-12 * high:
        return (1.0 + low * t_s) * math.exp(-low * t_s)
    # (high e^{-low t} - low e^{-high t}) / gap = e^{-low t} (1 + low (1 - e^{-gap t}) / gap)
    return math.exp(-low * t_s) * (1.0 + low * -math.expm1(-gap * t_s) / gap)


def mmc_response_survival(t_s: float, rate_per_s: float, service_s: float, c: int) -> float:
    """P(R > t) for the response time R = wait + own (exponential) service in M/M/c; exact."""
    _check_rates(rate_per_s, service_s)
    _check_servers(c)
    mu = 1.0 / service_s
    theta = c * mu - rate_per_s
    if theta <= 0:
        return 1.0
    t_s = max(float(t_s), 0.0)
    waits = erlang_c(c, rate_per_s * service_s)
    return (1.0 - waits) * math.exp(-mu * t_s) + waits * _sum_of_exponentials_survival(t_s, theta, mu)


def mmc_wait_quantile(rate_per_s: float, service_s: float, c: int, q: float) -> float:
    """The q-quantile of the wait in M/M/c, in seconds: 0 when C <= 1 - q, else ln(C / (1 - q)) / theta.

    Infinite when the queue is unstable (rate x service >= c).
    """
    _check_rates(rate_per_s, service_s, q)
    _check_servers(c)
    theta = c / service_s - rate_per_s
    if theta <= 0:
        return math.inf
    waits = erlang_c(c, rate_per_s * service_s)
    return 0.0 if waits <= 1.0 - q else math.log(waits / (1.0 - q)) / theta


def mmc_response_quantile(rate_per_s: float, service_s: float, c: int, q: float) -> float:
    """The q-quantile of the response time (wait + exponential service) in M/M/c, in seconds.

    Exact up to the bisection's tolerance (relative 1e-12): `mmc_response_survival` is continuous and
    decreasing from 1, so the root of P(R > t) = 1 - q is bracketed and found. Infinite when unstable.
    """
    _check_rates(rate_per_s, service_s, q)
    _check_servers(c)
    if c / service_s - rate_per_s <= 0:
        return math.inf
    target = 1.0 - q
    low, high = 0.0, -math.log(target) * service_s  # the service alone reaches this point
    while mmc_response_survival(high, rate_per_s, service_s, c) > target:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if mmc_response_survival(middle, rate_per_s, service_s, c) > target:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return (low + high) / 2.0


def min_servers(rate_per_s: float, service_s: float, slo_s: float, q: float, *,
                max_servers: int = 100_000) -> int | None:
    """The fewest M/M/c servers whose response-time q-quantile is at most `slo_s`.

    None when no number of servers can: with infinitely many nobody waits, and the exponential service
    alone has the q-quantile -ln(1 - q) x service, so an SLO at or below it is out of reach. The quantile
    falls as servers are added, so the answer is found by doubling, then bisection.
    """
    _check_rates(rate_per_s, service_s, q)
    if not slo_s > 0:
        raise ValueError(f"SLO must be > 0 seconds (got {slo_s!r})")
    if slo_s <= -math.log(1.0 - q) * service_s:
        return None
    load = rate_per_s * service_s
    if load >= max_servers:
        raise ValueError(f"{load:.0f} erlangs need more than max_servers = {max_servers} servers")

    def meets(c: int) -> bool:
        return mmc_response_quantile(rate_per_s, service_s, c, q) <= slo_s

    fails = max(int(math.floor(load)), 0)  # c <= A is unstable: it fails (0 is a sentinel, never tried)
    good = fails + 1
    while not meets(good):
        fails, good = good, min(good * 2, max_servers)
        if fails == max_servers:
            raise ValueError(f"more than max_servers = {max_servers} servers would be needed")
    while good - fails > 1:
        middle = (good + fails) // 2
        if meets(middle):
            good = middle
        else:
            fails = middle
    return good
