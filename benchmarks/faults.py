"""Fault injection during a cell: kill, stop or terminate a worker, or restart the harness's own Redis.

No root, no containers: signals to process trees found with psutil (the same trees `benchmarks.procs`
stops), and a private redis-server restarted on its own port. One `Injector` per fault cell; the runner
calls it at a few delimited points (`runner.CellRun`):

1. `prepare(stack)` once the brokers are up: ``restart_broker`` with ``persistence = "aof"`` turns the
   append-only file on (``CONFIG SET appendonly yes``, fsync every second) before any task is enqueued.
2. `start()` when the load starts (drain mode: the workers): a thread waits ``fault_at_s``, then injects.
3. `await_end(follower)` instead of the drain wait: until every task sent has finished after the fault,
   or ``observe_s`` after it (the deadline).
4. `finish()`: join the thread, resume anything still stopped, note supervised processes that exited.
5. `judge(...)`: the counts and verdict (`benchmarks.fault_verdict`), recounted from the raw ledger, and
   the no-fault self-checks that cannot hold under a fault replaced by them.
6. `after_teardown()` once the stack is stopped: every process seen in a tree the harness started that is
   still running is an orphan: recorded, then killed.

The faults (see docs/FAULTS.md):

- ``kill_child``: SIGKILL the process the ledger shows running a task (a ``started`` row without its
  ``finished`` row carries the pid of the process that runs the task body), so the kill lands mid-task.
- ``kill_worker``: SIGKILL the first worker command's whole tree (``victim = "tree"``: the parent
  suspended first so it cannot replace its children, then children, then the parent) or only its parent
  (``victim = "parent"``); the same command (argv, environment, directory) starts again
  ``restart_after_s`` after the victim has gone.
- ``hang_worker``: SIGSTOP the tree (parent first) for ``hang_s``, then SIGCONT.
- ``term_worker``: SIGTERM the parent, SIGKILL the tree if it is still there after ``grace_s``
  (``escalated``), restart like ``kill_worker``.
- ``restart_broker``: SIGKILL the cell's own redis-server and start it again on the same port, with the
  same data directory: persistence off (nothing survives) or ``appendonly yes`` (the file is replayed).
  Never a user's Redis (``--broker-url``) nor the sweep's shared one: such a cell starts its own. On
  RabbitMQ the cell starts a private node of its own (never the system's, never ``--amqp-url``'s); the
  node's process tree is SIGKILLed and ``rabbitmq-server`` starts again with the same node name, ports and
  data directory, so what the library declared durable and persistent is recovered from disk. Whether the
  library publishes with confirms decides what may be lost (`fault_verdict.expected`).
- ``failover_broker``: the cell runs on a private Redis Sentinel group of its own (a master, one replica
  and one Sentinel, `benchmarks.brokers.start_private_sentinel`), its clients reaching the master through
  the ``redis+sentinel://`` URL; SIGKILL the master (never restarted) and wait until Sentinel names the
  promoted replica. Replication is asynchronous, so what the master had not yet copied may be gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import redis

from backends import ledger, redis_url
from backends.base import DeliveryContract
from benchmarks import fault_verdict
from benchmarks.procs import Proc, wait_until
from benchmarks.spec import NO_FAULT

#: Seconds kill_child waits, from ``fault_at_s``, for the ledger to show a task running in a worker.
VICTIM_WAIT_S = 10.0
#: Seconds a killed process (or a restarted Redis) gets to be gone (or to answer).
GONE_WAIT_S = 5.0
#: Seconds a restarted private RabbitMQ node gets to open a session (it boots in about 8.5 s on 2 cores).
RABBITMQ_RESTART_WAIT_S = 60.0
#: Self-checks that a fault may break by design: its own counts replace them (`Injector.judge`). A kill
#: mid-attempt may cost a `poison` task an attempt or add one (a redelivery, a retry after a dead work
#: horse), so ``retries_as_promised`` gives way to ``failed_as_promised`` too.
REPLACED_CHECKS = ("all_finished", "no_duplicates", "no_leftovers", "generator_kept_up", "littles_law",
                   "retries_as_promised")
#: The fault that kills a private Sentinel group's master (`Injector._failover_broker`).
FAILOVER = "failover_broker"
#: Seconds Sentinel gets, after the kill, to name a new master (it waits `brokers.SENTINEL_DOWN_AFTER_MS`
#: before it even calls the master down).
FAILOVER_WAIT_S = 60.0
#: Faults that take a whole worker away, judged by `DeliveryContract.whole_worker` when a backend declares it.
WHOLE_WORKER_FAULTS = ("kill_worker", "hang_worker", "term_worker", "restart_broker", FAILOVER)
#: What ends the wait of a fault cell that did not see every task finish: the deadline, observe_s after
#: the fault (run.json's ``drain_ended_by``).
FAULT_DEADLINE = "fault-deadline"


def wanted(spec: Mapping[str, Any]) -> bool:
    return spec.get("fault", NO_FAULT) != NO_FAULT


def own_broker(spec: Mapping[str, Any]) -> bool:
    """Whether the cell needs a Redis of its own (not the sweep's shared one): it restarts it."""
    return spec.get("fault") == "restart_broker"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            p.send_signal(sig)


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in procs if _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


class Injector:
    """One fault, injected once into one cell's stack; everything it did goes into `record`."""

    def __init__(self, spec: Mapping[str, Any], log: Callable[[str], None] = print) -> None:
        self.spec = dict(spec)
        self.kind = str(spec["fault"])
        self.log = log
        self.stack: Any = None
        self.record: dict[str, Any] = {"kind": self.kind, "fault_at_s": spec["fault_at_s"],
                                       "observe_s": spec["observe_s"], "injected": False}
        for key in ("victim", "restart_after_s", "hang_s", "persistence", "grace_s"):
            if key in spec:
                self.record[key] = spec[key]
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._pending = threading.Event()  # a victim is gone and its restart has not happened yet
        self._stopped: list[psutil.Process] = []  # SIGSTOPped and not yet resumed
        self._seen: dict[int, psutil.Process] = {}  # every process of a tree the fault touched or saw
        self._victim_procs: list[Proc] = []
        self._started: list[Proc] = []  # what the injector started (restarted workers, a restarted Redis)
        self.at_ns: int | None = None
        self._held: set[str] | None = None
        self.at_monotonic: float | None = None

    # -- the runner's hooks ------------------------------------------------------------------------

    def prepare(self, stack: Any, contract: DeliveryContract | None = None) -> None:
        """Called once the brokers are up, before anything is enqueued. `contract`: what the backend declares
        for the cell's workers (a RabbitMQ restart needs it: whether the library publishes with confirms)."""
        self.stack = stack
        if self.kind == FAILOVER:
            if getattr(stack, "sentinel_group", None) is None:
                raise RuntimeError("failover_broker fails over only a Sentinel group this cell started itself")
            self.spec["persistence"] = self.record["persistence"] = "replica"
        if self.kind == "restart_broker":
            broker = stack.broker
            if broker is None or not broker.private or broker.shared is not None:
                raise RuntimeError("restart_broker restarts only a broker this cell started itself (a redis-server "
                                   "or a private RabbitMQ node)")
            if broker.kind == "rabbitmq":
                if contract is None:
                    raise RuntimeError("restart_broker on RabbitMQ needs the backend's delivery contract")
                self.spec["persistence"] = self.record["persistence"] = rabbitmq_durability(contract)
            if self.spec.get("persistence") == "aof":
                client = redis.Redis.from_url(broker.url, socket_timeout=10)
                try:
                    client.config_set("appendonly", "yes")
                    client.config_set("appendfsync", "everysec")
                    wait_until(lambda: self._aof_ready(client), timeout_s=10, interval_s=0.02,
                               what="the private Redis's append-only file to be written")
                finally:
                    client.close()

    @staticmethod
    def _aof_ready(client: redis.Redis) -> bool:
        info = client.info("persistence")
        return int(info.get("aof_enabled", 0)) == 1 and not int(info.get("aof_rewrite_in_progress", 0)) \
            and not int(info.get("aof_rewrite_scheduled", 0))

    def start(self) -> None:
        """The load (drain mode: the workers) has just started: in a thread, wait for the first task to start
        (the ledger's first ``started`` row, probes left out: worker boot times differ by seconds between
        libraries, and a fault that lands before any task runs tests nothing), then `fault_at_s`, then
        inject."""
        self.record["load_started_ns"] = time.time_ns()

        def run() -> None:
            try:
                first_ns = self._first_start()
                if first_ns is None:
                    return
                self.record["first_start_ns"] = first_ns
                wait_s = float(self.spec["fault_at_s"]) - (time.time_ns() - first_ns) / 1e9
                if self._stop.wait(max(0.0, wait_s)):
                    return
                self._inject()
            except BaseException as exc:  # reported by finish()
                self._error = exc
                self._pending.clear()

        self._thread = threading.Thread(target=run, name=f"fault-{self.kind}", daemon=True)
        self._thread.start()

    def _first_start(self) -> int | None:
        follower = ledger.Follower(self.stack.ledger_dir)
        while not self._stop.is_set():
            starts = [int(r["t_ns"]) for r in follower.poll() if r.get("ev") == "started" and not r.get("probe")]
            if starts:
                return min(starts)
            time.sleep(0.05)
        return None

    @property
    def deadline(self) -> float | None:
        """Monotonic time the observation ends (None before the fault)."""
        if self.at_monotonic is None:
            return None
        return self.at_monotonic + float(self.spec["observe_s"])

    def workers_alive(self) -> bool:
        """Some worker runs, or a victim's restart is on its way."""
        return self._pending.is_set() or any(p.alive() for p in self.stack.worker_procs)

    def await_end(self, follower: ledger.Follower, *, ceiling_s: float,
                  on_progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
        """Wait until the fault has happened and every task sent has finished after it, or the deadline
        (`observe_s` after the fault), or `ceiling_s`; return run.json's drain fields."""
        started = time.monotonic()
        last_report = 0.0
        while True:
            follower.poll()
            now = time.monotonic()
            done_injecting = self._thread is None or not self._thread.is_alive()
            if self.at_monotonic is not None and done_injecting and follower.outstanding() == 0:
                rule = "all-finished"
                break
            if self.deadline is not None and now >= self.deadline:
                rule = FAULT_DEADLINE
                break
            if self.at_monotonic is None and self._thread is not None and done_injecting:  # it could not be
                rule = "all-finished" if follower.outstanding() == 0 else FAULT_DEADLINE
                break
            if now - started >= ceiling_s:
                rule = "ceiling"
                break
            if on_progress is not None and now - last_report >= 1.0:
                on_progress(len(follower.done_ids), follower.outstanding(), now - started)
                last_report = now
            time.sleep(0.1)
        self.record["deadline_ns"] = time.time_ns()
        return {"drain_s": time.monotonic() - started, "drain_ended_by": rule, "drain_idle_s": 0.0,
                "drain_outstanding": follower.outstanding()}

    def finish(self) -> None:
        """Stop the injection thread, resume anything stopped, and take the processes that exited out of the
        supervisor's watch (recorded: under a fault, a worker exiting is an outcome, not a harness error)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=float(self.spec.get("restart_after_s", 0)) + float(
                self.spec.get("grace_s", 0)) + VICTIM_WAIT_S + 2 * GONE_WAIT_S)
        self._resume()
        exited = []
        for proc in list(self.stack.supervisor.procs):
            if not proc.alive():
                exited.append({"name": proc.name, "pid": proc.pid, "returncode": proc.popen.returncode})
                self.stack.supervisor.procs.remove(proc)
                self._victim_procs.append(proc)
                if proc in self.stack.worker_procs:
                    self.stack.worker_procs.remove(proc)
        self.record["exited"] = exited
        try:  # what the broker still holds at the deadline: stranded, not lost
            self._held = self.stack.backend.held_task_ids()
        except Exception as exc:  # a broker that cannot be read leaves stranded unknown, and says why
            self._held = None
            self.record["held_error"] = f"{type(exc).__name__}: {exc}"
        # Everything the cell started may leave an orphan behind; the sweep's shared Redis outlives the cell.
        shared = getattr(self.stack, "_shared_procs", [])
        for proc in self.stack.supervisor.procs:
            if proc in shared:
                continue
            for p in proc.tree():
                self._seen.setdefault(p.pid, p)
        if self._error is not None:
            self.record["error"] = f"{type(self._error).__name__}: {self._error}"
            raise RuntimeError(f"fault {self.kind} could not be injected: {self._error}") from self._error

    def judge(self, summary: dict[str, Any], contract: DeliveryContract, final_attempts: Mapping[str, int] | None = None) -> None:
        """Count what the fault did from the raw ledger (`fault_verdict.judge`) into `record`, and replace the
        no-fault self-checks it may break by design (`REPLACED_CHECKS`) in `summary`. `final_attempts`: task
        name -> the attempt whose failure is final (`poison`), so such a task is settled, not lost."""
        self.record["contract"] = {"guarantee": contract.guarantee, "whole_worker": contract.whole_worker,
                                   "in_flight": contract.in_flight, "prefetched": contract.prefetched,
                                   "recovery": contract.recovery, "source": contract.source,
                                   "publish_confirms": contract.publish_confirms}
        # A fault that takes the whole worker away is judged by what the library promises for that.
        whole = self.kind in WHOLE_WORKER_FAULTS or (self.kind == "kill_child" and any(
            v.get("role") == "worker parent" for v in self.record.get("victims", [])))
        guarantee = (contract.whole_worker or contract.guarantee) if whole else contract.guarantee
        if not self.record["injected"]:
            self.record["verdict"] = "not-injected"
            return
        rows = list(ledger.iter_rows(self.stack.ledger_dir))
        fault = {"kind": self.kind, "at_ns": self.at_ns, "deadline_ns": self.record["deadline_ns"],
                 "persistence": self.spec.get("persistence", "off"), "escalated": self.record.get("escalated")}
        self.record |= fault_verdict.judge(rows, fault, guarantee, held_ids=self._held,
                                           final_attempts=final_attempts)
        if self._held is None:
            self.record["stranded_note"] = "the broker was not read: tasks it may still hold count as lost"
        checks = summary["checks"]
        for name in REPLACED_CHECKS:
            if name in checks:
                checks[name]["replaced_by"] = "faults"
        hard = [n for n, c in checks.items() if not c["ok"] and n not in REPLACED_CHECKS]
        summary["failed_checks"] = hard
        summary["verdict"] = "failed" if hard else "ok"

    def summary_line(self) -> str:
        """One line for run.json's ``detail``: the verdict and what was lost, or why nothing was judged."""
        record = self.record
        if not record.get("injected"):
            return f"fault {self.kind} not injected" + (f": {record['error']}" if record.get("error") else "")
        if "verdict" not in record:
            return ""
        text = (f"fault {self.kind}: {record['verdict']} (lost {record['lost_in_flight']} in flight + "
                f"{record['lost_queued']} queued, {record['duplicated']} duplicated, {record['reexecuted']} "
                "re-executed)")
        return text + (f": {'; '.join(record['reasons'])}" if record.get("reasons") else "")

    def after_teardown(self) -> None:
        """Once the stack is stopped: record and kill every process of a tree the harness started that is
        still running (an orphan), and stop what is left of the victims' sessions."""
        self._stop.set()  # a run that ended early (an error, Ctrl-C) must not see a restart after its teardown
        if self._thread is not None:
            self._thread.join(timeout=2 * GONE_WAIT_S)
        self._resume()
        # Victims, and anything the injector started that the stack's teardown did not stop.
        leftovers = self._victim_procs + [p for p in self._started if p.alive()]
        if leftovers and self.stack is not None:
            self.stack.supervisor.stop_many(leftovers, timeout_s=0.2, escalate_s=0.0)
        self._victim_procs = []
        orphans = [p for p in self._seen.values() if _alive(p)]
        self.record["orphans"] = [{"pid": p.pid, "name": _name(p)} for p in orphans]
        _signal(orphans, signal.SIGKILL)
        self.record["orphans_left"] = [p.pid for p in _wait_gone(orphans, GONE_WAIT_S)]

    # -- injecting -----------------------------------------------------------------------------------

    def _mark(self, **what: Any) -> None:
        self.at_ns, self.at_monotonic = time.time_ns(), time.monotonic()
        self.record |= {"injected": True, "at_ns": self.at_ns} | what
        self.log(f"fault {self.kind} injected: {what}")

    def _inject(self) -> None:
        getattr(self, f"_{self.kind}")()

    def _victim_worker(self) -> Proc:
        procs = [p for p in self.stack.worker_procs if p.alive()]
        if not procs:
            raise RuntimeError("no worker process is running")
        return procs[0]

    def _tree(self, proc: Proc) -> list[psutil.Process]:
        tree = proc.tree()
        for p in tree:
            self._seen.setdefault(p.pid, p)
        return tree

    def _kill_child(self) -> None:
        follower = ledger.Follower(self.stack.ledger_dir)
        running: dict[tuple[str, Any], int] = {}
        deadline = time.monotonic() + VICTIM_WAIT_S
        while not self._stop.is_set():
            for row in follower.poll():
                if row.get("probe"):
                    continue
                key = (row.get("id"), row.get("attempt"))
                if row.get("ev") == "started":
                    running[key] = int(row["pid"])
                elif row.get("ev") == "finished":
                    running.pop(key, None)
            trees = {p.pid: (proc, p) for proc in self.stack.worker_procs for p in self._tree(proc)}
            for (task_id, attempt), pid in running.items():
                if pid in trees and _alive(trees[pid][1]):
                    proc, victim = trees[pid]
                    role = "worker parent" if pid == proc.pid else "child"
                    victim.send_signal(signal.SIGKILL)
                    self._mark(victims=[{"pid": pid, "role": role, "worker": proc.name, "task": task_id,
                                         "attempt": attempt}])
                    _wait_gone([victim], GONE_WAIT_S)
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no task was running in a worker within {VICTIM_WAIT_S:g} s of fault_at_s")
            time.sleep(0.05)

    def _kill_worker(self) -> None:
        proc = self._victim_worker()
        env, cwd = _environment(proc)
        tree = self._tree(proc)
        root, children = tree[0], tree[1:]
        self._pending.set()
        if self.spec.get("victim", "tree") == "tree":
            _signal([root], signal.SIGSTOP)  # it cannot replace the children it is about to lose
            _signal(children, signal.SIGKILL)
            _signal([root], signal.SIGKILL)
            self._mark(victims=[{"pid": p.pid, "name": _name(p)} for p in tree], worker=proc.name)
            _wait_gone(tree, GONE_WAIT_S)
        else:
            _signal([root], signal.SIGKILL)
            self._mark(victims=[{"pid": root.pid, "name": _name(root)}], worker=proc.name,
                       left_running=[p.pid for p in children])
            _wait_gone([root], GONE_WAIT_S)
        self._restart_worker(proc, env, cwd)

    def _term_worker(self) -> None:
        proc = self._victim_worker()
        env, cwd = _environment(proc)
        tree = self._tree(proc)
        self._pending.set()
        _signal(tree[:1], signal.SIGTERM)
        self._mark(victims=[{"pid": p.pid, "name": _name(p)} for p in tree], worker=proc.name)
        left = _wait_gone(tree, float(self.spec["grace_s"]))
        self.record["escalated"] = bool(left)
        if left:
            _signal(left, signal.SIGKILL)
            _wait_gone(left, GONE_WAIT_S)
        self.record["victim_gone_s"] = round((time.monotonic() - (self.at_monotonic or 0.0)), 3)
        self._restart_worker(proc, env, cwd)

    def _restart_worker(self, proc: Proc, env: dict[str, str], cwd: str) -> None:
        """The victim's own command again, `restart_after_s` after it went; it replaces the victim in the
        stack's worker list (the victim stays with the injector, which stops what is left of its session)."""
        supervisor = self.stack.supervisor
        proc.popen.poll()
        if proc in supervisor.procs:
            supervisor.procs.remove(proc)
        self._victim_procs.append(proc)
        if self._stop.wait(float(self.spec["restart_after_s"])):
            self._pending.clear()
            return
        log_path = Path(proc.log_path).with_name(Path(proc.log_path).stem + "-restart.log")
        new = supervisor.start(proc.name, proc.argv, env=env, cwd=cwd, log_path=log_path)
        self._started.append(new)
        _replace(self.stack.worker_procs, proc, new)
        self.record["restarted"] = {"pid": new.pid, "after_s": round(time.monotonic() - (self.at_monotonic or 0), 3),
                                    "log": str(log_path)}
        self._pending.clear()

    def _hang_worker(self) -> None:
        proc = self._victim_worker()
        tree = self._tree(proc)
        _signal(tree, signal.SIGSTOP)  # parent first: it cannot notice its children stopping
        self._stopped = tree
        self._mark(victims=[{"pid": p.pid, "name": _name(p)} for p in tree], worker=proc.name)
        self._stop.wait(float(self.spec["hang_s"]))
        self._resume()
        self.record["resumed_after_s"] = round(time.monotonic() - (self.at_monotonic or 0), 3)

    def _resume(self) -> None:
        stopped, self._stopped = self._stopped, []
        _signal(list(reversed(stopped)), signal.SIGCONT)

    def _restart_broker(self) -> None:
        if self.stack.broker.kind == "rabbitmq":
            self._restart_rabbitmq()
            return
        stack = self.stack
        procs = [p for p in stack.supervisor.procs if p.name == "redis" and p.alive()]
        if not procs:
            raise RuntimeError("the cell's own redis-server is not running")
        old = procs[0]
        argv = list(old.argv)
        if self.spec.get("persistence") == "aof":
            argv[argv.index("--appendonly") + 1] = "yes"
        root = self._tree(old)
        _signal(root, signal.SIGKILL)
        self._mark(victims=[{"pid": old.pid, "name": "redis-server"}], persistence=self.spec.get("persistence"))
        _wait_gone(root, GONE_WAIT_S)
        old.popen.poll()
        log_path = Path(old.log_path).with_name("redis-restart.log")
        new = stack.supervisor.start("redis", argv, log_path=log_path)
        self._started.append(new)
        # The stack's own list of broker processes (stopped last): the new server replaces the old one.
        _replace(stack._broker_procs, old, new)
        stack.supervisor.procs.remove(old)
        self._victim_procs.append(old)
        client = redis.Redis.from_url(stack.broker.url, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: _pong(client), timeout_s=GONE_WAIT_S, interval_s=0.01,
                       what="the restarted redis-server on its port")
            keys = int(client.dbsize())
        finally:
            client.close()
        self.record["restarted"] = {"pid": new.pid, "after_s": round(time.monotonic() - (self.at_monotonic or 0), 3),
                                    "keys_after_restart": keys}

    def _failover_broker(self) -> None:
        """SIGKILL the private Sentinel group's master (the server Sentinel names now) and wait until Sentinel
        names another; the killed server is not restarted."""
        stack = self.stack
        url = stack.broker.url
        old_address = redis_url.master_address(url)
        assert old_address is not None
        port = str(old_address[1])
        procs = [p for p in stack.supervisor.procs if p.name in ("redis", "redis-replica") and p.alive()
                 and port in p.argv]
        if not procs:
            raise RuntimeError(f"the master Sentinel names (port {port}) is not a server this cell started")
        old = procs[0]
        tree = self._tree(old)
        _signal(tree, signal.SIGKILL)
        self._mark(victims=[{"pid": old.pid, "name": "redis-server", "role": "master", "port": int(port)}],
                   persistence="replica")
        _wait_gone(tree, GONE_WAIT_S)
        old.popen.poll()
        stack.supervisor.procs.remove(old)  # gone on purpose: not a child that failed
        if old in stack._broker_procs:
            stack._broker_procs.remove(old)
        self._victim_procs.append(old)

        def promoted() -> bool:
            try:
                return redis_url.master_address(url, timeout_s=0.5) not in (None, old_address)
            except redis.RedisError:  # no master while Sentinel calls the old one down and promotes
                return False

        wait_until(promoted, timeout_s=FAILOVER_WAIT_S, interval_s=0.05,
                   what="Sentinel to promote the replica")
        host, new_port = redis_url.master_address(url) or ("", 0)
        client = redis_url.client(url, socket_timeout=5)
        try:
            keys = int(client.dbsize())
        finally:
            client.close()
        self.record["failed_over"] = {"after_s": round(time.monotonic() - (self.at_monotonic or 0), 3),
                                      "new_master": f"{host}:{new_port}", "keys_on_new_master": keys}

    def _restart_rabbitmq(self) -> None:
        """SIGKILL the cell's private RabbitMQ node (its whole tree: the script and the Erlang VM) and start
        ``rabbitmq-server`` again with the environment it had (node name, ports, data directory)."""
        stack = self.stack
        procs = [p for p in stack.supervisor.procs if p.name == "rabbitmq" and p.alive()]
        if not procs:
            raise RuntimeError("the cell's own RabbitMQ node is not running")
        old = procs[0]
        env, cwd = _environment(old)
        tree = self._tree(old)
        _signal(tree[:1], signal.SIGSTOP)  # the script cannot react to its VM dying
        _signal(tree[1:], signal.SIGKILL)
        _signal(tree[:1], signal.SIGKILL)
        self._mark(victims=[{"pid": p.pid, "name": _name(p)} for p in tree], persistence=self.spec["persistence"])
        _wait_gone(tree, GONE_WAIT_S)
        old.popen.poll()
        log_path = Path(old.log_path).with_name("rabbitmq-restart.log")
        new = stack.supervisor.start("rabbitmq", old.argv, env=env, cwd=cwd, log_path=log_path)
        self._started.append(new)
        _replace(stack._broker_procs, old, new)
        stack.supervisor.procs.remove(old)
        self._victim_procs.append(old)
        # The listener opens a moment before the default vhost is ready: wait until the library's own
        # connection works (the backend's ping opens a session, as the workers will).
        wait_until(lambda: _answers(stack.backend), timeout_s=RABBITMQ_RESTART_WAIT_S, interval_s=0.2,
                   what="the restarted RabbitMQ node")
        try:
            held: Any = sum(stack.backend.queue_depths().values())
        except Exception as exc:  # the count is a courtesy; the verdict reads the ledger
            held = f"unavailable: {type(exc).__name__}: {exc}"
        self.record["restarted"] = {"pid": new.pid, "after_s": round(time.monotonic() - (self.at_monotonic or 0), 3),
                                    "messages_after_restart": held}


def rabbitmq_durability(contract: DeliveryContract) -> str:
    """What a RabbitMQ restart may keep, from the backend's declared contract: ``durable-confirmed`` when the
    library publishes with confirms (`DeliveryContract.publish_confirms`: Dramatiq's ``confirm_delivery``,
    Celery's ``confirm_publish``), else ``durable-unconfirmed``. Both libraries on RabbitMQ here declare
    durable queues and persistent messages."""
    return "durable-confirmed" if contract.publish_confirms else "durable-unconfirmed"


def _replace(procs: list[Proc], old: Proc, new: Proc) -> None:
    """`new` in `old`'s place in `procs` (appended when `old` is not there)."""
    if old in procs:
        procs[procs.index(old)] = new
    else:
        procs.append(new)


def _answers(backend: Any) -> bool:
    try:
        backend.ping()
        return True
    except Exception:  # BackendUnavailable, or a library error while the node boots
        return False


def _pong(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return "?"


def _environment(proc: Proc) -> tuple[dict[str, str], str]:
    """The environment and directory the worker was started with, read before it is killed, so its
    restart is the same command in the same surroundings."""
    p = psutil.Process(proc.pid)
    return dict(p.environ()), p.cwd() or os.getcwd()
