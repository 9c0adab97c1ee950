"""Brokers of an inventory run: a private RabbitMQ node on the broker host (with a Redis beside it for results),
and brokers the user runs instead of a broker host (``--broker-url``, ``--amqp-url``). Plans are read from
``from_listing`` (no Ansible); refusals name the key and what is allowed and exit 2 before anything starts;
one real run per kind of broker on two loopback hosts runs every task exactly once (the one on the user's Redis
is a drain cell, so drain mode on an inventory is checked end to end there too)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import redis
from click.testing import CliRunner

from backends.base import BackendSettings
from benchmarks import brokers, store
from benchmarks import spec as spec_mod
from benchmarks.cli import cli
from benchmarks.deploy import host as host_mod
from benchmarks.deploy import inventory as inv
from benchmarks.deploy import plan
from benchmarks.deploy.plan import ExternalBrokers, PlanError, check_spec
from benchmarks.procs import Supervisor
from tests.test_inventory import (
    EXAMPLE,
    ROOT,
    assert_nothing_left_running,
    free_port,
    listing,
    need_local_hosts,
)

HOST1, HOST2 = "127.0.0.5", "127.0.0.6"


def hosts(broker: bool = True, **host1) -> tuple[dict, dict]:
    """host1 (127.0.0.5): loadgen, api and (`broker`) broker; host2 (127.0.0.6): the workers."""
    hostvars = {"host1": {"ansible_connection": "local", "qb_address": HOST1, "qb_root": "/tmp/qb-test/h1",
                          "qb_amqp_port": 5699, "qb_rabbitmq_server": "/opt/rabbitmq/sbin/rabbitmq-server"} | host1,
                "host2": {"ansible_connection": "local", "qb_address": HOST2, "qb_root": "/tmp/qb-test/h2"}}
    groups = {"loadgen": ["host1"], "api": ["host1"], "workers": ["host2"], **({"broker": ["host1"]} if broker else {})}
    return hostvars, groups


def parse(hostvars: dict, groups: dict, external_broker: bool = False) -> inv.Inventory:
    return inv.from_listing(Path("/x/hosts.ini"), listing(hostvars, groups), external_broker=external_broker)


def cell_spec(**keys) -> dict:
    return spec_mod.defaults("system") | spec_mod.defaults("workload") | {
        "backend": "celery", "broker": "rabbitmq", "processes": 1, "options": {}, "args": {}} | keys


def services_of(the_plan: plan.CellPlan) -> dict[str, dict[str, dict]]:
    return {name: {s["name"]: s for s in entry["services"]} for name, entry in the_plan.hosts.items()}


# --- plans ----------------------------------------------------------------------------------------------------


def test_a_rabbitmq_cell_runs_a_node_of_its_own_on_the_broker_hosts_amqp_port_and_a_redis_beside_it_for_results():
    the_plan = plan.build(cell_spec(results=True), parse(*hosts()), "run-1", "k" * 32)
    services = services_of(the_plan)
    assert set(services["host1"]) == {"rabbitmq", "redis", "clock", "sampler", "api"}
    node = services["host1"]["rabbitmq"]
    assert node["stage"] == "broker" and node["port"] == 5699 and node["address"] == HOST1
    assert node["argv"] == ["/opt/rabbitmq/sbin/rabbitmq-server"]
    env, run_dir = node["env"], "/tmp/qb-test/h1/runs/run-1"
    # Its own node name (address and port: hosts on one machine share epmd), listener, distribution port on
    # its address, and every file under the run directory: nothing of the system node's.
    assert env["RABBITMQ_NODENAME"] == "qb5699-127-0-0-5@localhost"
    assert (env["RABBITMQ_NODE_IP_ADDRESS"], env["RABBITMQ_NODE_PORT"], env["RABBITMQ_DIST_PORT"]) == (
        HOST1, "5699", "25699")
    assert env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == "-kernel inet_dist_use_interface {127,0,0,5}"
    for key in ("RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE", "RABBITMQ_CONFIG_FILE", "RABBITMQ_CONF_ENV_FILE",
                "RABBITMQ_ENABLED_PLUGINS_FILE", "HOME"):
        assert env[key].startswith(run_dir + "/"), (key, env[key])
    files = {f["path"]: f["content"] for f in the_plan.hosts["host1"]["files"]}
    config = files[env["RABBITMQ_CONFIG_FILE"]]
    assert f"listeners.tcp.local = {HOST1}:5699" in config and "default_user = queuebench" in config
    assert the_plan.hosts["host2"]["files"] == []

    # Every process, the API and the workers on host2 included, uses the node and the broker host's Redis.
    settings = the_plan.settings
    password = config.split("default_pass = ")[1].split()[0]
    assert settings.broker_url == f"amqp://queuebench:{password}@{HOST1}:5699/%2F"
    assert settings.result_url == f"redis://{HOST1}:6390/0"
    assert BackendSettings.from_env(services["host1"]["api"]["env"]) == settings
    assert the_plan.hosts["host1"]["broker_wait"][-4:-2] == [settings.broker_url, settings.result_url]
    assert "broker_wait" not in the_plan.hosts["host2"]
    for entry in the_plan.hosts.values():
        assert entry["broker_rtt"][-1] == settings.broker_url
    # Stopped last, with the Redis, and no password in what run.json records.
    assert {"--stop", node["pidfile"], services["host1"]["redis"]["pidfile"]} <= set(the_plan.hosts["host1"]["collect"])
    assert password not in json.dumps(the_plan.processes)


def test_a_rabbitmq_cell_without_results_runs_no_redis_and_each_cell_gets_its_own_password():
    inventory = parse(*hosts())
    first = plan.build(cell_spec(backend="dramatiq", results=False), inventory, "run-1", "k" * 32)
    assert set(services_of(first)["host1"]) == {"rabbitmq", "clock", "sampler", "api"}
    assert first.settings.result_url is None
    again = plan.build(cell_spec(backend="dramatiq", results=False), inventory, "run-1", "k" * 32)
    assert first.settings.broker_url != again.settings.broker_url


def test_without_a_broker_host_the_plan_starts_no_broker_and_every_host_times_the_users():
    external = ExternalBrokers(amqp_url="amqp://u:p@127.0.0.1:5672//", broker_url="redis://127.0.0.1:6379/4")
    borrowed = BackendSettings(broker="rabbitmq", broker_url=external.amqp_url, result_url=external.broker_url)
    inventory = parse(*hosts(broker=False), external_broker=True)
    the_plan = plan.build(cell_spec(), inventory, "run-1", "k" * 32, external, borrowed)
    assert not any(s["stage"] == "broker" for entry in the_plan.hosts.values() for s in entry["services"])
    assert the_plan.settings is borrowed
    for entry in the_plan.hosts.values():
        assert "broker_wait" not in entry and entry["files"] == []
        assert entry["broker_rtt"][-1] == "amqp://u:p@127.0.0.1:5672/%2F"  # pika's spelling of the vhost "/"


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("keys", "external", "message"), [
    ({"broker": "redis", "backend": "rq"}, ExternalBrokers(amqp_url="amqp://x//"),
     r"broker = 'redis': the inventory has no broker host, so the run needs --broker-url .* or a \[broker\] group"),
    ({"results": False}, ExternalBrokers(broker_url="redis://x:6379/1"),
     "broker = 'rabbitmq': the inventory has no broker host, so the run needs --amqp-url"),
    ({"results": True}, ExternalBrokers(amqp_url="amqp://x//"),
     "broker = 'rabbitmq', results = true: .* needs --broker-url \\(a Redis for the results"),
])
def test_without_a_broker_host_a_cell_is_refused_naming_the_broker_it_lacks(keys, external, message):
    inventory = parse(*hosts(broker=False), external_broker=True)
    with pytest.raises(PlanError, match=message):
        check_spec(cell_spec(**keys), inventory, external)


def test_a_broker_or_backend_an_inventory_cannot_deploy_is_refused_naming_the_allowed_values():
    inventory = parse(*hosts())
    with pytest.raises(PlanError, match='broker = \'sqlite\': an inventory run supports broker = "redis" or "rabbitmq"'):
        check_spec(cell_spec(broker="sqlite", backend="huey"), inventory)
    with pytest.raises(PlanError, match="broker = 'rabbitmq': backend = 'rq' runs on redis only; backends on "
                                        "rabbitmq: .*celery.*dramatiq"):
        check_spec(cell_spec(backend="rq"), inventory)


def test_a_broker_host_beside_a_broker_url_and_no_broker_at_all_are_refused_naming_the_role():
    with pytest.raises(inv.InventoryError, match="role 'broker' has host1, but the run names a broker you run"):
        parse(*hosts(), external_broker=True)
    with pytest.raises(inv.InventoryError, match="role 'broker' has no host; .* a broker you run: --broker-url"):
        parse(*hosts(broker=False))


def test_an_amqp_port_without_room_for_its_distribution_port_or_taken_by_another_service_is_refused():
    with pytest.raises(inv.InventoryError, match="host host1: qb_amqp_port must be at most 45535"):
        parse(*hosts(qb_amqp_port=50000))
    with pytest.raises(inv.InventoryError, match="host1 qb_api_port and host1 qb_amqp_port both use 127.0.0.5:8000"):
        parse(*hosts(qb_amqp_port=8000))


def run_cli(*args: str) -> object:
    return CliRunner().invoke(cli, ["run", *args])


def test_run_refuses_a_broker_url_beside_the_inventorys_broker_host_with_exit_2_before_anything_starts(tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text('backend = "rq"\n')
    out = tmp_path / "out"
    result = run_cli(str(matrix), "--inventory", str(EXAMPLE), "--out", str(out), "--broker-url",
                     "redis://127.0.0.1:6379/15")
    assert result.exit_code == 2 and "role 'broker' has host1, but the run names a broker you run" in result.output
    result = run_cli(str(matrix), "--inventory", str(EXAMPLE), "--out", str(out), "--per-run-vhost")
    assert result.exit_code == 2 and "--per-run-vhost" in result.output and "needs --amqp-url" in result.output
    assert not out.exists()


def test_run_refuses_a_rabbitmq_cell_on_an_inventory_without_a_broker_host_or_amqp_url_with_exit_2(tmp_path):
    inventory_file = tmp_path / "hosts.ini"
    inventory_file.write_text(f"[loadgen]\nh1 qb_address={HOST1} qb_root={tmp_path}/h1 ansible_connection=local\n"
                              "[api]\nh1\n[workers]\nh1\n")
    matrix = tmp_path / "m.toml"
    matrix.write_text('backend = "celery"\nbroker = "rabbitmq"\nresults = false\n')
    out = tmp_path / "out"
    result = run_cli(str(matrix), "--inventory", str(inventory_file), "--out", str(out), "--broker-url",
                     "redis://127.0.0.1:6379/15")
    assert result.exit_code == 2
    assert "the inventory has no broker host, so the run needs --amqp-url" in " ".join(result.output.split())
    assert not out.exists()


def test_an_amqp_broker_that_does_not_answer_gives_no_round_trip_but_the_error():
    result = host_mod.broker_rtt(f"amqp://guest:guest@127.0.0.1:{free_port('127.0.0.1')}/%2F", samples=2)
    assert result["rtt_ms"] is None and result["samples"] == 0 and result["error"]


# --- real runs on two loopback hosts ----------------------------------------------------------------------------


@pytest.fixture
def need_hosts() -> None:
    need_local_hosts(HOST1, HOST2)


def free_amqp_port() -> int:
    """A port free on host1 that leaves room for the node's distribution port (20000 above), free too."""
    for port in random.sample(range(20000, inv.MAX_AMQP_PORT + 1), 100):
        try:
            for taken in (port, port + brokers.DIST_PORT_OFFSET):
                with socket.socket() as sock:
                    sock.bind((HOST1, taken))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free AMQP port on {HOST1}")


