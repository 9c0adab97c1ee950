"""An Ansible inventory naming hosts by role, read with Ansible's own parser and checked before anything starts.

Roles are inventory groups: ``loadgen`` (runs Locust), ``api`` (the Flask API under gunicorn), ``workers``
(each library's own worker CLI), ``broker`` (the brokers queuebench starts and stops there: a redis-server,
and for ``broker = "rabbitmq"`` cells a private RabbitMQ node). One host may hold several roles. This version
takes one or more ``loadgen``, ``api`` and ``workers`` hosts, and one ``broker`` host, or none when the run
names brokers the user runs (``--broker-url``, ``--amqp-url``: `load` with ``external_broker``; an inventory
with a broker host is then refused, so it is always clear which broker a run used). The cell's worker
processes are split between the workers hosts; every api host runs the API, each with the cell's
``api_workers`` and ``api_threads``, and Locust sends its requests to them in turn. With several
``loadgen`` hosts, the first in the inventory's order runs the Locust master and every loadgen host runs
Locust workers (`benchmarks.deploy.plan` splits ``load_workers`` between them); a loadgen host's name goes
into every request id it sends, so it is limited to letters, digits, ``.``, ``_`` and ``-`` (`LOADGEN_NAME_RE`).
`Inventory.role` lists a role's hosts in the inventory's order.

Host variables queuebench reads (`HOST_VARS`; any other ``qb_*`` variable is refused as a likely typo):

- ``qb_root`` (required): the directory queuebench installs itself into and writes under on that host;
  with ``ansible_connection=local`` every host is this machine, so each needs its own.
- ``qb_address``: the address the host's services bind and are reached on (default: ``ansible_host``). Only
  loopback addresses (127.0.0.0/8) unless the host sets ``qb_bind_external=true``; Linux routes all of
  127/8 to ``lo``, so 127.0.0.2 and 127.0.0.3 make two hosts on one machine.
- ``qb_python``: an interpreter that already has queuebench's requirements (default: a virtualenv the
  install playbook creates under ``qb_root`` and fills from the package index); with
  ``ansible_connection=local`` it may be relative to the inventory file.
- ``qb_api_port``, ``qb_broker_port``, ``qb_amqp_port``, ``qb_clock_port``, ``qb_locust_port``: ports of the
  API, the broker host's Redis (the broker of Redis cells, the result store of RabbitMQ cells with results
  on), its RabbitMQ node (AMQP; its Erlang distribution port is this + 20000, RabbitMQ's convention, so at
  most 45535), the clock responder and (``load_workers`` > 1, on the first loadgen host) the Locust master
  (defaults `DEFAULT_PORTS`).
- ``qb_redis_server``: the redis-server binary on the broker host (default: ``redis-server`` as found on this
  machine for a local connection, else ``/usr/bin/redis-server``).
- ``qb_rabbitmq_server``: the rabbitmq-server script on the broker host, the real one rather than Debian's
  wrapper, which would switch to the ``rabbitmq`` user (default: as found on this machine for a local
  connection, else ``/usr/lib/rabbitmq/bin/rabbitmq-server``).
- ``qb_clock_skew_ns``: for tests, nanoseconds added on purpose to a workers-only host's clock as its workers'
  ledger rows and its clock responder read it, so a run on one machine shows the offset measured and corrected.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("loadgen", "api", "workers", "broker")
#: How many hosts each role takes in this version: (fewest, most; None for no limit).
ROLE_COUNTS: dict[str, tuple[int, int | None]] = {"loadgen": (1, None), "api": (1, None), "workers": (1, None),
                                                  "broker": (0, 1)}
DEFAULT_PORTS = {"qb_api_port": 8000, "qb_broker_port": 6390, "qb_clock_port": 8123, "qb_locust_port": 5557,
                 "qb_amqp_port": 5682}
HOST_VARS = ("qb_root", "qb_address", "qb_python", "qb_bind_external", "qb_redis_server", "qb_rabbitmq_server",
             "qb_clock_skew_ns", *DEFAULT_PORTS)
#: The highest ``qb_amqp_port``: the node's Erlang distribution port is 20000 above it.
MAX_AMQP_PORT = 65535 - 20000
#: Debian's real rabbitmq-server script (``/usr/sbin/rabbitmq-server`` is a wrapper that switches user).
DEFAULT_RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: Groups Ansible always has.
BUILTIN_GROUPS = ("all", "ungrouped")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")
#: A loadgen host's name tags each request id it sends (``X-Request-Id``, `scenarios/inflight.py`), which the
#: API takes in letters, digits, ``.``, ``_``, ``:``, ``-`` up to 64 characters; ``:`` ends the tag.
LOADGEN_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,40}")


class InventoryError(ValueError):
    """The inventory cannot drive a run; the message names the host, role or key and what is allowed."""


@dataclass(frozen=True)
class Host:
    """One inventory host as queuebench uses it."""

    name: str
    roles: tuple[str, ...]
    address: str
    root: str
    connection: str
    #: The interpreter with queuebench's requirements; None: the install playbook makes ``<root>/venv``.
    given_python: str | None
    ports: Mapping[str, int]
    redis_server: str
    #: For tests: ns added on purpose to the host's clock as its workers and clock responder read it.
    clock_skew_ns: int = 0
    vars: Mapping[str, Any] = field(default_factory=dict, repr=False)
    rabbitmq_server: str = DEFAULT_RABBITMQ_SERVER

    @property
    def python(self) -> str:
        return self.given_python or f"{self.root}/venv/bin/python"

    @property
    def bin_dir(self) -> str:
        """Where the interpreter's console scripts (rq, celery, locust, gunicorn) live."""
        return self.python.rsplit("/", 1)[0]

    @property
    def src(self) -> str:
        """The installed copy of queuebench on the host (its PYTHONPATH)."""
        return f"{self.root}/queuebench"

    def run_dir(self, run_id: str) -> str:
        return f"{self.root}/runs/{run_id}"

    @property
    def local(self) -> bool:
        return self.connection == "local"

    def record(self) -> dict[str, Any]:
        return {"roles": list(self.roles), "address": self.address, "root": self.root,
                "connection": self.connection, "python": self.python, "ports": dict(self.ports)}


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: Mapping[str, Host]
    #: Each role's host names in the inventory's order (the first loadgen host runs the Locust master).
    order: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A short name for run ids: the file's stem, in safe characters."""
        return _NAME_RE.sub("-", self.path.stem).strip("-") or "inventory"

    def role(self, role: str) -> list[Host]:
        """The role's hosts, in the inventory's order."""
        if role in self.order:
            return [self.hosts[name] for name in self.order[role]]
        return [h for h in self.hosts.values() if role in h.roles]

    def one(self, role: str) -> Host:
        return self.role(role)[0]

    @property
    def roles(self) -> dict[str, list[str]]:
        return {role: [h.name for h in self.role(role)] for role in ROLES}

    def record(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "roles": self.roles,
                "hosts": {name: h.record() for name, h in self.hosts.items()}}


