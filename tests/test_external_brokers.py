"""Brokers the harness does not own: a Redis master watched by Sentinel, a Redis Cluster refused before anything
starts, quorum queues on RabbitMQ.

The Sentinel is real: a private redis-server (the master) and ``redis-server --sentinel`` watching it, on free
loopback ports in the test's directory, both stopped at the end. Refusals of a URL are checked without
starting any process (a redis-server in cluster mode stands in for a cluster behind a plain URL). The
RabbitMQ runs use a private node with the management API, each in a virtual host of its own: quorum
queues make Celery's worker declare delayed-delivery queues it never deletes, and those must not land on
the machine's own RabbitMQ. No assertion depends on how fast the machine is.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import urllib.request

import pika
import pika.exceptions
import psutil
import pytest
import redis
from click.testing import CliRunner

import backends
from backends import redis_url
from backends.base import UnsupportedOption
from benchmarks import brokers, matrix, runner
from benchmarks.cli import cli
from benchmarks.procs import Supervisor, wait_until
from benchmarks.stack import Stack, StackConfig, validate

#: The libraries the issue names, and what each supports on Redis beyond one server.
QUEUE_LIBRARIES = ("celery", "rq", "dramatiq")
#: How a library's issue or pull request is named in a refusal: owner/repo#number.
ISSUE = re.compile(r"[\w.-]+/[\w.-]+#\d+")
MASTER_NAME = "qbmaster"


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# --- refused before anything starts -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", QUEUE_LIBRARIES)
def test_a_redis_cluster_url_is_refused_naming_the_librarys_issue_without_starting_anything(backend):
    before = _children()
    with pytest.raises(UnsupportedOption) as refused:
        validate(StackConfig.of(backend=backend, broker_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001"))
    message = str(refused.value)
    assert "cluster" in message
    assert backends.backend_class(backend).refused_shapes["cluster"] in message
    assert ISSUE.search(message), message
    assert _children() == before


def test_queuebench_run_refuses_a_cluster_url_with_exit_2_before_any_cell_starts(tmp_path):
    (tmp_path / "m.toml").write_text('backend = ["celery", "rq", "dramatiq"]\nmode = "drain"\ntasks = 5\n')
    before = _children()
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "m.toml"), "--out", str(tmp_path / "out"),
                                      "--broker-url", "redis+cluster://127.0.0.1:7000"])
    assert result.exit_code == 2, result.output
    assert "cluster" in result.output and ISSUE.search(result.output), result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert _children() == before


def test_queuebench_serve_refuses_a_cluster_url_with_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--backend", "rq", "--broker-url", "redis+cluster://127.0.0.1:7000",
                                      "--run-dir", str(tmp_path / "serve")])
    assert result.exit_code == 2, result.output
    assert ISSUE.search(result.output), result.output


def test_a_malformed_sentinel_url_is_refused_saying_what_it_lacks():
    with pytest.raises(UnsupportedOption, match="master group"):
        validate(StackConfig.of(backend="celery", broker_url="redis+sentinel://127.0.0.1:26379"))


@pytest.mark.parametrize("backend", ["huey", "arq", "baseline"])
def test_a_sentinel_url_is_refused_for_a_backend_that_builds_plain_redis_connections(backend):
    with pytest.raises(UnsupportedOption, match="sentinel"):
        validate(StackConfig.of(backend=backend, broker_url=f"redis+sentinel://127.0.0.1:26379/{MASTER_NAME}/0"))


def test_quorum_queues_for_dramatiq_are_refused_naming_its_pull_requests():
    with pytest.raises(UnsupportedOption) as refused:
        validate(StackConfig.of(backend="dramatiq", broker="rabbitmq", queue_type="quorum"))
    assert ISSUE.search(str(refused.value)), str(refused.value)


def test_a_matrix_cell_asking_dramatiq_for_quorum_queues_is_skipped_with_the_reason():
    grid = matrix.parse('backend = ["celery", "dramatiq"]\nbroker = "rabbitmq"\nqueue_type = "quorum"\n'
                        'mode = "drain"\ntasks = 5\n', name="quorum")
    reasons = {cell.spec["backend"]: cell.skip_reason for cell in grid.cells}
    assert reasons["celery"] is None
    assert reasons["dramatiq"] and ISSUE.search(reasons["dramatiq"])


def test_classic_queues_leave_a_cells_spec_and_run_id_as_they_were():
    plain = matrix.parse('backend = "celery"\nbroker = "rabbitmq"\nmode = "drain"\ntasks = 5\n').cells[0]
    classic = matrix.parse('backend = "celery"\nbroker = "rabbitmq"\nqueue_type = "classic"\nmode = "drain"\n'
                           'tasks = 5\n').cells[0]
    quorum = matrix.parse('backend = "celery"\nbroker = "rabbitmq"\nqueue_type = "quorum"\nmode = "drain"\n'
                          'tasks = 5\n').cells[0]
    assert "queue_type" not in plain.spec and plain.run_id == classic.run_id
    assert quorum.spec["queue_type"] == "quorum" and quorum.run_id != plain.run_id


def test_a_redis_server_in_cluster_mode_behind_a_plain_url_is_refused_before_workers_start(need_redis, tmp_path):
    supervisor = Supervisor()
    port = brokers.free_port()
    while port > 55_000:  # a cluster node also binds port + 10000 (its bus), which must be a valid port
        port = brokers.free_port()
    try:
        supervisor.start("cluster-node", [brokers.redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                                          "--cluster-config-file", str(tmp_path / "nodes.conf"),
                                          "--dir", str(tmp_path)], log_path=tmp_path / "node.log")
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _pings(url), timeout_s=10, interval_s=0.05, what="the cluster-mode node",
                   supervisor=supervisor)
        stack = Stack(StackConfig.of(backend="rq", broker_url=url), tmp_path / "run")
        try:
            with pytest.raises(UnsupportedOption, match="cluster") as refused:
                stack.start_brokers()
            assert ISSUE.search(str(refused.value))
            assert stack.worker_procs == [] and stack.backend is None
        finally:
            stack.stop()
    finally:
        supervisor.stop_all()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


# --- a real Sentinel --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_master(tmp_path_factory):
    """A master redis-server and one Sentinel watching it as `MASTER_NAME`, on loopback; yields
    (the Sentinel URL without its database, the master's plain URL without its database)."""
    work = tmp_path_factory.mktemp("sentinel")
    try:
        binary = brokers.redis_server_binary()
    except brokers.BrokerError as exc:  # as conftest's need_redis: a skip on a laptop, a failure in CI
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI is set, so this is a failure, not a skip)")
        pytest.skip(str(exc))
    supervisor = Supervisor()
    try:
        master = brokers.start_private_redis(supervisor, work, name="master")
        master_port = int(master.url.rsplit(":", 1)[1].split("/")[0])
        sentinel_port = brokers.free_port()
        config = work / "sentinel.conf"  # Sentinel rewrites its config file: it must be writable
        config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {work}\n"
                          f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
                          f"sentinel down-after-milliseconds {MASTER_NAME} 60000\n")
        supervisor.start("sentinel", [binary, str(config), "--sentinel"], log_path=work / "logs" / "sentinel.log")
        probe = redis.Redis(host="127.0.0.1", port=sentinel_port, socket_connect_timeout=0.5)

        def knows_master() -> bool:
            try:
                return probe.sentinel_get_master_addr_by_name(MASTER_NAME) is not None
            except redis.RedisError:
                return False

        wait_until(knows_master, timeout_s=20, interval_s=0.1, what="the Sentinel to watch the master",
                   supervisor=supervisor)
        probe.close()
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/{MASTER_NAME}", master.url.rsplit("/", 1)[0]
    finally:
        supervisor.stop_all()


