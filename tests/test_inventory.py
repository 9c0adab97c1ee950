"""Deployments from an Ansible inventory: bad inventories are refused naming the role or key, manifests catch a
cut or missing ledger, and a real two-host run on loopback aliases runs every task exactly once across hosts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
from click.testing import CliRunner

from benchmarks import spec as spec_mod
from benchmarks import store
from benchmarks.cli import cli
from benchmarks.deploy import inventory as inv
from benchmarks.deploy import manifest, plan
from benchmarks.deploy.plan import PlanError, check_spec, split_processes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "benchmarks" / "deploy" / "two-hosts.ini"


def listing(hostvars: dict, groups: dict) -> dict:
    """What ``ansible-inventory --list`` prints for these groups and host variables."""
    out = {"_meta": {"hostvars": hostvars}, "all": {"children": ["ungrouped", *groups]}}
    out |= {group: {"hosts": hosts} for group, hosts in groups.items()}
    return out


def two_hosts(**overrides) -> tuple[dict, dict]:
    hostvars = {"host1": {"ansible_connection": "local", "qb_address": "127.0.0.1", "qb_root": "/tmp/qb-test/h1"},
                "host2": {"ansible_connection": "local", "qb_address": "127.0.0.1", "qb_root": "/tmp/qb-test/h2",
                          "qb_clock_port": 8124}}
    for host, values in overrides.items():
        hostvars[host] = hostvars[host] | values
    groups = {"loadgen": ["host1"], "api": ["host1"], "broker": ["host1"], "workers": ["host2"]}
    return hostvars, groups


def parse(hostvars, groups):
    return inv.from_listing(Path("/x/hosts.ini"), listing(hostvars, groups))


def test_a_well_formed_inventory_names_each_hosts_roles():
    inventory = parse(*two_hosts())
    assert inventory.roles == {"loadgen": ["host1"], "api": ["host1"], "workers": ["host2"], "broker": ["host1"]}
    assert inventory.hosts["host2"].python == "/tmp/qb-test/h2/venv/bin/python"  # the install playbook's venv


@pytest.mark.parametrize("role", inv.ROLES)
def test_an_inventory_without_a_role_is_refused_naming_the_role(role):
    hostvars, groups = two_hosts()
    groups[role] = []
    with pytest.raises(inv.InventoryError, match=f"role '{role}' has no host"):
        parse(hostvars, groups)


def test_two_broker_hosts_are_refused_naming_the_role_and_how_many_it_takes():
    hostvars, groups = two_hosts()
    groups["broker"] = ["host1", "host2"]
    with pytest.raises(inv.InventoryError, match="role 'broker' has 2 hosts .* exactly 1"):
        parse(hostvars, groups)


def test_a_group_that_is_no_role_is_refused_naming_the_roles():
    hostvars, groups = two_hosts()
    groups["worker"] = ["host2"]
    with pytest.raises(inv.InventoryError, match="group 'worker' is not a queuebench role; roles are loadgen"):
        parse(hostvars, groups)


@pytest.mark.parametrize(("override", "message"), [
    ({"qb_rot": "/tmp/x"}, "unknown variable 'qb_rot'; queuebench reads qb_root"),
    ({"qb_root": "relative/dir"}, "qb_root is required, an absolute path"),
    ({"qb_address": "10.1.2.3"}, "qb_address 10.1.2.3 is not a loopback address"),
    ({"qb_address": "not-an-ip"}, "qb_address .* must be an IPv4 address"),
    ({"qb_api_port": 70000}, "qb_api_port must be a port from 1 to 65535"),
    ({"qb_python": "python3", "ansible_connection": "ssh"}, "qb_python must be an absolute path"),
    ({"qb_clock_skew_ns": 5}, "qb_clock_skew_ns .* applies to a host whose only role is workers"),
])
def test_a_bad_host_variable_is_refused_naming_the_host_and_key(override, message):
    hostvars, groups = two_hosts(host1=override)
    with pytest.raises(inv.InventoryError, match=f"host host1: {message}"):
        parse(hostvars, groups)


def test_two_local_hosts_sharing_a_directory_or_an_endpoint_are_refused():
    with pytest.raises(inv.InventoryError, match="both use qb_root /tmp/qb-test/h1"):
        parse(*two_hosts(host2={"qb_root": "/tmp/qb-test/h1"}))
    with pytest.raises(inv.InventoryError, match="both use 127.0.0.1:8123"):
        parse(*two_hosts(host2={"qb_clock_port": 8123}))


def test_a_relative_qb_python_on_a_local_host_is_relative_to_the_inventory_file():
    inventory = parse(*two_hosts(host1={"qb_python": "../venv/bin/python"}))
    assert inventory.hosts["host1"].python == "/venv/bin/python"


def test_cells_an_inventory_run_cannot_deploy_are_refused_naming_the_key(tmp_path):
    inventory = parse(*two_hosts())
    base = {"backend": "rq", "broker": "redis", "mode": "load", "fault": "none", "processes": 1, "routing": "shared"}
    check_spec(base, inventory)
    check_spec(base | {"mode": "drain"}, inventory)
    for key, value in [("broker", "rabbitmq"), ("fault", "kill_worker"), ("backend", "arq")]:
        with pytest.raises(PlanError, match=f"{key} = '{value}'"):
            check_spec(base | {key: value}, inventory)
    with pytest.raises(PlanError, match="processes = 1: .* at least 2"):
        check_spec(base | {"routing": "dedicated"}, inventory)


def test_worker_processes_are_split_evenly_between_the_workers_hosts():
    for total in range(1, 9):
        for hosts in range(1, total + 1):
            shares = split_processes(total, hosts)
            assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_each_host_runs_its_roles_with_its_own_interpreter_address_and_directory_and_the_workers_are_split():
    hostvars, groups = two_hosts(host1={"qb_python": "/opt/h1/bin/python"})
    hostvars["host3"] = {"ansible_connection": "local", "qb_address": "127.0.0.1", "qb_root": "/tmp/qb-test/h3",
                         "qb_clock_port": 8125}
    groups["workers"] = ["host2", "host3"]
    inventory = parse(hostvars, groups)
    spec = spec_mod.defaults("system") | spec_mod.defaults("workload") | {
        "backend": "rq", "processes": 3, "options": {}, "args": {}}
    the_plan = plan.build(spec, inventory, "run-1", "k" * 32)
    services = {name: {s["name"]: s for s in entry["services"]} for name, entry in the_plan.hosts.items()}
    assert set(services["host1"]) == {"redis", "clock", "sampler", "api"}
    # Every host samples its own run directory's daemons; the loadgen host its Locust too.
    assert services["host1"]["sampler"]["argv"][-4:] == ["sample", "/tmp/qb-test/h1/runs/run-1", "--load", "locust"]
    assert services["host2"]["sampler"]["argv"][-2:] == ["sample", "/tmp/qb-test/h2/runs/run-1"]
    api = services["host1"]["api"]
    assert api["argv"][0] == "/opt/h1/bin/python" and "127.0.0.1:8000" in api["argv"]
    assert api["env"]["PYTHONPATH"] == "/tmp/qb-test/h1/queuebench"
    assert api["env"]["QUEUEBENCH_LEDGER_DIR"] == "/tmp/qb-test/h1/runs/run-1/ledger"
    workers = {host: [s for s in services[host].values() if s["name"].startswith("rq")] for host in ("host2", "host3")}
    counts = {host: int(w[0]["argv"][w[0]["argv"].index("-n") + 1]) for host, w in workers.items()}
    assert sum(counts.values()) == spec["processes"] and set(counts.values()) == {1, 2}
    roots = {"host2": "/tmp/qb-test/h2", "host3": "/tmp/qb-test/h3"}
    for host, (worker,) in workers.items():
        assert worker["argv"][0] == f"{roots[host]}/venv/bin/rq"  # the install playbook's virtualenv
        assert worker["env"]["QUEUEBENCH_HOST"] == host
        assert "redis://127.0.0.1:6390/0" in worker["argv"]  # the broker host's address and port
    assert the_plan.hosts["host1"]["load"]["argv"][0] == "/opt/h1/bin/locust"
    for host, entry in the_plan.hosts.items():  # every host times the broker's round trip, with its interpreter
        assert entry["broker_rtt"][0] == services[host]["clock"]["argv"][0]
        assert entry["broker_rtt"][-2:] == ["broker-rtt", "redis://127.0.0.1:6390/0"]


def test_with_two_load_workers_the_loadgen_host_runs_two_locust_worker_daemons_and_their_master_binds_its_address():
    inventory = parse(*two_hosts(host1={"qb_locust_port": 5599}))
    spec = spec_mod.defaults("system") | spec_mod.defaults("workload") | {
        "backend": "rq", "processes": 1, "options": {}, "args": {}, "load_workers": 2}
    the_plan = plan.build(spec, inventory, "run-1", "k" * 32)
    workers = [s for s in the_plan.hosts["host1"]["services"] if s["name"].startswith(plan.LOAD_WORKER_PREFIX)]
    assert [w["name"] for w in workers] == ["locust-worker-0", "locust-worker-1"]
    assert all(w["stage"] == "services" and "--worker" in w["argv"] for w in workers)
    assert all(w["argv"][w["argv"].index("--master-host") + 1:][:3] == ["127.0.0.1", "--master-port", "5599"]
               for w in workers)
    master = the_plan.hosts["host1"]["load"]["argv"]
    assert master[master.index("--master-bind-host") + 1:][:3] == ["127.0.0.1", "--master-bind-port", "5599"]
    assert not any(s["name"].startswith("locust") for s in the_plan.hosts["host2"]["services"])


def test_a_broker_that_does_not_answer_gives_no_round_trip_but_the_error(capsys):
    from benchmarks.deploy import host

    port = free_port("127.0.0.1")  # nothing listens there
    result = host.broker_rtt(f"redis://127.0.0.1:{port}/0", samples=2)
    assert result["rtt_ms"] is None and "Error" in result["error"]


def test_the_example_inventory_is_read_by_ansible_itself():
    inventory = inv.load(EXAMPLE)
    assert set(inventory.roles["workers"]) == {"host2"}
    assert {h.address for h in inventory.hosts.values()} == {"127.0.0.2", "127.0.0.3"}
    assert inventory.hosts["host1"].python == os.path.normpath(ROOT / ".venv" / "bin" / "python")


def test_the_readme_shows_the_example_inventory_as_shipped():
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("## Several machines: an Ansible inventory", 1)[1].split("```ini", 1)[1].split("```", 1)[0]

    def lines(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]

    assert lines(shown) == lines(EXAMPLE.read_text())


def test_run_with_a_bad_inventory_exits_2_naming_the_role_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text("[api]\nh1 qb_address=127.0.0.1 qb_root=/tmp/qb-x ansible_connection=local\n"
                   "[workers]\nh1\n[broker]\nh1\n")
    good_matrix = tmp_path / "m.toml"
    good_matrix.write_text('backend = "rq"\n')
    result = CliRunner().invoke(cli, ["run", str(good_matrix), "--inventory", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "role 'loadgen' has no host" in result.output
    assert not (tmp_path / "out").exists()


def test_run_refuses_a_fault_cell_on_an_inventory_and_dry_run_lists_the_hosts_run_ids(tmp_path):
    fault = tmp_path / "fault.toml"
    fault.write_text('backend = "rq"\nfault = "kill_worker"\n')
    result = CliRunner().invoke(cli, ["run", str(fault), "--inventory", str(EXAMPLE), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "fault = 'kill_worker'" in result.output
    result = CliRunner().invoke(cli, ["run", str(ROOT / "benchmarks" / "matrices" / "two-hosts.toml"), "--inventory",
                                      str(EXAMPLE), "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("-on-two-hosts\tto run") == 2
    assert not (tmp_path / "out").exists()


# --- manifests ---------------------------------------------------------------------------------------------


def host_run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "host1"
    (run / "ledger").mkdir(parents=True)
    rows = [{"ev": "sent", "id": f"{i:032x}", "sent_ns": 1_000 + i, "pid": 1} for i in range(5)]
    (run / "ledger" / "host1-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "requests").mkdir()
    (run / "requests" / "r-1.csv").write_text("scheduled_ns,sent_ns,done_ns,status\n1,2,3,202\n4,5,6,202\n")
    manifest.write(run / manifest.MANIFEST_JSON, manifest.build(run))
    return run


def test_a_manifest_counts_rows_and_timestamps_and_verifies_the_files_it_lists(tmp_path):
    run = host_run_dir(tmp_path)
    record = manifest.verify(run, "host1")
    entry = record["files"]["ledger/host1-1.jsonl"]
    assert (entry["rows"], entry["first_ns"], entry["last_ns"]) == (5, 1_000, 1_004)
    assert record["files"]["requests/r-1.csv"]["rows"] == 2


def test_a_truncated_ledger_fails_the_manifest_check_naming_the_file(tmp_path):
    run = host_run_dir(tmp_path)
    path = run / "ledger" / "host1-1.jsonl"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(manifest.ManifestError, match="host host1: ledger/host1-1.jsonl has 4 rows .*truncated"):
        manifest.verify(run, "host1")


def test_a_missing_or_unlisted_ledger_fails_the_manifest_check(tmp_path):
    run = host_run_dir(tmp_path)
    (run / "ledger" / "host1-1.jsonl").rename(run / "ledger" / "host1-2.jsonl")
    with pytest.raises(manifest.ManifestError) as caught:
        manifest.verify(run, "host1")
    assert "ledger/host1-1.jsonl is missing" in str(caught.value)
    assert "ledger/host1-2.jsonl is not in the manifest" in str(caught.value)
    (run / manifest.MANIFEST_JSON).unlink()
    with pytest.raises(manifest.ManifestError, match="no readable manifest"):
        manifest.verify(run, "host1")


# --- a real run on two hosts ----------------------------------------------------------------------------------


def free_port(address: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def left_running(tmp_path: Path) -> list[list[str]]:
    """Command lines of processes that name `tmp_path` in their arguments or environment (a test's hosts)."""
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            seen = " ".join(proc.info["cmdline"] or []) + " " + " ".join(proc.environ().values())
        except psutil.Error:
            continue
        if str(tmp_path) in seen:
            left.append(proc.info["cmdline"])
    return left


def loopback_alias_binds(address: str) -> bool:
    try:
        free_port(address)
        return True
    except OSError:
        return False


@pytest.fixture
def need_two_local_hosts() -> None:
    """Two hosts on this machine need loopback aliases and start-stop-daemon (Debian's daemonizer): skip on a
    laptop without them, fail in CI (as tests/conftest.py does for brokers)."""
    need_local_hosts("127.0.0.2", "127.0.0.3")


def need_local_hosts(*addresses: str) -> None:
    """Skip (fail in CI) unless these loopback aliases bind here and start-stop-daemon is installed."""
    problems = []
    if not all(loopback_alias_binds(a) for a in addresses):
        problems.append(f"{' and '.join(addresses)} cannot be bound here (Linux routes all of 127/8 to lo; this "
                        "system does not)")
    if not shutil.which("start-stop-daemon"):
        problems.append("start-stop-daemon is not installed (Debian and Ubuntu have it in dpkg)")
    if not problems:
        return
    message = "; ".join(problems)
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


#: host2's clock is made this wrong on purpose (its workers' ledger rows and its clock responder): the run
#: must measure it and put host2's timestamps back on the coordinator's clock.
SKEW_NS = 250_000_000


def write_two_hosts(tmp_path: Path, skew_ns: int = 0) -> Path:
    """An inventory of two hosts on this machine: host1 (127.0.0.2) the loadgen, API and broker, host2
    (127.0.0.3) the workers, its clock skewed by `skew_ns`; every port free."""
    roots = {"host1": tmp_path / "h1", "host2": tmp_path / "h2"}
    inventory_file = tmp_path / "hosts.ini"
    inventory_file.write_text(f"""
[loadgen]
host1 qb_address=127.0.0.2 qb_root={roots['host1']} qb_api_port={free_port('127.0.0.2')} \
qb_broker_port={free_port('127.0.0.2')} qb_clock_port={free_port('127.0.0.2', socket.SOCK_DGRAM)} \
qb_locust_port={free_port('127.0.0.2')}
[api]
host1
[broker]
host1
[workers]
host2 qb_address=127.0.0.3 qb_root={roots['host2']} qb_clock_port={free_port('127.0.0.3', socket.SOCK_DGRAM)} \
qb_clock_skew_ns={skew_ns}
[all:vars]
ansible_connection=local
ansible_python_interpreter={sys.executable}
qb_python={sys.executable}
""")
    return inventory_file


def run_tiny_on_two_hosts(tmp_path: Path, skew_ns: int = 0, **keys) -> tuple[subprocess.CompletedProcess, Path]:
    """`run_tiny` on `write_two_hosts`."""
    return run_tiny(write_two_hosts(tmp_path, skew_ns=skew_ns), tmp_path, **keys)


def run_tiny(inventory_file: Path, tmp_path: Path, **keys) -> tuple[subprocess.CompletedProcess, Path]:
    """`queuebench run --inventory` of one tiny RQ cell (the matrix keys `keys` changed) on `inventory_file`;
    the finished command and its output directory."""
    cell = {"backend": "rq", "processes": 1, "api_workers": 1, "api_threads": 2, "task": "noop", "rate": 10,
            "warmup_s": 0.5, "duration_s": 2, "drain_timeout_s": 30} | keys
    matrix_file = tmp_path / "tiny.toml"
    matrix_file.write_text('name = "tiny-hosts"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cell.items())
                           + '[rq]\nworker_class = "SimpleWorker"\n')
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(matrix_file), "--inventory",
                           str(inventory_file), "--out", str(out)], capture_output=True, text=True, timeout=240,
                          cwd=ROOT)
    return done, out


