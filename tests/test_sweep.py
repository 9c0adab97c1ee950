"""A sweep end to end: drains that wait while they progress, one private Redis shared by every cell and
emptied between them, sweep.json, and a user's Redis that is never emptied.

Real brokers, workers and gunicorn; no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
import redis

from backends import ledger
from benchmarks import brokers, matrix, runner
from benchmarks.procs import Supervisor
from benchmarks.stack import Stack, StackConfig

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.service


def queuebench(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)


def records(out: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in (json.loads(p.read_text()) for p in out.glob("*/run.json"))}


class Progress:
    """The calls `run_matrix` makes on a progress display, doing nothing unless told to."""

    def __init__(self, on_draining=None) -> None:
        self.on_draining = on_draining
        self.drain_reports: list[tuple[int, int, float]] = []

    def start_sweep(self, todo, already_done) -> None: ...
    def start_cell(self, cell) -> None: ...
    def end_cell(self, cell, result) -> None: ...
    def note(self, text: str) -> None: ...

    def draining(self, finished: int, outstanding: int, waited_s: float) -> None:
        self.drain_reports.append((finished, outstanding, waited_s))
        if self.on_draining is not None:
            self.on_draining()


# --- drains ----------------------------------------------------------------------------------------------

SLOW = """
name = "slow"
backend = "baseline"
processes = 1
task = "sleep_ms"
args = {ms = 300}
drain_stall_s = 2
drain_timeout_s = 300
mode = "drain"
tasks = 12

[[include]]          # 8 tasks/s offered for about 4 s to one 300 ms slot: a backlog of 15 or more
mode = "load"
scenario = "latency"
rate = 8
warmup_s = 0
duration_s = 2
"""


def test_a_drain_that_keeps_finishing_tasks_past_its_stall_period_ends_all_finished_in_both_modes(need_redis,
                                                                                                 tmp_path):
    (tmp_path / "slow.toml").write_text(SLOW)
    out = tmp_path / "runs"
    result = queuebench("run", str(tmp_path / "slow.toml"), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    runs = records(out)
    assert sorted(r["spec"]["mode"] for r in runs.values()) == ["drain", "load"]
    for record in runs.values():
        # generator-limited: Locust fell behind its 8/s schedule, which depends on how busy the machine is,
        # not on the drain; every task is still accounted for.
        assert record["status"] in ("ok", "generator-limited"), (record["run_id"], record["detail"])
        assert record["summary"]["checks"]["all_finished"]["ok"]
        assert record["drain_ended_by"] == "all-finished"
        assert record["drain_outstanding"] == 0
        # 12 (drain) or 15+ (load backlog) tasks of 300 ms on one slot take longer than the 2 s stall period.
        assert record["drain_s"] > record["spec"]["drain_stall_s"]


def _kill_drain_workers() -> None:
    for child in psutil.Process().children(recursive=True):
        try:
            if "backends.baseline_worker" in " ".join(child.cmdline()):
                os.killpg(child.pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass


def test_a_drain_whose_workers_are_gone_ends_stalled_and_records_it(need_redis, tmp_path):
    # A stall period and a ceiling far longer than the test: only the workers being gone can end it.
    grid = matrix.parse('backend = "baseline"\nprocesses = 1\nmode = "drain"\ntask = "sleep_ms"\n'
                        'args = {ms = 200}\ntasks = 20\ndrain_stall_s = 600\ndrain_timeout_s = 600\n', name="gone")
    progress = Progress(on_draining=_kill_drain_workers)
    results = runner.run_matrix(grid, tmp_path / "runs", progress=progress)
    assert [r.status for r in results] == ["error"]
    record = json.loads((results[0].run_dir / "run.json").read_text())
    assert record["drain_ended_by"] == "stalled"
    assert record["drain_workers_gone"] is True
    assert record["drain_outstanding"] > 0
    assert "stalled" in record["detail"] and "exited" in record["detail"], record["detail"]
    assert progress.drain_reports, "the progress display heard how the drain went"


# --- one private Redis for the whole sweep ---------------------------------------------------------------

# Cell A stops at its 3 s ceiling (long enough for its first tasks to finish on a loaded machine, so it
# has a window) with most of its 200 tasks (10 s of work at 1 slot) still queued, results kept; cell B runs
# the same configuration (same queue names, same Redis) with 20 tasks. B must see none of A's.
SHARED = """
name = "shared"
backend = "rq"
processes = 1
mode = "drain"
task = "sleep_ms"
args = {ms = 50}
results = true
drain_stall_s = 30
tasks = 200
drain_timeout_s = 3

