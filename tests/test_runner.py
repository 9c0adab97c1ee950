"""The runner end to end: real brokers, workers, gunicorn and Locust, driven by `queuebench run`.

Checks what a run must prove about itself (every task once, Little's bound, Locust = ledger), that
figures can be recomputed from the stored raw rows, that a sweep resumes, and that Ctrl-C in the middle
of a cell leaves nothing running and keeps the completed cells.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

import backends

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "benchmarks" / "matrices" / "smoke.toml"

pytestmark = pytest.mark.service


def queuebench(*args: str, timeout_s: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)


def runs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/run.json"))]


@pytest.fixture
def need_services(request):
    request.getfixturevalue("need_redis")


def test_the_smoke_matrix_runs_every_backend_and_each_run_proves_its_own_numbers(need_services, tmp_path):
    out = tmp_path / "runs"
    # A relative --out, as users type it: workers run inside their run directory, so every path the
    # harness hands them must be absolute.
    result = queuebench("run", str(SMOKE), "--out", "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    records = runs(out)
    assert {r["spec"]["backend"] for r in records} == set(backends.measurable())
    for record in records:
        run_dir = out / record["run_id"]
        assert record["status"] in ("ok", "generator-limited"), (record["run_id"], record.get("detail"))
        checks = record["summary"]["checks"]
        for name in ("all_finished", "no_duplicates", "littles_law", "no_leftovers"):
            assert checks[name]["ok"], (record["run_id"], name, checks[name])
        for name in ("tasks.parquet", "resources.csv", "queue_depths.csv", "logs"):
            assert (run_dir / name).exists(), (record["run_id"], name)
        assert record["settings"]["backend"] == record["spec"]["backend"]
        assert record["environment"]["packages"]["locust"]
        tasks = pd.read_parquet(run_dir / "tasks.parquet")
        figures = record["summary"]["figures"]
        start, end = figures["window_start_ns"], figures["window_end_ns"]
        ok = tasks[(tasks["outcome"] == "ok") & (tasks["finished_ns"] >= start) & (tasks["finished_ns"] < end)]
        assert figures["throughput_per_s"] == pytest.approx(len(ok) / ((end - start) / 1e9), rel=0.01)
        if record["spec"]["mode"] == "load":
            for name in ("requests.parquet", "locust.json", "locust_stats.csv", "locust.html"):
                assert (run_dir / name).exists(), (record["run_id"], name)
            assert checks["locust_count_matches"]["ok"], checks["locust_count_matches"]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["run_id"]) == sorted(r["run_id"] for r in records)

    again = queuebench("run", str(SMOKE), "--out", "runs", timeout_s=120, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 to run" in again.stderr
    assert [r["finished_at"] for r in runs(out)] == [r["finished_at"] for r in records], "resumed, not redone"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_ctrl_c_mid_sweep_stops_everything_keeps_completed_cells_and_resumes(need_services, tmp_path):
    matrix = tmp_path / "two.toml"
    matrix.write_text('backend = "baseline"\nprocesses = 2\nrate = 20\nwarmup_s = 0\nduration_s = [1, 60]\n')
    out = tmp_path / "runs"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "run", str(matrix), "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = [r for r in runs(out) if r["status"] == "ok"]
            children = _descendants(proc.pid)
            if done and any("locust" in " ".join(c.cmdline()) for c in children if c.is_running()):
                started = children
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
        assert started, "the second cell never reached its measuring phase"
        time.sleep(2)
        started = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaps it and closes the pipe
    assert proc.returncode == 130, output
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    statuses = sorted(r["status"] for r in runs(out))
    assert statuses == ["interrupted", "ok"], statuses
    listing = queuebench("run", str(matrix), "--out", str(out), "--dry-run", timeout_s=60)
    assert listing.stdout.count("\tdone") == 1 and listing.stdout.count("\tto run") == 1, listing.stdout
