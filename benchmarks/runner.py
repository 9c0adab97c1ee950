"""The matrix runner: one cell at a time, each measured for real and checked against its own raw records.

A sweep reads like a recipe (`run_matrix`): expand the matrix, drop the cells already done (unless
``--force``), and run each remaining cell in turn; a failing cell is recorded and the sweep goes on.
What the cells share is one private redis-server (`brokers.SharedRedis`), emptied before each cell;
everything else each cell starts and stops itself. ``sweep.json`` says where the sweep's time went.

A load cell (`mode = "load"`): start the broker, the workers (the library's own CLI) and the API
(gunicorn); round-trip one probe of each task kind the scenario sends through every queue; run Locust
headless for ``warmup_s + duration_s`` with the open-loop scenario; let the queue drain; collect; stop
everything. A drain cell (`mode = "drain"`): start the broker; enqueue one probe of the cell's task kind
per queue, then preload ``tasks`` tasks behind them, straight through the backend; start the workers and
time until the ledger shows every task finished; then check that every probe round-tripped (the workers
start once: no separate probe run, whose graceful stop cost Celery and Dramatiq 2.5-3.5 s per cell; the
probes add one task per queue, 1/``tasks`` of the work, to the time from the workers' start, and none to
the measured window, which leaves probes out). Either drain waits while tasks keep finishing (`await_drain`): it
fails only when none has finished for ``drain_stall_s`` or ``drain_timeout_s`` (a hard ceiling) passes,
and run.json says which rule ended it (``drain_ended_by``).

Each run leaves ``results/runs/<run_id>/`` (see results/README.md): ``run.json``, ``tasks.parquet``,
``requests.parquet`` and Locust's CSV/HTML/JSON (load mode), ``resources.csv``, ``queue_depths.csv``,
``logs/`` and the raw ``ledger/``, written through `benchmarks.store` (which owns that layout and which
analysis reads through; the runner never imports analysis). ``run.json`` is written last; a run without
one, or whose status is ``interrupted`` or ``error``, is redone on the next invocation.

Run ids are a pure function of the spec (`benchmarks.matrix.run_id`), so a sweep resumes where it
stopped. Only one sweep measures at a time on a machine (a lock file), so two never share the cores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from backends import ledger
from backends.base import BackendUnavailable, DeliveryContract
from benchmarks import __version__, environment, faults, measure, serialization, store
from benchmarks.brokers import SharedRedis, free_port, redact
from benchmarks.matrix import Cell, Matrix
from benchmarks.procs import PhaseClock
from benchmarks.sampler import Sampler
from benchmarks.stack import PROJECT_ROOT, Stack, StackConfig
from benchmarks.store import RESULT_SCHEMA_VERSION, is_done, read_run

#: What `routing_mix` sends: mostly short tasks and a few long ones (weight, task, args).
ROUTING_MIX: list[list[Any]] = [[90, "sleep_ms", {"ms": 10}], [10, "sleep_ms", {"ms": 1000}]]
#: What `payload` sends: echo payloads of these sizes in equal shares, in bytes.
PAYLOAD_SIZES = (100, 10_000, 100_000)
#: How the open-loop generator treats a schedule it cannot keep (scenarios/openloop.py): each Locust
#: process keeps at most `GENERATOR_MAX_IN_FLIGHT` requests awaiting answers; past that the next arrival
#: waits for a free slot and is sent late, its lag recorded, so an over-offered run sends at the ceiling
#: of the generator and API instead of piling up requests that time out. Recorded in run.json's
#: ``generator``.
GENERATOR_POLICY = "send-late"
GENERATOR_MAX_IN_FLIGHT = 64
#: Seconds the generator waits, when the load phase ends, for answers to requests under way; those still
#: unanswered are written as raw rows with status -1 and looked up in the ledger by request id.
GENERATOR_STOP_WAIT_S = 10.0
#: Seconds Locust may take, after its run time, for its users to stop: the stop wait and a margin to write
#: off what is still unanswered (Locust kills a user still running after it).
LOCUST_STOP_TIMEOUT_S = int(GENERATOR_STOP_WAIT_S) + 5
#: Seconds Locust keeps sending after the measured window ends (not measured), so the tasks scheduled in
#: the window's last moments still meet a steady flow of arrivals behind them. One second is many times
#: the service time of the short tasks the matrices send (10-50 ms) and as long as routing_mix's long
#: tasks; a longer tail costs every load cell its length in wall time and measures nothing.
LOCUST_TAIL_S = 1
#: Distributed load (``load_workers`` > 1): seconds the Locust master waits for all its workers to connect
#: (``--expect-workers-max-wait``) before it gives up and exits. A worker connects within 1-2 s of its
#: start on 2 cores; 30 s leaves room for a loaded machine and bounds what a worker that never comes costs.
LOCUST_WORKERS_MAX_WAIT_S = 30
#: Where a distributed run's master listens: loopback only.
LOCUST_MASTER_HOST = "127.0.0.1"
#: Seconds the Locust workers get to exit on their own once their master has (it tells them to quit).
LOCUST_WORKERS_EXIT_S = 5.0
#: Seconds empty queues get to show it after the last task finished (see `CellRun._leftovers`).
LEFTOVER_GRACE_S = 2.0
#: The machine-wide measuring lock. `QUEUEBENCH_LOCK` moves it: the test suite points it at its own file,
#: because tests claim no figures and must not fail while a real sweep measures on the same machine.
LOCK_PATH = Path(tempfile.gettempdir()) / "queuebench-measure.lock"


#: How long a sweep waits for the measuring lock before giving up: `QUEUEBENCH_LOCK_WAIT_S`, which
#: `queuebench --wait-lock SECONDS` sets; 0 (the default) gives up at once.
LOCK_WAIT_ENV = "QUEUEBENCH_LOCK_WAIT_S"
#: Seconds between two tries while waiting for the measuring lock.
LOCK_POLL_S = 1.0


def lock_path() -> Path:
    """Where the measuring lock lives now (`QUEUEBENCH_LOCK`, else `LOCK_PATH`)."""
    return Path(os.environ.get("QUEUEBENCH_LOCK") or LOCK_PATH)


def lock_wait_s() -> float:
    """Seconds to wait for the measuring lock (`QUEUEBENCH_LOCK_WAIT_S`, else 0)."""
    return float(os.environ.get(LOCK_WAIT_ENV) or 0)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop what runs, keep what was measured."""


