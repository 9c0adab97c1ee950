"""The per-execution record that makes every number checkable.

Writers: the API (or a preloader) appends one ``sent`` row per task; the shared task body appends
``started`` and ``finished`` rows per attempt. Each process appends JSON lines to its own file
``<dir>/<host>-<pid>.jsonl`` opened with O_APPEND, one ``os.write`` per row: a row whose write returned
is in the kernel's page cache, so it survives a SIGKILL of the writer. The directory comes from the
environment variable ``QUEUEBENCH_LEDGER_DIR``; without it, writing is a no-op. The ledger is never on
the broker's Redis instance, so measuring does not load what is measured.

Timestamps are wall clock nanoseconds (`time.time_ns`) because rows cross processes.

Row fields: ``ev`` (sent | started | finished), ``id``, ``task``, ``pid``, ``host``; sent rows add
``queue``, ``digest``, ``scheduled_ns``, ``sent_ns``, ``enqueued_ns`` and, when the HTTP request carried
one, ``request_id`` (its ``X-Request-Id``); started/finished add
``attempt`` and ``t_ns``; finished adds ``outcome`` (ok | error) and ``error``. ``probe`` marks the
harness's own round-trip checks.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

LEDGER_ENV = "QUEUEBENCH_LEDGER_DIR"
#: The host name rows carry, when set (a deployment names each process's inventory host, so rows written by
#: several hosts sharing one machine still say which host wrote them); else the machine's host name.
HOST_ENV = "QUEUEBENCH_HOST"
#: Nanoseconds added to every timestamp a worker's rows carry, when set: a host clock made wrong on purpose, so
#: a test can check that a deployment measures the offset and corrects it (`benchmarks.deploy`'s host variable
#: ``qb_clock_skew_ns``; the clock responder, `benchmarks.clocks`, reads the same variable). Never set by a
#: measurement.
CLOCK_SKEW_ENV = "QUEUEBENCH_CLOCK_SKEW_NS"
_skew_ns = int(os.environ.get(CLOCK_SKEW_ENV) or 0)
LEDGER_SCHEMA_VERSION = 1
INT_COLUMNS = ("attempt", "t_ns", "scheduled_ns", "sent_ns", "enqueued_ns", "pid")
#: One encoder for every row: `json.dumps` with separators builds a new encoder per call, which the API
#: pays on every request.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class _Writer:
    """Lazily opens this process's ledger file; reopens after a fork (the pid is part of the name)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._pid: int | None = None
        self._dir: str | None = None
        self.host = os.environ.get(HOST_ENV) or socket.gethostname()

    def _ensure(self) -> int | None:
        directory = os.environ.get(LEDGER_ENV)
        if not directory:
            return None
        pid = os.getpid()
        if self._fd is None or self._pid != pid or self._dir != directory:
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"{self.host}-{pid}.jsonl")
            # The inherited fd of a forked parent is left alone: closing it here would not affect the parent.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid, self._dir = pid, directory
        return self._fd

    def write(self, *rows: dict[str, Any]) -> None:
        """Append `rows` in one `os.write` (so several rows of one event cost one system call)."""
        fd = self._ensure()
        if fd is None:
            return
        lines = []
        for row in rows:
            row["pid"] = self._pid
            row["host"] = self.host
            lines.append(_encode(row))
        os.write(fd, ("\n".join(lines) + "\n").encode())


_writer = _Writer()


def enabled() -> bool:
    return bool(os.environ.get(LEDGER_ENV))


def args_digest(task: str, args: Mapping[str, Any]) -> str:
    """A short digest of the task and its arguments (payloads are not stored, only their digest)."""
    try:
        return _digest_of(task, tuple(sorted(args.items())))
    except TypeError:  # an unhashable argument value: digest it without the cache
        return _digest_of.__wrapped__(task, tuple(sorted(args.items())))


