"""Capacity planning on synthetic runs: the planner, the covering matrix it writes, the capacity notes.

The synthetic runs are run.json files shaped like real ones (the keys `queuebench run` writes and the
loader reads), with figures chosen by each test: no test asserts a measured timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import synthetic_runs
from click.testing import CliRunner

from benchmarks import matrix, runner, store
from benchmarks.analysis.cover import covering_cells, covering_matrix_text, write_covering_matrix
from benchmarks.analysis.load import DEFAULT_BACKENDS, load_results
from benchmarks.analysis.notes import capacity_notes
from benchmarks.analysis.planner import TaskKind, parse_task, plan_capacity
from benchmarks.analysis.queueing import min_servers, mmc_response_quantile
from benchmarks.plan_verify import plan as plan_command
from benchmarks.verdicts import Slo, parse_slo

SLEEP_50 = parse_task("sleep_ms:50")
#: The synthetic runs' mean service time (a little under the 50 ms asked: only the model reads it).
SERVICE_MS = 40.0

# --- the request syntax -------------------------------------------------------------------------------


def test_slo_syntax_takes_a_quantile_and_a_limit_in_ms_or_s():
    assert parse_slo("p95=1s") == Slo("p95", 1.0)
    assert parse_slo("p99=250ms").limit_s == pytest.approx(0.25)
    assert parse_slo(" p50 = 0.5s ").quantile == 0.5
    for bad in ("p95", "p97=1s", "p95=1h", "p95=-1s", "95=1s", "p95=0ms"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_task_syntax_names_the_task_and_its_arguments():
    assert parse_task("sleep_ms:50") == TaskKind("sleep_ms", (("ms", 50),))
    assert parse_task("sleep_ms:ms=50") == SLEEP_50
    assert parse_task("noop") == TaskKind("noop")
    assert parse_task("add:x=1,y=2").args == {"x": 1, "y": 2}
    for bad in ("nap:1", "sleep_ms", "sleep_ms:fast", "sleep_ms:999999", "noop:1", "add:1"):
        with pytest.raises(ValueError):
            parse_task(bad)


# --- synthetic results --------------------------------------------------------------------------------


def write_run(root: Path, backend: str, processes: int, rate: float, *, throughput: float, p95_ms: float,
              service_ms: float = 50.0, status: str = "ok", repeat: int = 0, task: str = "sleep_ms",
              args: dict[str, Any] | None = None, mode: str = "load", scenario: str = "latency",
              options: dict[str, Any] | None = None, rows: bool = True) -> str:
    """One run directory with a run.json shaped like the runner's (the figures are the caller's) and, in
    load mode unless `rows` is False, raw rows whose 200 end-to-end latencies spread evenly from 0.6 to
    1.02 x `p95_ms` (so their p95 is about `p95_ms` and its interval's upper end about 1 % above it)."""
    args = {"ms": 50} if args is None and task == "sleep_ms" else (args or {})
    spec: dict[str, Any] = {
        "backend": backend, "broker": "redis", "serializer": "json", "processes": processes, "threads": 1,
        "prefetch": None, "acks_late": None, "routing": "shared", "long_threshold_ms": 100, "results": True,
        "mode": mode, "task": task, "args": args, "drain_timeout_s": 60, "options": options or {}}
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
        "task_kinds": [synthetic_runs.task_kind(task, args)],
        "summary": {"figures": figures,
                    "checks": {"all_finished": {"ok": ok, "detail": ""},
                               "littles_law": {"ok": True, "detail": ""}},
                    "verdict": status, "failed_checks": [] if ok else ["all_finished"]},
    }
    (root / run_id).mkdir(parents=True)
    (root / run_id / "run.json").write_text(json.dumps(record))
    if mode == "load" and rows:
        scheduled = 1_000_000_000 + np.arange(200, dtype="int64") * 25_000_000  # 200 in the 5 s window
        tasks, requests = synthetic_runs.raw_tables(run_id, scheduled, p95_ms * np.linspace(0.6, 1.02, 200),
                                                    task, args, service_ms)
        store.write_tasks_table(root / run_id, tasks)
        store.write_requests_table(root / run_id, requests)
    return run_id


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """celery and rq, sleep_ms 50 at 40/s on 1, 2 and 4 processes, and a rate sweep on 2 processes.

    Each task holds its slot 40 ms (so a slot can finish at most 25/s). One slot saturates at 40/s (its
    throughput is its capacity, 18/s: a slot time of 56 ms); two keep up in one run with a long p95; four
    keep up with a short one in three repeats.
    """
    root = tmp_path / "runs"
    for backend in ("celery", "rq"):
        write_run(root, backend, 1, 40, throughput=18.0, p95_ms=4000, service_ms=SERVICE_MS)
        write_run(root, backend, 2, 40, throughput=39.5, p95_ms=600, service_ms=SERVICE_MS)
        write_run(root, backend, 2, 20, throughput=20.0, p95_ms=90, service_ms=SERVICE_MS)
        for repeat, p95_ms in enumerate((120, 140, 130)):
            write_run(root, backend, 4, 40, throughput=40.0, p95_ms=p95_ms, service_ms=SERVICE_MS, repeat=repeat)
    # Runs that must not count: another task, a failed run, a mixed-kind scenario.
    write_run(root, "celery", 1, 40, throughput=40.0, p95_ms=5, task="noop", service_ms=0.1)
    write_run(root, "celery", 8, 40, throughput=40.0, p95_ms=10, status="failed")
    write_run(root, "rq", 8, 40, throughput=40.0, p95_ms=10, scenario="routing_mix")
    return root


