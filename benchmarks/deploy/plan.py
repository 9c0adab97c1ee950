"""What each host runs for one cell, as data the playbooks loop over (``qb_plan`` in their variables).

The command lines are the ones a local run starts (`backends` ``worker_commands``, `api.wsgi.gunicorn_argv`,
`benchmarks.runner.locust_argv`, a private redis-server, a private RabbitMQ node: `benchmarks.brokers.rabbitmq_node`),
with this machine's interpreter, console scripts and project directory replaced by the host's (`on_host`), bound
to the host's address, and with the environment a local run gives them plus ``QUEUEBENCH_HOST`` (the inventory
name, which ledger rows carry). Each service runs under start-stop-daemon with a pidfile, a log and its own
session; ``stage`` orders the starts (the brokers first; a drain cell's workers, stage ``workers``, only once
its tasks are enqueued, by `playbooks/workers.yml`; it has no API or Locust) and the stops (the brokers
last). Beside the clock responder, every host runs a resource sampler (`benchmarks.deploy.host` ``sample``),
stopped first (``stop_sampler``) once the tasks have finished.

The broker host runs the cell's brokers: for ``broker = "redis"`` a redis-server on ``qb_broker_port``; for
``broker = "rabbitmq"`` a RabbitMQ node on ``qb_amqp_port`` (its own node name, data, logs and configuration
under the run directory; a user and password of the cell's own, since RabbitMQ admits guest from loopback
only) and, when the cell keeps results, the redis-server too, for the results, as a local run keeps them in
a Redis beside RabbitMQ. Without a broker host the cell uses brokers the user runs (`ExternalBrokers`:
``--broker-url``, ``--amqp-url``, ``--per-run-vhost``), borrowed from the coordinator as a local run borrows
them (`benchmarks.stack.Stack.start_brokers`: never flushed, refused when not empty), and `build` takes the
settings on them.

Several loadgen hosts: the first (inventory order) runs the Locust master (the load playbook's command,
bound to its ``qb_address`` and ``qb_locust_port``); ``load_workers`` Locust workers in all are daemons on
the loadgen hosts, split as evenly as possible (`split_processes`: the first hosts take the rest, at least
one each) and numbered ``locust-worker-<i>`` across hosts; every one connects to the master's address.
"""

from __future__ import annotations

import functools
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backends
from api.wsgi import BACKEND_ENV, gunicorn_argv
from backends import dispatch, ledger
from backends.base import BackendSettings
from benchmarks import brokers, runner, store
from benchmarks import spec as spec_mod
from benchmarks.deploy.inventory import Host, Inventory
from benchmarks.stack import PROJECT_ROOT

#: Seconds the API, workers and clock responders get after SIGTERM once the cell's tasks have all finished
#: (the measurement is over and the broker is the cell's own); then SIGKILL.
STOP_GRACE_S = 1.0
#: The Locust workers' service names on the loadgen hosts (``load_workers`` > 1), numbered from 0 across hosts.
LOAD_WORKER_PREFIX = "locust-worker-"
#: The resource sampler's name (its pidfile, log and service) and the seconds it gets after SIGTERM for its last
#: sample; it is stopped once the cell's tasks have finished, before the services it samples.
SAMPLER = "sampler"
SAMPLER_STOP_GRACE_S = 5.0
#: The process the loadgen host's sampler looks for as the load (Locust's console script, `runner.locust_argv`).
LOAD_PROCESS = "locust"
#: A drain cell's workers: started by the workers playbook once the tasks are enqueued, not with the services.
WORKERS_STAGE = "workers"
#: The broker is stopped last, with this grace.
BROKER_STOP_GRACE_S = 2.0
#: The brokers an inventory run deploys on its broker host (or borrows: `ExternalBrokers`).
BROKERS = ("redis", "rabbitmq")
#: The user of the broker host's RabbitMQ node (RabbitMQ lets guest in from loopback only).
RABBITMQ_USER = "queuebench"
#: Seconds the broker host's brokers get to answer a round trip once started (a RabbitMQ node takes a few).
BROKER_START_TIMEOUT_S = 90


