"""The verdict rules, and that every command judging runs applies the same ones."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks import measure, verdicts
from benchmarks.analysis.planner import measured_points, parse_task
from benchmarks.search import judge_step

SLO = verdicts.parse_slo("p95=1s")


def planned_cell(done_per_s: float, sent_per_s: float) -> pd.Series:
    """The planner's view of one load cell (one run) with these figures."""
    runs = pd.DataFrame([{
        "run_id": "rq-sleep_ms-ms50-r20-rep0", "status": "ok", "backend": "rq", "mode": "load",
        "scenario": "latency", "task": "sleep_ms", "args": '{"ms": 50}', "rate": 20.0, "processes": 2,
        "threads": 1, "slots": 2, "throughput_per_s": done_per_s, "achieved_rate_per_s": sent_per_s,
        "mean_service_ms": 50.0, **{f"e2e_ms_{q}": 100.0 for q in verdicts.SLO_QUANTILES}}])
    return measured_points(runs, parse_task("sleep_ms:50")).iloc[0]


def step_record(done_per_s: float, sent_per_s: float) -> dict:
    return {"run_id": "r-rep0", "status": "ok", "summary": {"figures": {
        "achieved_rate_per_s": sent_per_s, "throughput_per_s": done_per_s, "littles_bound_per_s": 40.0,
        "latency": {"e2e_ms": {"p95": 100.0}}}}}


@pytest.mark.parametrize(("done_per_s", "sustained"), [(20.0, True), (19.0, True), (18.99, False), (10.0, False)])
def test_a_search_step_and_a_planned_cell_with_the_same_figures_get_the_same_verdict(done_per_s, sustained):
    step = judge_step(20.0, [step_record(done_per_s, 20.0)], SLO)
    assert step.sustained is sustained
    assert bool(planned_cell(done_per_s, 20.0)["sustained"]) is sustained


def test_a_run_kept_up_when_it_finished_the_share_the_generator_check_asks_of_the_generator():
    assert verdicts.SUSTAINED_RATIO == measure.ACHIEVED_MIN_RATIO == 0.95
    assert verdicts.kept_up(95.0, 100.0) and not verdicts.kept_up(94.9, 100.0)
    assert list(verdicts.kept_up(pd.Series([95.0, 94.0, math.nan]), pd.Series([100.0, 100.0, 100.0]))) == [
        True, False, False]


def test_the_knee_is_where_every_higher_rate_is_bent_too():
    assert verdicts.knee_index([False, False, True, True]) == 2
    assert verdicts.knee_index([False, True, False, True]) == 3  # one noisy cell is not a knee
    assert verdicts.knee_index([True, True]) == 0
    assert verdicts.knee_index([False, False]) is None and verdicts.knee_index([]) is None
    assert verdicts.latency_grew(301.0, 100.0) and not verdicts.latency_grew(300.0, 100.0)
    assert not verdicts.latency_grew(math.nan, 100.0) and not verdicts.latency_grew(500.0, math.nan)


def test_an_slo_reads_as_it_is_written_on_the_command_line():
    slo = verdicts.parse_slo("p99=250ms")
    assert (slo.name, slo.limit_s, slo.quantile, slo.column) == ("p99", 0.25, 0.99, "e2e_ms_p99")
    assert (slo.cli, slo.label, slo.slug) == ("p99=250ms", "p99 ≤ 250 ms", "p99-250ms")
    assert verdicts.parse_slo(slo.cli) == slo
