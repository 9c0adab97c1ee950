"""Resource sampling on an inventory's hosts: each host's sampler daemon, its collected files, the figures, and
the drain plan. The real runs that check them are tests/test_inventory.py's two-host run (resources) and
tests/test_inventory_brokers.py's drain on the user's Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from benchmarks import clocks, measure, proctree, store
from benchmarks import spec as spec_mod
from benchmarks.cli import _hosts_lines
from benchmarks.deploy import cell, host, manifest, plan
from tests.test_inventory import (
    ROOT,
    parse,
    two_hosts,
)

# --- the host's sampler daemon -------------------------------------------------------------------------------


def start_daemon(run_dir: Path, name: str, code: str) -> subprocess.Popen:
    """A real process with a pidfile in `run_dir`/pids, as start-stop-daemon leaves one."""
    proc = subprocess.Popen([sys.executable, "-c", code])
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    (run_dir / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


#: A parent that starts one child and waits: a tree of two processes.
PARENT_AND_CHILD = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; " \
                   "time.sleep(60)']); time.sleep(60)"


def rows_of(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def test_the_sampler_daemon_writes_a_row_per_daemon_tree_and_the_machine_until_sigterm(tmp_path):
    run_dir = tmp_path / "run"
    workers = start_daemon(run_dir, "rq-worker-0", PARENT_AND_CHILD)
    clock = start_daemon(run_dir, "clock", "import time; time.sleep(60)")
    sampler = subprocess.Popen([sys.executable, "-m", "benchmarks.deploy.host", "sample", str(run_dir),
                                "--interval-s", "0.1"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the worker's tree, both processes, has been sampled
            rows = rows_of(run_dir / host.RESOURCES_CSV)
            if len(rows) and (rows["n_procs"] == 2).any():
                break
            time.sleep(0.1)
        sampler.send_signal(signal.SIGTERM)
        out, _ = sampler.communicate(timeout=30)
    finally:
        for proc in (sampler, workers, clock):
            for member in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
                member.kill()
            proc.kill()
            proc.wait()
    assert sampler.returncode == 0 and json.loads(out) == {"errors": 0}
    rows = pd.read_csv(run_dir / store.RESOURCES_CSV)
    assert tuple(rows.columns) == proctree.RESOURCE_COLUMNS
    # The worker's tree, under its pidfile's name; the clock responder (the harness's own) is not sampled.
    assert set(rows["name"]) == {"rq-worker-0"} and set(rows["component"]) == {"workers"}
    assert rows["n_procs"].max() == 2 and (rows["rss_bytes"] > 0).all()
    assert rows["cpu_s"].is_monotonic_increasing and rows["t_ns"].is_monotonic_increasing
    machine = pd.read_csv(run_dir / store.MACHINE_CSV)
    assert tuple(machine.columns) == host.MACHINE_COLUMNS and len(machine) >= 2
    assert (machine["n_cpus"] == psutil.cpu_count()).all()
    assert (machine["cpu_busy_s"] <= machine["cpu_all_s"]).all()
    assert (machine["mem_used_bytes"] < machine["mem_total_bytes"]).all()

    # Both files are in the host's manifest: one cut short fails the check, naming it.
    manifest.write(run_dir / manifest.MANIFEST_JSON, manifest.build(run_dir))
    record = manifest.verify(run_dir, "host2")
    assert record["files"][store.RESOURCES_CSV]["rows"] == len(rows)
    assert manifest.totals(record)["resource_files"] == 2
    path = run_dir / store.MACHINE_CSV
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(manifest.ManifestError, match="host host2: machine.csv has .*truncated"):
        manifest.verify(run_dir, "host2")


def test_the_sampler_finds_the_load_started_in_the_run_directory_outside_the_daemons(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "locust").write_text("import time\ntime.sleep(60)\n")
    load = subprocess.Popen([sys.executable, str(fake_bin / "locust")], cwd=run_dir)
    try:
        sampler = host.HostSampler(run_dir, load_name="locust")
        deadline = time.monotonic() + 10
        while sampler.load_pid is None and time.monotonic() < deadline:
            sampler.load_pid = sampler.find_load(set())
        assert sampler.load_pid == load.pid
    finally:
        load.kill()
        load.wait()


# --- figures from the collected samples -----------------------------------------------------------------------


def write_host_samples(run_dir: Path, name: str, busy_s: tuple[float, float], all_s: tuple[float, float]) -> None:
    """Two samples one second apart (host clock 1_000 s and 1_001 s): a worker tree using 0.5 CPU-s, and the
    machine busy `busy_s` of `all_s` CPU seconds."""
    collected = run_dir / "hosts" / name
    collected.mkdir(parents=True)
    pd.DataFrame({"t_ns": [1_000_000_000_000, 1_001_000_000_000], "component": "workers", "name": "rq-worker-0",
                  "n_procs": 2, "cpu_s": [1.0, 1.5], "rss_bytes": [2**20, 3 * 2**20]}
                 ).to_csv(collected / store.RESOURCES_CSV, index=False)
    pd.DataFrame({"t_ns": [1_000_000_000_000, 1_001_000_000_000], "n_cpus": 2, "cpu_busy_s": busy_s,
                  "cpu_all_s": all_s, "mem_used_bytes": [2**30, 2 * 2**30], "mem_total_bytes": 8 * 2**30}
                 ).to_csv(collected / store.MACHINE_CSV, index=False)


def host_clock(offset_ns: int) -> clocks.HostClock:
    return clocks.HostClock(clocks.Estimate(at_ns=0, offset_ns=float(offset_ns), rtt_ns=1_000, samples=8))


def test_collected_samples_are_put_on_the_coordinators_clock_and_give_figures_per_host_and_summed(tmp_path):
    write_host_samples(tmp_path, "host1", busy_s=(10.0, 10.5), all_s=(100.0, 102.0))
    write_host_samples(tmp_path, "host2", busy_s=(20.0, 21.8), all_s=(200.0, 202.0))
    resources, machine = cell.correct_samples(tmp_path, {"host1": host_clock(0), "host2": host_clock(250_000_000)})

    # Stored tidy, as a local run's resources.csv plus the host column; host2's stamps moved by its offset.
    stored = store.read_resources(tmp_path)
    assert list(stored.columns) == [*proctree.RESOURCE_COLUMNS, "host"] and len(stored) == 4
    assert stored.loc[stored["host"] == "host2", "t_ns"].tolist() == [999_750_000_000, 1_000_750_000_000]
    assert store.read_machine(tmp_path)["host"].tolist() == ["host1", "host1", "host2", "host2"]

    # A local run's figure code, summed over hosts: 0.5 CPU-s and a 3 MiB peak on each.
    assert measure.resource_use(resources) == {"workers": {"cpu_s": 1.0, "peak_rss_mib": 6.0}}
    by_host = measure.host_resource_use(resources, machine, measure.Window(0, 10**15))
    assert by_host["host1"]["components"] == {"workers": {"cpu_s": 0.5, "peak_rss_mib": 3.0}}
    assert by_host["host1"]["machine"] == {"n_cpus": 2, "cpu_percent": 25.0, "cpu_percent_window": 25.0,
                                           "peak_mem_used_mib": 2048.0, "mem_total_mib": 8192.0}
    assert by_host["host2"]["machine"]["cpu_percent"] == 90.0
    # A window that holds one sample cannot give a rate over it.
    one = measure.host_resource_use(resources, machine, measure.Window(0, 1_000_500_000_000))
    assert one["host1"]["machine"]["cpu_percent_window"] is None

    # What the command prints for each host: its machine's CPU and its busiest component.
    record = {"run_id": "r", "status": "ok", "clocks": {"hosts": {
        h: {"start": {"offset_ns": 0, "uncertainty_ns": 500}} for h in ("host1", "host2")}},
        "summary": {"figures": {"sent": 0, "resources_by_host": by_host}, "checks": {
            k: {"ok": True} for k in ("all_finished", "no_duplicates", "nothing_unsent_ran")}}}
    shown = _hosts_lines(record)
    assert "CPU 90 % of 2 CPU(s) in the window" in shown and "busiest: workers 0.50 CPU-s" in shown


# --- drain mode's plan ---------------------------------------------------------------------------------------


def test_a_drain_cells_workers_wait_for_the_workers_playbook_and_no_api_or_locust_is_planned():
    spec = spec_mod.defaults("system") | spec_mod.defaults("workload") | {
        "backend": "rq", "mode": "drain", "processes": 1, "options": {}, "args": {}}
    the_plan = plan.build(spec, parse(*two_hosts()), "run-1", "k" * 32)
    stages = {(name, s["name"]): s["stage"] for name, entry in the_plan.hosts.items() for s in entry["services"]}
    workers = {key: stage for key, stage in stages.items() if key[1].startswith("rq")}
    assert workers and set(workers.values()) == {plan.WORKERS_STAGE} and {h for h, _ in workers} == {"host2"}
    assert ("host1", "api") not in stages and "load" not in the_plan.hosts["host1"]
    # The workers are stopped with the other services, whichever playbook started them.
    stop = the_plan.hosts["host2"]["stop_services"]
    assert all(the_plan.hosts["host2"]["run_dir"] + f"/pids/{name}.pid" in stop for _, name in workers)
