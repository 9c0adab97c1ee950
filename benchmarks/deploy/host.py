"""What runs on a deployed host, called by the playbooks: ``python -m benchmarks.deploy.host COMMAND ...``.

- ``stop PIDFILE... [--grace-s S]``: stop daemons started with start-stop-daemon, whole sessions. Each
  daemon's session and descendants are collected before any signal (so a pool's children are found even
  when their parent exits first); SIGTERM goes to every daemon at once, then SIGKILL to whatever of them is
  left after the grace. A pidfile whose process has gone is skipped.
- ``progress LEDGER_DIR``: the ledger's sent and successfully finished task ids (probes left out) as JSON on
  stdout, so the coordinator can tell when every task sent has finished across hosts.
- ``broker-rtt URL [--samples N]``: the broker's round trip from this host, the fastest of a few requests
  on one open connection (the network's floor, not the broker's load): Redis PINGs (``redis://``, or the
  master a ``redis+sentinel://`` URL names), AMQP ``basic.qos`` on one channel (``amqp://``, a method
  RabbitMQ answers at once and that changes nothing but that channel's prefetch), as JSON on stdout; a
  broker that does not answer gives ``rtt_ms`` null and the error, so the run records it rather than failing.
- ``wait-broker URL... [--timeout-s S]``: wait until each broker answers such a round trip (a RabbitMQ
  node opens its port a moment before its virtual host is ready); exit 1 naming the last error if not.
- ``sample RUN_DIR [--interval-s S] [--load NAME]``: the host's resource sampler, a daemon until SIGTERM
  (then one last sample). Every interval it walks the process tree of each daemon with a pidfile in
  ``RUN_DIR/pids/`` (the clock responder and itself left out: the harness's own, as a local run leaves out
  its own), plus with ``--load`` the process started in RUN_DIR outside the daemons whose command line runs
  NAME (the load playbook's Locust), into ``RUN_DIR/resources.csv`` with a local run's columns
  (`benchmarks.proctree`), and the whole machine's CPU and memory into ``RUN_DIR/machine.csv``:
  ``t_ns, n_cpus, cpu_busy_s, cpu_all_s, mem_used_bytes, mem_total_bytes`` (cumulative CPU seconds of all
  CPUs: busy = all but idle and iowait; used memory = total - available). Timestamps are the host's clock.
- ``collect RUN_DIR ARCHIVE [--stop PIDFILE]``: stop the broker first if named (so the broker stops last
  of all, after every host's other services), then write the manifest of the host's ledger and request logs
  and resource samples (`benchmarks.deploy.manifest`), then pack what the coordinator collects into one archive for Ansible's
  fetch (one transfer per host instead of one per file).

Imports nothing but the standard library, click, psutil, redis-py, pika (only for an ``amqp://`` URL) and
queuebench's own ledger, manifest, Redis URL and process-tree (`benchmarks.proctree`) modules.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import psutil
import redis

from backends import ledger, redis_url
from benchmarks import proctree
from benchmarks.deploy import manifest as manifest_mod

#: What `collect` packs from a host's run directory (names, and prefixes of Locust's own output files).
#: The sampler's files (`store.RESOURCES_CSV` and `store.MACHINE_CSV` once collected and corrected).
RESOURCES_CSV = "resources.csv"
MACHINE_CSV = "machine.csv"
MACHINE_COLUMNS = ("t_ns", "n_cpus", "cpu_busy_s", "cpu_all_s", "mem_used_bytes", "mem_total_bytes")
#: Seconds between two samples (a local run's sampler takes the same).
SAMPLE_INTERVAL_S = 0.5
#: Daemons in a run's pids/ that are the harness's own helpers, not the system measured: not sampled.
NOT_SAMPLED = ("clock", "sampler")
COLLECTED = ("ledger", "requests", "logs", "manifest.json", RESOURCES_CSV, MACHINE_CSV)
COLLECTED_PREFIXES = ("locust",)
#: A daemon's process starts just before start-stop-daemon writes its pidfile; a process with that pid created
#: more than this many seconds before (or after) the pidfile is another process that reused the pid.
PID_REUSE_SLACK_S = 10.0
#: Round trips timed for the broker's from a host (the fastest is kept), and the seconds one may take.
BROKER_RTT_SAMPLES = 5
BROKER_RTT_TIMEOUT_S = 2.0


@click.group()
def main() -> None:
    """Host-side helpers of a queuebench deployment."""


def _members(pid: int) -> list[psutil.Process]:
    """The daemon, every process of its session (start-stop-daemon puts each daemon in one of its own),
    and every descendant of those."""
    try:
        root = psutil.Process(pid)
        sid = os.getsid(pid)
    except (psutil.Error, ProcessLookupError):
        return []
    found = {root.pid: root}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found[proc.pid] = proc
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def daemon_pid(pidfile: Path) -> int | None:
    """The pid of the daemon `pidfile` names; None when there is no pidfile, its process has gone, or the pid
    now names another process (started long before or after the pidfile was written)."""
    try:
        pid = int(pidfile.read_text().strip())
        written = pidfile.stat().st_mtime
        created = psutil.Process(pid).create_time()
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if written - PID_REUSE_SLACK_S <= created <= written + 1 else None


def stop_daemons(pidfiles: tuple[Path, ...], grace_s: float) -> dict[str, object]:
    """Stop the daemons named by `pidfiles`, whole sessions: SIGTERM to each at once, SIGKILL to whatever of
    their sessions and descendants is left after `grace_s`. Returns what was stopped."""
    roots, members = [], []
    for path in pidfiles:
        pid = daemon_pid(path)
        if pid is None:
            continue
        found = _members(pid)
        if found:
            roots.append((path.name, pid))
            members.extend(found)
    for _, pid in roots:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, still = psutil.wait_procs(alive, timeout=5)
    if still:
        sys.exit(f"processes still running after SIGKILL: {[p.pid for p in still]}")
    return {"stopped": [name for name, _ in roots], "killed": len(alive)}


@main.command()
@click.argument("pidfiles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--grace-s", type=float, default=10.0, show_default=True,
              help="Seconds the daemons get after SIGTERM before SIGKILL.")
def stop(pidfiles: tuple[Path, ...], grace_s: float) -> None:
    """Stop the daemons named by PIDFILES, whole sessions; print what was stopped as JSON."""
    print(json.dumps(stop_daemons(pidfiles, grace_s)))


@main.command()
@click.argument("ledger_dir", type=click.Path(path_type=Path))
def progress(ledger_dir: Path) -> None:
    """Print the ledger's sent and successfully finished task ids (probes left out) as JSON."""
    follower = ledger.Follower(ledger_dir)
    if ledger_dir.exists():
        follower.poll()
    print(json.dumps({"sent": sorted(follower.sent_ids), "done": sorted(follower.done_ids),
                      "finished_rows": follower.finished_rows, "t_ns": time.time_ns()}))