def test_a_sentinel_url_leads_every_client_to_the_master_the_sentinel_names(need_redis, sentinel_master):
    sentinel_url, master_url = sentinel_master
    client = redis_url.client(f"{sentinel_url}/4", socket_timeout=2)
    try:
        client.set("written-through-sentinel", "1")
    finally:
        client.close()
    assert redis.Redis.from_url(f"{master_url}/4").get("written-through-sentinel") == b"1"
    redis.Redis.from_url(f"{master_url}/4").delete("written-through-sentinel")


def test_a_sweep_of_tiny_runs_through_sentinel_passes_its_self_checks_and_records_the_topology(
        need_redis, tmp_path, sentinel_master):
    # Celery, RQ and Dramatiq one after another on one database of "the user's" Redis: each purges what it
    # created, and what a library keeps beyond that (Celery's queue bindings, RQ's short-lived locks) does
    # not make the database dirty for the next cell of the same sweep.
    sentinel_url, master_url = sentinel_master
    users = redis.Redis.from_url(f"{master_url}/9")
    users.set("the-users-key", "kept")  # another database of "their" Redis: never touched
    grid = matrix.parse(f'backend = {list(QUEUE_LIBRARIES)!r}\nprocesses = 1\nmode = "drain"\ntask = "noop"\n'
                        'tasks = 20\n'.replace("'", '"'), name="sentinel")
    results = runner.run_matrix(grid, tmp_path / "runs", broker_url=f"{sentinel_url}/1")
    assert [r.status for r in results] == ["ok"] * len(QUEUE_LIBRARIES), [r.detail for r in results]
    for result in results:
        record = json.loads((result.run_dir / "run.json").read_text())
        broker = record["brokers"]["broker"]
        assert broker["topology"] == "sentinel" and broker["owned"]
        assert broker["master"] == master_url.split("//", 1)[1] and broker["master_name"] == MASTER_NAME
        assert broker["rtt_ms"] > 0 and broker["role"] == "master"
        assert record["settings"]["broker_topology"] == "sentinel"
    assert users.get("the-users-key") == b"kept"
    users.delete("the-users-key")


