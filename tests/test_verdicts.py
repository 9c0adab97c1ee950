"""The verdict rules, and that every command judging runs applies the same ones."""

from __future__ import annotations

import math

import numpy as np
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
        "mean_service_ms": 50.0, "e2e_ms_count": 200, **{f"e2e_ms_{q}": 100.0 for q in verdicts.SLO_QUANTILES}}])
    return measured_points(runs, parse_task("sleep_ms:50")).iloc[0]


def step_record(done_per_s: float, sent_per_s: float) -> dict:
    return {"run_id": "r-rep0", "status": "ok", "summary": {"figures": {
        "achieved_rate_per_s": sent_per_s, "throughput_per_s": done_per_s, "littles_bound_per_s": 40.0,
        "latency": {"e2e_ms": {"count": 200, "p95": 100.0}}}}}


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


# --- the quantile rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("quantile", [0.5, 0.9, 0.95, 0.99])
def test_a_quantile_is_bounded_from_the_smallest_sample_whose_scipy_interval_has_both_ends(quantile):
    from scipy import stats

    rng = np.random.default_rng(7)
    smallest = verdicts.min_samples(quantile)
    for n, bounded in ((smallest - 1, False), (smallest, True), (smallest + 1, True), (4 * smallest, True)):
        sample = rng.exponential(10.0, size=n)
        low, high = stats.quantile_test(sample, q=1.0, p=quantile).confidence_interval(0.95)
        assert bool(np.isfinite(low) and np.isfinite(high)) is bounded, n
        assert verdicts.bounds(n, quantile) is bounded
        assert bool(all(np.isfinite(verdicts.quantile_interval(sample, quantile)))) is bounded


def test_a_bounded_quantiles_interval_holds_the_point_figure_and_two_sample_values():
    values = np.random.default_rng(3).lognormal(3.0, 0.5, size=500)
    low, high = verdicts.quantile_interval(values, 0.95)
    assert low <= np.percentile(values, 95) <= high
    assert low in values and high in values


def test_a_quantile_from_too_few_samples_reads_as_such_with_its_n():
    assert verdicts.too_few_samples(3) == "too few samples (n=3)"
    assert not verdicts.bounds(3, 0.95) and not verdicts.bounds(None, 0.5)


# --- the winner rule ----------------------------------------------------------------------------------


def noisy(centre: float, count: int = 3, spread: float = 0.03) -> list[float]:
    """`count` repeats around `centre`, `spread` apart in relative terms."""
    return [centre * (1 + spread * (i - (count - 1) / 2)) for i in range(count)]


def test_a_three_times_larger_latency_over_three_repeats_is_clearly_worse_with_its_interval():
    found = verdicts.difference(noisy(10.0), noisy(30.0), "e2e_ms_p95")
    assert found.outcome == "worse" and found.clear
    assert found.ratio == pytest.approx(3.0, rel=0.01)
    assert found.ci_low < found.ratio < found.ci_high and found.ci_low > 1 + verdicts.NOISE_FLOOR
    assert found.p_value < verdicts.ALPHA
    assert "95 % CI" in found.text and "clearly worse" in found.text
    assert found.inverse().outcome == "better"


def test_the_same_ratio_is_better_for_throughput_and_worse_for_latency():
    assert verdicts.difference(noisy(10.0), noisy(30.0), "throughput_per_s").outcome == "better"
    assert verdicts.difference(noisy(10.0), noisy(30.0), "e2e_ms_p95").outcome == "worse"
    with pytest.raises(KeyError, match="no declared direction"):
        verdicts.higher_is_better("colour")


def test_a_few_percent_over_three_repeats_is_within_noise():
    found = verdicts.difference(noisy(10.0), noisy(10.4), "e2e_ms_p95")
    assert found.outcome == "within noise" and not found.clear and found.judged
    assert found.ci_low < 1.04 < found.ci_high or found.p_value < verdicts.ALPHA


def test_a_significant_change_inside_the_noise_floor_is_still_within_noise():
    found = verdicts.difference(noisy(10.0, spread=0.001), noisy(10.5, spread=0.001), "e2e_ms_p95")
    assert found.p_value < verdicts.ALPHA  # the test alone would call it
    assert found.change < verdicts.NOISE_FLOOR and found.outcome == "within noise"


@pytest.mark.parametrize(("a_repeats", "b_repeats"), [(1, 1), (2, 3), (3, 2)])
def test_fewer_than_three_repeats_on_a_side_judge_nothing(a_repeats, b_repeats):
    found = verdicts.difference(noisy(10.0, a_repeats), noisy(30.0, b_repeats), "e2e_ms_p95")
    assert not found.judged and found.outcome == "too few repeats"
    assert math.isnan(found.ci_low) and math.isnan(found.p_value)
    notice = verdicts.SINGLE_RUNS if a_repeats == b_repeats == 1 else verdicts.FEW_REPEATS
    assert notice in found.text and "rerun with --repeats 3" in notice


def test_a_best_configuration_is_named_only_when_it_beats_every_other_beyond_noise():
    clear = verdicts.pick_best({"fast": noisy(10.0), "slow": noisy(30.0), "slower": noisy(40.0)}, "e2e_ms_p95")
    assert clear.winner == clear.leader == "fast" and clear.runner_up == "slow"
    close = verdicts.pick_best({"a": noisy(10.0), "b": noisy(10.3), "c": noisy(30.0)}, "e2e_ms_p95")
    assert close.winner is None and close.leader == "a" and close.within_noise == ["b"]
    single = verdicts.pick_best({"a": [10.0], "b": [30.0]}, "e2e_ms_p95")
    assert single.winner is None and single.reason == verdicts.SINGLE_RUNS and not single.judged
    two = verdicts.pick_best({"a": noisy(10.0, 2), "b": noisy(30.0, 2)}, "e2e_ms_p95")
    assert two.winner is None and two.reason == verdicts.FEW_REPEATS
    alone = verdicts.pick_best({"a": noisy(10.0)}, "e2e_ms_p95")
    assert alone.winner is None and "one configuration" in alone.reason