@dataclass
class CellResult:
    run_id: str
    status: str
    detail: str = ""
    run_dir: Path | None = None
    #: Where the cell's wall time went (run.json's ``phases_s``); None for a cell not run now.
    phases_s: dict[str, float] | None = None


# --- what a cell sends -------------------------------------------------------------------------------


def sent_tasks(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The distinct (task, args) a cell sends: each is round-tripped before measuring."""
    if spec.get("mode") == "load" and spec.get("scenario") == "routing_mix":
        return [(task, dict(args)) for _, task, args in ROUTING_MIX]
    if spec.get("mode") == "load" and spec.get("scenario") == "payload":
        return [("echo", {"size": size}) for size in PAYLOAD_SIZES]
    return [(spec["task"], dict(spec["args"]))]


def load_workers(spec: Mapping[str, Any]) -> int:
    """Locust worker processes the cell's load is split between (1: one Locust process, no master)."""
    return int(spec.get("load_workers", 1))


def add_resources(figures: dict[str, Any], resources: pd.DataFrame) -> None:
    """The resource figures of a run's sampled ``resources.csv`` rows (a local run's, or an inventory's with
    a host column): per component (`measure.resource_use`), and tasks per worker and per total CPU second."""
    use = measure.resource_use(resources)
    figures["resources"] = use
    worker_cpu = use.get("workers", {}).get("cpu_s")
    total_cpu = sum(c["cpu_s"] for c in use.values())
    figures["tasks_per_worker_cpu_s"] = figures["finished_ok"] / worker_cpu if worker_cpu else None
    figures["tasks_per_cpu_s"] = figures["finished_ok"] / total_cpu if total_cpu else None


def from_worker_start(figures: dict[str, Any], count: int, window: measure.Window, workers_started_ns: int,
                      all_done_ns: int, drain_s: float) -> list[tuple[str, float]]:
    """A drain's figures timed from starting the workers, as published comparisons time it (into `figures`),
    and its block of `drain_s` seconds in three phases: the workers booting (to the first start), the
    measured window (first start to last finish), and the end noticed (last finish to the wait's return)."""
    wall_s = (all_done_ns - workers_started_ns) / 1e9
    figures["workers_started_ns"] = workers_started_ns
    figures["wall_from_worker_start_s"] = wall_s
    figures["throughput_from_worker_start_per_s"] = count / wall_s if wall_s > 0 else None
    boot_s = min(drain_s, max(0.0, (window.start_ns - workers_started_ns) / 1e9))
    window_s = min(window.length_s, drain_s - boot_s)
    return [("workers_boot", boot_s), ("window", window_s), ("drain_end", drain_s - boot_s - window_s)]


def locust_argv(spec: Mapping[str, Any], api_url: str, run_dir: Path, *,
                master: tuple[str, int] | None = None) -> list[str]:
    """Locust, headless, on the cell's scenario file with the cell's rate and task: the one process that
    writes Locust's CSV/HTML/JSON. With `master` (host, port), a distributed run's master, bound there,
    which waits at most `LOCUST_WORKERS_MAX_WAIT_S` for ``load_workers`` workers (`locust_worker_argv`),
    runs one user on each, and keeps its roll call of them in ``locust_workers.json``."""
    # Arrivals go on a little past the measured window, so the window's end sees steady load too.
    run_time_s = max(1, math.ceil(spec["warmup_s"] + spec["duration_s"] + LOCUST_TAIL_S))
    users = str(load_workers(spec)) if master is not None else "1"  # one user per Locust process
    argv = [str(Path(sys.executable).parent / "locust"), "-f", str(PROJECT_ROOT / "scenarios" /
                                                                       f"{spec['scenario']}.py"),
            "--host", api_url, "--headless", "-u", users, "-r", users, "-t", f"{run_time_s}s",
            "--stop-timeout", str(LOCUST_STOP_TIMEOUT_S), "--only-summary", "--loglevel", "WARNING",
            "--csv", str(run_dir / store.LOCUST_PREFIX), "--csv-full-history",
            "--html", str(run_dir / f"{store.LOCUST_PREFIX}.html"), "--json-file", str(run_dir / store.LOCUST_PREFIX),
            "--qb-rate", f"{spec['rate']:g}", "--qb-arrival", spec.get("arrival", "constant"),
            "--qb-task", spec.get("task", "noop"), "--qb-args", json.dumps(spec.get("args", {})),
            "--qb-log-dir", str(run_dir / store.REQUEST_LOGS_DIR),
            "--qb-max-in-flight", str(GENERATOR_MAX_IN_FLIGHT), "--qb-stop-wait-s", f"{GENERATOR_STOP_WAIT_S:g}"]
    if spec["scenario"] == "routing_mix":
        argv += ["--qb-mix", json.dumps(ROUTING_MIX)]
    if spec["scenario"] == "payload":
        argv += ["--qb-sizes", ",".join(str(s) for s in PAYLOAD_SIZES)]
    if master is not None:
        host, port = master
        argv += ["--master", "--master-bind-host", host, "--master-bind-port", str(port),
                 "--expect-workers", str(load_workers(spec)),
                 "--expect-workers-max-wait", f"{LOCUST_WORKERS_MAX_WAIT_S:g}",
                 "--qb-workers-file", str(run_dir / store.LOCUST_WORKERS_JSON)]
    return argv


def locust_worker_argv(spec: Mapping[str, Any], master: tuple[str, int]) -> list[str]:
    """One Locust worker of a distributed run, connecting to its master at `master` (host, port). It takes
    every queuebench option (rate, task, raw log directory...) from the master when the test starts."""
    host, port = master
    return [str(Path(sys.executable).parent / "locust"), "-f",
            str(PROJECT_ROOT / "scenarios" / f"{spec['scenario']}.py"),
            "--worker", "--master-host", host, "--master-port", str(port), "--loglevel", "WARNING"]


def generator_record(workers: int = 1) -> dict[str, Any]:
    """run.json's ``generator``: how the open-loop generator treats a schedule it cannot keep, and how many
    Locust processes send the load (`workers` > 1: that many workers under one master)."""
    record = {"policy": GENERATOR_POLICY, "max_in_flight": GENERATOR_MAX_IN_FLIGHT,
              "stop_wait_s": GENERATOR_STOP_WAIT_S, "locust_processes": 1 if workers == 1 else workers + 1,
              "load_workers": workers,
              "meaning": "past max_in_flight requests awaiting answers in a Locust process, the next arrival "
                         "waits and is sent late with its lag recorded (latency still counts from its "
                         "schedule); at the end of the load phase, answers are awaited up to stop_wait_s and "
                         "requests still unanswered are written as status -1 and looked up in the ledger by "
                         "request id"}
    if workers > 1:
        record["distributed"] = (f"a headless Locust master and {workers} workers (locust_processes counts the "
                                 "master, which sends nothing); each worker sends rate / load_workers and keeps "
                                 "its own max_in_flight; the master's count of POST /tasks is the workers' sum")
    return record


# --- waiting for a drain ---------------------------------------------------------------------------------

#: Seconds between two reads of the ledger while a drain is awaited.
DRAIN_POLL_S = 0.1
#: Seconds between two progress reports while a drain is awaited.
DRAIN_REPORT_S = 1.0
#: What can end a drain: every task sent finished, none finished for ``drain_stall_s``, or
#: ``drain_timeout_s`` passed.
DRAIN_RULES = ("all-finished", "stalled", "ceiling")


@dataclass(frozen=True)
class DrainEnd:
    """How a drain ended: the rule that ended it (`DRAIN_RULES`) and what the ledger showed then."""

    ended_by: str
    waited_s: float
    #: Seconds since the last task finished (or since the wait began, if none has).
    idle_s: float
    finished: int
    outstanding: int
    #: The wait ended early because no worker process was left to finish anything (ended_by "stalled").
    workers_gone: bool = False


def await_drain(follower: ledger.Follower, *, stall_s: float, ceiling_s: float,
                workers_alive: Callable[[], bool] = lambda: True,
                on_progress: Callable[[int, int, float], None] | None = None,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                interval_s: float = DRAIN_POLL_S) -> DrainEnd:
    """Wait while tasks keep finishing: until every task sent has finished successfully (``all-finished``),
    no task has finished for `stall_s` (``stalled``; at once when `workers_alive` says none is left), or
    `ceiling_s` has passed however it progresses (``ceiling``). Any finished row counts as progress (a
    failed attempt that will be retried too). `on_progress` gets (finished, outstanding, seconds waited)
    about every `DRAIN_REPORT_S`."""
    started = clock()
    follower.poll()
    last_rows, last_progress, last_report = follower.finished_rows, started, None

    def end(rule: str, now: float, gone: bool = False) -> DrainEnd:
        return DrainEnd(rule, now - started, now - last_progress, len(follower.done_ids), follower.outstanding(),
                        gone)

    while True:
        now = clock()
        if follower.finished_rows != last_rows:
            last_rows, last_progress = follower.finished_rows, now
        if follower.outstanding() == 0:
            return end("all-finished", now)
        if now - last_progress >= stall_s:
            return end("stalled", now)
        if now - started >= ceiling_s:
            return end("ceiling", now)
        if not workers_alive():
            follower.poll()  # what the last worker wrote before it went
            if follower.outstanding() == 0:
                return end("all-finished", now)
            return end("stalled", now, gone=True)
        if on_progress is not None and (last_report is None or now - last_report >= DRAIN_REPORT_S):
            on_progress(len(follower.done_ids), follower.outstanding(), now - started)
            last_report = now
        sleep(interval_s)
        follower.poll()


# --- one cell -----------------------------------------------------------------------------------------


class CellRun:
    """Runs one cell into its directory; `run()` always leaves a run.json saying what happened."""

    def __init__(self, cell: Cell, matrix_name: str, run_dir: Path, *, amqp_url: str | None = None,
                 broker_url: str | None = None, shared_redis: SharedRedis | None = None,
                 per_run_vhost: bool = False, left_by_sweep: frozenset[str] = frozenset(),
                 log: Callable[[str], None] = print,
                 status: Callable[[int, int, float], None] | None = None) -> None:
        self.cell, self.spec, self.run_dir, self.log = cell, dict(cell.spec), run_dir.resolve(), log
        #: Called about once a second while a drain is awaited, with (finished, outstanding, seconds waited).
        self.status = status
        self.config = StackConfig(self.spec, broker_url=broker_url, amqp_url=amqp_url, per_run_vhost=per_run_vhost)
        self.shared_redis = shared_redis
        #: On a user's Redis: the keys the sweep's previous cell left after its purge (`Stack.left_keys`).
        self.left_by_sweep = left_by_sweep
        self.record: dict[str, Any] = {
            "schema_version": RESULT_SCHEMA_VERSION, "harness_version": __version__, "run_id": cell.run_id,
            "matrix": matrix_name, "repeat": cell.repeat, "spec": self.spec, "slots": self.config.slots,
            "status": "running", "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self.stack: Stack | None = None
        self.phases = PhaseClock()
        #: faults: the cell's fault injector (benchmarks/faults.py), None without a fault.
        self.faults = faults.Injector(self.spec, log) if faults.wanted(self.spec) else None

    def run(self) -> CellResult:
        self.phases = PhaseClock()
        with self.phases.phase("prepare"):
            if self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True)
            self.phases.log_path = self.run_dir / "logs" / "phases.log"
            self.record["environment"] = environment.describe(self.spec["backend"])
        if self.cell.skip_reason:
            return self._finish("skipped", self.cell.skip_reason)
        # faults: a cell that restarts its broker starts a redis-server of its own, not the sweep's.
        shared_redis = None if faults.own_broker(self.spec) else self.shared_redis
        self.stack = Stack(self.config, self.run_dir, phases=self.phases, shared_redis=shared_redis,
                           private_rabbitmq=faults.own_broker(self.spec),
                           private_sentinel=self.spec.get("fault") == faults.FAILOVER,
                           left_by_sweep=self.left_by_sweep)
        try:
            if self.spec["mode"] == "drain":
                self._drain()
            else:
                self._load()
            summary = self.record["summary"]
            failed = ", ".join(summary["failed_checks"])
            detail = f"failed checks: {failed}" if failed else ""
            missing = summary["figures"].get("load_workers")
            if missing is not None and not missing["ok"]:  # a Locust worker missing: say which
                detail = "; ".join(filter(None, [detail, f"generator check: {missing['detail']}"]))
            if self.record.get("drain_ended_by", "all-finished") not in ("all-finished", faults.FAULT_DEADLINE):
                detail += f"; {self._drain_detail()}"
            if self.faults is not None:  # faults: a broken contract is flagged, not a failed run
                detail = "; ".join(filter(None, [detail, self.faults.summary_line()]))
            return self._finish(summary["verdict"], detail)
        except Interrupted:
            self._finish("interrupted", "stopped by SIGINT/SIGTERM; redone on the next run")
            raise
        except Exception as exc:  # recorded, and the sweep goes on
            detail = f"{type(exc).__name__}: {exc}"
            if self.record.get("drain_ended_by", "all-finished") != "all-finished":
                detail = f"{self._drain_detail()}; {detail}"
            return self._finish("error", detail)
        finally:
            self._stop()

    def _drain_detail(self) -> str:
        record = self.record
        if record["drain_ended_by"] == "ceiling":
            why = f"drain_timeout_s = {self.spec['drain_timeout_s']:g} s passed"
        elif record.get("drain_workers_gone"):
            why = "every worker process had exited"
        else:
            why = f"no task finished for {record['drain_idle_s']:.0f} s (drain_stall_s = {self.spec['drain_stall_s']:g})"
        return (f"drain {record['drain_ended_by']} after {record['drain_s']:.0f} s with "
                f"{record['drain_outstanding']} task(s) outstanding: {why}")

    def _stop(self) -> None:
        """Stop the stack (idempotent), booked as the ``stop`` phase."""
        if self.stack is not None and (self.stack.supervisor.procs or self.stack.backend is not None):
            with self.phases.phase("stop"):
                self.stack.stop()

    def _finish(self, status: str, detail: str) -> CellResult:
        with contextlib.suppress(Exception):
            self._stop()
        if self.faults is not None:  # faults: orphans are looked for once everything is stopped
            with contextlib.suppress(Exception):
                self.faults.after_teardown()
            self.record["faults"] = self.faults.record
        self.record |= {"status": status, "detail": detail,
                        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "phases_s": self.phases.record()}
        store.write_run(self.run_dir, self.record)
        return CellResult(self.cell.run_id, status, detail, self.run_dir, self.record["phases_s"])

    def _describe(self) -> None:
        assert self.stack is not None and self.stack.backend is not None
        stack = self.stack
        self.record["settings"] = dict(stack.backend.describe())
        policy = stack.backend.retry_policy()  # what a poison task gets: its attempts are checked against it
        self.record["retry_policy"] = policy.record() if policy is not None else None
        self.record["backend_environment"] = stack.environment_record()
        self.record["brokers"] = broker_records(stack)
        self.record["processes"] = [{"name": p.name, "argv": [_redact(a) for a in p.argv]}
                                    for p in stack.supervisor.procs]

    def _load(self) -> None:
        spec, stack = self.spec, self.stack
        assert stack is not None
        self.log("starting broker, workers and API")
        stack.start(sent_tasks(spec))
        assert stack.backend is not None and stack.api_url is not None
        self._record_kinds()
        self.record["api"] = {"server": "gunicorn gthread", "workers": self.config.api_workers,
                              "threads": self.config.api_threads}
        workers = load_workers(spec)
        self.record["generator"] = generator_record(workers)
        follower = ledger.Follower(stack.ledger_dir, stack.final_attempts())
        if self.faults is not None:
            self.faults.prepare(stack, self._contract())
        with Sampler(stack.supervisor, self.run_dir, depths=stack.backend.queue_depths) as sampler:
            master = (LOCUST_MASTER_HOST, free_port()) if workers > 1 else None
            argv = locust_argv(spec, stack.api_url, self.run_dir, master=master)
            self.log(f"Locust: {spec['rate']:g} tasks/s for {spec['warmup_s']:g} s warm-up + "
                     f"{spec['duration_s']:g} s measured" + (f", {workers} Locust workers" if master else ""))
            locust_started, locust_started_ns = time.monotonic(), time.time_ns()
            locust = stack.supervisor.start("locust", argv, env=stack.base_env(), cwd=self.run_dir,
                                            log_path=stack.logs_dir / "locust.log")
            load_procs = [locust] + self._start_load_workers(spec, master)
            if self.faults is not None:
                self.faults.start()
            self._describe()
            limit_s = spec["warmup_s"] + spec["duration_s"] + LOCUST_STOP_TIMEOUT_S + 60
            if master is not None:
                limit_s += LOCUST_WORKERS_MAX_WAIT_S
            deadline = time.monotonic() + limit_s
            while locust.alive():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Locust still running after {limit_s:.0f} s")
                for proc in list(stack.supervisor.procs):
                    # A Locust worker that exits early is the generator check's (the master's roll call).
                    if proc not in load_procs and not proc.alive() and self.faults is None:
                        raise RuntimeError(f"{proc.name} exited during the run:\n{proc.log_tail()}")
                time.sleep(0.2)
            self._stop_load(load_procs)
            locust_s, locust_ended_ns = time.monotonic() - locust_started, time.time_ns()
            self.record["locust_exit_code"] = locust.popen.returncode
            if master is not None:
                self.record["generator"]["workers"] = self._load_workers_record(load_procs[1:])
            self.log("draining")
            with self.phases.phase("tail_drain"):
                self._drain_wait(follower)
                leftovers = self._leftovers()
        with self.phases.phase("collect"):
            self.record["sampler_errors"] = sampler.errors
            tasks = self._store_tasks()
            requests = store.read_requests(self.run_dir / store.REQUEST_LOGS_DIR)
            store.write_requests_table(self.run_dir, requests)
            roll_call = None
            if workers > 1:
                roll_call = measure.load_workers_reported(store.read_locust_workers(self.run_dir), workers)
                if not len(requests) and not roll_call["ok"]:
                    raise RuntimeError(f"generator check failed, nothing was sent: {roll_call['detail']} "
                                       f"(Locust master exit code {self.record['locust_exit_code']}; "
                                       f"{stack.logs_dir / 'locust.log'})")
            window = measure.load_window(tasks, requests, spec["warmup_s"], spec["duration_s"])
            summary = measure.summarise(tasks, requests, window, slots=self.config.slots,
                                        offered_rate_per_s=float(spec["rate"]),
                                        arrival=spec.get("arrival", "constant"),
                                        locust_post_counts=store.locust_post_counts(self.run_dir),
                                        queue_leftovers=leftovers, final_attempts=stack.final_attempts(),
                                        load_workers=roll_call)
            self._add_resources(summary)
            self._judge_fault(summary)
            self.record["summary"] = summary
        self._book_locust(locust_started, locust_s, locust_started_ns, locust_ended_ns, window)

    def _start_load_workers(self, spec: Mapping[str, Any], master: tuple[str, int] | None) -> list[Any]:
        """Start a distributed run's Locust workers on this machine (none for one Locust process), under
        the supervisor like everything else."""
        assert self.stack is not None
        if master is None:
            return []
        stack = self.stack
        return [stack.supervisor.start(f"locust-worker-{i}", locust_worker_argv(spec, master), env=stack.base_env(),
                                       cwd=self.run_dir, log_path=stack.logs_dir / f"locust-worker-{i}.log")
                for i in range(load_workers(spec))]

    def _stop_load(self, procs: list[Any]) -> None:
        """Once the Locust master (the first of `procs`) has exited: give its workers a moment to follow
        (it told them to quit), stop any still running, and take them all off the supervisor's list (this
        closes their logs)."""
        assert self.stack is not None
        supervisor = self.stack.supervisor
        deadline = time.monotonic() + LOCUST_WORKERS_EXIT_S
        while any(p.alive() for p in procs[1:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in procs:
            supervisor.procs.remove(proc)
        supervisor.stop_many(procs, timeout_s=2.0 if any(p.alive() for p in procs) else 0)

    def _load_workers_record(self, procs: list[Any]) -> dict[str, Any]:
        """run.json's ``generator.workers``: each local worker process's exit code beside the master's roll
        call (``locust_workers.json``)."""
        return {"processes": [{"name": p.name, "pid": p.pid, "exit_code": p.popen.returncode} for p in procs],
                "roll_call": store.LOCUST_WORKERS_JSON}

    def _drain(self) -> None:
        spec, stack = self.spec, self.stack
        assert stack is not None
        phases = self.phases
        self.log("starting broker; preloading")
        with phases.phase("broker_start"):
            stack.start_brokers()
            if self.faults is not None:
                self.faults.prepare(stack, self._contract())
        assert stack.backend is not None
        self._record_kinds()
        count = int(spec["tasks"])
        with phases.phase("preload"):
            # The probes go first, so the workers started once run them before the preload (FIFO) or
            # beside its first tasks; their round trip is checked when the drain is over.
            probes = stack.send_probes(sent_tasks(spec))
            before = serialization.snapshot(stack)  # serializer figures: the broker as it was before the preload
            preload_started = time.monotonic()
            stack.submit([{"task": spec["task"], "args": spec["args"]}] * count)
            self.record["preload_s"] = time.monotonic() - preload_started
            # Serializer figures (benchmarks/serialization.py), workers still stopped: bytes per message read
            # from the broker, and the library's own encode + decode cost. Never raises; stored as run.json
            # "serialization".
            self.record["serialization"] = serialization.after_preload(stack, before, spec)
            depth = sum(stack.backend.queue_depths().values())
            follower = ledger.Follower(stack.ledger_dir, stack.final_attempts())
            follower.poll()
        with Sampler(stack.supervisor, self.run_dir, depths=stack.backend.queue_depths) as sampler:
            self.log(f"{depth} waiting ({len(probes)} probe(s) first); starting workers")
            drain_started = time.monotonic()
            workers_started_ns = time.time_ns()
            stack.start_workers()  # booked with their boot, which the drain's timing includes
            if self.faults is not None:
                self.faults.start()
            self._describe()
            self._drain_wait(follower)
            all_done_ns = time.time_ns()
            drain_s = time.monotonic() - drain_started
            with phases.phase("probe_round_trip"):
                # Sent first, the probes have normally finished long before; a drain that did not finish
                # is not waited for again.
                finished = self.record["drain_ended_by"] == "all-finished"
                try:
                    stack.await_probes(probes, timeout_s=float(spec["drain_stall_s"]) if finished else 0)
                except TimeoutError:
                    if self.faults is None:
                        raise
                    self.faults.record["probes_unfinished"] = True  # lost to the fault: counted, not an error
            leftovers = self._leftovers()
        with phases.phase("collect"):
            self.record["sampler_errors"] = sampler.errors
            self.record["preloaded_depth"] = depth  # messages waiting, the probes' among them
            self.record["probe_tasks"] = len(probes)
            tasks = self._store_tasks()
            window = measure.drain_window(tasks)
            summary = measure.summarise(tasks, None, window, slots=self.config.slots, offered_rate_per_s=None,
                                        queue_leftovers=leftovers, expected_sent=count,
                                        final_attempts=stack.final_attempts())
        self._book_spans(drain_started, from_worker_start(summary["figures"], count, window, workers_started_ns,
                                                          all_done_ns, drain_s))
        self._add_resources(summary)
        self._judge_fault(summary)
        self.record["summary"] = summary

    def _contract(self) -> DeliveryContract:
        """What the backend declares for the victim's workers (the first worker spec's)."""
        assert self.stack is not None and self.stack.backend is not None
        return self.stack.backend.delivery_contract(self.config.worker_specs()[0])

    def _judge_fault(self, summary: dict[str, Any]) -> None:
        """faults: what the fault did, against the contract the backend declares for the victim's workers."""
        if self.faults is not None:
            assert self.stack is not None
            self.faults.judge(summary, self._contract(), self.stack.final_attempts())

    def _book_locust(self, started: float, locust_s: float, started_ns: int, ended_ns: int,
                     window: measure.Window) -> None:
        """Split the Locust block (spawn to exit) into its start-up (to the first scheduled arrival), the
        warm-up, the measured window and its tail (window end to exit), from the stored timestamps."""
        warmup_s = float(self.spec["warmup_s"])
        startup_s = min(locust_s, max(0.0, (window.start_ns - started_ns) / 1e9 - warmup_s))
        warmup_s = min(warmup_s, locust_s - startup_s)
        window_s = min(window.length_s, max(0.0, (ended_ns - window.start_ns) / 1e9))
        self._book_spans(started, [("locust_startup", startup_s), ("warmup", warmup_s), ("window", window_s),
                                   ("locust_tail", locust_s - startup_s - warmup_s - window_s)])

    def _book_spans(self, started: float, spans: list[tuple[str, float]]) -> None:
        """Book consecutive phases measured after the fact, the first starting at `started` (monotonic)."""
        for name, seconds in spans:
            self.phases.add(name, seconds, started)
            started += max(0.0, seconds)

    def _record_kinds(self) -> None:
        """Which task and arguments each ledger digest stands for (tasks.parquet keeps only the digest)."""
        self.record["task_kinds"] = [{"task": task, "args": args, "digest": ledger.args_digest(task, args)}
                                     for task, args in sent_tasks(self.spec)]

    def _leftovers(self) -> dict[str, int]:
        """Messages still in the queues once the drain is over. A library may finish its own bookkeeping
        after the task body has written its last ledger row (arq removes a job from its queue only after
        storing its result; a late ack), so when every task has finished, empty queues get a moment
        (`LEFTOVER_GRACE_S`) to show it before anything left counts."""
        assert self.stack is not None and self.stack.backend is not None
        try:
            depths = dict(self.stack.backend.queue_depths())
        except BackendUnavailable:
            if self.faults is None:
                raise
            # faults: a restarted broker left this thread's producer connection dead; the backend dropped it
            # on that error, and the next call connects afresh.
            depths = dict(self.stack.backend.queue_depths())
        if self.record.get("drain_ended_by") != "all-finished":
            return depths
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while any(depths.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
            depths = dict(self.stack.backend.queue_depths())
        return depths

    def _drain_wait(self, follower: ledger.Follower) -> DrainEnd | None:
        """Wait while the drain progresses (`await_drain`); record how it ended in run.json. A supervised
        process that exited meanwhile then fails the cell (as it would have during the load). Under a fault
        the injector waits instead, until the fault's deadline, and takes the processes it made exit out of
        that check (they are an outcome then)."""
        assert self.stack is not None
        stack = self.stack
        if self.faults is not None:
            self.record |= self.faults.await_end(follower, ceiling_s=float(self.spec["drain_timeout_s"]),
                                                 on_progress=self.status)
            self.faults.finish()
            stack.supervisor.check()
            return None
        end = await_drain(follower, stall_s=float(self.spec["drain_stall_s"]),
                          ceiling_s=float(self.spec["drain_timeout_s"]),
                          workers_alive=lambda: any(p.alive() for p in stack.worker_procs),
                          on_progress=self.status)
        self.record |= {"drain_s": end.waited_s, "drain_ended_by": end.ended_by, "drain_idle_s": end.idle_s,
                        "drain_outstanding": end.outstanding}
        if end.workers_gone:
            self.record["drain_workers_gone"] = True
        stack.supervisor.check()
        return end

    def _store_tasks(self) -> pd.DataFrame:
        assert self.stack is not None
        store.write_tasks_table(self.run_dir, ledger.executions(self.stack.ledger_dir))
        return store.read_tasks_table(self.run_dir)  # figures come from what was stored

    def _add_resources(self, summary: dict[str, Any]) -> None:
        add_resources(summary["figures"], store.read_resources(self.run_dir))


def broker_records(stack: Stack) -> dict[str, Any]:
    """run.json's ``brokers``: each broker's own record (topology, version, persistence, queue type, RTT from
    this host: `brokers.describe_redis`/`describe_rabbitmq`) beside what the stack knows of it."""
    described = stack.broker_records
    return {
        "broker": described.get("broker", {}) | {
            "kind": stack.broker.kind, "url": _redact(stack.broker.url), "owned": stack.broker.owned,
            "version": stack.broker.version or described.get("broker", {}).get("version"),
            "shared": stack.broker.shared,
            "left_by_previous_cell": stack.broker.left_by_previous_cell} if stack.broker else None,
        "result_store": described.get("result_store", {}) | {
            "url": _redact(stack.result_store.url),
            "version": stack.result_store.version or described.get("result_store", {}).get("version"),
            "shared": stack.result_store.shared} if stack.result_store else None,
    }


def _redact(text: str) -> str:
    return redact(text) if "://" in text else text


# --- the sweep ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def measuring_lock(path: Path | None = None, *, wait_s: float | None = None,
                   log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the machine-wide measuring lock: two sweeps at once would share the cores and both be wrong.

    Another sweep holding it: wait up to `wait_s` (default `lock_wait_s()`), saying once who holds it,
    then raise RuntimeError. Ctrl-C while waiting raises as usual."""
    path = path or lock_path()
    wait_s = lock_wait_s() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole sweep
    try:
        said = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "pid unknown"
                if time.monotonic() >= deadline:
                    hint = (f"waited {wait_s:g} s; " if wait_s > 0 else "") + (
                        "wait for it to finish" + ("" if wait_s > 0 else " (or pass --wait-lock SECONDS)"))
                    raise RuntimeError(f"another queuebench sweep is measuring on this machine ({path}: "
                                       f"{holder}); {hint}") from None
                if not said:
                    (log or _to_stderr)(f"another queuebench sweep is measuring on this machine ({holder}); waiting up to "
                        f"{wait_s:g} s for it to finish")
                    said = True
                time.sleep(LOCK_POLL_S)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def plan(matrix: Matrix, out_dir: Path, *, force: bool) -> tuple[list[Cell], list[Cell]]:
    """(cells to run, cells already done) — resume is a filter, like ann-benchmarks' run definitions."""
    todo, done = [], []
    for cell in matrix.cells:
        (done if not force and is_done(out_dir / cell.run_id) else todo).append(cell)
    return todo, done


def cell_seconds(cell: Cell) -> float:
    """A rough duration of a cell, for the ETA (start-up and drain included)."""
    spec = cell.spec
    if cell.skip_reason:
        return 0.5
    if faults.wanted(spec):
        return 5 + spec["fault_at_s"] + spec["observe_s"]
    if spec["mode"] == "drain":  # seen on 2 cores: 2-12 s for 300 tasks, 1.5-22 s for 1500
        return 2 + spec["tasks"] / 150
    # seen: 8-12.5 s for 5-7 s of load. analysis/cover.py's CELL_OVERHEAD_S counts the same 3 + tail.
    # Several Locust workers, seen on 2 cores: about 3 s more per cell (the master looks for its workers
    # once a second while they boot, and sleeps 0.5 s twice for their last reports as it quits).
    distributed_s = 3 if load_workers(spec) > 1 else 0
    return 3 + LOCUST_TAIL_S + spec["warmup_s"] + spec["duration_s"] + distributed_s


@dataclass
class Sweep:
    """One invocation's sweep: the cells it ran and where its wall time went (``sweep.json``).

    ``measured_fraction`` = the cells' measured windows (load: ``duration_s`` after the warm-up; drain:
    first start to last finish) summed, over the sweep's wall time (from taking the measuring lock to the
    end). The rest is set-up, warm-up, tails, collecting and stopping: what a faster harness cuts.
    """

    out_dir: Path
    matrix: str = ""
    #: The sweep's private redis-server, emptied before each cell (None: each cell starts its own).
    redis: SharedRedis | None = None
    #: A user's Redis every cell uses instead (never emptied, only purged of what each cell created).
    broker_url: str | None = None
    #: RabbitMQ cells run in a virtual host of their own, made and deleted through the management API.
    per_run_vhost: bool = False
    #: On `broker_url`: the keys the last cell left there after its purge, which the next cell tolerates.
    left_keys: frozenset[str] = frozenset()
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    cells: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: CellResult) -> None:
        phases = result.phases_s or {}
        self.cells.append({"run_id": result.run_id, "status": result.status, "wall_s": phases.get("total", 0.0),
                           "window_s": phases.get("window", 0.0), "phases_s": phases})

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def window_s(self) -> float:
        return sum(c["window_s"] for c in self.cells)

    def record(self, ended: str) -> dict[str, Any]:
        wall_s, window_s = self.wall_s, self.window_s
        totals: dict[str, float] = {}
        for cell in self.cells:
            for name, seconds in cell["phases_s"].items():
                totals[name] = round(totals.get(name, 0.0) + seconds, 3)
        return {"matrix": self.matrix, "started_at": self.started_at,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "ended": ended,
                "wall_s": round(wall_s, 3), "window_s": round(window_s, 3),
                "measured_fraction": round(window_s / wall_s, 4) if wall_s > 0 else 0.0,
                "cells_run": len(self.cells),
                "reused": {"redis_cells": self.redis.served if self.redis is not None else 0},
                "phases_s": totals, "cells": self.cells}


@contextlib.contextmanager
def sweep(out_dir: Path, matrix_name: str = "", *, broker_url: str | None = None,
          take_lock: bool = True) -> Iterator[Sweep]:
    """What every sweep runs under: the measuring lock, SIGINT/SIGTERM turned into `Interrupted` (the cell
    in progress stops everything it started), one private redis-server for every Redis cell (`SharedRedis`,
    started on first use, emptied before each cell, stopped at the end; not when `broker_url` names a
    user's Redis), and ``summary.csv`` and ``sweep.json`` (when a cell ran) rewritten however it ends.
    `take_lock` False: the caller already holds the measuring lock (`queuebench overhead` holds it across
    its floor measurements and the sweep between them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    current: Sweep | None = None
    workdir: Path | None = None
    ended = "error"
    try:
        with measuring_lock() if take_lock else contextlib.nullcontext():
            workdir = Path(tempfile.mkdtemp(prefix="queuebench-sweep-"))
            redis = None if broker_url else SharedRedis(workdir)
            current = Sweep(out_dir, matrix_name, redis=redis, broker_url=broker_url)
            try:
                yield current
                ended = "completed"
            except Interrupted:
                ended = "interrupted"
                raise
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt stopping the shared Redis
            signal.signal(sig, signal.SIG_IGN)
        try:
            if current is not None and current.redis is not None:
                current.redis.close()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        store.write_summary(out_dir)
        if current is not None and current.cells:
            store.write_sweep(out_dir, current.record(ended))


def run_cell(cell: Cell, matrix_name: str, out_dir: Path, *, amqp_url: str | None = None, progress: Any = None,
             log: Callable[[str], None] = print, sweep: Sweep | None = None) -> CellResult:
    """Measure one cell into ``out_dir/<run_id>``, reporting to the progress display if there is one and
    booking its time in `sweep`."""
    if progress is not None:
        progress.start_cell(cell)
    cell_run = CellRun(cell, matrix_name, out_dir / cell.run_id, amqp_url=amqp_url,
                       broker_url=sweep.broker_url if sweep is not None else None,
                       per_run_vhost=sweep.per_run_vhost if sweep is not None else False,
                       left_by_sweep=sweep.left_keys if sweep is not None else frozenset(),
                       shared_redis=sweep.redis if sweep is not None else None,
                       log=progress.note if progress is not None else log,
                       status=progress.draining if progress is not None else None)
    result = cell_run.run()
    if sweep is not None:
        if cell_run.stack is not None and cell_run.stack.left_keys is not None:
            sweep.left_keys = cell_run.stack.left_keys
        sweep.add(result)
    if progress is not None:
        progress.end_cell(cell, result)
    return result


def run_matrix(matrix: Matrix, out_dir: Path, *, force: bool = False, amqp_url: str | None = None,
               broker_url: str | None = None, per_run_vhost: bool = False, progress: Any = None,
               log: Callable[[str], None] = print, take_lock: bool = True) -> list[CellResult]:
    """Run every cell not already done; write ``summary.csv``; return each cell's result.

    `broker_url` names a user's Redis for every Redis cell (never emptied; each cell purges what it
    created, as ``queuebench serve --broker-url`` does); without it the sweep keeps one private Redis.
    `per_run_vhost`: each RabbitMQ cell runs in a virtual host of its own (`StackConfig.per_run_vhost`).

    SIGINT/SIGTERM stop the cell in progress (everything it started) and raise `Interrupted` after the
    summary of the completed cells is written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, done = plan(matrix, out_dir, force=force)
    results = [CellResult(c.run_id, read_run(out_dir / c.run_id)["status"], "already done", out_dir / c.run_id)
               for c in done]
    with sweep(out_dir, matrix.name, broker_url=broker_url, take_lock=take_lock) as current:
        current.per_run_vhost = per_run_vhost
        if progress is not None:
            progress.start_sweep(todo, len(done))
        for cell in todo:
            results.append(run_cell(cell, matrix.name, out_dir, amqp_url=amqp_url, progress=progress, log=log,
                                    sweep=current))
    return results
