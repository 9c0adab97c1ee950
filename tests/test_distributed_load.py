"""Distributed load: a headless Locust master and its workers, every request still accounted for.

The spec key `load_workers` is checked before anything starts and leaves run ids alone at its default; the
shared schedule (scenarios/share.py, loaded as the file Locust runs) splits one constant stream between
processes; the master's roll call decides the generator check. The real cases run a master and two
workers on loopback through the runner, on a private redis-server, gunicorn and the baseline worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import scenario_files

from backends import ledger
from benchmarks import matrix, measure, runner, store
from benchmarks.matrix import MatrixError

ROOT = Path(__file__).resolve().parent.parent
CELL = """
backend = "baseline"
processes = 2
scenario = "throughput"
task = "noop"
rate = 30
warmup_s = 1
duration_s = 2
drain_timeout_s = 30
"""


def _share_module():
    return scenario_files.load("share")


# --- the key ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "65", '"2"', "1.5", "true"])
def test_a_load_workers_value_outside_the_declaration_is_refused_naming_the_key_and_what_is_allowed(value):
    with pytest.raises(MatrixError, match=r"load_workers = .* is not allowed: must be .*1.*64"):
        matrix.parse(CELL + f"load_workers = {value}\n")


def test_load_workers_at_its_default_leaves_cells_and_run_ids_as_they_were():
    without = matrix.parse(CELL)
    with_default = matrix.parse(CELL + "load_workers = 1\n")
    assert [c.run_id for c in with_default.cells] == [c.run_id for c in without.cells]
    assert "load_workers" not in with_default.cells[0].spec


def test_two_load_workers_make_another_cell_and_drain_cells_drop_the_key():
    (one,) = matrix.parse(CELL).cells
    (two,) = matrix.parse(CELL + "load_workers = 2\n").cells
    assert two.spec["load_workers"] == 2 and two.run_id != one.run_id
    (drain,) = matrix.parse(CELL + 'load_workers = 2\nmode = "drain"\ntasks = 10\n').cells
    assert "load_workers" not in drain.spec


def test_the_load_workers_flag_sets_every_load_cell_and_is_checked_like_the_file():
    grid = matrix.parse(CELL + '[[include]]\nmode = "drain"\ntasks = 10\n', overrides={"load_workers": 3})
    assert sorted(c.spec.get("load_workers", 1) for c in grid.cells) == [1, 3]  # the drain cell has none
    with pytest.raises(MatrixError, match="load_workers"):
        matrix.parse(CELL, overrides={"load_workers": 0})


def test_only_finds_cells_by_their_load_workers_the_default_included():
    grid = matrix.parse(CELL + "load_workers = [1, 2]\n")
    assert [c.spec.get("load_workers", 1) for c in matrix.apply_only(grid, ["load_workers=1"]).cells] == [1]
    grid = matrix.parse(CELL + "load_workers = [1, 2]\n")
    assert [c.spec["load_workers"] for c in matrix.apply_only(grid, ["load_workers=2"]).cells] == [2]


def test_queuebench_run_refuses_a_bad_load_workers_flag_before_starting_anything(tmp_path):
    (tmp_path / "m.toml").write_text(CELL)
    result = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(tmp_path / "m.toml"), "--out",
                             str(tmp_path / "runs"), "--load-workers", "0", "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--load-workers" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_one_load_worker_is_one_locust_process_and_more_are_a_master_on_loopback_with_a_bounded_wait(tmp_path):
    (one,) = matrix.parse(CELL).cells
    single = runner.locust_argv(one.spec, "http://127.0.0.1:1", tmp_path)
    assert "--master" not in single and single[single.index("-u") + 1] == "1"
    (two,) = matrix.parse(CELL + "load_workers = 2\n").cells
    master = runner.locust_argv(two.spec, "http://127.0.0.1:1", tmp_path, master=("127.0.0.1", 5599))
    assert master[master.index("--master-bind-host") + 1] == "127.0.0.1"
    assert master[master.index("--expect-workers") + 1] == "2" and master[master.index("-u") + 1] == "2"
    assert float(master[master.index("--expect-workers-max-wait") + 1]) > 0
    worker = runner.locust_worker_argv(two.spec, ("127.0.0.1", 5599))
    assert "--worker" in worker and worker[worker.index("--master-port") + 1] == "5599"
    assert not any(a.startswith(("--csv", "--html", "--json")) for a in worker), "only the master writes Locust's files"


# --- the shared schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "count"), [(30.0, 2), (12.5, 3), (1000.0, 4), (1 / 3, 2)])
def test_processes_on_a_shared_grid_take_every_slot_once_and_their_merged_arrivals_are_evenly_spaced(rate, count):
    share = _share_module()
    start_ns = 1_764_000_000_123_456_789
    starts = [start_ns + index * 7_000_000 for index in range(count)]  # each starts at its own moment
    end_ns = start_ns + int(60 * 1e9 / rate)  # about 60 slots of the merged stream
    merged = []
    for index, started in enumerate(starts):
        slot = share.first_slot(started, rate, index, count)
        assert slot % count == index % count and share.slot_ns(slot, rate) >= started - 1
        while share.slot_ns(slot, rate) < end_ns:
            merged.append(slot)
            slot += count
    assert len(set(merged)) == len(merged), "no slot is sent twice"
    # From the moment the last process started, every slot is sent by someone.
    steady = sorted(s for s in merged if share.slot_ns(s, rate) >= max(starts))
    assert steady == list(range(steady[0], steady[0] + len(steady))), "no slot is skipped"
    times = [share.slot_ns(slot, rate) for slot in steady]
    gaps = {later - earlier for earlier, later in zip(times, times[1:], strict=False)}
    assert max(gaps) - min(gaps) <= 1 and abs(min(gaps) - 1e9 / rate) <= 1


# --- the roll call decides the generator check -----------------------------------------------------------


def _roll_call(ended: list[int], connected: list[int], end_requested: bool = True) -> dict:
    return {"expected": 2, "max_wait_s": 30, "end_requested_ns": 1 if end_requested else None,
            "workers": {f"host_{i}": {"index": i, "ended": i in ended, "rows": 10} for i in connected}}


def test_every_worker_reporting_the_end_of_its_load_passes_and_a_silent_one_is_named():
    assert measure.load_workers_reported(_roll_call([0, 1], [0, 1]), 2)["ok"]
    silent = measure.load_workers_reported(_roll_call([0], [0, 1]), 2)
    assert not silent["ok"] and "did not report" in silent["detail"] and "index 1" in silent["detail"]
    never = measure.load_workers_reported(_roll_call([], [0], end_requested=False), 2)
    assert not never["ok"] and "never connected: index 1" in never["detail"]
    assert not measure.load_workers_reported(None, 2)["ok"]


def test_a_missing_worker_fails_the_generator_check_and_nothing_else(tmp_path):
    # Two requests, both answered and run: only the roll call is wrong.
    t0, ms = 1_700_000_000_000_000_000, 1_000_000
    rows = []
    for i in range(2):
        at = t0 + i * 10 * ms
        rows += [{"ev": "sent", "id": f"t{i}", "task": "noop", "queue": "default", "scheduled_ns": at,
                  "sent_ns": at + ms, "enqueued_ns": at + 2 * ms, "request_id": f"r{i}", "pid": 1, "host": "h"},
                 {"ev": "started", "id": f"t{i}", "task": "noop", "attempt": 1, "t_ns": at + 3 * ms, "pid": 2,
                  "host": "h"},
                 {"ev": "finished", "id": f"t{i}", "task": "noop", "attempt": 1, "t_ns": at + 4 * ms,
                  "outcome": "ok", "pid": 2, "host": "h"}]
    (tmp_path / "h-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = ledger.executions(tmp_path)
    requests = pd.DataFrame({"scheduled_ns": [t0, t0 + 10 * ms], "sent_ns": [t0 + ms, t0 + 11 * ms],
                             "done_ns": [t0 + 3 * ms, t0 + 13 * ms], "status": [202, 202],
                             "task": pd.array(["noop", "noop"], dtype="string"),
                             "task_id": pd.array(["t0", "t1"], dtype="string"),
                             "request_id": pd.array(["r0", "r1"], dtype="string")})
    window = measure.load_window(tasks, requests, 0, 0.02)
    kwargs = dict(slots=1, offered_rate_per_s=100.0, locust_post_counts=(2, 0), queue_leftovers={"default": 0})
    whole = measure.summarise(tasks, requests, window, load_workers=measure.load_workers_reported(
        _roll_call([0, 1], [0, 1]), 2), **kwargs)
    assert whole["verdict"] == "ok", whole["checks"]
    missing = measure.summarise(tasks, requests, window, load_workers=measure.load_workers_reported(
        _roll_call([0], [0, 1]), 2), **kwargs)
    assert missing["verdict"] == "generator-limited" and missing["failed_checks"] == []
    assert "index 1" in missing["checks"]["generator_kept_up"]["detail"]


# --- real runs: a master and two workers on loopback -----------------------------------------------------


def left_running(tmp_path: Path) -> list[str]:
    """Processes still running that this test's cell started (its ledger directory is in their
    environment), Locust's among them."""
    left = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(ledger.LEDGER_ENV, "").startswith(str(tmp_path)):
                left.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return left