def run_tiny(tmp_path: Path, cell: dict, *flags: str, broker: bool = True) -> tuple[subprocess.CompletedProcess, Path]:
    """`queuebench run --inventory` of one tiny cell on host1 (127.0.0.5: loadgen, API and, with `broker`, the
    broker) and host2 (127.0.0.6: the workers), every port free; the finished command and its output."""
    inventory_file = tmp_path / "hosts.ini"
    ports = (f"qb_api_port={free_port(HOST1)} qb_broker_port={free_port(HOST1)} qb_amqp_port={free_amqp_port()} "
             f"qb_clock_port={free_port(HOST1, socket.SOCK_DGRAM)}")
    inventory_file.write_text(f"""
[loadgen]
host1 qb_address={HOST1} qb_root={tmp_path / 'h1'} {ports}
[api]
host1
{'[broker]' if broker else ''}
{'host1' if broker else ''}
[workers]
host2 qb_address={HOST2} qb_root={tmp_path / 'h2'} qb_clock_port={free_port(HOST2, socket.SOCK_DGRAM)}
[all:vars]
ansible_connection=local
ansible_python_interpreter={sys.executable}
qb_python={sys.executable}
""")
    cell = {"processes": 1, "api_workers": 1, "api_threads": 2, "task": "noop", "rate": 10, "warmup_s": 0.5,
            "duration_s": 2, "drain_timeout_s": 30} | cell
    matrix_file = tmp_path / "tiny.toml"
    matrix_file.write_text('name = "tiny-brokers"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cell.items())
                           + '[rq]\nworker_class = "SimpleWorker"\n')
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(matrix_file), "--inventory",
                           str(inventory_file), "--out", str(out), *flags], capture_output=True, text=True,
                          timeout=280, cwd=ROOT)
    return done, out


