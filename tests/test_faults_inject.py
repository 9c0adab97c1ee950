"""The injector on plain process trees (no broker, no queue library): what it signals, what it restarts,
and that nothing it or its victims started outlives the run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks import faults
from benchmarks.procs import Supervisor

#: A "worker": a parent with one child that left its process group (as RQ's work horse does).
WORKER = [sys.executable, "-c", "import os, subprocess, time; "
          "subprocess.Popen(['sleep', '60'], preexec_fn=os.setpgrp); time.sleep(60)"]


class FakeStack:
    """What the injector uses of a `Stack`: its supervisor, worker processes and ledger."""

    def __init__(self, tmp_path: Path) -> None:
        self.supervisor = Supervisor()
        self.ledger_dir = tmp_path / "ledger"
        self.ledger_dir.mkdir()
        self.worker_procs = [self.supervisor.start("worker", WORKER, log_path=tmp_path / "worker.log")]
        self._shared_procs: list = []
        self.backend = type("Backend", (), {"held_task_ids": lambda self: None})()
        wait_for(lambda: len(self.worker_procs[0].tree()) == 2)

    def task_started(self, pid: int) -> None:
        row = {"ev": "started", "id": "t1", "attempt": 1, "t_ns": time.time_ns(), "pid": pid}
        (self.ledger_dir / "w.jsonl").write_text(json.dumps(row) + "\n")


def wait_for(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def injector(stack: FakeStack, **spec) -> faults.Injector:
    inject = faults.Injector({"fault_at_s": 0, "observe_s": 5, **spec}, log=lambda _: None)
    inject.prepare(stack)
    stack.task_started(stack.worker_procs[0].pid)
    inject.start()
    return inject


@pytest.fixture
def stack(tmp_path):
    stack = FakeStack(tmp_path)
    yield stack
    stack.supervisor.stop_all(timeout_s=1)


def test_a_hung_tree_is_stopped_for_hang_s_then_runs_again(stack):
    tree = stack.worker_procs[0].tree()
    inject = injector(stack, fault="hang_worker", hang_s=1)
    wait_for(lambda: inject.record["injected"])
    assert {p.status() for p in tree} == {psutil.STATUS_STOPPED}
    wait_for(lambda: "resumed_after_s" in inject.record)
    assert psutil.STATUS_STOPPED not in {p.status() for p in tree}
    assert inject.record["resumed_after_s"] >= 1


def test_a_killed_worker_starts_again_with_the_same_command_and_its_strays_are_orphans_then_killed(stack):
    old = stack.worker_procs[0]
    stray = [p for p in old.tree() if p.pid != old.pid][0]  # the child outside the worker's process group
    inject = injector(stack, fault="kill_worker", victim="parent", restart_after_s=0.2)
    wait_for(lambda: "restarted" in inject.record)
    new = stack.worker_procs[0]
    assert new.pid != old.pid and new.argv == old.argv and not old.alive()
    assert inject.record["left_running"] == [stray.pid] and stray.is_running()
    inject.finish()
    stack.supervisor.stop_all(timeout_s=1)  # the stack's own teardown
    inject.after_teardown()
    assert stray.pid in [o["pid"] for o in inject.record["orphans"]]
    assert inject.record["orphans_left"] == [] and not faults._alive(stray)


def test_a_whole_tree_kill_leaves_nothing_running(stack):
    tree = stack.worker_procs[0].tree()
    inject = injector(stack, fault="kill_worker", victim="tree", restart_after_s=0.2)
    wait_for(lambda: "restarted" in inject.record)
    assert not any(faults._alive(p) for p in tree)
    assert sorted(v["pid"] for v in inject.record["victims"]) == sorted(p.pid for p in tree)
    inject.finish()
    inject.after_teardown()


def test_kill_child_kills_the_pid_on_the_started_row_without_its_finished_row(stack):
    child = [p for p in stack.worker_procs[0].tree() if p.pid != stack.worker_procs[0].pid][0]
    inject = faults.Injector({"fault": "kill_child", "fault_at_s": 0, "observe_s": 5}, log=lambda _: None)
    inject.prepare(stack)
    stack.task_started(child.pid)
    inject.start()
    wait_for(lambda: inject.record["injected"])
    assert inject.record["victims"][0] | {"pid": child.pid, "role": "child", "task": "t1"} == inject.record["victims"][0]
    wait_for(lambda: not faults._alive(child))
    assert stack.worker_procs[0].alive()


def test_a_run_that_ends_before_the_restart_starts_nothing_after_its_teardown(stack):
    inject = injector(stack, fault="kill_worker", victim="tree", restart_after_s=30)
    wait_for(lambda: inject.record["injected"])
    inject.after_teardown()  # stops the pending restart
    assert "restarted" not in inject.record
    assert not any(p.alive() for p in stack.supervisor.procs)