[[include]]
tasks = 20
drain_timeout_s = 300
"""


@pytest.fixture(scope="module")
def shared_sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("shared")
    (work / "shared.toml").write_text(SHARED)
    out = work / "runs"
    result = queuebench("run", str(work / "shared.toml"), "--out", str(out))
    by_tasks = {r["spec"]["tasks"]: r for r in records(out).values()}
    assert sorted(by_tasks) == [20, 200], result.stdout + result.stderr
    return result, out, by_tasks[200], by_tasks[20]


def test_a_sweep_of_two_cells_sharing_one_private_redis_keeps_each_cells_messages_results_and_ledger_apart(
        need_redis, shared_sweep):
    _, out, a, b = shared_sweep
    assert a["drain_ended_by"] == "ceiling" and a["drain_outstanding"] > 0, "A left tasks queued"
    assert b["status"] == "ok", b["detail"]
    broker_a, broker_b = a["brokers"]["broker"], b["brokers"]["broker"]
    assert broker_a["url"] == broker_b["url"], "one Redis served both cells"
    assert broker_b["shared"]["cells_before"] >= 1 and not broker_b["shared"]["fresh_start"]
    assert broker_b["shared"]["keys_flushed"] > 0, "A's queued jobs and results were there, and were flushed"
    ids_a = set(pd.read_parquet(out / a["run_id"] / "tasks.parquet")["id"])
    ids_b = set(pd.read_parquet(out / b["run_id"] / "tasks.parquet")["id"])
    assert len(ids_b) == 20 and not ids_a & ids_b
    rows_b = {r["id"] for r in ledger.iter_rows(out / b["run_id"] / "ledger")}
    assert not rows_b & ids_a, "no row of cell A in cell B's ledger"
    for check in ("all_finished", "no_duplicates", "nothing_unsent_ran", "no_leftovers"):
        assert b["summary"]["checks"][check]["ok"], check


def test_a_sweep_writes_sweep_json_with_a_measured_fraction_between_0_and_1_and_prints_it(need_redis,
                                                                                         shared_sweep):
    result, out, a, b = shared_sweep
    sweep = json.loads((out / "sweep.json").read_text())
    assert 0 < sweep["measured_fraction"] < 1
    assert sweep["cells_run"] == 2 and {c["run_id"] for c in sweep["cells"]} == {a["run_id"], b["run_id"]}
    assert sweep["window_s"] == pytest.approx(sum(c["window_s"] for c in sweep["cells"]), abs=0.01)
    assert sweep["reused"]["redis_cells"] == 2
    for record in (a, b):
        assert record["phases_s"]["window"] > 0 and record["phases_s"]["total"] >= record["phases_s"]["window"]
    assert f"measured {sweep['measured_fraction']:.0%} of the sweep's wall time" in result.stderr.replace("\n", " ")


def test_the_sweeps_private_redis_is_stopped_when_the_sweep_ends(need_redis, shared_sweep):
    _, _, a, _ = shared_sweep
    url = a["brokers"]["broker"]["url"]
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_emptying_the_sweeps_redis_removes_every_key_of_every_database_and_every_other_client(need_redis,
                                                                                             tmp_path):
    shared = brokers.SharedRedis(tmp_path)
    try:
        handle, proc = shared.acquire()
        assert handle.private and handle.shared["fresh_start"] and proc.alive()
        other = redis.Redis.from_url(handle.url)
        other.set("left-by-cell-a", "1")
        redis.Redis.from_url(handle.url.replace("/0", "/3")).rpush("a-queue", "message")
        other.script_load("return 1")
        again, _ = shared.acquire()
        assert again.url == handle.url and again.shared["cells_before"] == 1
        assert again.shared["keys_flushed"] == 2 and again.shared["clients_disconnected"] >= 1
        fresh = redis.Redis.from_url(handle.url)
        assert fresh.info("keyspace") == {}
        assert fresh.script_exists(hashlib.sha1(b"return 1").hexdigest()) == [False]
    finally:
        shared.close()


# --- a user's Redis -------------------------------------------------------------------------------------


@pytest.fixture
def users_redis(tmp_path):
    """A redis-server standing in for the user's own, with data of theirs in database 1."""
    supervisor = Supervisor()
    handle = brokers.start_private_redis(supervisor, tmp_path / "users")
    client = redis.Redis.from_url(handle.url.replace("/0", "/1"))
    client.set("sentinel", "the user's data")
    try:
        yield handle.url.rsplit("/", 1)[0]
    finally:
        supervisor.stop_all()