def assert_every_task_ran_once_on_host2(done: subprocess.CompletedProcess, out: Path) -> dict:
    (run_dir,) = store.run_dirs(out)
    record = store.load_run(run_dir)
    assert done.returncode == 0 and record["status"] == "ok", (record.get("detail"), done.stderr[-3000:])
    tasks = pd.read_parquet(run_dir / store.TASKS_TABLE)
    sent = set(tasks.dropna(subset=["sent_ns"])["id"])
    ok = tasks[tasks["outcome"] == "ok"]
    assert sent and ok.groupby("id").size().eq(1).all() and set(ok["id"]) == sent
    assert set(ok["worker_host"]) == {"host2"}
    rtts = record["brokers"]["broker"]["rtt_ms_by_host"]
    assert set(rtts) == {"host1", "host2"} and all(ms is not None and ms >= 0 for ms in rtts.values()), rtts
    return record


@pytest.mark.service
def test_celery_on_a_rabbitmq_node_on_the_broker_host_runs_every_task_once_on_the_workers_host(
        tmp_path, need_redis, need_rabbitmq_server, need_hosts):
    done, out = run_tiny(tmp_path, {"backend": "celery", "broker": "rabbitmq", "results": True})
    record = assert_every_task_ran_once_on_host2(done, out)
    broker = record["brokers"]["broker"]
    assert broker["kind"] == "rabbitmq" and broker["host"] == "host1" and broker["version"]
    assert broker["url"].startswith("amqp://queuebench:***@127.0.0.5:")
    assert record["brokers"]["result_store"]["kind"] == "redis"
    assert "AMQP basic.qos" in broker["rtt_method"]
    assert_nothing_left_running(tmp_path)