def ansible_tool(name: str) -> str:
    """An Ansible command-line tool, beside this interpreter first (the virtualenv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise InventoryError(f"{name} is not installed: an inventory run needs Ansible "
                         "(pip install 'queuebench[hosts]', which brings ansible-core and ansible-runner)")


def read_ansible_inventory(path: Path) -> dict[str, Any]:
    """``ansible-inventory -i PATH --list``: Ansible's own reading of the file, as JSON."""
    if not path.exists():
        raise InventoryError(f"inventory {path}: no such file")
    done = subprocess.run([ansible_tool("ansible-inventory"), "-i", str(path), "--list"], capture_output=True,
                          text=True, timeout=120, env=ansible_env())
    if done.returncode != 0:
        raise InventoryError(f"inventory {path}: Ansible cannot read it: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def ansible_env() -> dict[str, str]:
    """The environment for Ansible's tools: quiet about what queuebench does not use."""
    return dict(os.environ) | {"ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False",
                               "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False", "ANSIBLE_NOCOLOR": "1",
                               "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_DEPRECATION_WARNINGS": "False",
                               # Modules piped to the host's interpreter, not copied there first: fewer steps
                               # per task (every playbook is on the cell's critical path).
                               "ANSIBLE_PIPELINING": "True"}


def load(path: str | Path, *, external_broker: bool = False) -> Inventory:
    """Read and check an inventory file; `InventoryError` naming what is wrong. `external_broker`: the run
    names brokers the user runs, so the inventory must have no ``broker`` host (else exactly one)."""
    path = Path(path).resolve()
    return from_listing(path, read_ansible_inventory(path), external_broker=external_broker)


def _members(listing: Mapping[str, Any], group: str) -> dict[str, None]:
    """Hosts of `group` and of its child groups (``ansible-inventory --list`` lists them apart), in the
    inventory's order (Ansible lists a group's hosts as the file names them)."""
    entry = listing.get(group) or {}
    hosts = dict.fromkeys(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts |= _members(listing, child)
    return hosts


def from_listing(path: Path, listing: Mapping[str, Any], *, external_broker: bool = False) -> Inventory:
    """The inventory from ``ansible-inventory --list`` output (a pure function, so tests need no Ansible)."""
    where = f"inventory {path}"
    hostvars: Mapping[str, Mapping[str, Any]] = listing.get("_meta", {}).get("hostvars", {})
    groups = [g for g in listing if g != "_meta" and g not in BUILTIN_GROUPS]
    unknown_groups = [g for g in groups if g not in ROLES]
    if unknown_groups:
        raise InventoryError(f"{where}: group {unknown_groups[0]!r} is not a queuebench role; roles are "
                             f"{', '.join(ROLES)}")
    members = {role: _members(listing, role) for role in ROLES}
    for role in ROLES:
        fewest, most = ROLE_COUNTS[role]
        count = len(members[role])
        if role == "broker" and external_broker:
            if count:
                raise InventoryError(f"{where}: role 'broker' has {', '.join(sorted(members[role]))}, but the run "
                                     "names a broker you run (--broker-url, --amqp-url); use one or the other: "
                                     "drop the [broker] group, or the broker URL")
            continue
        if role == "broker":
            fewest = 1
        if count < fewest:
            raise InventoryError(f"{where}: role {role!r} has no host; every run needs {', '.join(ROLES)} "
                                 "(one host may hold several roles)" + (
                                     "; or, instead of a broker host, a broker you run: --broker-url "
                                     "(Redis), --amqp-url (RabbitMQ)" if role == "broker" else ""))
        if most is not None and count > most:
            raise InventoryError(f"{where}: role {role!r} has {count} hosts ({', '.join(sorted(members[role]))}); "
                                 f"this version takes exactly {most}")
    for name in members["loadgen"]:
        if not LOADGEN_NAME_RE.fullmatch(name):
            raise InventoryError(f"{where}: host {name}: a loadgen host's name tags every request id it sends, "
                                 "so it must be 1 to 40 letters, digits, '.', '_' or '-'")
    names = sorted(set().union(*members.values()))
    hosts = {name: _host(where, name, tuple(r for r in ROLES if name in members[r]), hostvars.get(name, {}),
                         path.parent)
             for name in names}
    _check_separate(where, hosts)
    return Inventory(path, hosts, {role: tuple(members[role]) for role in ROLES})


def _host(where: str, name: str, roles: tuple[str, ...], hv: Mapping[str, Any], inventory_dir: Path) -> Host:
    unknown = sorted(k for k in hv if k.startswith("qb_") and k not in HOST_VARS)
    if unknown:
        raise InventoryError(f"{where}: host {name}: unknown variable {unknown[0]!r}; queuebench reads "
                             f"{', '.join(HOST_VARS)}")
    root = hv.get("qb_root")
    if not root or not isinstance(root, str) or not root.startswith("/"):
        raise InventoryError(f"{where}: host {name}: qb_root is required, an absolute path (the directory "
                             f"queuebench installs into and writes under on that host), got {root!r}")
    address = str(hv.get("qb_address") or hv.get("ansible_host") or "")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise InventoryError(f"{where}: host {name}: qb_address (or ansible_host) must be an IPv4 address its "
                             f"services bind, e.g. 127.0.0.2, got {address!r}") from None
    external = str(hv.get("qb_bind_external", "false")).lower() in ("true", "yes", "1")
    if not ip.is_loopback and not external:
        raise InventoryError(f"{where}: host {name}: qb_address {address} is not a loopback address "
                             "(127.0.0.0/8); queuebench binds only loopback unless the host sets "
                             "qb_bind_external=true")
    ports = {}
    for key, default in DEFAULT_PORTS.items():
        value = hv.get(key, default)
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        if not 1 <= port <= 65535:
            raise InventoryError(f"{where}: host {name}: {key} must be a port from 1 to 65535, got {value!r}")
        ports[key] = port
    if "broker" in roles and ports["qb_amqp_port"] > MAX_AMQP_PORT:
        raise InventoryError(f"{where}: host {name}: qb_amqp_port must be at most {MAX_AMQP_PORT} (the RabbitMQ "
                             f"node's Erlang distribution port is 20000 above it), got {ports['qb_amqp_port']}")
    connection = str(hv.get("ansible_connection", "ssh"))
    python = hv.get("qb_python")
    if python is not None and connection == "local" and isinstance(python, str) and not python.startswith("/"):
        # This machine: relative to the inventory file. Symbolic links are kept: a virtualenv's python is one.
        python = os.path.normpath(os.path.join(inventory_dir, python))
    if python is not None and (not isinstance(python, str) or not python.startswith("/")):
        raise InventoryError(f"{where}: host {name}: qb_python must be an absolute path to an interpreter "
                             f"(or, with ansible_connection=local, one relative to the inventory file), got {python!r}")
    redis_server = hv.get("qb_redis_server") or (_local_redis_server() if connection == "local"
                                                 else "/usr/bin/redis-server")
    if connection == "local":
        _check_binds(where, name, address)
    skew = hv.get("qb_clock_skew_ns", 0)
    try:
        skew = int(skew)
    except (TypeError, ValueError):
        raise InventoryError(f"{where}: host {name}: qb_clock_skew_ns must be an integer (ns), got {skew!r}") from None
    if skew and roles != ("workers",):
        raise InventoryError(f"{where}: host {name}: qb_clock_skew_ns (a clock made wrong on purpose, for tests) "
                             f"applies to a host whose only role is workers; {name} is {', '.join(roles)}")
    rabbitmq_server = hv.get("qb_rabbitmq_server") or (_local_rabbitmq_server() if connection == "local"
                                                       else DEFAULT_RABBITMQ_SERVER)
    return Host(name, roles, address, root.rstrip("/"), connection, python, ports, str(redis_server), skew, dict(hv),
                rabbitmq_server=str(rabbitmq_server))


def _local_redis_server() -> str:
    from benchmarks import brokers

    try:
        return brokers.redis_server_binary()
    except brokers.BrokerError:
        return "/usr/bin/redis-server"


def _local_rabbitmq_server() -> str:
    from benchmarks import brokers

    try:
        return brokers.rabbitmq_server_script()
    except brokers.BrokerError:
        return DEFAULT_RABBITMQ_SERVER


def _check_binds(where: str, name: str, address: str) -> None:
    """A local host's address must be bindable here (Linux routes 127/8 to lo; other systems may not)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
    except OSError as exc:
        raise InventoryError(f"{where}: host {name}: cannot bind {address} on this machine ({exc}); with "
                             "ansible_connection=local every host is this machine, so its qb_address must "
                             "be one of its own addresses") from None


def _check_separate(where: str, hosts: Mapping[str, Host]) -> None:
    """Hosts that share a machine (local connection) need their own directories, and no two services the
    same address and port."""
    local = [h for h in hosts.values() if h.local]
    roots: dict[str, str] = {}
    for host in local:
        if host.root in roots:
            raise InventoryError(f"{where}: hosts {roots[host.root]} and {host.name} both use qb_root "
                                 f"{host.root} on this machine (ansible_connection=local): give each its own")
        roots[host.root] = host.name
    used: dict[tuple[str, int], str] = {}
    for host in hosts.values():
        for key in _ports_used(host):
            endpoint = (host.address, host.ports[key])
            if endpoint in used:
                raise InventoryError(f"{where}: {used[endpoint]} and {host.name} {key} both use "
                                     f"{endpoint[0]}:{endpoint[1]}; give each service its own port or address")
            used[endpoint] = f"{host.name} {key}"


def _ports_used(host: Host) -> list[str]:
    keys = ["qb_clock_port"]
    if "api" in host.roles:
        keys.append("qb_api_port")
    if "broker" in host.roles:
        keys += ["qb_broker_port", "qb_amqp_port"]
    if "loadgen" in host.roles:
        keys.append("qb_locust_port")
    return keys