class PlanError(ValueError):
    """The cell cannot run on this inventory; the message names the key and what is allowed."""


@dataclass(frozen=True)
class ExternalBrokers:
    """Brokers the user runs, which an inventory without a ``broker`` host uses (as a local run does with the
    same flags): `broker_url` a Redis (the broker of Redis cells, the result store of RabbitMQ cells with
    results on), `amqp_url` a RabbitMQ, `per_run_vhost` a virtual host of each cell's own on it."""

    broker_url: str | None = None
    amqp_url: str | None = None
    per_run_vhost: bool = False


def check_spec(spec: Mapping[str, Any], inventory: Inventory, external: ExternalBrokers | None = None) -> None:
    """Refuse, before anything starts, a cell this version cannot deploy (naming the key and allowed values)."""
    if spec.get("mode") not in ("load", "drain"):
        raise PlanError(f"mode = {spec.get('mode')!r}: an inventory run supports mode = \"load\" (Locust on the "
                        "loadgen host through the API) or \"drain\" (tasks enqueued by the coordinator, then the "
                        "workers started)")
    if spec.get("broker") not in BROKERS:
        raise PlanError(f"broker = {spec.get('broker')!r}: an inventory run supports broker = "
                        + " or ".join(f'"{b}"' for b in BROKERS) + " (started on the broker host, or yours: "
                        "--broker-url, --amqp-url)")
    if spec.get("fault", "none") != "none":
        raise PlanError(f"fault = {spec.get('fault')!r}: an inventory run supports fault = \"none\" only")
    cls = backends.backend_class(spec["backend"])
    if spec["broker"] not in cls.brokers:
        raise PlanError(f"broker = {spec['broker']!r}: backend = {spec['backend']!r} runs on "
                        f"{', '.join(sorted(cls.brokers))} only; backends on {spec['broker']}: "
                        + ", ".join(b for b in backends.measurable() if spec["broker"] in backends.backend_class(b).brokers))
    if not inventory.role("broker"):
        _check_external(spec, external or ExternalBrokers())
    if cls.environment:
        raise PlanError(f"backend = {spec['backend']!r}: it runs in an environment of its own, which an inventory "
                        "run does not build on the hosts yet; backends that share the harness's environment: "
                        + ", ".join(b for b in backends.measurable() if not backends.backend_class(b).environment))
    hosts = inventory.role("workers")
    per_host = 2 if spec["routing"] == "dedicated" else 1
    if spec["processes"] < per_host * len(hosts):
        raise PlanError(f"processes = {spec['processes']}: the workers are split between {len(hosts)} workers "
                        f"host(s), so it must be at least {per_host * len(hosts)}"
                        + (" (dedicated routing: one process per queue on each)" if per_host == 2 else ""))
    loadgens = inventory.role("loadgen")
    if len(loadgens) > 1 and runner.load_workers(spec) < len(loadgens):
        raise PlanError(f"load_workers = {runner.load_workers(spec)}: the load is split between {len(loadgens)} "
                        f"loadgen hosts ({', '.join(h.name for h in loadgens)}), at least one Locust worker on "
                        f"each, so it must be at least {len(loadgens)}")


def _check_external(spec: Mapping[str, Any], external: ExternalBrokers) -> None:
    """Without a broker host, every broker the cell needs must be the user's own."""
    missing = []
    if spec["broker"] == "redis" and not external.broker_url:
        missing.append("--broker-url (a Redis you run)")
    if spec["broker"] == "rabbitmq" and not external.amqp_url:
        missing.append("--amqp-url (a RabbitMQ you run)")
    if spec["broker"] == "rabbitmq" and spec["results"] and not external.broker_url:
        missing.append("--broker-url (a Redis for the results, which RabbitMQ does not keep)")
    if missing:
        raise PlanError(f"broker = {spec['broker']!r}" + (", results = true" if spec["broker"] == "rabbitmq"
                                                          and spec["results"] else "")
                        + ": the inventory has no broker host, so the run needs " + " and ".join(missing)
                        + ", or a [broker] group in the inventory")