@pytest.mark.service
def test_workers_on_a_second_host_drain_tasks_enqueued_through_the_api_on_the_first_exactly_once(
        tmp_path, need_redis, need_two_local_hosts):
    done, out = run_tiny_on_two_hosts(tmp_path, skew_ns=SKEW_NS)
    runs = store.run_dirs(out)
    assert len(runs) == 1, done.stderr[-3000:]
    record = store.load_run(runs[0])
    assert done.returncode == 0 and record["status"] == "ok", (record.get("detail"), done.stderr[-3000:])
    assert record["run_id"].endswith("-on-hosts")

    # Every host's ledger was collected beside its manifest, and checked against it.
    for host in ("host1", "host2"):
        collected = runs[0] / "hosts" / host
        assert list((collected / "ledger").glob("*.jsonl")), f"no ledger collected from {host}"
        manifest.verify(collected, host)
        assert (collected / "logs" / "clock.log").exists()

    # The broker's round trip was timed from every host.
    rtts = record["brokers"]["broker"]["rtt_ms_by_host"]
    assert set(rtts) == {"host1", "host2"}
    assert all(isinstance(ms, float | int) and ms >= 0 for ms in rtts.values()), rtts

    # Clock offsets at start and end for both hosts, each with its bound.
    for host in ("host1", "host2"):
        clock = record["clocks"]["hosts"][host]
        assert clock["start"]["uncertainty_ns"] >= 0 and clock["end"] is not None
    assert set(record["clocks"]["negative_intervals"]) == {"queue_wait_ms", "service_ms", "e2e_ms"}

    # host2's skewed clock was measured within its bound, and its rows were moved by what was measured.
    host2 = record["clocks"]["hosts"]["host2"]
    for estimate in (host2["start"], host2["end"]):
        assert abs(estimate["offset_ns"] - SKEW_NS) <= estimate["uncertainty_ns"]
    raw = [json.loads(line) for path in (runs[0] / "hosts" / "host2" / "ledger").glob("*.jsonl")
           for line in path.read_text().splitlines()]
    raw_started = {r["id"]: r["t_ns"] for r in raw if r["ev"] == "started" and not r.get("probe")}
    corrected = pd.read_parquet(runs[0] / store.TASKS_TABLE).set_index("id")["started_ns"]
    assert raw_started and all(abs(raw_started[i] - int(corrected[i]) - SKEW_NS) <= host2["uncertainty_ns"]
                               for i in raw_started)

    # Exactly once across hosts: every task sent through the API on host1 ran once, on host2.
    tasks = pd.read_parquet(runs[0] / store.TASKS_TABLE)
    sent = tasks.dropna(subset=["sent_ns"])
    assert len(sent) > 0
    ok = tasks[tasks["outcome"] == "ok"]
    assert ok.groupby("id").size().eq(1).all() and set(ok["id"]) == set(sent["id"])
    assert set(ok["worker_host"]) == {"host2"}
    assert record["summary"]["checks"]["no_duplicates"]["ok"] and record["summary"]["checks"]["all_finished"]["ok"]
    assert record["summary"]["figures"]["executions_by_host"] == {"host2": len(sent)}
    shown = " ".join(done.stderr.split())  # what the command printed, its line wrapping undone
    assert "exactly once across hosts: yes" in shown and "host2: clock offset" in shown and "broker RTT" in shown

    # Each host's resources were sampled, collected with its manifest, and stored with a host column.
    run_dir, figures = runs[0], record["summary"]["figures"]
    for host in ("host1", "host2"):
        files = manifest.verify(run_dir / "hosts" / host, host)["files"]
        assert files[store.RESOURCES_CSV]["rows"] > 0 and files[store.MACHINE_CSV]["rows"] > 0
    components = store.read_resources(run_dir).groupby("host")["component"].agg(set).to_dict()
    assert components == {"host1": {"broker", "api", "locust"}, "host2": {"workers"}}
    assert set(store.read_machine(run_dir)["host"]) == {"host1", "host2"}
    # The figures: per component as a local run's (what the report and summary.csv read), and per host.
    assert set(figures["resources"]) == {"broker", "api", "locust", "workers"}
    assert set(figures["resources_by_host"]["host2"]["components"]) == {"workers"}
    for host in ("host1", "host2"):
        machine = figures["resources_by_host"][host]["machine"]
        assert machine["n_cpus"] == psutil.cpu_count() and 0 <= machine["cpu_percent"] <= 100
    assert record["deployment"]["manifests"]["host2"]["resource_files"] == 2
    assert "resources: CPU" in shown and "busiest: workers" in shown
    assert store.summary_rows(out)[0]["workers_cpu_s"] == figures["resources"]["workers"]["cpu_s"]

    # Nothing started on the hosts is left running.
    assert_nothing_left_running(tmp_path)


def assert_nothing_left_running(tmp_path: Path) -> None:
    """No process started on the hosts (its command line or environment names `tmp_path`) is left running."""
    assert not left_running(tmp_path)

