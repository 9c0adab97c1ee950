"""`queuebench tune`: the sweep it plans, how stored runs are judged and ranked, and one short real tune.

The planner and the judgement run on synthetic stored runs (tests/synthetic_runs.py): rows drawn so that
one knob has a large effect and another none, and no test asserts a number drawn, only what the outputs
must say about it (which knob ranks first, what is significant, what is flagged). The real tune is tiny:
RQ, one knob, a drain of a few no-op tasks, repeats too few for the winner rule, which must say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic_runs as synthetic

import backends
from benchmarks import matrix as matrix_mod
from benchmarks import tune
from benchmarks.analysis import tuning
from benchmarks.analysis.load import load_results
from benchmarks.analysis.report import write_report

ROOT = Path(__file__).resolve().parent.parent


def _settings(spec: dict) -> dict:
    return tuning.settings_of({**spec, "options": json.dumps(spec["options"])})


# --- the planner ------------------------------------------------------------------------------------------


def test_the_knob_round_varies_one_knob_at_a_time_over_the_declared_candidates_from_the_defaults():
    knobs = tune.check_knobs("dramatiq", [])
    planned = tune.knob_matrix("dramatiq", ["drain", "routing"], knobs, repeats=3)
    declared = tune.declared("dramatiq")
    for workload_mode in ("drain", "load"):
        specs = {json.dumps(c.spec, sort_keys=True): c.spec for c in planned.cells if c.spec["mode"] == workload_mode}
        seen = [_settings(s) for s in specs.values()]
        assert {} in seen, "the library's defaults are measured beside the knob values"
        assert all(len(s) <= 1 for s in seen), "one knob at a time"
        for knob in knobs:
            derived = backends.backend_class("dramatiq").derived_defaults.get(knob)
            used_anyway = derived(1) if derived else declared[knob].default  # the defaults' cell runs it
            wanted = {v for v in declared[knob].candidates if v not in (declared[knob].default, used_anyway)}
            if knob == "threads":
                wanted = {v for v in wanted if 2 % v == 0}
            assert {s[knob] for s in seen if knob in s} == wanted
        assert {s["processes"] * s["threads"] for s in specs.values()} == {tune.DEFAULT_SLOTS}, "equal slots"


def test_the_knob_round_runs_every_configuration_once_before_any_runs_again():
    planned = tune.knob_matrix("rq", ["drain"], ["worker_class"], repeats=3)
    repeats = [c.repeat for c in planned.cells]
    assert repeats == sorted(repeats) and set(repeats) == {0, 1, 2}
    assert all(not c.skip_reason for c in planned.cells)


def test_spec_keys_a_library_declares_as_knobs_are_set_as_spec_keys_not_options():
    planned = tune.knob_matrix("celery", ["drain"], ["prefetch", "acks_late", "without_mingle"], repeats=1)
    prefetches = {c.spec["prefetch"] for c in planned.cells}
    assert prefetches - {None}, "prefetch is varied as the spec key"
    assert all("prefetch" not in c.spec["options"] and "acks_late" not in c.spec["options"] for c in planned.cells)
    assert any(c.spec["options"].get("without_mingle") for c in planned.cells)


def test_the_tuned_round_measures_the_tuned_configuration_against_the_defaults_interleaved_with_its_own_run_ids():
    first = tune.knob_matrix("dramatiq", ["drain"], ["queue_prefetch"], repeats=3)
    second = tune.tuned_matrix("dramatiq", {"drain": {"queue_prefetch": 64, "threads": 2}, "routing": {}}, repeats=3)
    assert second is not None and second.name.endswith(tuning.TUNED_SUFFIX)
    assert {c.run_id for c in second.cells}.isdisjoint({c.run_id for c in first.cells})
    configurations = [_settings(c.spec) for c in second.cells]
    assert configurations[:2] in ([{}, {"queue_prefetch": 64, "threads": 2}], [{"queue_prefetch": 64, "threads": 2}, {}])
    assert all(c.spec["processes"] * c.spec["threads"] == tune.DEFAULT_SLOTS for c in second.cells)
    assert tune.tuned_matrix("dramatiq", {"drain": {}}) is None, "nothing to combine, nothing to run"


def test_a_value_the_library_would_use_anyway_is_not_tried_again_as_a_candidate():
    assert "prefork" not in tune.values_to_try("celery", "pool", tune.DEFAULT_SLOTS)  # Celery's pool at 1 thread
    assert 2 not in tune.values_to_try("dramatiq", "queue_prefetch", tune.DEFAULT_SLOTS)  # Dramatiq's 2 x threads
    planned = tune.knob_matrix("celery", ["drain"], ["pool"], repeats=1)
    assert len({c.run_id for c in planned.cells}) == len(planned.cells)
    assert not any(c.spec["options"].get("pool") == "prefork" for c in planned.cells)


def test_an_undeclared_knob_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: .*queue_prefetch"):
        tune.check_knobs("dramatiq", ["pool"])


def test_every_library_declares_default_tune_knobs_it_can_plan():
    for name in backends.libraries():
        knobs = tune.check_knobs(name, [])
        planned = tune.knob_matrix(name, ["drain", "routing"], knobs, repeats=1)
        assert len({c.run_id for c in planned.cells}) == len(planned.cells)


def test_a_matrix_built_in_code_is_checked_like_a_file():
    with pytest.raises(matrix_mod.MatrixError, match="queue_prefetch"):
        matrix_mod.from_tables({"backend": "dramatiq", "dramatiq": {"queue_prefetch": 0}})


# --- judging and ranking stored runs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_results(tmp_path_factory):
    """Three interleaved repeats: queue_prefetch 64 multiplies drain throughput and short-task p95 on the
    routing mix; prefetch 1 is slower to drain but shortens p95; threads 2 changes nothing."""
    root = tmp_path_factory.mktemp("tune")
    for repeat in range(3):
        synthetic.write_tune_drain(root, throughput_per_s=500, repeat=repeat)
        synthetic.write_tune_drain(root, settings={"queue_prefetch": 64}, throughput_per_s=4800, repeat=repeat)
        synthetic.write_tune_drain(root, settings={"queue_prefetch": 1}, throughput_per_s=300, repeat=repeat)
        synthetic.write_tune_drain(root, settings={"threads": 2}, throughput_per_s=500, repeat=repeat)
        synthetic.write_tune_routing(root, short_p95_ms=60, repeat=repeat)
        synthetic.write_tune_routing(root, settings={"queue_prefetch": 64}, short_p95_ms=900, repeat=repeat)
        synthetic.write_tune_routing(root, settings={"queue_prefetch": 1}, short_p95_ms=30, repeat=repeat)
        synthetic.write_tune_routing(root, settings={"threads": 2}, short_p95_ms=60, repeat=repeat)
    return root


def test_the_knob_with_the_large_effect_ranks_first_and_is_significant(tuned_results):
    summary = tuning.summary(load_results(tuned_results), "dramatiq")
    drain = next(t for t in summary["tuned"] if t["workload"] == "drain")
    assert drain["ranking"][0] == "queue_prefetch"
    records = [r for r in summary["knobs"] if r["workload"] == "drain"]
    prefetch_64 = next(r for r in records if r["knob"] == "queue_prefetch" and r["value"] == 64)
    assert prefetch_64["significant"] and prefetch_64["ratio_to_default"] > 1
    assert prefetch_64["ci_low"] <= prefetch_64["ratio_to_default"] <= prefetch_64["ci_high"]
    threads = next(r for r in records if r["knob"] == "threads")
    assert not threads["significant"]
    for record in records:
        assert {"figure", "value", "default_value", "ratio_to_default", "ci_low", "ci_high", "n",
                "significant"} <= set(record)


def test_tuned_takes_each_knobs_best_significant_value_per_workload(tuned_results):
    summary = tuning.summary(load_results(tuned_results), "dramatiq")
    tuned = {t["workload"]: t["tuned"] for t in summary["tuned"]}
    assert tuned == {"drain": {"queue_prefetch": 64}, "routing": {"queue_prefetch": 1}}


def test_a_knob_whose_best_value_for_throughput_worsens_short_task_p95_is_flagged(tuned_results):
    flags = tuning.cross_flags(tuning.groups(load_results(tuned_results)))
    assert any(f["knob"] == "queue_prefetch" and f["value"] == 64 and f["improves"] == "drain"
               and f["worsens"] == "routing" for f in flags)
    assert not any(f["knob"] == "threads" for f in flags)


def test_tuned_measured_in_its_own_round_is_judged_from_that_round(tuned_results, tmp_path):
    root = tmp_path / "runs"
    for run in tuned_results.iterdir():
        if run.is_dir():
            (root / run.name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(run, root / run.name)
    name = "tune-dramatiq" + tuning.TUNED_SUFFIX
    for repeat in range(100, 103):
        synthetic.write_tune_drain(root, throughput_per_s=500, repeat=repeat, matrix_name=name)
        synthetic.write_tune_drain(root, settings={"queue_prefetch": 64}, throughput_per_s=4800, repeat=repeat,
                                   matrix_name=name)
    drain = next(g for g in tuning.groups(load_results(root), "dramatiq") if g.key["workload"] == "drain")
    assert drain.tuned_phase.startswith("tuned round")
    assert drain.tuned_diff is not None and drain.tuned_diff.outcome == "better"
    assert all(run_id.endswith(("rep100", "rep101", "rep102")) for run_id in drain.tuned_run_ids)


def test_a_combination_that_does_worse_than_the_best_single_knob_is_said_so(tmp_path):
    for repeat in range(3):
        synthetic.write_tune_drain(tmp_path, throughput_per_s=500, repeat=repeat)
        synthetic.write_tune_drain(tmp_path, settings={"queue_prefetch": 64}, throughput_per_s=4800, repeat=repeat)
        synthetic.write_tune_drain(tmp_path, settings={"threads": 2}, throughput_per_s=700, repeat=repeat)
        synthetic.write_tune_drain(tmp_path, settings={"queue_prefetch": 64, "threads": 2}, throughput_per_s=1500,
                                   repeat=repeat)
    group = next(g for g in tuning.groups(load_results(tmp_path)) if g.key["workload"] == "drain")
    assert group.tuned == {"queue_prefetch": 64, "threads": 2}
    assert group.combination_worse and group.combination_worse_clearly
    assert "does worse than the best single knob" in tuning.tuned_sentence(group)


def test_the_report_has_a_which_knobs_matter_section_with_a_tornado_per_workload(tuned_results, tmp_path):
    written = write_report(load_results(tuned_results), tmp_path / "report")
    text = written.markdown.read_text()
    assert "## Which knobs matter" in text and "### Libraries at their defaults and tuned" in text
    assert (tmp_path / "report" / "figures" / "tornado-dramatiq-drain-2.png").exists()
    assert (tmp_path / "report" / "figures" / "tornado-dramatiq-routing-2.png").exists()
    assert "queue_prefetch=64: best for drain" in text


def test_fewer_repeats_than_the_rule_needs_are_never_called_significant(tmp_path):
    for repeat in range(2):
        synthetic.write_tune_drain(tmp_path, throughput_per_s=500, repeat=repeat)
        synthetic.write_tune_drain(tmp_path, settings={"queue_prefetch": 64}, throughput_per_s=4800, repeat=repeat)
    summary = tuning.summary(load_results(tmp_path))
    assert all(not r["significant"] and r["outcome"] == "too few repeats" for r in summary["knobs"])
    assert all(t["tuned"] == {} for t in summary["tuned"])


# --- one real tune ---------------------------------------------------------------------------------------


def test_a_short_real_tune_stores_its_runs_and_writes_tune_json(need_redis, tmp_path):
    out = tmp_path / "tune"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "tune", "--backend", "rq", "--workload", "drain",
                           "--knobs", "worker_class", "--repeats", "1", "--tasks", "30", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / tune.TUNE_JSON).read_text())
    records = summary["knobs"]
    declared = backends.backend_class("rq").knobs["worker_class"]
    assert {r["value"] for r in records} == set(declared.candidates) - {declared.default}
    assert all(r["outcome"] == "too few repeats" and not r["significant"] and r["n"] == 1 for r in records)
    assert summary["tuned"][0]["tuned"] == {}
    results = load_results(out)
    assert len(results.usable) == len(declared.candidates), "every value is a stored run report and compare read"
    assert "too few repeats" in done.stdout
