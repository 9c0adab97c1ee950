"""Scenario pieces that decide what is sent, checked without running Locust."""

from __future__ import annotations

import itertools

import scenario_files


def _mix_module():
    return scenario_files.load("mix")


def test_the_routing_mix_sends_exactly_one_long_task_in_ten_evenly_spread():
    order = list(itertools.islice(_mix_module().smooth_weighted_order([90.0, 10.0]), 1000))
    assert order.count(1) == 100
    positions = [i for i, kind in enumerate(order) if kind == 1]
    assert {b - a for a, b in itertools.pairwise(positions)} == {10}


def test_every_share_of_an_uneven_mix_is_exact_over_a_full_cycle():
    order = list(itertools.islice(_mix_module().smooth_weighted_order([5.0, 3.0, 2.0]), 100))
    assert [order.count(k) for k in range(3)] == [50, 30, 20]
