"""The runner's self-checks catch a backend that loses or duplicates tasks, end to end.

Two defective backends (`tests/sabotage.py`), loaded by dotted path like any user's backend, run through
the real runner (`queuebench run`: private Redis, gunicorn, baseline workers, Locust). Each run must end
`failed`, naming the check its defect breaks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.service

MATRIX = """
name = "sabotage"
backend = ["tests.sabotage:DropEveryTenth", "tests.sabotage:RunEveryTenthTwice"]
processes = 2
task = "noop"
rate = 40
warmup_s = 0.5
duration_s = 2
drain_timeout_s = 5
"""


@pytest.fixture(scope="module")
def sabotaged_runs(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("sabotage")
    (work / "sabotage.toml").write_text(MATRIX)
    result = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(work / "sabotage.toml"),
                             "--out", str(work / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, "a sweep with failed cells exits 1:\n" + result.stdout + result.stderr
    records = [json.loads(p.read_text()) for p in (work / "runs").glob("*/run.json")]
    return {r["spec"]["backend"].rsplit(":", 1)[1]: r for r in records}


def test_a_backend_that_drops_every_tenth_task_fails_its_run_naming_all_finished(need_redis, sabotaged_runs):
    record = sabotaged_runs["DropEveryTenth"]
    assert record["status"] == "failed", record.get("detail")
    assert "all_finished" in record["summary"]["failed_checks"]
    assert "no_duplicates" not in record["summary"]["failed_checks"]
    assert "all_finished" in record["detail"]


def test_a_backend_that_runs_some_tasks_twice_fails_its_run_naming_no_duplicates(need_redis, sabotaged_runs):
    record = sabotaged_runs["RunEveryTenthTwice"]
    assert record["status"] == "failed", record.get("detail")
    assert "no_duplicates" in record["summary"]["failed_checks"]
    assert "all_finished" not in record["summary"]["failed_checks"]
    assert "no_duplicates" in record["detail"]