def test_plan_recommends_the_fewest_measured_slots_that_meet_the_slo(runs_dir):
    tight = plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=200ms"))
    loose = plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=1s"))
    assert [b.backend for b in tight.backends] == ["celery", "rq"]
    assert tight.covered and loose.covered
    for backend in tight.backends:
        assert (backend.verdict, backend.measured_slots, backend.measured_shape) == ("measured", 4, "p4t1")
        assert backend.lower_bound_slots == 3  # 2 slots were measured to miss the SLO; 3 never measured
    for backend in loose.backends:
        # 2 slots met 1 s in its one run, at rho > 0.85: named, never recommended.
        assert backend.measured_slots == 4 and backend.lower_bound_slots == 2
        two = next(c for c in backend.configs if c.slots == 2)
        assert two.state == "too few repeats" and "p2t1 too few repeats" in backend.answer


def test_plan_shows_the_measured_cells_it_relied_on_with_the_model_beside_them(runs_dir):
    answer = plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=200ms"))
    celery = answer.backends[0]
    run_ids = {r for ids in celery.points["run_ids"] for r in ids}
    assert all(r.startswith("celery-") and "sleep_ms-ms50" in r for r in run_ids)
    assert all((runs_dir / r / "run.json").exists() for r in run_ids)
    assert not any("p8t1" in r for r in run_ids)  # failed and mixed-kind runs are not used
    meets = next(c for c in celery.configs if c.state == "meets")
    assert len(meets.evidence) == 3  # every repeat of the 4-slot cell
    four = celery.points[celery.points["slots"] == 4].iloc[0]
    assert four["e2e_p95_ms"] == max(120, 140, 130)  # the worst repeat
    assert four["model_p95_ms"] == pytest.approx(mmc_response_quantile(40, SERVICE_MS / 1e3, 4, 0.95) * 1e3)
    assert four["model_error"] == pytest.approx(four["model_p95_ms"] / four["e2e_p95_ms"] - 1)
    one = celery.points[celery.points["slots"] == 1].iloc[0]
    assert one["saturated"] and celery.per_slot_capacity_per_s == pytest.approx(18.0)
    assert celery.efficiency == pytest.approx(18.0 * SERVICE_MS / 1e3)
    assert celery.model_slots == min_servers(40, SERVICE_MS / 1e3, 0.2, 0.95)


def test_plan_refuses_a_rate_beyond_the_measured_ones_and_labels_its_extrapolation(runs_dir):
    answer = plan_capacity(runs_dir, 200, SLEEP_50, parse_slo("p95=1s"))
    assert not answer.covered
    for backend in answer.backends:
        assert backend.verdict == "not covered" and backend.measured_slots is None
        assert "beyond the largest measured rate (40/s)" in backend.reason
        assert backend.extrapolated_slots >= math.ceil(200 / 18.0)  # at least the measured capacity per slot
        assert "extrapolated" in backend.answer and "not measured" in backend.answer


def test_plan_says_so_when_the_results_hold_no_run_of_the_task(runs_dir):
    answer = plan_capacity(runs_dir, 40, parse_task("cpu_ms:20"), parse_slo("p95=1s"))
    assert not answer.covered
    assert [(b.backend, b.verdict) for b in answer.backends] == [("celery", "no runs"), ("rq", "no runs")]
    assert any("no run of cpu_ms(ms=20)" in w for w in answer.warnings)
    assert all(b.model_service_source.startswith("assumed") for b in answer.backends)


def test_the_covering_matrix_parses_and_measures_the_request(runs_dir, tmp_path):
    answer = plan_capacity(runs_dir, 200, SLEEP_50, parse_slo("p95=1s"))
    written = write_covering_matrix(answer, tmp_path / "cover.toml", results_dir=runs_dir)
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


def expanded(text: str) -> set[tuple[str, int, int, str]]:
    """(backend, processes, threads, options) of every cell the matrix parser makes of `text`."""
    return {(c.spec["backend"], c.spec["processes"], c.spec["threads"], json.dumps(c.spec.get("options", {})))
            for c in matrix.parse(text).cells}


def intended(answer) -> set[tuple[str, int, int, str]]:
    return {(e["spec"]["backend"], p, e["threads"], json.dumps(e["spec"].get("options", {})))
            for e in covering_cells(answer) for p in e["processes"]}