# --- RabbitMQ: quorum queues, and a virtual host of the run's own -------------------------------------------


def _vhosts(admin_url: str) -> list[str] | None:
    request = urllib.request.Request(f"{admin_url}/api/vhosts")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return [v["name"] for v in json.loads(response.read())]
    except OSError:
        return None


@pytest.fixture(scope="module")
def rabbit_node(tmp_path_factory):
    """A private RabbitMQ node with the management API, standing in for the user's own: the runs here leave
    things in a virtual host (Celery's delayed-delivery queues beside quorum queues) and create virtual hosts,
    which the machine's own RabbitMQ must not get. Yields (its AMQP URL, its management API URL)."""
    if not shutil.which("rabbitmq-server"):
        message = "rabbitmq-server is not installed: a private node with the management API is needed"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)
    work = tmp_path_factory.mktemp("rabbit")
    supervisor = Supervisor()
    management_port = brokers.free_port()
    admin_url = f"http://127.0.0.1:{management_port}"
    try:
        node = brokers.start_private_rabbitmq(supervisor, work, management_port=management_port)
        wait_until(lambda: _vhosts(admin_url) is not None, timeout_s=60, interval_s=0.2,
                   what="the private node's management API", supervisor=supervisor)
        yield node.url, admin_url
    finally:
        supervisor.stop_all()


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text or "")[:2])


def test_a_tiny_celery_run_on_quorum_queues_passes_its_self_checks(need_redis, tmp_path, rabbit_node,
                                                                    monkeypatch):
    amqp_url, admin_url = rabbit_node
    version = brokers.describe_rabbitmq(brokers.BrokerHandle("rabbitmq", amqp_url, owned=False), "quorum")["version"]
    if _version(version) < (3, 8):
        pytest.skip(f"RabbitMQ {version} has no quorum queues (they came in 3.8)")
    monkeypatch.setenv(brokers.AMQP_ADMIN_URL_ENV, admin_url)
    stack = Stack(StackConfig.of(backend="celery", broker="rabbitmq", queue_type="quorum", processes=1,
                                 amqp_url=amqp_url, per_run_vhost=True), tmp_path / "stack")
    with stack:
        # A quorum queue refuses to be declared again as classic: the queue Celery declared is a quorum queue.
        assert stack.broker is not None
        connection = pika.BlockingConnection(pika.URLParameters(brokers.pika_url(stack.broker.url)))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-type"):
                connection.channel().queue_declare("default", durable=True, arguments={"x-queue-type": "classic"})
        finally:
            connection.close()
    grid = matrix.parse('backend = "celery"\nbroker = "rabbitmq"\nqueue_type = "quorum"\nprocesses = 1\n'
                        'mode = "drain"\ntask = "noop"\ntasks = 20\n', name="quorum")
    results = runner.run_matrix(grid, tmp_path / "runs", amqp_url=amqp_url, per_run_vhost=True)
    assert [r.status for r in results] == ["ok"], [r.detail for r in results]
    broker = json.loads((results[0].run_dir / "run.json").read_text())["brokers"]["broker"]
    assert broker["queue_type"] == "quorum" and broker["rtt_ms"] > 0
    assert _vhosts(admin_url) == ["/"], "each run's virtual host, with Celery's delayed-delivery queues, is gone"


def test_a_rabbitmq_run_in_a_per_run_vhost_leaves_no_vhost_behind(need_redis, tmp_path, rabbit_node, monkeypatch):
    amqp_url, admin_url = rabbit_node
    monkeypatch.setenv(brokers.AMQP_ADMIN_URL_ENV, admin_url)
    grid = matrix.parse('backend = "celery"\nbroker = "rabbitmq"\nprocesses = 1\nmode = "drain"\n'
                        'task = "noop"\ntasks = 20\n', name="vhost")
    results = runner.run_matrix(grid, tmp_path / "runs", amqp_url=amqp_url, per_run_vhost=True)
    assert [r.status for r in results] == ["ok"], [r.detail for r in results]
    broker = json.loads((results[0].run_dir / "run.json").read_text())["brokers"]["broker"]
    assert broker["namespace"] == "per-run vhost"
    assert broker["vhost"].startswith("queuebench-") and broker["url"].endswith("/" + broker["vhost"])
    assert _vhosts(admin_url) == ["/"]