def broker_rtt(url: str, samples: int) -> dict[str, object]:
    """The fastest of `samples` round trips to the broker at `url` from this host, ms: Redis PINGs, or AMQP
    ``basic.qos`` on one channel (pika's URL form: vhost "/" as ``%2F``). The connection is opened (and for
    Redis, a first PING sent) untimed; on an error, ``rtt_ms`` None and the error."""
    if url.startswith(("amqp://", "amqps://")):
        return _amqp_rtt(url, samples)
    rtts: list[float] = []
    try:
        client = redis_url.client(url, socket_connect_timeout=BROKER_RTT_TIMEOUT_S,
                                  socket_timeout=BROKER_RTT_TIMEOUT_S)
        try:
            client.ping()
            for _ in range(samples):
                started = time.perf_counter()
                client.ping()
                rtts.append((time.perf_counter() - started) * 1000)
        finally:
            client.close()
    except (redis.RedisError, redis_url.RedisURLError) as exc:
        return {"rtt_ms": None, "samples": len(rtts), "error": f"{type(exc).__name__}: {exc}"}
    return {"rtt_ms": round(min(rtts), 3), "samples": len(rtts)}


def _amqp_rtt(url: str, samples: int) -> dict[str, object]:
    import pika  # only a RabbitMQ cell's hosts need it

    parameters = pika.URLParameters(url)
    parameters.socket_timeout = parameters.blocked_connection_timeout = BROKER_RTT_TIMEOUT_S
    parameters.connection_attempts = 1
    rtts: list[float] = []
    try:
        connection = pika.BlockingConnection(parameters)
        try:
            channel = connection.channel()
            for _ in range(samples):
                started = time.perf_counter()
                channel.basic_qos(prefetch_count=0)
                rtts.append((time.perf_counter() - started) * 1000)
        finally:
            with contextlib.suppress(Exception):
                connection.close()
    except (pika.exceptions.AMQPError, OSError) as exc:
        return {"rtt_ms": None, "samples": len(rtts), "error": f"{type(exc).__name__}: {exc!r}"}
    return {"rtt_ms": round(min(rtts), 3), "samples": len(rtts)}


