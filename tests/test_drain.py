"""How a drain ends (`runner.await_drain`): it waits while tasks keep finishing, and fails only when none has
finished for the stall period or the hard ceiling passes.

A real ledger directory and a real `ledger.Follower`; the clock is a counter that the test's `sleep`
advances, and each tick may append ledger rows, so no test depends on how fast the machine is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from backends import ledger
from benchmarks.runner import DRAIN_RULES, await_drain


class Ledger:
    """Appends rows to one ledger file the way a worker would."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "host-1.jsonl"

    def write(self, *rows: dict) -> None:
        with open(self.path, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")

    def sent(self, *ids: str) -> None:
        self.write(*({"ev": "sent", "id": i, "task": "noop"} for i in ids))

    def finished(self, task_id: str, outcome: str = "ok") -> None:
        self.write({"ev": "finished", "id": task_id, "task": "noop", "attempt": 1, "outcome": outcome})


class Clock:
    """A fake monotonic clock: `sleep` advances it and runs what is scheduled for each tick."""

    def __init__(self, on_tick: Callable[[float], None] = lambda now: None) -> None:
        self.now = 1000.0
        self.on_tick = on_tick

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_tick(self.now - 1000.0)


def test_a_drain_that_keeps_finishing_tasks_past_the_old_fixed_timeout_ends_all_finished(tmp_path):
    # One task finishes every 2 s for 78 s: past the old fixed 60 s timeout and far past a 5 s stall
    # period, yet never 5 s without progress.
    rows = Ledger(tmp_path)
    ids = [f"t{i}" for i in range(40)]
    rows.sent(*ids)
    rows.finished(ids[0])
    pending = iter(ids[1:])

    def tick(elapsed: float) -> None:
        if round(elapsed * 10) % 20 == 0:  # every 2 s of the fake clock
            task_id = next(pending, None)
            if task_id:
                rows.finished(task_id)

    clock = Clock(tick)
    end = await_drain(ledger.Follower(tmp_path), stall_s=5, ceiling_s=600, clock=clock, sleep=clock.sleep)
    assert end.ended_by == "all-finished"
    assert end.outstanding == 0 and end.finished == len(ids)
    assert end.waited_s > 60, "the drain outlasted the old timeout"


def test_a_drain_where_nothing_finishes_for_the_stall_period_ends_stalled_naming_what_is_outstanding(tmp_path):
    rows = Ledger(tmp_path)
    rows.sent("a", "b", "c")
    rows.finished("a")
    clock = Clock()
    end = await_drain(ledger.Follower(tmp_path), stall_s=3, ceiling_s=600, clock=clock, sleep=clock.sleep)
    assert end.ended_by == "stalled"
    assert (end.finished, end.outstanding) == (1, 2)
    assert end.idle_s >= 3
    assert not end.workers_gone


def test_a_drain_that_progresses_forever_ends_at_the_ceiling(tmp_path):
    rows = Ledger(tmp_path)
    rows.sent("stuck")
    def tick(_elapsed: float) -> None:  # a failed attempt every tick: progress, but never done
        rows.finished("stuck", outcome="error")

    clock = Clock(tick)
    end = await_drain(ledger.Follower(tmp_path), stall_s=2, ceiling_s=20, clock=clock, sleep=clock.sleep)
    assert end.ended_by == "ceiling"
    assert end.outstanding == 1


def test_a_drain_whose_workers_are_all_gone_ends_stalled_at_once_and_says_so(tmp_path):
    rows = Ledger(tmp_path)
    rows.sent("a", "b")
    clock = Clock()
    end = await_drain(ledger.Follower(tmp_path), stall_s=30, ceiling_s=600, workers_alive=lambda: False,
                      clock=clock, sleep=clock.sleep)
    assert end.ended_by == "stalled" and end.workers_gone
    assert end.outstanding == 2


def test_rows_the_last_worker_wrote_before_exiting_still_count(tmp_path):
    rows = Ledger(tmp_path)
    rows.sent("a")
    follower = ledger.Follower(tmp_path)

    def alive() -> bool:
        rows.finished("a")  # written just before the worker exited, after the loop's last read
        return False

    clock = Clock()
    end = await_drain(follower, stall_s=30, ceiling_s=600, workers_alive=alive, clock=clock, sleep=clock.sleep)
    assert end.ended_by == "all-finished"


def test_progress_is_reported_while_waiting_with_finished_and_outstanding(tmp_path):
    rows = Ledger(tmp_path)
    rows.sent("a", "b")
    rows.finished("a")
    reports: list[tuple[int, int, float]] = []
    clock = Clock()
    await_drain(ledger.Follower(tmp_path), stall_s=3, ceiling_s=600, on_progress=lambda *r: reports.append(r),
                clock=clock, sleep=clock.sleep)
    assert reports and all(r[:2] == (1, 1) for r in reports)


def test_probe_rows_are_neither_outstanding_nor_progress(tmp_path):
    rows = Ledger(tmp_path)
    rows.write({"ev": "sent", "id": "probe", "task": "noop", "probe": True})
    clock = Clock()
    end = await_drain(ledger.Follower(tmp_path), stall_s=3, ceiling_s=600, clock=clock, sleep=clock.sleep)
    assert end.ended_by == "all-finished" and end.waited_s == 0


def test_the_rules_are_the_three_the_readme_names():
    assert DRAIN_RULES == ("all-finished", "stalled", "ceiling")
