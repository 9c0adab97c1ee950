"""The plan rule, the slot's real occupancy and ``plan --verify``, on stored synthetic runs.

Synthetic runs (tests/synthetic_runs.py, and test_capacity's run.json writer with raw rows) carry the
figures and the raw rows a test chooses; no test asserts a measured timing. Where a test needs a limit
between a point estimate and the upper end of its interval, it reads both from the stored rows first.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize
from synthetic_runs import write_configuration
from test_capacity import write_run

from benchmarks import matrix
from benchmarks.analysis.cover import (
    cover_duration_s,
    covering_matrix_text,
    verification_matrix_text,
    verify_targets,
)
from benchmarks.analysis.load import load_results
from benchmarks.analysis.planner import occupancy, parse_task, plan_capacity
from benchmarks.verdicts import (
    MIN_REPEATS,
    RHO_WARN,
    Slo,
    judge_repeats,
    min_samples,
    next_repeat_upper,
    parse_slo,
    window_tasks,
)

ROOT = Path(__file__).resolve().parent.parent
SLEEP_20 = parse_task("sleep_ms:20")
SLEEP_50 = parse_task("sleep_ms:50")


def only(answer):
    (backend,) = answer.backends
    return backend


# --- the recommendation rule --------------------------------------------------------------------------


def test_a_lucky_single_run_is_not_enough_for_a_recommendation(tmp_path):
    write_configuration(tmp_path, 1, backend="rq", processes=2, rate=30.0, tasks=150, median_e2e_ms=40.0)
    answer = plan_capacity(tmp_path, 30, SLEEP_20, parse_slo("p95=1s"))
    backend = only(answer)
    assert not answer.covered and backend.verdict == "too few repeats"
    assert backend.measured_slots == 2 and "not a recommendation" in backend.answer
    assert answer.needs_verify and backend.needs_verify
    # The matrix that would decide it: three repeats, windows whose tasks bound the p95 with a margin.
    cells = matrix.parse(covering_matrix_text(answer)).cells
    assert 2 in {c.spec["processes"] for c in cells}
    for spec in {json.dumps(c.spec, sort_keys=True) for c in cells}:
        repeats = [c for c in cells if json.dumps(c.spec, sort_keys=True) == spec]
        assert len(repeats) == MIN_REPEATS
        assert repeats[0].spec["rate"] * repeats[0].spec["duration_s"] >= window_tasks(0.95) > min_samples(0.95)


def test_three_passing_repeats_with_the_bound_under_the_limit_are_a_recommendation(tmp_path):
    write_configuration(tmp_path, 3, backend="rq", processes=2, rate=30.0, tasks=150, median_e2e_ms=40.0)
    answer = plan_capacity(tmp_path, 30, SLEEP_20, parse_slo("p95=1s"))
    backend = only(answer)
    assert answer.covered and backend.verdict == "measured" and backend.measured_slots == 2
    assert not answer.needs_verify
    config = backend.answer_config
    assert config.state == "meets" and len(config.repeats) == 3
    for repeat in config.repeats:
        assert repeat["e2e_ms"] <= repeat["upper_ms"] < 1000 and repeat["kept_up"]
    assert config.rho is not None and config.rho <= RHO_WARN


def test_a_bound_crossing_the_limit_while_every_point_estimate_meets_it_is_marginal(tmp_path):
    ids = write_configuration(tmp_path, 3, backend="rq", processes=2, rate=30.0, tasks=150, median_e2e_ms=40.0)
    results = load_results(tmp_path)
    points = [float(results.runs.set_index("run_id").loc[r, "e2e_ms_p95"]) for r in ids]
    uppers = [results.quantile_interval(r, "e2e_ms_p95")[1] for r in ids]
    assert max(points) < max(uppers)
    limit_ms = (max(points) + max(uppers)) / 2  # every point estimate under it, an upper end over it
    backend = only(plan_capacity(tmp_path, 30, SLEEP_20, Slo("p95", limit_ms / 1e3)))
    assert backend.verdict == "marginal" and not backend.covered and backend.needs_verify
    assert "upper bound crosses the limit" in backend.reason
    assert backend.measured_slots == 2 and "not a recommendation" in backend.answer


def test_the_rule_names_each_way_a_configuration_falls_short():
    fine = dict(uppers_ms=[110, 120, 115], counts=[200] * 3, kept=[True] * 3, quantile=0.95, limit_ms=500)
    assert judge_repeats([100, 105, 102], **fine).state == "meets"
    assert judge_repeats([100, 105, 102], **fine, rho=0.9).state == "marginal"
    assert judge_repeats([100, 105], **(fine | {"uppers_ms": [110, 120], "counts": [200] * 2,
                                                "kept": [True] * 2})).state == "too few repeats"
    assert judge_repeats([100, 520, 102], **fine).state == "misses"
    assert judge_repeats([100, 105, 102], **(fine | {"kept": [True, False, True]})).state == "misses"
    assert judge_repeats([100, 105, math.nan], **(fine | {"counts": [200, 200, 50]})).state == "too few samples"
    spread = judge_repeats([100, 300, 450], **(fine | {"uppers_ms": [120, 350, 490]}))
    assert spread.state == "marginal" and "next window" in spread.reasons[0]


def test_the_next_repeat_bound_is_a_t_prediction_interval_on_logs():
    values = [198.0, 415.0, 170.0]
    logs = np.log(values)
    from scipy import stats

    expected = math.exp(logs.mean() + stats.t.ppf(0.975, 2) * logs.std(ddof=1) * math.sqrt(1 + 1 / 3))
    assert next_repeat_upper(values) == pytest.approx(expected)
    assert next_repeat_upper([150.0, 150.0, 150.0]) == pytest.approx(150.0)
    assert math.isnan(next_repeat_upper([150.0]))


# --- the slot's real occupancy ------------------------------------------------------------------------


def erlang_c(c: int, load: float) -> float:
    """Erlang C from its textbook formula (factorials), independent of benchmarks.analysis.queueing."""
    top = load**c / math.factorial(c) * c / (c - load)
    return top / (sum(load**k / math.factorial(k) for k in range(c)) + top)


def mmc_p95_s(rate: float, service_s: float, c: int) -> float:
    """The p95 of the M/M/c response time, by root finding on its survival function."""
    if rate * service_s >= c:
        return math.inf
    mu, waits = 1 / service_s, erlang_c(c, rate * service_s)
    theta = c * mu - rate

    def survival(t: float) -> float:
        both = ((1 + mu * t) * math.exp(-mu * t) if abs(theta - mu) < 1e-12
                else (theta * math.exp(-mu * t) - mu * math.exp(-theta * t)) / (theta - mu))
        return (1 - waits) * math.exp(-mu * t) + waits * both - 0.05

    return optimize.brentq(survival, 0.0, 1000.0)


def fewest(rate: float, service_s: float, limit_s: float) -> int:
    return next(c for c in range(1, 100) if mmc_p95_s(rate, service_s, c) <= limit_s)


def test_the_occupancy_model_uses_the_measured_slot_time_beside_the_body_time(tmp_path):
    # Body 50 ms; a drain of 2 slots finished 2 / 95 ms per second: each task holds its slot 95 ms (RQ's
    # fork per job). Three passing repeats at 20/s on 2, 3 and 4 slots.
    root = tmp_path / "runs"
    write_run(root, "rq", 2, 0, throughput=2 / 0.095, p95_ms=0, service_ms=50.0, mode="drain")
    for processes in (2, 3, 4):
        for repeat in range(3):
            write_run(root, "rq", processes, 20, throughput=20.0, p95_ms=150, service_ms=50.0, repeat=repeat)
    backend = only(plan_capacity(root, 20, SLEEP_50, parse_slo("p95=500ms")))
    assert backend.model_service_ms == pytest.approx(50.0)
    assert backend.slot_time_ms == pytest.approx(95.0)
    rho = {c.slots: c.rho for c in backend.configs}
    assert rho == pytest.approx({2: 20 * 0.095 / 2, 3: 20 * 0.095 / 3, 4: 20 * 0.095 / 4})
    assert occupancy(20, 0.095, 2) == pytest.approx(0.95)
    assert backend.model_slots == fewest(20, 0.050, 0.5)
    assert backend.model_slot_time_slots == fewest(20, 0.095, 0.5)
    # 2 slots met the SLO's point estimate in every repeat, at rho 0.95: marginal, never the answer.
    two = next(c for c in backend.configs if c.slots == 2)
    assert two.state == "marginal" and "rho 0.95" in two.reason
    assert backend.covered and backend.measured_slots == 3 and backend.rho == pytest.approx(20 * 0.095 / 3)
    assert "p2t1 marginal" in backend.answer
    points = backend.points[backend.points["mode"] == "load"]
    for point in points.itertuples(index=False):
        assert point.model_slot_p95_ms == pytest.approx(1e3 * mmc_p95_s(20, 0.095, point.slots), rel=1e-6)
        assert point.model_p95_ms == pytest.approx(1e3 * mmc_p95_s(20, 0.050, point.slots), rel=1e-6)


def test_without_a_saturated_cell_or_a_drain_the_slot_time_is_said_to_be_unmeasured(tmp_path):
    write_configuration(tmp_path, 3, backend="rq", processes=2, rate=30.0, tasks=150, median_e2e_ms=40.0)
    backend = only(plan_capacity(tmp_path, 30, SLEEP_20, parse_slo("p95=1s")))
    assert backend.slot_time_ms is None and backend.model_slot_time_answer == "slot time not measured"
    assert "task body" in backend.occupancy_source
    assert any("slot time not measured" in note for note in backend.notes)


# --- windows and the verification matrix --------------------------------------------------------------


@pytest.mark.parametrize(("rate", "slo"), [(20, "p95=500ms"), (200, "p95=1s"), (5, "p99=1s"), (30, "p50=100ms")])
def test_a_window_written_to_decide_a_plan_bounds_the_quantile_with_a_margin(rate, slo):
    quantile = parse_slo(slo).quantile
    duration = cover_duration_s(rate, parse_slo(slo))
    assert rate * duration >= window_tasks(quantile) == 3 * min_samples(quantile)
    assert duration == 10 or rate * (duration - 1) < window_tasks(quantile)  # no longer than needed


def test_the_verification_matrix_runs_the_answer_and_one_slot_fewer_three_times_interleaved(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "rq", 2, 0, throughput=2 / 0.095, p95_ms=0, service_ms=50.0, mode="drain")
    for processes in (2, 3, 4):
        for repeat in range(3):
            write_run(root, "rq", processes, 20, throughput=20.0, p95_ms=150, service_ms=50.0, repeat=repeat)
    answer = plan_capacity(root, 20, SLEEP_50, parse_slo("p95=500ms"))
    targets = verify_targets(answer)
    assert [(t.shape, t.role) for t in targets] == [("p3t1", "recommended"), ("p2t1", "one slot fewer")]
    cells = matrix.parse(verification_matrix_text(answer)).cells
    assert [(c.spec["processes"], c.repeat) for c in cells] == [(3, 0), (2, 0), (3, 1), (2, 1), (3, 2), (2, 2)]
    for cell in cells:
        spec = cell.spec
        assert (spec["backend"], spec["rate"], spec["arrival"], spec["scenario"]) == ("rq", 20, "poisson", "latency")
        assert spec["task"] == "sleep_ms" and spec["args"] == {"ms": 50}
        assert spec["rate"] * spec["duration_s"] >= window_tasks(0.95)
    assert {c.spec["duration_s"] for c in matrix.parse(verification_matrix_text(answer, 20)).cells} == {20}


# --- plan --verify, end to end ------------------------------------------------------------------------


@pytest.mark.service
def test_plan_verify_runs_the_answer_and_reports_every_repeat_with_its_interval(need_redis, tmp_path):
    results = tmp_path / "runs"
    write_configuration(results, 3, backend="rq", processes=2, rate=10.0, tasks=150, median_e2e_ms=40.0)
    out = tmp_path / "verify"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "plan", "--rate", "10", "--task", "sleep_ms:20",
                           "--slo", "p95=1s", "--verify", "--verify-out", str(out), "--verify-duration", "3",
                           "--json", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 3), done.stdout + done.stderr  # 3: the SLO was not shown to hold
    answer = json.loads(done.stdout)
    found = answer["verification"]
    assert found["out_dir"] == str(out) and (out / "verify.toml").exists()
    configurations = found["configurations"]
    assert [(c["shape"], c["role"]) for c in configurations] == [("p2t1", "recommended"), ("p1t1", "one slot fewer")]
    for configuration in configurations:
        assert configuration["outcome"] in ("held", "missed", "not shown", "incomplete")
        assert len(configuration["repeats"]) == 3 or configuration["outcome"] == "incomplete"
        for repeat in configuration["repeats"]:
            assert (out / repeat["run_id"] / "run.json").exists()
            assert "n=" in repeat["text"] or "too few samples" in repeat["text"]
    assert len(found["cells"]) == 6
    assert found["held"] == (configurations[0]["outcome"] == "held")
