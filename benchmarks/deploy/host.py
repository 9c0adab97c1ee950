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
- ``collect RUN_DIR ARCHIVE [--stop PIDFILE]``: stop the broker first if named (so the broker stops last
  of all, after every host's other services), then write the manifest of the host's ledger and request logs
  (`benchmarks.deploy.manifest`), then pack what the coordinator collects into one archive for Ansible's
  fetch (one transfer per host instead of one per file).

Imports nothing but the standard library, psutil, redis-py, pika (only for an ``amqp://`` URL) and queuebench's own
ledger, manifest and Redis URL modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tarfile
import time
from pathlib import Path

import click
import psutil
import redis

from backends import ledger, redis_url
from benchmarks.deploy import manifest as manifest_mod

#: What `collect` packs from a host's run directory (names, and prefixes of Locust's own output files).
COLLECTED = ("ledger", "requests", "logs", "manifest.json")
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


def stop_daemons(pidfiles: tuple[Path, ...], grace_s: float) -> dict[str, object]:
    """Stop the daemons named by `pidfiles`, whole sessions: SIGTERM to each at once, SIGKILL to whatever of
    their sessions and descendants is left after `grace_s`. Returns what was stopped."""
    roots, members = [], []
    for path in pidfiles:
        try:
            pid = int(path.read_text().strip())
            written = path.stat().st_mtime
            created = psutil.Process(pid).create_time()
        except (OSError, ValueError, psutil.Error):
            continue  # no pidfile, or its process has gone
        if not written - PID_REUSE_SLACK_S <= created <= written + 1:
            continue  # the pid now names another process, started long before or after the daemon
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
    """Write RUN_DIR's manifest (its ledger files and request logs), then pack everything the coordinator
    collects (ledger, request logs, Locust's output, logs, the manifest) into ARCHIVE, one file for Ansible
    to fetch."""
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