@functools.lru_cache(maxsize=4096)
def _digest_of(task: str, items: tuple[tuple[str, Any], ...]) -> str:
    # A run sends a handful of distinct (task, args): cached, the API does not hash each request's again.
    blob = json.dumps([task, dict(items)], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def record_sent(*, task_id: str, task: str, args: Mapping[str, Any], queue: str,
                scheduled_ns: int | None, sent_ns: int, enqueued_ns: int, probe: bool = False,
                request_id: str | None = None) -> None:
    row: dict[str, Any] = {"ev": "sent", "id": task_id, "task": task, "queue": queue,
                           "digest": args_digest(task, args), "scheduled_ns": scheduled_ns,
                           "sent_ns": sent_ns, "enqueued_ns": enqueued_ns}
    if request_id is not None:
        row["request_id"] = request_id
    if probe:
        row["probe"] = True
    _writer.write(row)


def record_started(meta: Mapping[str, Any], task: str, attempt: int) -> None:
    row: dict[str, Any] = {"ev": "started", "id": meta.get("id"), "task": task, "attempt": attempt,
                           "t_ns": time.time_ns() + _skew_ns}
    if meta.get("probe"):
        row["probe"] = True
    _writer.write(row)


def record_ran(meta: Mapping[str, Any], task: str, attempt: int, *, outcome: str = "ok") -> None:
    """A `started` and a `finished` row at once, in one write: for a producer that completes a task the
    moment it accepts it (the `discard` backend), so its harness path pays one system call, not two."""
    t_ns = time.time_ns() + _skew_ns
    started: dict[str, Any] = {"ev": "started", "id": meta.get("id"), "task": task, "attempt": attempt, "t_ns": t_ns}
    finished: dict[str, Any] = {"ev": "finished", "id": meta.get("id"), "task": task, "attempt": attempt,
                                "t_ns": t_ns, "outcome": outcome}
    if meta.get("probe"):
        started["probe"] = finished["probe"] = True
    _writer.write(started, finished)


def record_finished(meta: Mapping[str, Any], task: str, attempt: int, *, outcome: str,
                    error: str | None = None) -> None:
    row: dict[str, Any] = {"ev": "finished", "id": meta.get("id"), "task": task, "attempt": attempt,
                           "t_ns": time.time_ns() + _skew_ns, "outcome": outcome}
    if error is not None:
        row["error"] = error[:500]
    if meta.get("probe"):
        row["probe"] = True
    _writer.write(row)


# --- reading -------------------------------------------------------------------------------------


def iter_rows(directory: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every well-formed row of every ledger file in `directory`.

    A line cut short by a killed writer is skipped (it is the only kind of malformed line possible).
    """
    for path in sorted(glob.glob(os.path.join(os.fspath(directory), "*.jsonl"))):
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def read_rows(directory: str | os.PathLike[str], *, include_probes: bool = False):
    """All rows as a pandas DataFrame (probe rows dropped unless asked for)."""
    import pandas as pd

    rows = [r for r in iter_rows(directory) if include_probes or not r.get("probe")]
    frame = pd.DataFrame(rows)
    for column in ("ev", "id", "task", "outcome", "queue", "host", "error", "digest", "request_id"):
        if column not in frame.columns:
            frame[column] = pd.NA
    # pandas 3's Arrow-backed strings cannot merge an empty key column: keep ids as plain objects.
    frame["id"] = frame["id"].astype(object)
    # Built from the Python ints directly: a float64 detour would round nanosecond stamps.
    for column in INT_COLUMNS:
        frame[column] = pd.array([r.get(column) for r in rows], dtype="Int64")
    return frame


def executions(directory: str | os.PathLike[str], *, include_probes: bool = False):
    """One row per (task id, attempt): sent/enqueued/scheduled from the sent row, started/finished
    from the worker rows; a task that never started keeps one row with attempt 0 and no times.

    Columns: id, task, digest (of task and args: `args_digest`), queue, request_id (the client's
    ``X-Request-Id``, when it sent one), attempt, scheduled_ns, sent_ns, enqueued_ns, started_ns, finished_ns,
    outcome, error, worker_pid, worker_host, n_started, n_finished.
    """

    rows = read_rows(directory, include_probes=include_probes)
    sent = rows[rows["ev"] == "sent"][["id", "task", "digest", "queue", "scheduled_ns", "sent_ns", "enqueued_ns",
                                       "request_id"]]
    sent = sent.drop_duplicates("id")
    started = rows[rows["ev"] == "started"]
    finished = rows[rows["ev"] == "finished"]
    st = started.groupby(["id", "attempt"], as_index=False).agg(
        started_ns=("t_ns", "min"), n_started=("t_ns", "size"), worker_pid=("pid", "first"),
        worker_host=("host", "first"), task_w=("task", "first"))
    fi = finished.groupby(["id", "attempt"], as_index=False).agg(
        finished_ns=("t_ns", "max"), n_finished=("t_ns", "size"), outcome=("outcome", "last"),
        error=("error", "last"))
    runs = st.merge(fi, on=["id", "attempt"], how="outer")
    out = sent.merge(runs, on="id", how="outer")
    out["task"] = out["task"].fillna(out.pop("task_w"))
    out["attempt"] = out["attempt"].fillna(0).astype("int64")
    for column in ("n_started", "n_finished"):
        out[column] = out[column].fillna(0).astype("int64")
    for column in ("scheduled_ns", "sent_ns", "enqueued_ns", "started_ns", "finished_ns", "worker_pid"):
        out[column] = out[column].astype("Int64")
    return out.sort_values(["sent_ns", "id", "attempt"], na_position="last").reset_index(drop=True)


def files(directory: str | os.PathLike[str]) -> list[Path]:
    return sorted(Path(directory).glob("*.jsonl"))


class Follower:
    """Reads only what was appended since the last call: cheap enough to poll while a run drains.

    Keeps a byte offset per file and consumes whole lines only (a line still being written is read next
    time). `poll()` returns the new rows; `done_ids` holds the ids with a successful `finished` row and
    `sent_ids` the ids with a `sent` row (probes left out of both).

    `final_attempts` maps a task name to the attempt whose failure is final (the `poison` task: 1 + the
    retries its library promises, `QueueBackend.retry_policy`): such a task's failed attempt of that number
    settles it (`failed_ids`), so a wait for tasks to finish does not wait for a success that cannot come.
    """

    def __init__(self, directory: str | os.PathLike[str], final_attempts: Mapping[str, int] | None = None) -> None:
        self.directory = Path(directory)
        self._offsets: dict[Path, int] = {}
        self.final_attempts = dict(final_attempts or {})
        self.sent_ids: set[str] = set()
        self.done_ids: set[str] = set()
        self.failed_ids: set[str] = set()
        self.finished_rows = 0

    def poll(self) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        for path in files(self.directory):
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for line in chunk[:end].splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                new.append(row)
        for row in new:
            if row.get("probe"):
                continue
            if row.get("ev") == "sent":
                self.sent_ids.add(row["id"])
            elif row.get("ev") == "finished":
                self.finished_rows += 1
                if row.get("outcome") == "ok":
                    self.done_ids.add(row["id"])
                elif is_final_failure(row, self.final_attempts):
                    self.failed_ids.add(row["id"])
        return new

    def outstanding(self) -> int:
        """Tasks sent that have neither finished successfully nor failed for good yet."""
        return len(self.sent_ids - self.done_ids - self.failed_ids)


def is_final_failure(row: Mapping[str, Any], final_attempts: Mapping[str, int]) -> bool:
    """Whether `row` is a failed `finished` row of the attempt after which its task's library gives up
    (`final_attempts`: task name -> that attempt; tasks not named there are never settled by a failure)."""
    final = final_attempts.get(str(row.get("task")))
    return (final is not None and row.get("ev") == "finished" and row.get("outcome") not in (None, "ok")
            and int(row.get("attempt") or 0) >= final)