def test_a_covering_matrix_expands_to_exactly_the_intended_cells_with_the_runners_duration(runs_dir, tmp_path):
    # Analysis may not import the matrix parser or the runner, so this test is where a covering matrix is
    # checked against both: the cells it expands to, their count, and the runner's own duration estimate.
    requests = [(runs_dir, 200, "p95=1s"), (runs_dir, 40, "p95=50ms"), (tmp_path / "nothing", 100, "p99=500ms")]
    for results, rate, slo in requests:
        answer = plan_capacity(results, rate, SLEEP_50, parse_slo(slo))
        written = write_covering_matrix(answer, tmp_path / f"cover-{rate}.toml", results_dir=results)
        cells = matrix.parse(written.text).cells
        assert expanded(written.text) == intended(answer) != set()
        assert written.cells == len(cells)
        assert written.minutes == pytest.approx(sum(runner.cell_seconds(c) for c in cells) / 60)
        assert {c.spec["rate"] for c in cells} == {rate} and all(c.skip_reason is None for c in cells)


def test_a_covering_matrix_keeps_each_configurations_library_knobs_and_says_what_it_is_for(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "celery", 1, 40, throughput=18.0, p95_ms=4000, service_ms=SERVICE_MS,
              options={"without_gossip": True})
    write_run(root, "rq", 1, 40, throughput=18.0, p95_ms=4000, service_ms=SERVICE_MS)
    answer = plan_capacity(root, 200, SLEEP_50, parse_slo("p95=1s"))
    text = covering_matrix_text(answer)
    header = text.split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("# ") for line in header)
    assert header[0].startswith("# capacity-sleep_ms-ms50-r200-p95-1s: written by `queuebench plan`")
    assert "# 200 tasks/s of sleep_ms 50 with p95 under 1 s." in header
    assert any(line.startswith("# Configurations: celery") and "rq (one [[include]] each)" in line
               for line in header)
    cells = matrix.parse(text).cells
    assert {c.spec["options"]["without_gossip"] for c in cells if c.spec["backend"] == "celery"} == {True}
    assert expanded(text) == intended(answer)


def test_the_covering_matrix_is_refused_when_everything_is_covered(runs_dir):
    answer = plan_capacity(runs_dir, 40, SLEEP_50, parse_slo("p95=1s"))
    with pytest.raises(ValueError, match="covered"):
        covering_matrix_text(answer)


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
    assert "No recommendation" in uncovered.output and "extrapolat" in uncovered.output
    written = list((tmp_path / "results" / "plans").glob("*.toml"))
    assert len(written) == 1 and "queuebench run" in uncovered.output
    matrix.load(written[0])


def test_plan_command_refuses_a_bad_slo_or_task_with_exit_code_2(runs_dir):
    for args in (["--slo", "p95=fast", "--task", "noop"], ["--slo", "p95=1s", "--task", "nap"]):
        result = CliRunner().invoke(plan_command, ["--rate", "10", *args, str(runs_dir)])
        assert result.exit_code == 2
        assert "--slo" in result.output or "--task" in result.output


def test_plan_on_a_missing_results_directory_covers_the_three_libraries(tmp_path):
    answer = plan_capacity(tmp_path / "nothing", 100, SLEEP_50, parse_slo("p99=500ms"))
    assert [b.backend for b in answer.backends] == list(DEFAULT_BACKENDS)
    assert all(b.verdict == "no runs" and b.extrapolated_slots for b in answer.backends)
    loaded = matrix.parse(covering_matrix_text(answer))
    assert {c.spec["backend"] for c in loaded.cells} == set(DEFAULT_BACKENDS)


# --- capacity notes -----------------------------------------------------------------------------------


def test_capacity_notes_mention_each_backend_its_knee_and_a_planning_sentence(runs_dir):
    notes = capacity_notes(runs_dir)
    assert "sleep_ms(ms=50)" in notes
    for backend in ("celery", "rq"):
        assert f"- {backend}:" in notes
        assert f"on {backend} you need " in notes
    assert "(measured" in notes and "(M/M/c)" in notes
    assert "knee at 40/s" in notes  # the 2-slot sweep: p95 grew more than 3x from 20/s to 40/s
    assert "noop()" in notes  # another kind with load runs gets its own notes
    assert "Data insufficient" in notes  # noop was measured at one rate only


def test_capacity_notes_take_the_results_the_report_passes(runs_dir):
    assert capacity_notes(load_results(runs_dir)) == capacity_notes(runs_dir)


def test_capacity_notes_say_when_there_is_nothing_to_plan_from(tmp_path):
    for source in (pd.DataFrame(), tmp_path):
        assert "no capacity can be stated" in capacity_notes(source)
    write_run(tmp_path / "runs", "rq", 2, 40, throughput=40.0, p95_ms=50, scenario="payload", task="echo",
              args={"size": 100})
    assert "no capacity can be stated" in capacity_notes(tmp_path / "runs")