@pytest.mark.service
def test_a_cell_with_two_load_workers_ends_ok_with_the_masters_count_equal_to_the_merged_rows_and_the_ledger(
        need_redis, tmp_path):
    path = tmp_path / "two.toml"
    path.write_text('name = "two"\n' + CELL + "load_workers = 2\n")
    out = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(path), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    (record,) = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert record["status"] == "ok", (record.get("detail"), result.stdout + result.stderr)
    assert result.returncode == 0
    run_dir = out / record["run_id"]
    checks, figures = record["summary"]["checks"], record["summary"]["figures"]
    for name in ("locust_count_matches", "requests_match_ledger", "generator_kept_up", "all_finished"):
        assert checks[name]["ok"], (name, checks[name])

    # Each worker wrote its own raw log (the master sends nothing); merged, they are Locust's count.
    logs = sorted((run_dir / store.REQUEST_LOGS_DIR).glob("*.csv"))
    assert len(logs) == 2
    per_worker = [pd.read_csv(p) for p in logs]
    merged = store.read_requests_table(run_dir)
    assert len(merged) == sum(len(f) for f in per_worker)
    posted, failed = store.locust_post_counts(run_dir)
    answered = merged[merged["status"] != measure.UNANSWERED_STATUS]
    assert posted == len(answered) and failed == 0
    sent = ledger.executions(run_dir / "ledger").drop_duplicates("id")
    assert (merged["status"] == 202).sum() == len(sent.dropna(subset=["sent_ns"])) == figures["sent"]

    # The roll call: both workers connected and reported the end of their load, with the rows they wrote.
    roll = store.read_locust_workers(run_dir)
    assert roll["expected"] == 2 and sorted(w["index"] for w in roll["workers"].values()) == [0, 1]
    assert all(w["ended"] for w in roll["workers"].values())
    assert sorted(w["rows"] for w in roll["workers"].values()) == sorted(len(f) for f in per_worker)
    assert figures["load_workers"]["ok"] and figures["load_workers"]["reported"] == 2
    assert record["generator"]["load_workers"] == 2 and record["generator"]["locust_processes"] == 3
    assert sorted(p["name"] for p in record["processes"] if p["name"].startswith("locust")) == [
        "locust", "locust-worker-0", "locust-worker-1"]

    # One constant stream split in two: inside the window the merged arrivals are evenly spaced at the rate.
    start, end = figures["window_start_ns"], figures["window_end_ns"]
    inside = merged[(merged["scheduled_ns"] >= start) & (merged["scheduled_ns"] < end)]["scheduled_ns"]
    gaps = inside.sort_values().diff().dropna()
    assert abs(gaps.median() - 1e9 / record["spec"]["rate"]) <= 1 and gaps.max() - gaps.min() <= 1
    assert left_running(tmp_path) == []


