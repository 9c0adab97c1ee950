"""Deterministic task mixes for scenarios (no Locust import here, so tests can load it as it is)."""

from collections.abc import Iterator


def smooth_weighted_order(weights: list[float]) -> Iterator[int]:
    """Indices of `weights` in smooth weighted round-robin order (every share exact over a full cycle,
    each kind spread as evenly as it can be)."""
    total = sum(weights)
    credit = [0.0] * len(weights)
    while True:
        for i, weight in enumerate(weights):
            credit[i] += weight
        best = max(range(len(weights)), key=lambda i: credit[i])
        credit[best] -= total
        yield best
