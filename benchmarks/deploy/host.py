"""What runs on a deployed host, called by the playbooks: ``python -m benchmarks.deploy.host COMMAND ...``.

- ``stop PIDFILE... [--grace-s S]``: stop daemons started with start-stop-daemon, whole sessions. Each
  daemon's session and descendants are collected before any signal (so a pool's children are found even
  when their parent exits first); SIGTERM goes to every daemon at once, then SIGKILL to whatever of them is
  left after the grace. A pidfile whose process has gone is skipped.
- ``progress LEDGER_DIR``: the ledger's sent and successfully finished task ids (probes left out) as JSON on
  stdout, so the coordinator can tell when every task sent has finished across hosts.
- ``manifest RUN_DIR OUT``: the manifest of the host's ledger and request logs (`benchmarks.deploy.manifest`).

Imports nothing but the standard library, psutil and queuebench's own ledger and manifest modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import click
import psutil

from backends import ledger
from benchmarks.deploy import manifest as manifest_mod

#: A daemon's process starts just before start-stop-daemon writes its pidfile; a process with that pid created
#: more than this many seconds before (or after) the pidfile is another process that reused the pid.
PID_REUSE_SLACK_S = 10.0


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


@main.command()
@click.argument("pidfiles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--grace-s", type=float, default=10.0, show_default=True,
              help="Seconds the daemons get after SIGTERM before SIGKILL.")
def stop(pidfiles: tuple[Path, ...], grace_s: float) -> None:
    """Stop the daemons named by PIDFILES, whole sessions; print what was stopped as JSON."""
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
    print(json.dumps({"stopped": [name for name, _ in roots], "killed": len(alive), "left": len(still)}))
    if still:
        sys.exit(f"processes still running after SIGKILL: {[p.pid for p in still]}")


@main.command()
@click.argument("ledger_dir", type=click.Path(path_type=Path))
def progress(ledger_dir: Path) -> None:
    """Print the ledger's sent and successfully finished task ids (probes left out) as JSON."""
    follower = ledger.Follower(ledger_dir)
    if ledger_dir.exists():
        follower.poll()
    print(json.dumps({"sent": sorted(follower.sent_ids), "done": sorted(follower.done_ids),
                      "finished_rows": follower.finished_rows, "t_ns": time.time_ns()}))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def manifest(run_dir: Path, out: Path) -> None:
    """Write the manifest of RUN_DIR's ledger files and request logs to OUT."""
    record = manifest_mod.build(run_dir)
    manifest_mod.write(out, record)
    print(json.dumps({"files": len(record["files"]), "rows": sum(f["rows"] for f in record["files"].values())}))


if __name__ == "__main__":
    main()