@pytest.mark.service
def test_a_worker_that_never_connects_ends_the_bounded_wait_and_fails_the_generator_check_leaving_nothing(
        need_redis, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "LOCUST_WORKERS_MAX_WAIT_S", 3)
    start_workers = runner.CellRun._start_load_workers
    # The master expects two workers; only one is started.
    monkeypatch.setattr(runner.CellRun, "_start_load_workers",
                        lambda self, spec, master: start_workers(self, {**spec, "load_workers": 1}, master))
    grid = matrix.parse(CELL + "load_workers = 2\n", name="missing")
    (result,) = runner.run_matrix(grid, tmp_path / "runs", log=lambda _: None)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "error", record.get("detail")
    assert "generator check failed" in record["detail"] and "never connected: index 1" in record["detail"]
    assert record["locust_exit_code"] != 0
    roll = store.read_locust_workers(result.run_dir)
    assert roll["expected"] == 2 and [w["index"] for w in roll["workers"].values()] == [0]
    assert left_running(tmp_path) == []


@pytest.mark.service
def test_a_worker_killed_during_the_load_is_named_by_the_generator_check_and_nothing_is_left(
        need_redis, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "GENERATOR_STOP_WAIT_S", 2.0)  # the master waits this + 3 s for end reports
    start_workers = runner.CellRun._start_load_workers
    killed: list[int] = []

    def start_and_kill_one(self, spec, master):
        procs = start_workers(self, spec, master)

        def kill_once_both_send() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                roll = store.read_locust_workers(self.run_dir) or {}
                if sum(1 for w in roll.get("workers", {}).values() if w.get("pid")) == 2:
                    time.sleep(0.5)
                    killed.append(procs[1].pid)
                    os.kill(procs[1].pid, signal.SIGKILL)
                    return
                time.sleep(0.05)

        threading.Thread(target=kill_once_both_send, daemon=True).start()
        return procs

    monkeypatch.setattr(runner.CellRun, "_start_load_workers", start_and_kill_one)
    # A longer window than CELL's: on a busy machine both workers may say hello late in a 2 s one.
    grid = matrix.parse(CELL.replace("duration_s = 2", "duration_s = 5") + "load_workers = 2\n", name="killed")
    (result,) = runner.run_matrix(grid, tmp_path / "runs", log=lambda _: None)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert killed, (f"the worker was never killed: {record['status']}: {record.get('detail')}; roll call "
                    f"{store.read_locust_workers(result.run_dir)}")
    # Requests it sent whose raw rows were still buffered are lost with it (requests_match_ledger then
    # fails too); either way the generator check names it.
    assert record["status"] in ("generator-limited", "failed"), record.get("detail")
    check = record["summary"]["checks"]["generator_kept_up"]
    assert not check["ok"] and f"pid {killed[0]}" in check["detail"] and f"pid {killed[0]}" in record["detail"]
    assert not record["summary"]["figures"]["load_workers"]["ok"]
    assert left_running(tmp_path) == []
