"""The step search: judging a step from its run records, choosing the next rate, and a real search.

Unit tests feed `judge_step` run.json-shaped records whose figures each test chooses; no test asserts a
measured timing. The end-to-end test runs a short search on the baseline backend through the real
runner and checks only what the search must record (steps, knee, evidence), not where the knee is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import matrix, store
from benchmarks import search as search_mod
from benchmarks.analysis.load import search_table
from benchmarks.analysis.report import search_blocks
from benchmarks.search import Search, Step, judge_step, next_rate, step_rate
from benchmarks.verdicts import Slo

ROOT = Path(__file__).resolve().parent.parent
SLO = Slo("p95", 1.0)


def record(run_id: str = "r-rep0", *, status: str = "ok", sent: float = 20.0, done: float = 20.0,
           p95_ms: float = 100.0, detail: str = "", bound: float = 100.0, tasks: int = 200) -> dict:
    return {"run_id": run_id, "status": status, "detail": detail,
            "summary": {"figures": {"achieved_rate_per_s": sent, "throughput_per_s": done,
                                    "littles_bound_per_s": bound,
                                    "latency": {"e2e_ms": {"count": tasks, "p95": p95_ms}}}}}


def step(rate: float, verdict: str) -> Step:
    return Step(rate, [f"r{rate:g}-rep0"], ["ok"], verdict, "")


def searched(*steps: Step, factor: float = 2.0) -> Search:
    found = Search("s", {}, SLO, factor)
    found.steps.extend(steps)
    return found


def test_a_step_that_finished_what_it_was_sent_within_the_slo_is_sustained():
    judged = judge_step(20, [record(sent=20, done=19.5, p95_ms=900)], SLO)
    assert judged.verdict == "sustained"
    assert judged.throughput_per_s == 19.5 and judged.e2e_ms == 900


def test_a_step_that_finished_less_than_95_percent_of_what_was_sent_grew_a_backlog():
    judged = judge_step(40, [record(sent=40, done=30, p95_ms=100)], SLO)
    assert judged.verdict == "backlog"
    assert "backlog" in judged.reason


def test_a_step_past_the_slo_limit_is_not_sustained_even_when_it_kept_up():
    judged = judge_step(40, [record(sent=40, done=40, p95_ms=1500)], SLO)
    assert judged.verdict == "slo"
    assert "1500" in judged.reason


def test_a_step_whose_tasks_cannot_bound_the_slo_quantile_is_not_judged_but_the_search_rises_past_it():
    judged = judge_step(10, [record(sent=10, done=10, p95_ms=90, tasks=50), record(sent=10, done=10, tasks=200)],
                        SLO)
    assert judged.verdict == "too-few-samples" and not judged.sustained and not judged.conclusive
    assert judged.e2e_ms is None and judged.e2e_tasks == 50
    assert "too few samples (n=50)" in judged.reason and "90" not in judged.reason
    found = searched(judged)
    assert next_rate(found, max_steps=8, refine=1) == 20  # a higher rate brings more tasks
    found.steps.append(step(20, "backlog"))
    assert next_rate(found, max_steps=8, refine=1) is None
    assert found.knee is None and "too few tasks to judge" in found.stopped_because


def test_a_backlog_is_a_verdict_even_when_its_tasks_cannot_bound_the_quantile():
    assert judge_step(40, [record(sent=40, done=30, tasks=20)], SLO).verdict == "backlog"


def test_a_step_reason_gives_the_quantile_with_its_n():
    assert "end-to-end p95 900 ms (n=200, worst of 1 repeat)" in judge_step(20, [record(p95_ms=900)], SLO).reason


def test_a_step_at_or_above_littles_bound_is_not_sustained_however_well_its_window_went():
    judged = judge_step(41.4, [record(sent=39, done=38.8, p95_ms=300, bound=39.8)], SLO)
    assert judged.verdict == "bound" and judged.conclusive
    assert "Little's bound" in judged.reason


def test_the_worst_repeat_decides_a_step():
    judged = judge_step(40, [record("a-rep0", p95_ms=100), record("a-rep1", p95_ms=2000)], SLO)
    assert judged.verdict == "slo"
    assert judged.run_ids == ["a-rep0", "a-rep1"]


@pytest.mark.parametrize("status", ["failed", "error"])
def test_a_step_whose_run_is_not_ok_ends_without_a_verdict_on_the_queue(status):
    judged = judge_step(40, [record(status=status, detail="why")], SLO)
    assert judged.verdict == status
    assert not judged.conclusive
    found = searched(step(20, "sustained"), judged)
    assert next_rate(found, max_steps=8, refine=1) is None
    assert status in found.stopped_because


def test_a_generator_limited_step_whose_queue_kept_up_ends_the_search_at_the_generators_ceiling():
    judged = judge_step(5000, [record(status="generator-limited", sent=1200, done=1199, p95_ms=80, bound=10000)], SLO)
    assert judged.verdict == "generator-limited" and not judged.conclusive and not judged.sustained
    assert "1200.0/s of 5000/s offered" in judged.reason and "knee is above" in judged.reason
    found = searched(step(2000, "sustained"), judged)
    assert next_rate(found, max_steps=8, refine=1) is None
    assert found.knee.rate_per_s == 2000 and found.first_unsustained is None
    assert "generator-limited" in found.stopped_because


def test_a_generator_limited_step_whose_queue_fell_behind_what_was_sent_is_a_miss_the_search_bisects():
    judged = judge_step(400, [record(status="generator-limited", sent=300, done=200, bound=1000)], SLO)
    assert judged.verdict == "backlog" and judged.conclusive
    assert "300.0/s sent of 400/s offered" in judged.reason
    found = searched(step(100, "sustained"), step(200, "sustained"), judged)
    assert 200 < next_rate(found, max_steps=8, refine=1) < 400


def test_the_rate_rises_by_the_factor_while_steps_are_sustained():
    assert next_rate(searched(step(10, "sustained"), step(20, "sustained")), max_steps=8, refine=1) == 40


def test_the_search_bisects_between_the_knee_and_the_first_miss_then_stops():
    found = searched(step(10, "sustained"), step(20, "sustained"), step(40, "backlog"))
    middle = next_rate(found, max_steps=8, refine=1)
    assert 20 < middle < 40
    found.steps.append(step(middle, "sustained"))
    assert next_rate(found, max_steps=8, refine=1) is None
    assert found.knee.rate_per_s == middle
    assert found.first_unsustained.rate_per_s == 40
    assert found.record()["evidence_run_ids"] == [f"r{middle:g}-rep0", "r40-rep0"]


def test_without_refinement_the_knee_is_the_last_sustained_step():
    found = searched(step(10, "sustained"), step(20, "slo"))
    assert next_rate(found, max_steps=8, refine=0) is None
    assert found.record()["knee_rate_per_s"] == 10


def test_a_first_step_that_is_not_sustained_asks_for_a_lower_start():
    found = searched(step(50, "backlog"))
    assert next_rate(found, max_steps=8, refine=1) is None
    assert found.knee is None and "start lower" in found.stopped_because


def test_the_step_limit_ends_a_search_that_never_saturated_and_says_the_knee_is_at_least_the_last_rate():
    found = searched(step(10, "sustained"), step(20, "sustained"))
    assert next_rate(found, max_steps=2, refine=1) is None
    assert "at least" in found.stopped_because


def test_step_rates_keep_three_significant_figures():
    assert step_rate(22.499) == 22.5
    assert step_rate(1234.5) == 1230
    assert step_rate(0.33333) == 0.333


def test_every_configuration_of_a_matrix_is_searched_once_from_its_lowest_rate():
    parsed = matrix.parse('backend = ["rq", "celery"]\nscenario = "latency"\ntask = "sleep_ms"\n'
                          'args = {ms = 50}\nrate = [10, 20]\nrepeats = 2\n')
    configs = search_mod.configurations(parsed)
    assert sorted(c["backend"] for c, _, _ in configs) == ["celery", "rq"]
    assert {(start, repeats) for _, start, repeats in configs} == {(10.0, 2)}
    assert len({search_mod.search_id(c) for c, _, _ in configs}) == 2


def test_a_drain_matrix_cannot_be_searched_and_the_error_says_why():
    parsed = matrix.parse('backend = "rq"\nmode = "drain"\ntask = "noop"\ntasks = 100\n')
    with pytest.raises(ValueError, match="mode = \"load\""):
        search_mod.configurations(parsed)


def test_the_search_command_refuses_a_bad_slo_before_starting_anything(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('backend = "rq"\nscenario = "latency"\ntask = "noop"\nrate = 10\n')
    result = subprocess.run([sys.executable, "-m", "benchmarks", "search", str(path), "--slo", "p97=1s",
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--slo" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.service
def test_a_real_search_stores_every_step_as_a_checked_run_and_names_its_evidence(need_redis, tmp_path):
    path = tmp_path / "search.toml"
    # 4 s at 20/s: 80 tasks in the first step's window, enough for its p95 to be judged (72).
    path.write_text('name = "search-test"\nbackend = "baseline"\nscenario = "latency"\ntask = "sleep_ms"\n'
                    'args = {ms = 20}\nprocesses = 1\nrate = 20\nwarmup_s = 1\nduration_s = 4\n'
                    'drain_timeout_s = 30\n')
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "benchmarks", "search", str(path), "--out", str(out),
                             "--factor", "2", "--max-steps", "3", "--refine", "0", "--slo", "p95=2s"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    records = store.read_searches(out)
    assert len(records) == 1
    found = records[0]
    rates = [s["rate_per_s"] for s in found["steps"]]
    assert rates == sorted(rates) and rates[0] == 20
    for item in found["steps"]:
        for run_id in item["run_ids"]:
            run = json.loads((out / run_id / "run.json").read_text())
            assert run["spec"]["rate"] == item["rate_per_s"]
            assert run["status"] in ("ok", "generator-limited")
    for run_id in found["evidence_run_ids"]:
        assert (out / run_id / "tasks.parquet").exists()
    assert found["stopped_because"]
    table = search_table(records)
    assert table.loc[0, "slots"] == 1 and table.loc[0, "slo"] == "p95=2s"


def test_the_report_lists_each_stored_search_with_its_knee_and_evidence(tmp_path):
    assert search_blocks(tmp_path) == []
    config = {"backend": "rq", "broker": "redis", "serializer": "json", "processes": 2, "threads": 1,
              "routing": "shared", "task": "sleep_ms", "args": {"ms": 50}}
    found = searched(step(20, "sustained"), step(40, "backlog"))
    found.steps[0].e2e_ms, found.steps[0].e2e_tasks = 300.0, 200
    found.config, found.search_id = config, search_mod.search_id(config)
    path = search_mod.write_search(found, tmp_path)
    blocks = search_blocks(tmp_path)
    table = blocks[-1]
    assert table.rows == [["rq", "redis", "2", "sleep_ms ms=50", "p95=1s", "20 (1 run; p95 300 ms (n=200))", "40",
                           "r20-rep0, r40-rep0", ""]]
    # A record from before the quantile rule is still read, and says how its steps were judged.
    path.write_text(json.dumps(json.loads(path.read_text()) | {"schema_version": 1}))
    assert "before the quantile rule" in search_blocks(tmp_path)[-1].rows[0][-1]


def test_a_search_record_of_another_schema_version_is_refused(tmp_path):
    (tmp_path / "searches").mkdir()
    (tmp_path / "searches" / "x.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema version 99"):
        store.read_searches(tmp_path)
