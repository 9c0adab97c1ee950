"""Retries under failure, end to end: a `poison` task (fails every time) runs exactly as many times as its
library's retry settings promise, then fails for good, on real workers started with each library's CLI.

The expected count comes from run.json's `retry_policy` (what the backend declares from its library), and
the attempts are recounted straight from the raw ledger files.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from fault_cells import ledger_rows, run_one

from benchmarks.analysis.faults import retry_table
from benchmarks.analysis.load import load_results

pytestmark = pytest.mark.service

CELL = """
backend = "{backend}"
processes = 1
mode = "drain"
task = "poison"
tasks = 2
drain_stall_s = 20
drain_timeout_s = 60
"""


def attempts_in_ledger(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """(attempt, outcome) of every finished execution per task id, probes left out, read from the files."""
    runs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in ledger_rows(run_dir):
        if row["ev"] == "finished":
            runs[row["id"]].append((row["attempt"], row["outcome"]))
    return {task_id: sorted(rows) for task_id, rows in runs.items()}


@pytest.mark.parametrize(("backend", "knobs", "attempts"), [
    ("celery", "", 4),          # self.retry up to Task.max_retries, Celery's default 3
    ("rq", "[rq]\nretry_max = 2\n", 3),  # RQ retries only with a Retry: retry_max = 2
    ("dramatiq", "", 21),       # the Retries middleware's default max_retries, 20
    ("huey", "", 1),            # @huey.task(retries=0), Huey's default: no retry
    # arq (max_tries unset: 11 tries, the most the catalogue's flaky needs) is left out here: 11 polls of its
    # private environment cost CI about 18 s; faults.toml's poison cells run it (benchmarks/NOTES.md).
])
def test_a_poison_task_runs_exactly_the_attempts_its_library_promises_then_fails(need_redis, tmp_path, backend,
                                                                                  knobs, attempts):
    run_dir, record = run_one(tmp_path, CELL.format(backend=backend) + knobs, name="poison")
    assert record["status"] == "ok", record["detail"]
    assert record["retry_policy"]["attempts"] == attempts
    assert record["summary"]["checks"]["retries_as_promised"]["ok"]
    assert record["summary"]["figures"]["failed_as_promised"] == 2
    runs = attempts_in_ledger(run_dir)
    assert len(runs) == 2
    for rows in runs.values():
        assert rows == [(n, "error") for n in range(1, attempts + 1)]
    # The report's "When things fail" tells it from the stored run.
    (row,) = retry_table(load_results(tmp_path / "runs"))
    assert row[1:4] == ["2", str(attempts), "2 of 2"]