@pytest.mark.service
def test_a_drain_on_the_users_redis_instead_of_a_broker_host_leaves_their_keys_and_runs_every_task_once_on_host2(
        tmp_path, need_redis, need_hosts):
    # Two features in one real run (each costs half a minute of CI): brokers you run, and drain mode.
    supervisor = Supervisor()
    (tmp_path / "users" / "logs").mkdir(parents=True)
    try:
        users = brokers.start_private_redis(supervisor, tmp_path / "users", name="users-redis")
        theirs = redis.Redis.from_url(users.url.rsplit("/", 1)[0] + "/9")
        theirs.set("the-users-key", "kept")  # another database of "their" Redis: never touched
        done, out = run_tiny(tmp_path, {"backend": "rq", "mode": "drain", "tasks": 30, "processes": 2},
                             "--broker-url", users.url.rsplit("/", 1)[0] + "/2", broker=False)
        record = assert_every_task_ran_once_on_host2(done, out)
        broker = record["brokers"]["broker"]
        assert broker["kind"] == "redis" and broker["owned"] and broker["url"].endswith("/2")
        assert "host" not in broker  # nobody's host: the user's
        assert theirs.get("the-users-key") == b"kept"
        theirs.close()
    finally:
        supervisor.stop_all()
    assert_nothing_left_running(tmp_path)

    # The drain: every preloaded task (sent from the coordinator, its rows in ledger/) ran once, on host2.
    (run_dir,) = store.run_dirs(out)
    assert record["drain_ended_by"] == "all-finished" and record["probe_tasks"] >= 1
    tasks = pd.read_parquet(run_dir / store.TASKS_TABLE)
    assert tasks.dropna(subset=["sent_ns"])["id"].nunique() == 30
    checks, figures = record["summary"]["checks"], record["summary"]["figures"]
    assert all(checks[k]["ok"] for k in ("all_finished", "no_duplicates", "nothing_unsent_ran"))
    assert figures["executions_by_host"] == {"host2": 30}
    assert figures["wall_from_worker_start_s"] > 0 and figures["resources_by_host"]["host2"]["components"]
    # No API, no Locust, no broker host: host1 ran its clock responder and sampler only.
    assert {p["name"] for p in record["processes"] if p["host"] == "host1"} == {"clock", "sampler"}
    assert not (run_dir / store.REQUESTS_TABLE).exists()
    assert "exactly once across hosts: yes" in " ".join(done.stderr.split())
