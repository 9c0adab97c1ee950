"""Several loadgen and api hosts on an inventory: the Locust master runs on the first loadgen host, Locust
workers on every one (``load_workers`` split between them), request ids name the host that sent them, each
host's request times are put on the coordinator's clock by its own offset, every api host runs the API and
Locust sends to each in turn; a real run with two loadgen and two api hosts on loopback aliases ends ok
with every task run exactly once."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
import scenario_files

from api.app import request_id_from
from backends import ledger
from benchmarks import clocks, measure, store
from benchmarks import spec as spec_mod
from benchmarks.deploy import inventory as inv
from benchmarks.deploy import manifest, plan
from benchmarks.deploy.cell import correct_ledgers, scheduling_host
from benchmarks.deploy.plan import PlanError
from tests.test_inventory import free_port, left_running, listing, need_local_hosts, run_tiny

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000
S = 1_000 * MS
#: The loopback addresses of the three-host example and of the real run below.
ADDRESSES = {"host1": "127.0.0.2", "host2": "127.0.0.3", "host3": "127.0.0.4"}


def three_hosts(loadgen_order=("host1", "host3")) -> inv.Inventory:
    """host1 loadgen, API and broker; host3 loadgen only; host2 the workers (the loadgen group lists its hosts
    in `loadgen_order`)."""
    hostvars = {name: {"ansible_connection": "local", "qb_address": "127.0.0.1", "qb_root": f"/tmp/qb-test/{name}",
                       "qb_clock_port": port, "qb_locust_port": port + 100}
                for name, port in (("host1", 8123), ("host2", 8124), ("host3", 8125))}
    groups = {"loadgen": list(loadgen_order), "api": ["host1"], "broker": ["host1"], "workers": ["host2"]}
    return inv.from_listing(Path("/x/hosts.ini"), listing(hostvars, groups))


def load_spec(**keys) -> dict:
    return spec_mod.defaults("system") | spec_mod.defaults("workload") | {
        "backend": "rq", "processes": 1, "options": {}, "args": {}} | keys


def locust_workers(the_plan: plan.CellPlan, host: str) -> list[dict]:
    return [s for s in the_plan.hosts[host]["services"] if s["name"].startswith(plan.LOAD_WORKER_PREFIX)]


def test_the_first_loadgen_host_in_the_inventory_runs_the_master_and_every_loadgen_host_runs_locust_workers():
    inventory = three_hosts(loadgen_order=("host3", "host1"))  # inventory order, not the names' order
    assert [h.name for h in inventory.role("loadgen")] == ["host3", "host1"]
    the_plan = plan.build(load_spec(load_workers=3), inventory, "run-1", "k" * 32)
    assert "load" in the_plan.hosts["host3"] and "load" not in the_plan.hosts["host1"]
    master = the_plan.hosts["host3"]["load"]["argv"]
    assert master[master.index("--master-bind-host") + 1:][:3] == ["127.0.0.1", "--master-bind-port", "8225"]
    assert master[master.index("--expect-workers") + 1] == "3"
    # Split as evenly as possible in inventory order (the first host takes the rest), numbered across hosts.
    assert [w["name"] for w in locust_workers(the_plan, "host3")] == ["locust-worker-0", "locust-worker-1"]
    assert [w["name"] for w in locust_workers(the_plan, "host1")] == ["locust-worker-2"]
    assert not locust_workers(the_plan, "host2")
    for host in ("host1", "host3"):
        for worker in locust_workers(the_plan, host):
            argv = worker["argv"]
            assert argv[0] == f"/tmp/qb-test/{host}/venv/bin/locust"  # each host's own interpreter
            assert argv[argv.index("--master-host") + 1:][:3] == ["127.0.0.1", "--master-port", "8225"]
            assert worker["env"]["QUEUEBENCH_HOST"] == host  # tags its request ids
            assert worker["cwd"] == f"/tmp/qb-test/{host}/runs/run-1"
        assert f"/tmp/qb-test/{host}/runs/run-1/{store.REQUEST_LOGS_DIR}" in the_plan.hosts[host]["dirs"]
    # The master passes its options to every worker: the raw log directory is relative to each one's run
    # directory, so each writes on its own host.
    assert master[master.index("--qb-log-dir") + 1] == store.REQUEST_LOGS_DIR
    assert [(p["host"], p["name"]) for p in the_plan.processes if p["name"].startswith("locust")] == [
        ("host1", "locust-worker-2"), ("host3", "locust"), ("host3", "locust-worker-0"), ("host3", "locust-worker-1")]


def test_load_workers_are_split_with_at_least_one_on_each_loadgen_host():
    inventory = three_hosts()
    for total in range(2, 9):
        shares = plan.load_worker_shares(load_spec(load_workers=total), inventory)
        counts = [len(numbers) for numbers in shares.values()]
        assert list(shares) == ["host1", "host3"] and min(counts) >= 1 and max(counts) - min(counts) <= 1
        assert sorted(n for numbers in shares.values() for n in numbers) == list(range(total))


def test_fewer_load_workers_than_loadgen_hosts_are_refused_naming_the_key():
    inventory = three_hosts()
    with pytest.raises(PlanError, match=r"load_workers = 1: the load is split between 2 loadgen hosts \(host1, "
                                         r"host3\), at least one Locust worker on each, so it must be at least 2"):
        plan.check_spec(load_spec(), inventory)
    plan.check_spec(load_spec(load_workers=2), inventory)


def test_a_loadgen_host_whose_name_cannot_tag_a_request_id_is_refused_naming_the_host():
    hostvars = {"lg:1": {"ansible_connection": "local", "qb_address": "127.0.0.1", "qb_root": "/tmp/qb-test/x"}}
    groups = {"loadgen": ["lg:1"], "api": ["lg:1"], "broker": ["lg:1"], "workers": ["lg:1"]}
    with pytest.raises(inv.InventoryError, match="host lg:1: a loadgen host's name tags every request id"):
        inv.from_listing(Path("/x/hosts.ini"), listing(hostvars, groups))


def test_request_ids_name_the_deployed_host_and_pass_the_apis_check(monkeypatch):
    inflight = scenario_files.load("inflight")
    monkeypatch.delenv("QUEUEBENCH_HOST", raising=False)
    local = inflight.request_ids()()
    assert ":" not in local and local.startswith(f"{os.getpid():x}-")  # a local run's ids are as before
    monkeypatch.setenv("QUEUEBENCH_HOST", "host3")
    deployed = inflight.request_ids()
    ids = [deployed() for _ in range(3)]
    assert ids[0] == f"host3:{os.getpid():x}-1" and len(set(ids)) == 3
    monkeypatch.setenv("QUEUEBENCH_HOST", "a weird/host name" * 5)
    for request_id in (*ids, inflight.request_ids()()):
        assert request_id_from({"HTTP_X_REQUEST_ID": request_id}) == request_id
    assert scheduling_host(ids[0], ["host1", "host3"]) == "host3"
    assert scheduling_host("1f-2", ["host1", "host3"]) == "host1"  # no host named: the master's


def test_each_requests_scheduled_time_is_corrected_by_the_clock_of_the_loadgen_host_that_sent_it(tmp_path):
    t = 1_800_000_000 * S
    offsets = {"host1": 0, "host3": 40 * MS}  # host3's clock runs 40 ms ahead

    def clock(offset):
        return clocks.HostClock(clocks.Estimate(at_ns=t, offset_ns=float(offset), rtt_ns=100_000, samples=8))

    host_clocks = {name: clock(offset) for name, offset in offsets.items()}
    rows = []
    for i, sender in enumerate(["host1", "host3", "host3", "host1"]):
        scheduled = t + i * 10 * MS  # on the coordinator's clock
        rows.append({"ev": "sent", "id": f"{i:032x}", "task": "noop", "queue": "default", "digest": "d",
                     "request_id": f"{sender}:1a-{i + 1:x}", "scheduled_ns": scheduled + offsets[sender],
                     "sent_ns": scheduled + MS, "enqueued_ns": scheduled + 2 * MS, "pid": 1, "host": "host1"})
    path = tmp_path / "hosts" / "host1" / "ledger" / "host1-1.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    correct_ledgers(tmp_path, host_clocks, ["host1", "host3"])
    sent = ledger.executions(tmp_path / "ledger").drop_duplicates("id").set_index("id")
    assert [int(sent.loc[f"{i:032x}", "scheduled_ns"]) for i in range(4)] == [t + i * 10 * MS for i in range(4)]


def test_a_loadgen_host_short_of_locust_workers_is_named_in_the_generator_check():
    roll_call = {"expected": 3, "max_wait_s": 30, "end_requested_ns": 1,
                 "workers": {"a": {"index": 0, "ended": True, "host": "host1", "pid": 11},
                             "b": {"index": 1, "ended": True, "host": "host1", "pid": 12}}}
    verdict = measure.load_workers_reported(roll_call, 3, {"host1": 2, "host3": 1})
    assert not verdict["ok"]
    assert verdict["by_host"] == {"host1": {"expected": 2, "reported": 2}, "host3": {"expected": 1, "reported": 0}}
    assert "never connected: index 2" in verdict["detail"] and "host3: 0 of its 1 Locust worker(s)" in verdict["detail"]


def test_the_three_host_example_is_read_by_ansible_itself_with_the_master_on_its_first_loadgen_host():
    inventory = inv.load(ROOT / "benchmarks" / "deploy" / "three-hosts.ini")
    assert [h.name for h in inventory.role("loadgen")] == ["host1", "host3"]
    assert {h.name: h.address for h in inventory.hosts.values()} == ADDRESSES
    the_plan = plan.build(load_spec(load_workers=2), inventory, "run-1", "k" * 32)
    assert [name for name, entry in the_plan.hosts.items() if "load" in entry] == ["host1"]
    assert plan.load_master(load_spec(load_workers=2), inventory) == ("127.0.0.2", 8063)


def test_every_api_host_runs_the_api_and_locust_sends_to_each_in_turn():
    hostvars = {name: {"ansible_connection": "local", "qb_address": address, "qb_root": f"/tmp/qb-test/{name}"}
                for name, address in ADDRESSES.items()}
    groups = {"loadgen": ["host1"], "api": ["host3", "host1"], "broker": ["host1"], "workers": ["host2"]}
    inventory = inv.from_listing(Path("/x/hosts.ini"), listing(hostvars, groups))
    the_plan = plan.build(load_spec(api_workers=3), inventory, "run-1", "k" * 32)
    for host in ("host1", "host3"):
        (api,) = [s for s in the_plan.hosts[host]["services"] if s["name"] == "api"]
        assert f"{ADDRESSES[host]}:8000" in api["argv"] and api["argv"][api["argv"].index("-w") + 1] == "3"
        assert api["port"] == 8000 and api["env"]["QUEUEBENCH_HOST"] == host
    assert not [s for s in the_plan.hosts["host2"]["services"] if s["name"] == "api"]
    locust = the_plan.hosts["host1"]["load"]["argv"]
    assert locust[locust.index("--qb-api-urls") + 1] == "http://127.0.0.4:8000,http://127.0.0.2:8000"
    assert locust[locust.index("--host") + 1] == "http://127.0.0.4:8000"  # the first api host
    one_api = three_hosts()
    assert "--qb-api-urls" not in plan.build(load_spec(load_workers=2), one_api, "r", "k" * 32).hosts["host1"]["load"]["argv"]


# --- a real run with two loadgen hosts ---------------------------------------------------------------------

@pytest.fixture
def need_three_local_hosts() -> None:
    """Three hosts on this machine need loopback aliases and start-stop-daemon: skip on a laptop without
    them, fail in CI (as tests/conftest.py does for brokers)."""
    need_local_hosts(*ADDRESSES.values())


def write_three_hosts(tmp_path: Path) -> Path:
    """host1 (127.0.0.2) loadgen, API and broker; host3 (127.0.0.4) a second loadgen and API; host2
    (127.0.0.3) the workers; every port free."""
    def udp(host):
        return free_port(ADDRESSES[host], socket.SOCK_DGRAM)

    def tcp(host):
        return free_port(ADDRESSES[host])

    path = tmp_path / "hosts.ini"
    path.write_text(f"""
