"""Supervised subprocesses: every process the harness starts is stopped, whole tree, in `finally`.

Each child starts in its own session (so a terminal's Ctrl-C reaches only the harness, which then
stops things in order: load generator; API and workers together; brokers). Stopping collects the whole
process trees with psutil *before* signalling, so a worker pool's children are found even if their
parent exits first, then sends SIGTERM to every root at once, waits (bounded), and SIGKILLs whatever is
left.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: Seconds a process tree gets to stop on its own after SIGTERM (a worker finishing the task in hand).
DEFAULT_STOP_TIMEOUT_S = 10.0
#: Seconds after the second SIGTERM before SIGKILL.
ESCALATE_S = 2.0


class ProcessFailed(RuntimeError):
    """A supervised process exited when it should be running; the message ends with its log's tail."""


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log_fh: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def tree(self) -> list[psutil.Process]:
        """This process and all its descendants (empty once it has gone)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


class Supervisor:
    """Starts processes, remembers them, and stops every one of them (reverse start order)."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, log_path: str | os.PathLike[str]) -> Proc:
        log = Path(log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            popen = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        except BaseException:
            fh.close()  # nothing started: no stop() will close it
            raise
        proc = Proc(name, list(argv), popen, log, fh)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        """Raise `ProcessFailed` if any supervised process has exited."""
        for proc in self.procs:
            if not proc.alive():
                raise ProcessFailed(f"{proc.name} exited with code {proc.popen.returncode}; "
                                    f"log {proc.log_path}:\n{proc.log_tail()}")

    def pids(self) -> dict[str, list[int]]:
        """Live pids of each supervised process tree, by name (for resource sampling and checks)."""
        return {proc.name: [p.pid for p in proc.tree()] for proc in self.procs}

    def stop(self, proc: Proc, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop one process tree (`stop_many` with one process)."""
        self.stop_many([proc], timeout_s)

    def stop_many(self, procs: Sequence[Proc], timeout_s: float = DEFAULT_STOP_TIMEOUT_S, *,
                  escalate_s: float = ESCALATE_S) -> None:
        """Stop several process trees at once, so stopping takes as long as the slowest, not the sum.

        SIGTERM each root and let it stop its own children, waiting for every tree together at most
        `timeout_s`. Then, for whatever of the trees (collected beforehand) and of their sessions is
        still alive: SIGTERM again and wait `escalate_s` (a second SIGTERM makes Dramatiq and Celery kill
        at once instead of finishing the task in hand; 0 skips this step), and finally SIGKILL. The
        processes are not removed from `procs` here (the caller decides what it stops)."""
        procs = list(procs)
        trees = [proc.tree() for proc in procs]
        for tree in trees:
            _signal_all(tree[:1], signal.SIGTERM)
        alive = _wait_gone(procs, [p for tree in trees for p in tree], timeout_s)
        if escalate_s > 0:
            _signal_all(alive, signal.SIGTERM)
            for proc in procs:
                with _ignore_gone():
                    os.killpg(proc.pid, signal.SIGTERM)  # members of its session that left the tree
            alive = _wait_gone(procs, alive, escalate_s)
        _signal_all(alive, signal.SIGKILL)
        for proc in procs:
            with _ignore_gone():
                os.killpg(proc.pid, signal.SIGKILL)
        _wait_gone(procs, alive, 5)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            if proc._log_fh is not None:
                proc._log_fh.close()  # type: ignore[attr-defined]
                proc._log_fh = None

    def stop_all(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every process, last started first. Safe to call twice."""
        while self.procs:
            proc = self.procs.pop()
            self.stop(proc, timeout_s)


#: Seconds between two looks while waiting for processes to exit.
_EXIT_POLL_S = 0.02


def _wait_gone(roots: Sequence[Proc], procs: Sequence[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every one of `procs` has exited, at most `timeout_s`; return those still running.

    An exited process the kernel keeps as a zombie counts as gone: a killed worker's children are
    reparented to init, which may reap them only later (psutil's own wait would wait for that), and the
    roots, our own children, are reaped here as they exit.
    """
    deadline = time.monotonic() + timeout_s
    alive = list(procs)
    while True:
        for root in roots:
            root.popen.poll()  # reap our own children
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(_EXIT_POLL_S)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(procs: Sequence[psutil.Process], sig: int) -> None:
    for p in procs:
        with _ignore_gone():
            p.send_signal(sig)


def _ignore_gone() -> contextlib.suppress:
    """Signalling a process that has already gone is not an error."""
    return contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError)


def wait_until(predicate, *, timeout_s: float, interval_s: float = 0.1, what: str = "condition",
               supervisor: Supervisor | None = None) -> None:
    """Poll `predicate` until true; raise TimeoutError naming `what`, or ProcessFailed if a child died."""
    deadline = time.monotonic() + timeout_s
    while True:
        if supervisor is not None:
            supervisor.check()
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


class PhaseClock:
    """Wall seconds per named phase of one cell (a phase entered twice adds up), and a timestamped log.

    `phase(name)` times a block; `add(name, seconds)` books a span measured otherwise (say, from ledger
    timestamps). `record()` is what run.json keeps as ``phases_s``: each phase in the order first seen,
    ``other`` (wall time in no phase) and ``total`` (wall time since the clock started).
    """

    def __init__(self, log_path: Path | None = None) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.log_path = log_path

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started, started)

    def add(self, name: str, seconds: float, started: float | None = None) -> None:
        seconds = max(0.0, seconds)
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.note(name, seconds, started)

    def note(self, name: str, seconds: float, started: float | None = None) -> None:
        """Log a span without booking it (a part of a phase, say one process's stop)."""
        if self.log_path is not None:
            at = (started if started is not None else time.monotonic() - seconds) - self.started
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            with contextlib.suppress(OSError):
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "a") as fh:
                    fh.write(f"{stamp} +{at:8.3f} s {name:<22} {seconds:8.3f} s\n")

    def record(self) -> dict[str, float]:
        total = time.monotonic() - self.started
        out = {name: round(s, 3) for name, s in self.seconds.items()}
        out["other"] = round(max(0.0, total - sum(self.seconds.values())), 3)
        out["total"] = round(total, 3)
        return out