@main.command("broker-rtt")
@click.argument("url")
@click.option("--samples", type=click.IntRange(min=1), default=BROKER_RTT_SAMPLES, show_default=True,
              help="PINGs timed; the fastest is kept.")
def broker_rtt_command(url: str, samples: int) -> None:
    """Print the Redis broker at URL's round trip from this host (the fastest of a few PINGs) as JSON."""
    print(json.dumps(broker_rtt(url, samples)))


def machine_row(t_ns: int) -> tuple[int, int, float, float, int, int]:
    """The whole machine's ``machine.csv`` row at `t_ns`: CPUs, busy and all CPU seconds, used and total memory."""
    times = psutil.cpu_times()
    # Linux counts guest time inside user time already; leave it out of the sum so it is not counted twice.
    all_s = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    busy_s = all_s - times.idle - getattr(times, "iowait", 0.0)
    memory = psutil.virtual_memory()
    return (t_ns, psutil.cpu_count() or 1, round(busy_s, 3), round(all_s, 3), memory.total - memory.available,
            memory.total)


class HostSampler:
    """Samples a host's daemons (found by their pidfiles under the run directory), the load process with
    `load_name`, and the whole machine, appending rows to the run directory's CSV files."""

    def __init__(self, run_dir: Path, load_name: str | None = None) -> None:
        self.run_dir, self.load_name = Path(run_dir), load_name
        self.load_pid: int | None = None
        self.errors = 0

    def daemons(self) -> dict[str, int]:
        """Each sampled daemon's name (its pidfile's stem) and pid."""
        found = {}
        for path in sorted((self.run_dir / "pids").glob("*.pid")):
            pid = daemon_pid(path)
            if pid is not None and pid != os.getpid() and path.stem not in NOT_SAMPLED:
                found[path.stem] = pid
        return found

    def find_load(self, daemon_pids: set[int]) -> int | None:
        """The process started in the run directory, outside every daemon's tree, whose command line runs
        `load_name` (the load playbook's Locust; its wrapper shares the directory, not the command)."""
        for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["cwd"] != str(self.run_dir) or proc.pid == os.getpid():
                continue
            if not any(Path(arg).name == self.load_name for arg in cmdline[:2]):
                continue
            try:
                lineage = {proc.pid, *(p.pid for p in proc.parents())}
            except psutil.Error:
                continue
            if not lineage & daemon_pids:
                return proc.pid
        return None

    def sample(self, resources: Any, machine: Any) -> None:
        """One round: a row per live daemon tree (and the load's), one for the machine."""
        t_ns = time.time_ns()
        daemons = self.daemons()
        if self.load_name and self.load_pid is None:
            self.load_pid = self.find_load(set(daemons.values()))
        if self.load_pid is not None:
            daemons[self.load_name] = self.load_pid
        for name, pid in daemons.items():
            row = proctree.tree_row(t_ns, name, pid)
            if row is not None:
                resources.writerow(row)
        machine.writerow(machine_row(t_ns))

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Sample every `interval_s` until `stop` is set, then once more."""
        with open(self.run_dir / RESOURCES_CSV, "w", newline="") as res, \
                open(self.run_dir / MACHINE_CSV, "w", newline="") as mach:
            res_writer, mach_writer = csv.writer(res), csv.writer(mach)
            res_writer.writerow(proctree.RESOURCE_COLUMNS)
            mach_writer.writerow(MACHINE_COLUMNS)
            stopped = False
            while True:
                try:
                    self.sample(res_writer, mach_writer)
                except Exception as exc:  # a process gone mid-walk must not stop the sampling
                    self.errors += 1
                    print(f"sampling error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                res.flush()
                mach.flush()
                if stopped:
                    return
                stopped = stop.wait(interval_s)  # once stopped, one last sample


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--interval-s", type=click.FloatRange(min=0.05), default=SAMPLE_INTERVAL_S, show_default=True,
              help="Seconds between two samples.")
@click.option("--load", "load_name", metavar="NAME",
              help="Also sample, as NAME, the process started in RUN_DIR outside the daemons whose command line "
                   "runs NAME (the loadgen host's Locust).")
def sample(run_dir: Path, interval_s: float, load_name: str | None) -> None:
    """Sample the CPU and memory of RUN_DIR's daemons (and the machine's) until SIGTERM, into RUN_DIR's
    resources.csv and machine.csv."""
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    sampler = HostSampler(run_dir, load_name)
    sampler.run(interval_s, stop_event)
    print(json.dumps({"errors": sampler.errors}), flush=True)


@main.command("wait-broker")
@click.argument("urls", nargs=-1, required=True)
@click.option("--timeout-s", type=float, default=90.0, show_default=True,
              help="Seconds each broker may take to answer a round trip.")
def wait_broker(urls: tuple[str, ...], timeout_s: float) -> None:
    """Wait until each broker at URLS answers a round trip (as ``broker-rtt`` times it); exit 1 if not."""
    for url in urls:
        deadline = time.monotonic() + timeout_s
        while (result := broker_rtt(url, 1))["rtt_ms"] is None:
            if time.monotonic() > deadline:
                sys.exit(f"the broker at {url.rpartition('@')[2]} does not answer after {timeout_s:g} s: "
                         f"{result['error']}")
            time.sleep(0.2)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--stop", "pidfiles", multiple=True, type=click.Path(path_type=Path),
              help="Stop this daemon first, whole session (repeatable): the broker, stopped last of all.")
@click.option("--grace-s", type=float, default=10.0, show_default=True,
              help="Seconds those daemons get after SIGTERM before SIGKILL.")
def collect(run_dir: Path, archive: Path, pidfiles: tuple[Path, ...], grace_s: float) -> None:
    """Write RUN_DIR's manifest (its ledger files, request logs and resource samples), then pack everything the
    coordinator collects (ledger, request logs, resource samples, Locust's output, logs, the manifest) into
    ARCHIVE, one file for Ansible to fetch."""
    if pidfiles:
        stop_daemons(pidfiles, grace_s)
    record = manifest_mod.build(run_dir)
    manifest_mod.write(run_dir / manifest_mod.MANIFEST_JSON, record)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(run_dir.iterdir()):
            if path.name in COLLECTED or path.name.startswith(COLLECTED_PREFIXES):
                tar.add(path, arcname=path.name)
    print(json.dumps(manifest_mod.totals(record)))


if __name__ == "__main__":
    main()