def split_processes(total: int, hosts: int) -> list[int]:
    """`total` worker processes over `hosts` hosts, as evenly as possible (the first hosts take the rest)."""
    return [total // hosts + (1 if i < total % hosts else 0) for i in range(hosts)]


def on_host(argv: list[str], host: Host) -> list[str]:
    """A command line built for this machine, with its interpreter, console scripts and project directory
    replaced by the host's."""
    bin_dir = str(Path(sys.executable).parent) + "/"
    root = str(PROJECT_ROOT)
    out = []
    for arg in argv:
        if arg == sys.executable:
            arg = host.python
        elif arg.startswith(bin_dir):
            arg = f"{host.bin_dir}/{arg[len(bin_dir):]}"
        elif arg == root or arg.startswith(root + "/"):
            arg = host.src + arg[len(root):]
        out.append(arg)
    return out


def load_master(spec: Mapping[str, Any], inventory: Inventory) -> tuple[str, int] | None:
    """Where the Locust master listens when the cell splits its load between Locust workers (``load_workers``
    > 1): the first loadgen host's address and ``qb_locust_port``; None for one Locust process."""
    host = inventory.role("loadgen")[0]
    return (host.address, host.ports["qb_locust_port"]) if runner.load_workers(spec) > 1 else None


def load_worker_shares(spec: Mapping[str, Any], inventory: Inventory) -> dict[str, list[int]]:
    """Each loadgen host's Locust workers (``load_workers`` > 1) by their numbers, split as evenly as
    possible in the inventory's order (the first hosts take the rest); {} for one Locust process."""
    if runner.load_workers(spec) == 1:
        return {}
    hosts = inventory.role("loadgen")
    numbers = iter(range(runner.load_workers(spec)))
    return {h.name: [next(numbers) for _ in range(share)]
            for h, share in zip(hosts, split_processes(runner.load_workers(spec), len(hosts)), strict=True)}


def broker_url(inventory: Inventory) -> str:
    """The broker host's Redis."""
    broker = inventory.one("broker")
    return f"redis://{broker.address}:{broker.ports['qb_broker_port']}/0"


def rabbitmq_node(host: Host, run_id: str, password: str) -> brokers.RabbitNode:
    """The broker host's private RabbitMQ node for one cell: on its address and ``qb_amqp_port``, named after
    both (several hosts on one machine share its epmd), its data and configuration under the run directory,
    its logs with the host's other logs."""
    run_dir, port = host.run_dir(run_id), host.ports["qb_amqp_port"]
    return brokers.rabbitmq_node(host.rabbitmq_server, f"{run_dir}/rabbitmq", host.address, port,
                                 node_name=f"qb{port}-{host.address.replace('.', '-')}",
                                 log_dir=f"{run_dir}/logs/rabbitmq", user=RABBITMQ_USER, password=password)


def api_url(inventory: Inventory) -> str:
    """The first api host's API (Locust's ``--host``)."""
    return api_urls(inventory)[0]


def api_urls(inventory: Inventory) -> list[str]:
    """Every api host's API, in the inventory's order (Locust sends its requests to them in turn)."""
    return [f"http://{api.address}:{api.ports['qb_api_port']}" for api in inventory.role("api")]


def settings(spec: Mapping[str, Any], inventory: Inventory, run_id: str, rabbitmq_password: str) -> BackendSettings:
    """The settings on the broker host's brokers: its Redis holds the results too, as in a local run."""
    redis = broker_url(inventory)
    if spec["broker"] == "redis":
        return spec_mod.settings_for(spec, redis, redis)
    amqp = rabbitmq_node(inventory.one("broker"), run_id, rabbitmq_password).url
    return spec_mod.settings_for(spec, amqp, redis if spec["results"] else None)


def _service(services: list[dict[str, Any]], processes: list[dict[str, Any]], host: Host, run_dir: str, name: str,
             stage: str, argv: list[str], env: Mapping[str, str], cwd: str, port: int | None = None) -> None:
    """One daemon on `host`: its command line, environment, working directory, log, pidfile and (for the
    start playbook to wait on) the TCP port it listens on."""
    services.append({"name": name, "stage": stage, "argv": argv, "env": dict(env), "cwd": cwd,
                     "log": f"{run_dir}/logs/{name}.log", "pidfile": f"{run_dir}/pids/{name}.pid",
                     "address": host.address, "port": port})
    processes.append({"host": host.name, "name": name, "argv": [brokers.redact(a) if "://" in a else a for a in argv]})


@dataclass(frozen=True)
class CellPlan:
    """Every host's part of one cell."""

    run_id: str
    hosts: Mapping[str, dict[str, Any]]
    #: Each service's host, name and command line (passwords redacted), for run.json's ``processes``.
    processes: list[dict[str, Any]]
    #: What the API and the workers are given (the brokers' URLs): the coordinator's backend takes the same.
    settings: BackendSettings

    def variables(self) -> dict[str, Any]:
        """The playbooks' variables."""
        return {"qb_run": self.run_id, "qb_plan": dict(self.hosts)}


def build(spec: Mapping[str, Any], inventory: Inventory, run_id: str, id_key: str,
          external: ExternalBrokers | None = None, borrowed: BackendSettings | None = None) -> CellPlan:
    """The plan of one cell (`check_spec` first). Without a broker host: `external`, the user's brokers, and
    `borrowed`, the settings on them once the coordinator has borrowed them (a per-run vhost is in the URL)."""
    check_spec(spec, inventory, external)
    if not inventory.role("broker") and borrowed is None:
        raise PlanError("the inventory has no broker host: the plan needs the settings on the brokers borrowed")
    password = secrets.token_hex(12)  # the broker host's RabbitMQ user's, for this cell only
    the_settings = borrowed or settings(spec, inventory, run_id, password)
    drain = spec["mode"] == "drain"
    backend = backends.get_backend(spec["backend"], the_settings)
    try:
        worker_hosts = inventory.role("workers")
        shares = dict(zip([h.name for h in worker_hosts], split_processes(spec["processes"], len(worker_hosts)),
                          strict=True))
        hosts: dict[str, dict[str, Any]] = {}
        processes: list[dict[str, Any]] = []
        for host in inventory.hosts.values():
            run_dir = host.run_dir(run_id)
            base_env = {"PYTHONPATH": host.src, ledger.LEDGER_ENV: f"{run_dir}/ledger", dispatch.ID_KEY_ENV: id_key,
                        ledger.HOST_ENV: host.name, "PYTHONUNBUFFERED": "1"}
            if host.clock_skew_ns:
                base_env[ledger.CLOCK_SKEW_ENV] = str(host.clock_skew_ns)
            services: list[dict[str, Any]] = []
            files: dict[str, str] = {}
            service = functools.partial(_service, services, processes, host, run_dir)
            if "broker" in host.roles and (spec["broker"] == "redis" or spec["results"]):
                port = host.ports["qb_broker_port"]
                service("redis", "broker", [host.redis_server, "--port", str(port), "--bind", host.address,
                                            "--save", "", "--appendonly", "no", "--dir", f"{run_dir}/redis-data",
                                            "--daemonize", "no", "--protected-mode", "yes"], {}, run_dir, port)
            if "broker" in host.roles and spec["broker"] == "rabbitmq":
                node = rabbitmq_node(host, run_id, password)
                service("rabbitmq", "broker", list(node.argv), node.env, f"{run_dir}/rabbitmq",
                        host.ports["qb_amqp_port"])
                files |= node.files
            service("clock", "services", [host.python, "-m", "benchmarks.clocks", "serve", host.address,
                                          str(host.ports["qb_clock_port"])], base_env, host.src)
            load = "loadgen" in host.roles and not drain
            master_host = load and host.name == inventory.role("loadgen")[0].name  # runs Locust's master
            service(SAMPLER, "services", [host.python, "-m", "benchmarks.deploy.host", "sample", run_dir,
                                          *(["--load", LOAD_PROCESS] if master_host else [])],
                    {"PYTHONPATH": host.src}, run_dir)
            if "workers" in host.roles:
                sub_spec = dict(spec) | {"processes": shares[host.name]}
                for group in spec_mod.worker_specs(sub_spec):
                    for command in backend.worker_commands(group):
                        service(command.name, WORKERS_STAGE if drain else "services", on_host(command.argv, host),
                                base_env | command.env, run_dir)
            if "api" in host.roles and not drain:
                port = host.ports["qb_api_port"]
                argv = gunicorn_argv(port, workers=spec["api_workers"], threads=spec["api_threads"],
                                     address=host.address)
                service("api", "services", on_host(argv, host),
                        base_env | the_settings.to_env() | {BACKEND_ENV: spec["backend"]}, host.src, port)
            helper = [host.python, "-m", "benchmarks.deploy.host"]
            entry: dict[str, Any] = {
                "run_dir": run_dir,
                "dirs": [run_dir, f"{run_dir}/ledger", f"{run_dir}/logs", f"{run_dir}/pids",
                         *([f"{run_dir}/redis-data", f"{run_dir}/rabbitmq", f"{run_dir}/logs/rabbitmq"]
                           if "broker" in host.roles else [])],
                "services": services,
                # The broker host's configuration files (a RabbitMQ node's), written before anything starts.
                "files": [{"path": path, "content": content} for path, content in files.items()],
                "helper_env": {"PYTHONPATH": host.src},
                "progress": [*helper, "progress", f"{run_dir}/ledger"],
                "broker_rtt": [*helper, "broker-rtt", brokers.pika_url(the_settings.broker_url)],
                "stop_sampler": [*helper, "stop", f"{run_dir}/pids/{SAMPLER}.pid", "--grace-s",
                                 f"{SAMPLER_STOP_GRACE_S:g}"],
                "collect": [*helper, "collect", run_dir, f"{host.root}/runs/{run_id}.tar.gz",
                            *[arg for s in services if s["stage"] == "broker" for arg in ("--stop", s["pidfile"])],
                            "--grace-s", f"{BROKER_STOP_GRACE_S:g}"],
                "archive": f"{host.root}/runs/{run_id}.tar.gz",
            }
            if "broker" in host.roles:  # the workers start once its brokers answer a round trip
                own = dict.fromkeys(url for url in (the_settings.broker_url, the_settings.result_url) if url)
                entry["broker_wait"] = [*helper, "wait-broker", *own, "--timeout-s", str(BROKER_START_TIMEOUT_S)]
            if load:
                master = load_master(spec, inventory)
                if master_host:  # the first loadgen host runs Locust's master
                    argv = on_host(runner.locust_argv(spec, api_url(inventory), Path(run_dir), master=master), host)
                    # The raw log directory relative to each Locust process's working directory, its host's
                    # run directory: the master passes its options on to every worker, on whatever host.
                    argv[argv.index("--qb-log-dir") + 1] = store.REQUEST_LOGS_DIR
                    if len(api_urls(inventory)) > 1:  # every API in turn (the master passes it on to its workers)
                        argv += ["--qb-api-urls", ",".join(api_urls(inventory))]
                    entry["load"] = {"argv": argv, "env": base_env, "cwd": run_dir,
                                     "timeout_s": int(spec["warmup_s"] + spec["duration_s"] + runner.LOCUST_TAIL_S
                                                      + runner.LOCUST_STOP_TIMEOUT_S + 120
                                                      + (runner.LOCUST_WORKERS_MAX_WAIT_S if master else 0))}
                    processes.append({"host": host.name, "name": "locust", "argv": entry["load"]["argv"]})
                if master is not None:
                    # Started with the other services, before their master: a Locust worker keeps trying to
                    # connect for minutes; the master (the load playbook) waits for all of them.
                    for i in load_worker_shares(spec, inventory)[host.name]:
                        service(f"{LOAD_WORKER_PREFIX}{i}", "services",
                                on_host(runner.locust_worker_argv(spec, master), host), base_env, run_dir)
                entry["dirs"].append(f"{run_dir}/{store.REQUEST_LOGS_DIR}")
            # Every service but the broker, the Locust workers added above included.
            entry["stop_services"] = [*helper, "stop", *[s["pidfile"] for s in services if s["stage"] != "broker"],
                                      "--grace-s", f"{STOP_GRACE_S:g}"]
            hosts[host.name] = entry
    finally:
        backend.close()
    return CellPlan(run_id, hosts, processes, the_settings)
