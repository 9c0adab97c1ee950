"""Capacity planning: the M/M/c model against independent computations, and the planner on synthetic runs.

The synthetic runs are run.json files shaped like real ones (the keys `queuebench run` writes and the
loader reads), with figures chosen by each test: no test asserts a measured timing.
"""

from __future__ import annotations

import heapq
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from benchmarks import matrix
from benchmarks.analysis import capacity
from benchmarks.analysis.capacity import (
    erlang_c,
    min_servers,
    mmc_response_quantile,
    mmc_response_survival,
    mmc_wait_quantile,
    parse_task,
)
from benchmarks.analysis.plan_cmd import plan as plan_command
from benchmarks.verdicts import Slo, parse_slo

SLEEP_50 = parse_task("sleep_ms:50")
#: The synthetic runs' mean service time (a little under the 50 ms asked: only the model reads it).
SERVICE_MS = 40.0

# --- the model ----------------------------------------------------------------------------------------


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


# --- the request syntax -------------------------------------------------------------------------------


def test_slo_syntax_takes_a_quantile_and_a_limit_in_ms_or_s():
    assert parse_slo("p95=1s") == Slo("p95", 1.0)
    assert parse_slo("p99=250ms").limit_s == pytest.approx(0.25)
    assert parse_slo(" p50 = 0.5s ").quantile == 0.5
    for bad in ("p95", "p97=1s", "p95=1h", "p95=-1s", "95=1s", "p95=0ms"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_task_syntax_names_the_task_and_its_arguments():
    assert parse_task("sleep_ms:50") == capacity.TaskKind("sleep_ms", (("ms", 50),))
    assert parse_task("sleep_ms:ms=50") == SLEEP_50
    assert parse_task("noop") == capacity.TaskKind("noop")
    assert parse_task("add:x=1,y=2").args == {"x": 1, "y": 2}
    for bad in ("nap:1", "sleep_ms", "sleep_ms:fast", "sleep_ms:999999", "noop:1", "add:1"):
        with pytest.raises(ValueError):
            parse_task(bad)


# --- synthetic results --------------------------------------------------------------------------------


def write_run(root: Path, backend: str, processes: int, rate: float, *, throughput: float, p95_ms: float,
              service_ms: float = 50.0, status: str = "ok", repeat: int = 0, task: str = "sleep_ms",
              args: dict[str, Any] | None = None, mode: str = "load", scenario: str = "latency") -> str:
    """One run directory with a run.json shaped like the runner's (the figures are the caller's)."""
    args = {"ms": 50} if args is None and task == "sleep_ms" else (args or {})
    spec: dict[str, Any] = {
        "backend": backend, "broker": "redis", "serializer": "json", "processes": processes, "threads": 1,
        "prefetch": None, "acks_late": None, "routing": "shared", "long_threshold_ms": 100, "results": True,
        "mode": mode, "task": task, "args": args, "drain_timeout_s": 60, "options": {}}
    if mode == "load":
        spec |= {"scenario": scenario, "rate": rate, "arrival": "constant", "warmup_s": 1, "duration_s": 5,
                 "api_workers": 2, "api_threads": 4}
    else:
        spec["tasks"] = 500
    run_id = matrix.run_id(spec, repeat)

    def family(p95: float) -> dict[str, float]:
        return {"count": 200, "mean": p95 * 0.7, "p50": p95 * 0.6, "p90": p95 * 0.9, "p95": p95,
                "p99": p95 * 1.2, "max": p95 * 1.3}

    figures: dict[str, Any] = {
        "window_start_ns": 1_000_000_000, "window_end_ns": 6_000_000_000, "window_s": 5.0, "slots": processes,
        "sent": 200, "finished_ok": 200, "executions": 200, "failed_executions": 0, "retried_tasks": 0,
        "throughput_per_s": throughput, "executions_per_s": throughput, "mean_service_ms": service_ms,
        "littles_bound_per_s": processes / (service_ms / 1e3),
        "latency": {"queue_wait_ms": family(max(p95_ms - service_ms, 1.0)), "service_ms": family(service_ms),
                    "e2e_ms": family(p95_ms)},
        "resources": {"workers": {"cpu_s": 0.5, "peak_rss_mib": 40.0}},
    }
    if mode == "load":
        figures |= {"offered_rate_per_s": rate, "achieved_rate_per_s": rate, "requests": 200,
                    "requests_failed": 0}
    ok = status == "ok"
    record = {
        "schema_version": 1, "harness_version": "0.1.0", "run_id": run_id, "matrix": "synthetic",
        "repeat": repeat, "spec": spec, "slots": processes, "status": status,
        "detail": "" if ok else "failed checks: all_finished",
        "started_at": "2026-01-01T00:00:00+00:00",
        "environment": {"host": "test", "cpu_count_logical": 2, "python": "3.11", "packages": {}},
        "task_kinds": [{"task": task, "args": args, "digest": "0" * 16}],
        "summary": {"figures": figures,
                    "checks": {"all_finished": {"ok": ok, "detail": ""},
                               "littles_law": {"ok": True, "detail": ""}},
                    "verdict": status, "failed_checks": [] if ok else ["all_finished"]},
    }
    (root / run_id).mkdir(parents=True)
    (root / run_id / "run.json").write_text(json.dumps(record))
    return run_id


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """celery and rq, sleep_ms 50 at 40/s on 1, 2 and 4 processes, and a rate sweep on 2 processes.

    Each task holds its slot 40 ms (so a slot can finish at most 25/s). One slot saturates at 40/s (its
    throughput is its capacity); two keep up but with a long p95; four keep up with a short one.
    """
    root = tmp_path / "runs"
    for backend in ("celery", "rq"):
        write_run(root, backend, 1, 40, throughput=18.0, p95_ms=4000, service_ms=SERVICE_MS)
        write_run(root, backend, 2, 40, throughput=39.5, p95_ms=600, service_ms=SERVICE_MS)
        write_run(root, backend, 2, 20, throughput=20.0, p95_ms=90, service_ms=SERVICE_MS)
        write_run(root, backend, 4, 40, throughput=40.0, p95_ms=120, service_ms=SERVICE_MS)
        write_run(root, backend, 4, 40, throughput=40.0, p95_ms=140, service_ms=SERVICE_MS, repeat=1)
    # Runs that must not count: another task, a failed run, a mixed-kind scenario.
    write_run(root, "celery", 1, 40, throughput=40.0, p95_ms=5, task="noop", service_ms=0.1)
    write_run(root, "celery", 8, 40, throughput=40.0, p95_ms=10, status="failed")
    write_run(root, "rq", 8, 40, throughput=40.0, p95_ms=10, scenario="routing_mix")
    return root


def test_plan_recommends_the_fewest_measured_slots_that_meet_the_slo(runs_dir):
    tight = capacity.plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=200ms"))
    loose = capacity.plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=1s"))
    assert [b.backend for b in tight.backends] == ["celery", "rq"]
    assert tight.covered and loose.covered
    for backend in tight.backends:
        assert (backend.verdict, backend.measured_slots, backend.measured_shape) == ("measured", 4, "p4t1")
        assert backend.lower_bound_slots == 3  # 2 slots were measured to miss the SLO; 3 never measured
    for backend in loose.backends:
        assert backend.measured_slots == 2 and backend.lower_bound_slots == 2


def test_plan_shows_the_measured_cells_it_relied_on_with_the_model_beside_them(runs_dir):
    answer = capacity.plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=200ms"))
    celery = answer.backends[0]
    run_ids = {r for ids in celery.points["run_ids"] for r in ids}
    assert all(r.startswith("celery-") and "sleep_ms-ms50" in r for r in run_ids)
    assert all((runs_dir / r / "run.json").exists() for r in run_ids)
    assert not any("p8t1" in r for r in run_ids)  # failed and mixed-kind runs are not used
    meets = next(c for c in celery.configs if c.state == "meets")
    assert len(meets.evidence) == 2  # both repeats of the 4-slot cell
    four = celery.points[celery.points["slots"] == 4].iloc[0]
    assert four["e2e_p95_ms"] == max(120, 140)  # the worse repeat
    assert four["model_p95_ms"] == pytest.approx(mmc_response_quantile(40, SERVICE_MS / 1e3, 4, 0.95) * 1e3)
    assert four["model_error"] == pytest.approx(four["model_p95_ms"] / four["e2e_p95_ms"] - 1)
    one = celery.points[celery.points["slots"] == 1].iloc[0]
    assert one["saturated"] and celery.per_slot_capacity_per_s == pytest.approx(18.0)
    assert celery.efficiency == pytest.approx(18.0 * SERVICE_MS / 1e3)
    assert celery.model_slots == min_servers(40, SERVICE_MS / 1e3, 0.2, 0.95)


def test_plan_refuses_a_rate_beyond_the_measured_ones_and_labels_its_extrapolation(runs_dir):
    answer = capacity.plan_capacity(runs_dir, 200, SLEEP_50, parse_slo("p95=1s"))
    assert not answer.covered
    for backend in answer.backends:
        assert backend.verdict == "not covered" and backend.measured_slots is None
        assert "beyond the largest measured rate (40/s)" in backend.reason
        assert backend.extrapolated_slots >= math.ceil(200 / 18.0)  # at least the measured capacity per slot
        assert "extrapolated" in backend.answer and "not measured" in backend.answer


def test_plan_says_so_when_the_results_hold_no_run_of_the_task(runs_dir):
    answer = capacity.plan_capacity(runs_dir, 40, parse_task("cpu_ms:20"), parse_slo("p95=1s"))
    assert not answer.covered
    assert [(b.backend, b.verdict) for b in answer.backends] == [("celery", "no runs"), ("rq", "no runs")]
    assert any("no run of cpu_ms(ms=20)" in w for w in answer.warnings)
    assert all(b.model_service_source.startswith("assumed") for b in answer.backends)


def test_the_covering_matrix_parses_and_measures_the_request(runs_dir, tmp_path):
    answer = capacity.plan_capacity(runs_dir, 200, SLEEP_50, parse_slo("p95=1s"))
    written = capacity.write_covering_matrix(answer, tmp_path / "cover.toml", results_dir=runs_dir)
    loaded = matrix.load(written.path)
    assert written.cells == len(loaded.cells) > 0
    assert {c.spec["backend"] for c in loaded.cells} == {"celery", "rq"}
    for cell in loaded.cells:
        spec = cell.spec
        assert (spec["mode"], spec["scenario"], spec["task"]) == ("load", "latency", "sleep_ms")
        assert spec["args"] == {"ms": 50}
        assert spec["rate"] == 200 and cell.skip_reason is None
    for backend in answer.backends:
        slots = sorted(c.spec["processes"] for c in loaded.cells if c.spec["backend"] == backend.backend
                       and c.repeat == 0)
        assert min(slots) <= backend.extrapolated_slots <= max(slots)
    assert written.command == f"queuebench run {written.path} --out {runs_dir}"


def test_the_covering_matrix_is_refused_when_everything_is_covered(runs_dir):
    answer = capacity.plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=1s"))
    with pytest.raises(ValueError, match="covered"):
        capacity.covering_matrix_text(answer)


def test_plan_command_prints_json_and_writes_the_covering_matrix_where_told(runs_dir, tmp_path):
    out = tmp_path / "plans" / "cover.toml"
    result = CliRunner().invoke(plan_command, ["--rate", "200", "--task", "sleep_ms:50", "--slo", "p95=1s",
                                               "--matrix-out", str(out), "--json", str(runs_dir)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["covered"] is False and answer["request"]["rate_per_s"] == 200
    assert answer["matrix"]["path"] == str(out) and out.exists()
    assert answer["matrix"]["command"].startswith(f"queuebench run {out}")
    assert {b["backend"] for b in answer["backends"]} == {"celery", "rq"}
    assert all(b["points"] and b["points"][0]["run_ids"] for b in answer["backends"])
    matrix.load(out)


def test_plan_command_prints_tables_and_says_plainly_when_it_is_not_covered(runs_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    covered = CliRunner().invoke(plan_command, ["--rate", "40", "--task", "sleep_ms:50", "--slo", "p95=1s",
                                                str(runs_dir)])
    assert covered.exit_code == 0, covered.output
    assert "Covered" in covered.output and "measured" in covered.output
    assert not (tmp_path / "results").exists()  # nothing to cover: no matrix written
    uncovered = CliRunner().invoke(plan_command, ["--rate", "200", "--task", "sleep_ms:50", "--slo", "p95=1s",
                                                  str(runs_dir)])
    assert uncovered.exit_code == 0, uncovered.output
    assert "Not covered" in uncovered.output and "extrapolat" in uncovered.output
    written = list((tmp_path / "results" / "plans").glob("*.toml"))
    assert len(written) == 1 and "queuebench run" in uncovered.output
    matrix.load(written[0])


def test_plan_command_refuses_a_bad_slo_or_task_with_exit_code_2(runs_dir):
    for args in (["--slo", "p95=fast", "--task", "noop"], ["--slo", "p95=1s", "--task", "nap"]):
        result = CliRunner().invoke(plan_command, ["--rate", "10", *args, str(runs_dir)])
        assert result.exit_code == 2
        assert "--slo" in result.output or "--task" in result.output


def test_plan_on_a_missing_results_directory_covers_the_three_libraries(tmp_path):
    answer = capacity.plan_capacity(tmp_path / "nothing", 100, SLEEP_50, parse_slo("p99=500ms"))
    assert [b.backend for b in answer.backends] == list(capacity.DEFAULT_BACKENDS)
    assert all(b.verdict == "no runs" and b.extrapolated_slots for b in answer.backends)
    loaded = matrix.parse(capacity.covering_matrix_text(answer))
    assert {c.spec["backend"] for c in loaded.cells} == set(capacity.DEFAULT_BACKENDS)


# --- capacity notes -----------------------------------------------------------------------------------


def test_capacity_notes_mention_each_backend_its_knee_and_a_planning_sentence(runs_dir):
    notes = capacity.capacity_notes(runs_dir)
    assert "sleep_ms(ms=50)" in notes
    for backend in ("celery", "rq"):
        assert f"- {backend}:" in notes
        assert f"on {backend} you need " in notes
    assert "(measured" in notes and "(M/M/c)" in notes
    assert "knee at 40/s" in notes  # the 2-slot sweep: p95 grew more than 3x from 20/s to 40/s
    assert "noop()" in notes  # another kind with load runs gets its own notes
    assert "Data insufficient" in notes  # noop was measured at one rate only


def test_capacity_notes_take_the_frame_the_report_passes(runs_dir):
    from benchmarks.analysis.load import load_results

    assert capacity.capacity_notes(load_results(runs_dir).usable) == capacity.capacity_notes(runs_dir)


def test_capacity_notes_say_when_there_is_nothing_to_plan_from(tmp_path):
    for source in (pd.DataFrame(), tmp_path):
        assert "no capacity can be stated" in capacity.capacity_notes(source)
    write_run(tmp_path / "runs", "rq", 2, 40, throughput=40.0, p95_ms=50, scenario="payload", task="echo",
              args={"size": 100})
    assert "no capacity can be stated" in capacity.capacity_notes(tmp_path / "runs")