def test_a_borrowed_redis_is_never_flushed_by_a_sweep(need_redis, tmp_path, users_redis):
    # The floor, because its purge leaves the database empty for the next cell (RQ's and Celery's leave
    # keys of their own, so a second cell on the same database would be refused as dirty).
    grid = matrix.parse('backend = "baseline"\nprocesses = 1\nmode = "drain"\ntask = "noop"\ntasks = [30, 40]\n',
                        name="borrowed")
    results = runner.run_matrix(grid, tmp_path / "runs", broker_url=f"{users_redis}/0", progress=Progress())
    assert [r.status for r in results] == ["ok", "ok"], [r.detail for r in results]
    for result in results:
        record = json.loads((result.run_dir / "run.json").read_text())
        assert record["brokers"]["broker"]["url"] == f"{users_redis}/0"
        assert record["brokers"]["broker"]["shared"] is None
    assert redis.Redis.from_url(f"{users_redis}/1").get("sentinel") == b"the user's data"


def test_a_borrowed_dirty_redis_keeps_the_users_keys_when_a_stack_stops(need_redis, tmp_path, users_redis):
    url = f"{users_redis}/0"
    redis.Redis.from_url(url).set("sentinel", "also the user's")
    stack = Stack(StackConfig.of(backend="rq", processes=1, broker_url=url, allow_dirty=True), tmp_path / "run")
    with stack:
        stack.submit([{"task": "noop"}])
    assert redis.Redis.from_url(url).get("sentinel") == b"also the user's"
    assert redis.Redis.from_url(f"{users_redis}/1").get("sentinel") == b"the user's data"


def test_a_second_sweep_is_refused_while_another_holds_the_measuring_lock(tmp_path):
    path = tmp_path / "measure.lock"
    refused = pytest.raises(RuntimeError, match="another queuebench sweep is measuring")
    with runner.measuring_lock(path), refused, runner.measuring_lock(path):
        pass
    with runner.measuring_lock(path):  # released: the next sweep measures
        pass


def test_a_sweep_told_to_wait_for_the_measuring_lock_takes_it_once_the_holder_lets_go(tmp_path):
    import threading

    path = tmp_path / "measure.lock"
    holder_in, said = threading.Event(), []

    def hold_then_release() -> None:
        with runner.measuring_lock(path):
            holder_in.set()
            while not said:  # hold until the waiter has said it is waiting
                threading.Event().wait(0.05)

    holder = threading.Thread(target=hold_then_release)
    holder.start()
    holder_in.wait()
    with runner.measuring_lock(path, wait_s=60, log=said.append):
        pass
    holder.join()
    assert len(said) == 1 and "waiting up to 60 s" in said[0]


def test_without_a_wait_the_refusal_names_the_wait_lock_flag(tmp_path, monkeypatch):
    monkeypatch.delenv(runner.LOCK_WAIT_ENV, raising=False)
    path = tmp_path / "measure.lock"
    with runner.measuring_lock(path), pytest.raises(RuntimeError, match="--wait-lock"), \
            runner.measuring_lock(path):
        pass


def test_the_wait_lock_flag_reaches_every_sweep_through_the_environment(monkeypatch):
    from click.testing import CliRunner

    from benchmarks.cli import cli

    monkeypatch.setenv(runner.LOCK_WAIT_ENV, "0")  # restored afterwards, whatever the flag sets
    result = CliRunner().invoke(cli, ["--wait-lock", "30", "backends"])
    assert result.exit_code == 0, result.output
    assert runner.lock_wait_s() == 30


def test_the_measuring_lock_moves_where_queuebench_lock_points(tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUEBENCH_LOCK", str(tmp_path / "elsewhere.lock"))
    assert runner.lock_path() == tmp_path / "elsewhere.lock"