[loadgen]
host1 qb_address=127.0.0.2 qb_root={tmp_path / 'h1'} qb_api_port={tcp('host1')} qb_broker_port={tcp('host1')} \
qb_clock_port={udp('host1')} qb_locust_port={tcp('host1')}
host3 qb_address=127.0.0.4 qb_root={tmp_path / 'h3'} qb_clock_port={udp('host3')} qb_locust_port={tcp('host3')} qb_api_port={tcp('host3')}
[api]
host1
host3
[broker]
host1
[workers]
host2 qb_address=127.0.0.3 qb_root={tmp_path / 'h2'} qb_clock_port={udp('host2')}
[all:vars]
ansible_connection=local
ansible_python_interpreter={sys.executable}
qb_python={sys.executable}
""")
    return path


@pytest.mark.service
def test_two_loadgen_hosts_each_send_through_their_own_locust_worker_to_two_apis_and_every_task_runs_exactly_once(
        tmp_path, need_redis, need_three_local_hosts):
    done, out = run_tiny(write_three_hosts(tmp_path), tmp_path, duration_s=1, load_workers=2)
    (run_dir,) = store.run_dirs(out)
    record = store.load_run(run_dir)
    assert done.returncode == 0 and record["status"] == "ok", (record.get("detail"), done.stderr[-3000:])
    checks, figures = record["summary"]["checks"], record["summary"]["figures"]
    for name in ("locust_count_matches", "requests_match_ledger", "generator_kept_up", "all_finished",
                 "no_duplicates", "nothing_unsent_ran"):
        assert checks[name]["ok"], (name, checks[name])

    # The master ran on host1 (the first loadgen host), one Locust worker on each loadgen host.
    assert {(p["host"], p["name"]) for p in record["processes"] if p["name"].startswith("locust")} == {
        ("host1", "locust"), ("host1", "locust-worker-0"), ("host3", "locust-worker-1")}
    assert record["generator"]["host"] == "host1" and record["generator"]["hosts"] == ["host1", "host3"]
    assert figures["load_workers"]["by_host"] == {"host1": {"expected": 1, "reported": 1},
                                                  "host3": {"expected": 1, "reported": 1}}

    # Each loadgen host wrote its own raw log, collected and checked against its own manifest.
    for host in ("host1", "host3"):
        logs = list((run_dir / "hosts" / host / store.REQUEST_LOGS_DIR).glob("*.csv"))
        assert len(logs) == 1, (host, logs)
        assert manifest.verify(run_dir / "hosts" / host, host)["files"]
    assert not (run_dir / "hosts" / "host3" / store.LOCUST_WORKERS_JSON).exists()  # the master's, on host1

    # Merged, the raw rows are Locust's count and the ledger's sent rows; both hosts' requests are there.
    merged = store.read_requests_table(run_dir)
    posted, failed = store.locust_post_counts(run_dir)
    assert posted == int((merged["status"] != measure.UNANSWERED_STATUS).sum()) and failed == 0
    tasks = pd.read_parquet(run_dir / store.TASKS_TABLE)
    sent = tasks.dropna(subset=["sent_ns"]).drop_duplicates("id")
    assert int((merged["status"] == 202).sum()) == len(sent) == figures["sent"] > 0
    assert merged["request_id"].is_unique
    senders = merged["request_id"].str.partition(":")[0].value_counts().to_dict()
    assert set(senders) == {"host1", "host3"} and figures["requests_by_loadgen_host"] == senders
    assert set(sent["request_id"].str.partition(":")[0]) == {"host1", "host3"}

    # Both APIs took requests (Locust sends to each in turn): each api host's ledger has sent rows.
    assert record["api"]["hosts"] == ["host1", "host3"]
    for host in ("host1", "host3"):
        rows = [json.loads(line) for path in (run_dir / "hosts" / host / "ledger").glob("*.jsonl")
                for line in path.read_text().splitlines()]
        assert any(r["ev"] == "sent" and not r.get("probe") for r in rows), f"no request reached the API on {host}"

    # Every task ran exactly once, on host2.
    ok = tasks[tasks["outcome"] == "ok"]
    assert ok.groupby("id").size().eq(1).all() and set(ok["id"]) == set(sent["id"])
    assert set(ok["worker_host"]) == {"host2"}
    shown = " ".join(done.stderr.split())
    assert "loadgen host1: Locust master; 1 Locust worker(s)" in shown and "loadgen host3: 1 Locust worker(s)" in shown
    assert not left_running(tmp_path)  # nothing started on the hosts is left running
