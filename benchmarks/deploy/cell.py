"""One matrix cell measured on the hosts of an inventory, and a sweep of them.

A cell here is a local cell spread over hosts: the broker on the ``broker`` host (a redis-server, or a
RabbitMQ node with a redis-server beside it for results: `benchmarks.deploy.plan`; without a broker host, the
user's own brokers, borrowed from here as a local run borrows them), the workers (each library's own CLI) on
the ``workers`` hosts, the API under gunicorn on every ``api`` host, Locust on the ``loadgen`` hosts (with
``load_workers`` > 1, Locust workers are daemons on every loadgen host, and the load playbook runs their
master on the first), each started by Ansible under start-stop-daemon (`playbooks/start.yml`). In order:

1. start every host's services; measure every host's clock offset (`benchmarks.clocks`, start estimates);
2. wait for every API's ``/healthz``, then round-trip one probe per task kind and queue, enqueued from here
   through the backend (probes are marked and left out of every figure);
3. run Locust on the (first) loadgen host (`playbooks/load.yml`), then wait while tasks keep finishing, reading each
   host's ledger progress through Ansible (`playbooks/progress.yml`), under the cell's ``drain_stall_s`` and
   ``drain_timeout_s``. A drain cell (``mode = "drain"``) instead starts no API and no Locust, enqueues its
   probes and ``tasks`` tasks from here (their ``sent`` rows in the run's ``ledger/``), only then starts the
   workers (`playbooks/workers.yml`), waits the same way, and is judged as a local drain
   (`measure.drain_window`, `runner.from_worker_start`);
4. measure the offsets again (end estimates: drift), stop every host's resource sampler (a daemon beside the
   services since step 1: `benchmarks.deploy.host` ``sample``), then everything else, and collect every host's
   ledger, request logs, resource samples, Locust output, logs and manifest into ``OUT/<run>/hosts/<host>/``
   (`playbooks/stop.yml`);
5. check each host's files against its manifest (a missing or truncated file is an error), put every
   timestamp on the coordinator's clock (``OUT/<run>/ledger/``: the hosts' rows, corrected; each loadgen
   host's request logs by its own clock; the hosts' samples into ``OUT/<run>/resources.csv`` and
   ``machine.csv`` with a ``host`` column), and judge the run with the same `benchmarks.measure` checks and
   resource figures as a local run (every task ran exactly once, across hosts; ``resources`` per component
   summed over hosts, ``resources_by_host`` per host).

run.json adds ``deployment`` (the inventory's hosts and roles), ``brokers`` as a local run records them (kind,
version, topology, persistence, the round trip from here: `benchmarks.runner.broker_records`; ``host``: the
broker host) plus the broker's round trip from each host (``brokers.broker.rtt_ms_by_host``: Redis PINGs or
AMQP ``basic.qos``, timed on each host by `benchmarks.deploy.host` ``broker-rtt`` at the end of the start
playbook) and ``clocks`` (per host: offsets at start and end, uncertainty, drift; per interval
family: the clock uncertainty against its median and whether that flags the run; negative intervals
counted). Run ids are the local cell's with ``-on-<inventory name>``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import shutil
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import backends
from backends import dispatch, ledger
from backends.base import BackendSettings, QueueBackend
from benchmarks import __version__, brokers, clocks, environment, measure, runner, store
from benchmarks import spec as spec_mod
from benchmarks import stack as stack_mod
from benchmarks.deploy import driver, manifest
from benchmarks.deploy import plan as plan_mod
from benchmarks.deploy.inventory import Inventory
from benchmarks.matrix import Cell, Matrix
from benchmarks.procs import PhaseClock, wait_until
from benchmarks.runner import CellResult, Interrupted, sent_tasks
from benchmarks.stack import Stack, StackConfig
from benchmarks.store import RESULT_SCHEMA_VERSION

HOSTS_DIR = "hosts"
#: Seconds to wait for the API's /healthz, a host's clock responder, and the probes' round trip.
HEALTHY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 60.0
POLL_S = 0.1


#: Seconds an inventory cell takes beyond a local one, for the ETA: starting the hosts' services (about 6-7 s
#: on 2 cores), stopping them and collecting their files (8-10 s), and Ansible around the load, seen on 2 cores
#: with two hosts on one machine.
ANSIBLE_OVERHEAD_S = 17.0
#: Seconds more when the broker host starts a RabbitMQ node (the hosts' start took 21-31 s instead of about 7 s,
#: same setting, two-hosts-rabbitmq.toml).
RABBITMQ_NODE_START_S = 18.0


def cell_seconds(cell: Cell) -> float:
    """A rough duration of an inventory cell, for the ETA."""
    return runner.cell_seconds(cell) + (0.0 if cell.skip_reason else ANSIBLE_OVERHEAD_S + (
        RABBITMQ_NODE_START_S if cell.spec.get("broker") == "rabbitmq" else 0.0))


def run_id(cell: Cell, inventory: Inventory) -> str:
    """The local cell's run id, marked with the inventory it ran on."""
    return f"{cell.run_id}-on-{inventory.name}"


def check(matrix: Matrix, inventory: Inventory, external: plan_mod.ExternalBrokers | None = None) -> None:
    """Refuse, before anything starts, a matrix with a cell this inventory run cannot deploy
    (`plan.PlanError`, naming the key and what is allowed)."""
    for cell in matrix.cells:
        if not cell.skip_reason:
            plan_mod.check_spec(cell.spec, inventory, external)


class HostsCellRun:
    """Runs one cell on the inventory's hosts; `run()` always leaves a run.json saying what happened."""

    def __init__(self, cell: Cell, matrix_name: str, out_dir: Path, inventory: Inventory, *,
                 log: Callable[[str], None] = print,
                 status: Callable[[int, int, float], None] | None = None,
                 external: plan_mod.ExternalBrokers | None = None, left_by_sweep: frozenset[str] = frozenset()) -> None:
        self.cell, self.inventory, self.spec = cell, inventory, dict(cell.spec)
        #: The user's brokers, for an inventory without a broker host; borrowed through a `Stack` that starts
        #: nothing (`_borrow_brokers`), as a local run borrows them; `left_by_sweep` as there.
        self.external, self.left_by_sweep = external or plan_mod.ExternalBrokers(), left_by_sweep
        self.stack: Stack | None = None
        self.run_id = run_id(cell, inventory)
        self.run_dir = (Path(out_dir) / self.run_id).resolve()
        self.log, self.status = log, status
        self.record: dict[str, Any] = {
            "schema_version": RESULT_SCHEMA_VERSION, "harness_version": __version__, "run_id": self.run_id,
            "matrix": matrix_name, "repeat": cell.repeat, "spec": self.spec,
            "status": "running", "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "deployment": {"inventory": inventory.record(), "driver": "ansible-runner",
                           "daemonizer": "start-stop-daemon", "local_cell_run_id": cell.run_id},
        }
        self.phases = PhaseClock()
        self.plan: plan_mod.CellPlan | None = None
        self.backend: QueueBackend | None = None
        self.clocks_start: dict[str, clocks.Estimate] = {}
        self.clocks_end: dict[str, clocks.Estimate] = {}
        #: When the load playbook started (monotonic) and how long it took.
        self.load_s: tuple[float, float] | None = None
        #: Drain mode: the tasks the coordinator enqueued (probes left out), and when the workers were started
        #: (monotonic, and ns), when every task had finished (ns), and the seconds in between as the drain waited.
        self.preloaded: set[str] = set()
        self.drain_times: tuple[float, int, int, float] | None = None
        self.final_attempts: dict[str, int] = {}

    # -- the cell ---------------------------------------------------------------------------------------

    def run(self) -> CellResult:
        with self.phases.phase("prepare"):
            if self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            (self.run_dir / "logs").mkdir(parents=True)
            self.phases.log_path = self.run_dir / "logs" / "phases.log"
            self.record["environment"] = environment.describe(self.spec["backend"])
        if self.cell.skip_reason:
            return self._finish("skipped", self.cell.skip_reason)
        try:
            self.record["slots"] = spec_mod.slots(self.spec)
            self.plan = plan_mod.build(self.spec, self.inventory, self.run_id, secrets.token_hex(16), self.external,
                                       self._borrow_brokers())
            self.record["processes"] = self.plan.processes
            try:
                self._measure()
            except BaseException:
                try:  # stop everything however the measurement ended; its own error is the one to report
                    self._stop_and_collect()
                except Exception as exc:
                    self.record["stop_error"] = f"{type(exc).__name__}: {exc}"
                raise
            self._stop_and_collect()
            with self.phases.phase("collect"):
                detail = self._judge()
            return self._finish(self.record["summary"]["verdict"], detail)
        except Interrupted:
            self._finish("interrupted", "stopped by SIGINT/SIGTERM; redone on the next run")
            raise
        except Exception as exc:  # recorded, and the sweep goes on
            return self._finish("error", f"{type(exc).__name__}: {exc}")

    def _playbook(self, name: str, **extra: Any) -> driver.PlaybookResult:
        assert self.plan is not None
        return driver.run_playbook(name, self.inventory, self.plan.variables() | extra,
                                   log_path=self.run_dir / "logs" / f"ansible-{name}.log")

    def _measure(self) -> None:
        spec = self.spec
        drain = spec["mode"] == "drain"
        self.log("starting the hosts' services")
        with self.phases.phase("hosts_start"):
            rtt_by_host = broker_rtt_by_host(self._playbook("start"))
        with self.phases.phase("clocks_start"):
            self.clocks_start = self._measure_clocks(wait_s=HEALTHY_TIMEOUT_S)
        if not drain:
            with self.phases.phase("api_healthy"):
                self._wait_healthy()
        assert self.plan is not None
        self.backend = backends.get_backend(spec["backend"], self.plan.settings)
        self.backend.ping()
        self.final_attempts = stack_mod.final_attempts(self.backend)
        if drain:
            probes = self._preload()
        else:
            with self.phases.phase("probe_round_trip"):
                self._await_probes(self._send_probes(), PROBE_TIMEOUT_S)
        self.record["settings"] = dict(self.backend.describe())
        self.record["brokers"] = self._broker_records()
        self.record["brokers"]["broker"] |= {
            "rtt_ms_by_host": {h: r["rtt_ms"] for h, r in rtt_by_host.items()},
            "rtt_method": f"fastest of {rtt_samples(rtt_by_host)} "
                          + ("AMQP basic.qos round trips on one channel" if spec["broker"] == "rabbitmq"
                             else "Redis PINGs") + " from each host, on one connection, after the services started"}
        errors = {h: r["error"] for h, r in rtt_by_host.items() if r.get("error")}
        if errors:
            self.record["brokers"]["broker"]["rtt_errors"] = errors
        self.record["task_kinds"] = [{"task": task, "args": args, "digest": ledger.args_digest(task, args)}
                                     for task, args in sent_tasks(spec)]
        if drain:
            self._drain_workers(probes)
            with self.phases.phase("clocks_end"):
                self.clocks_end = self._measure_clocks(wait_s=5.0)
            return
        self.record["api"] = {"server": "gunicorn gthread", "workers": spec["api_workers"],
                              "threads": spec["api_threads"], "host": self.inventory.one("api").name,
                              "hosts": [h.name for h in self.inventory.role("api")],
                              "requests_to": "each api host in turn" if len(self.inventory.role("api")) > 1
                                             else "the api host"}
        loadgen, workers = self.inventory.one("loadgen").name, runner.load_workers(spec)
        assert self.plan is not None
        self.record["generator"] = runner.generator_record(workers) | {
            "host": loadgen, "hosts": [h.name for h in self.inventory.role("loadgen")]}
        shares = plan_mod.load_worker_shares(spec, self.inventory)
        if workers > 1:
            self.record["generator"]["workers"] = {
                "processes": [{"host": p["host"], "name": p["name"]} for p in self.plan.processes
                              if p["name"].startswith(plan_mod.LOAD_WORKER_PREFIX)],
                "by_host": {h: len(numbers) for h, numbers in shares.items()},
                "roll_call": store.LOCUST_WORKERS_JSON}
        where = ", ".join(f"{len(n)} on {h}" for h, n in shares.items())
        self.log(f"Locust on {loadgen}: {spec['rate']:g} tasks/s for {spec['warmup_s']:g} s warm-up + "
                 f"{spec['duration_s']:g} s measured" + (f", {workers} Locust workers ({where})" if workers > 1 else ""))
        started = time.monotonic()
        progress = self._progress(self._playbook("load"))
        self.load_s = (started, time.monotonic() - started)  # booked once the window is known (`_book_load`)
        with self.phases.phase("tail_drain"):
            self._drain(progress)
            self.record["queue_leftovers"] = self._leftovers()
        with self.phases.phase("clocks_end"):
            self.clocks_end = self._measure_clocks(wait_s=5.0)

    # -- brokers --------------------------------------------------------------------------------------------

    def _borrow_brokers(self) -> BackendSettings | None:
        """Without a broker host: borrow the user's brokers from here as a local run does (answering, empty,
        not a Cluster; a per-run vhost made), through a `Stack` that starts nothing; the settings on them."""
        if self.inventory.role("broker"):
            return None
        external = self.external
        self.stack = Stack(StackConfig(self.spec, broker_url=external.broker_url, amqp_url=external.amqp_url,
                                       per_run_vhost=external.per_run_vhost), self.run_dir,
                           left_by_sweep=self.left_by_sweep)
        with self.phases.phase("broker_start"):
            try:
                self.stack.start_brokers()
            except BaseException:
                self._return_brokers()
                raise
        assert self.stack.settings is not None
        return self.stack.settings

    def _return_brokers(self) -> None:
        """Purge from the user's brokers what this cell created (when they were empty at the start) and delete
        its per-run vhost; once the hosts' workers have stopped. Idempotent."""
        if self.stack is not None:
            self.stack.stop()

    def _broker_records(self) -> dict[str, Any]:
        """run.json's ``brokers``, as a local run records them (`runner.broker_records`), with the broker host."""
        if self.stack is not None:
            return runner.broker_records(self.stack)
        assert self.plan is not None
        settings, queue_type = self.plan.settings, self.spec.get("queue_type", "classic")
        host = self.inventory.one("broker").name
        records = {}
        for role, url in (("broker", settings.broker_url), ("result_store", settings.result_url)):
            if url:
                handle = brokers.BrokerHandle("rabbitmq" if url.startswith("amqp") else "redis", url, owned=True,
                                              private=True)
                described = (brokers.describe_rabbitmq(handle, queue_type) if handle.kind == "rabbitmq"
                             else brokers.describe_redis(handle))
                records[role] = described | {"kind": handle.kind, "url": brokers.redact(url), "owned": True,
                                             "host": host}
        return records

    # -- clocks, health, probes, progress -----------------------------------------------------------------

    def _measure_clocks(self, wait_s: float) -> dict[str, clocks.Estimate]:
        """Each host's offset (minimum-round-trip of `clocks.PROBES` probes), waiting up to `wait_s` for a
        responder that has not bound its port yet."""
        out = {}
        for host in self.inventory.hosts.values():
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    out[host.name] = clocks.measure_host(host.address, host.ports["qb_clock_port"])
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"host {host.name}: clock responder on {host.address}:"
                                           f"{host.ports['qb_clock_port']} does not answer ({exc}); see "
                                           f"{HOSTS_DIR}/{host.name}/logs/clock.log") from exc
                    time.sleep(POLL_S)
        return out

    def _wait_healthy(self) -> None:
        """Every api host's ``/healthz``, one after the other (they started together)."""
        for host, base in zip(self.inventory.role("api"), plan_mod.api_urls(self.inventory), strict=True):
            url = f"{base}/healthz"

            def healthy(url: str = url) -> bool:
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        return response.status == 200
                except OSError:
                    return False

            wait_until(healthy, timeout_s=HEALTHY_TIMEOUT_S, interval_s=POLL_S,
                       what=f"the API at {url} (its log: {HOSTS_DIR}/{host.name}/logs/api.log)")

    def _send_probes(self) -> list[str]:
        """One probe per task kind the cell sends, on every queue, enqueued from here."""
        assert self.backend is not None
        return [dispatch.submit(self.backend, task, args, queue=queue, probe=True).id
                for queue in self.backend.settings.queues for task, args in sent_tasks(self.spec)]

    def _await_probes(self, ids: list[str], timeout_s: float) -> None:
        """Wait until each probe has succeeded (the library's own status; with results off, until the queues
        are empty)."""
        assert self.backend is not None
        backend = self.backend

        def done() -> bool:
            if self.spec["results"]:
                return all((s := backend.status(i)) is not None and s.status == "success" for i in ids)
            return not any(backend.queue_depths().values())

        wait_until(done, timeout_s=timeout_s, interval_s=POLL_S,
                   what=f"a probe task to round-trip through {', '.join(backend.settings.queues)} (the workers' "
                        f"logs: {HOSTS_DIR}/<host>/logs/)")

    def _progress(self, result: driver.PlaybookResult) -> dict[str, Any]:
        sent: set[str] = set(self.preloaded)  # drain mode: sent from here, not by a host
        done: set[str] = set()
        rows = 0
        for stdout in result.stdout_of("Report ledger progress").values():
            report = json.loads(stdout)
            sent.update(report["sent"])
            done.update(report["done"])
            rows += int(report["finished_rows"])
        return {"sent": sent, "done": done, "finished_rows": rows}

    def _drain(self, progress: Mapping[str, Any]) -> None:
        """Wait while tasks keep finishing (the runner's rules: `drain_stall_s`, `drain_timeout_s`), reading
        the hosts' ledgers through Ansible."""
        stall_s, ceiling_s = float(self.spec["drain_stall_s"]), float(self.spec["drain_timeout_s"])
        started = last_progress = time.monotonic()
        rows = progress["finished_rows"]
        while True:
            now = time.monotonic()
            outstanding = len(progress["sent"] - progress["done"])
            if progress["finished_rows"] != rows:
                rows, last_progress = progress["finished_rows"], now
            if self.status is not None:
                self.status(len(progress["done"]), outstanding, now - started)
            rule = ("all-finished" if outstanding == 0 else "stalled" if now - last_progress >= stall_s
                    else "ceiling" if now - started >= ceiling_s else None)
            if rule is not None:
                self.record |= {"drain_s": now - started, "drain_ended_by": rule,
                                "drain_idle_s": now - last_progress, "drain_outstanding": outstanding}
                return
            time.sleep(POLL_S)
            progress = self._progress(self._playbook("progress"))

    def _preload(self) -> list[str]:
        """Drain mode, as a local drain: the probes first, then ``tasks`` tasks, enqueued from here through the
        backend (their ``sent`` rows in this run's ledger/, on the coordinator's clock); the workers are not
        started yet. Returns the probes' ids."""
        assert self.backend is not None
        with self.phases.phase("preload"), stack_mod.ledger_env(self.run_dir / "ledger"):
            probes = self._send_probes()
            started = time.monotonic()
            self.preloaded = {dispatch.submit(self.backend, self.spec["task"], self.spec["args"]).id
                              for _ in range(int(self.spec["tasks"]))}
            self.record["preload_s"] = time.monotonic() - started
        self.record["preloaded_depth"] = sum(self.backend.queue_depths().values())  # the probes' among them
        self.record["probe_tasks"] = len(probes)
        return probes

    def _drain_workers(self, probes: list[str]) -> None:
        """Drain mode: start the workers hosts' workers (`playbooks/workers.yml`), wait while the tasks
        finish, then check the probes' round trip and what is left in the queues."""
        workers = " ".join(h.name for h in self.inventory.role("workers"))
        self.log(f"{self.record['preloaded_depth']} waiting ({len(probes)} probe(s) first); starting the workers "
                 f"on {workers}")
        started, started_ns = time.monotonic(), time.time_ns()
        self._playbook("workers")  # booked with the workers' boot, which the drain's timing includes
        self._drain(self._progress(self._playbook("progress")))
        self.drain_times = (started, started_ns, time.time_ns(), time.monotonic() - started)
        with self.phases.phase("probe_round_trip"):  # sent first, the probes have normally finished long before
            finished = self.record["drain_ended_by"] == "all-finished"
            self._await_probes(probes, float(self.spec["drain_stall_s"]) if finished else 0.0)
        self.record["queue_leftovers"] = self._leftovers()

    def _leftovers(self) -> dict[str, int]:
        assert self.backend is not None
        depths = dict(self.backend.queue_depths())
        deadline = time.monotonic() + runner.LEFTOVER_GRACE_S
        while any(depths.values()) and time.monotonic() < deadline and self.record.get("drain_ended_by") == "all-finished":
            time.sleep(0.05)
            depths = dict(self.backend.queue_depths())
        return depths

    # -- stop, collect, judge -----------------------------------------------------------------------------

    def _stop_and_collect(self) -> None:
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()
        self.log("stopping the hosts' services; collecting ledgers and logs")
        collected = self.run_dir / HOSTS_DIR
        with self.phases.phase("hosts_stop_collect"):
            self._playbook("stop", qb_collect=str(collected))
            self._return_brokers()
            for name in self.inventory.hosts:
                archive = collected / f"{name}.tar.gz"
                with tarfile.open(archive) as tar:
                    tar.extractall(collected / name, filter="data")
                archive.unlink()

    def _judge(self) -> str:
        """Manifests, clock correction, tables and figures; returns the run's detail line."""
        spec, inventory = self.spec, self.inventory
        manifests = {name: manifest.verify(self.run_dir / HOSTS_DIR / name, name) for name in inventory.hosts}
        self.record["deployment"]["manifests"] = {name: manifest.totals(m) for name, m in manifests.items()}
        host_clocks = {name: clocks.HostClock(self.clocks_start[name], self.clocks_end.get(name))
                       for name in inventory.hosts}
        loadgens = [h.name for h in inventory.role("loadgen")]  # the Locust master's host first
        correct_ledgers(self.run_dir, host_clocks, loadgens)
        if spec["mode"] == "drain":
            tasks, window, summary = self._drain_summary()
        else:
            tasks, window, summary = self._load_summary(host_clocks, loadgens)
        attempts = tasks[(tasks["attempt"] > 0) & (tasks["outcome"] == "ok")]
        summary["figures"]["executions_by_host"] = {str(k): int(v) for k, v in
                                                    attempts.groupby("worker_host").size().items()}
        resources, machine = correct_samples(self.run_dir, host_clocks)
        runner.add_resources(summary["figures"], resources)
        summary["figures"]["resources_by_host"] = measure.host_resource_use(resources, machine, window)
        self.record["summary"] = summary
        latency = summary["figures"]["latency"]
        intervals = clocks.uncertainty_flags(latency, clocks.role_uncertainty(host_clocks, inventory.roles))
        negative = clocks.negative_intervals(measure.per_task(tasks))
        flagged = [family for family, item in intervals.items() if item["flagged"]]
        self.record["clocks"] = {
            "method": f"minimum round trip of {clocks.PROBES} UDP probes per host at start and end; offset = host "
                      "clock - coordinator clock, within +- rtt/2; timestamps corrected by the offset interpolated "
                      "between the two",
            "hosts": {name: c.record() for name, c in host_clocks.items()},
            "intervals": intervals, "negative_intervals": negative, "flagged": bool(flagged),
            "uncertainty_share_limit": clocks.UNCERTAINTY_SHARE_LIMIT}
        failed = ", ".join(summary["failed_checks"])
        parts = [f"failed checks: {failed}" if failed else ""]
        if self.record.get("drain_ended_by") != "all-finished":
            parts.append(f"drain {self.record.get('drain_ended_by')} with {self.record.get('drain_outstanding')} "
                         "task(s) outstanding")
        if flagged:
            parts.append("clock uncertainty large against " + ", ".join(
                f"{f} (+-{intervals[f]['uncertainty_ms']:.3f} ms vs p50 {intervals[f]['p50_ms']:.3f} ms)"
                for f in flagged))
        if any(negative.values()):
            parts.append("negative intervals: " + ", ".join(f"{k} {v}" for k, v in negative.items() if v))
        return "; ".join(p for p in parts if p)

    def _load_summary(self, host_clocks: Mapping[str, clocks.HostClock], loadgens: Sequence[str]
                      ) -> tuple[pd.DataFrame, measure.Window, dict[str, Any]]:
        """A load cell's tables and figures: Locust's output and roll call from the master's host (the first
        of `loadgens`), every loadgen host's raw request rows, each on the coordinator's clock by its own
        host's offset, the load window, and a local load cell's summary."""
        spec, inventory = self.spec, self.inventory
        loadgen = loadgens[0]
        for path in (self.run_dir / HOSTS_DIR / loadgen).glob(f"{store.LOCUST_PREFIX}*"):
            shutil.copy2(path, self.run_dir / path.name)
        requests = corrected_requests(self.run_dir, host_clocks, loadgens)
        store.write_requests_table(self.run_dir, requests)
        store.write_tasks_table(self.run_dir, ledger.executions(self.run_dir / "ledger"))
        tasks = store.read_tasks_table(self.run_dir)
        roll_call = None
        if runner.load_workers(spec) > 1:  # the master's roll call of its workers, as in a local run
            roll_call = measure.load_workers_reported(
                store.read_locust_workers(self.run_dir), runner.load_workers(spec),
                {h: len(n) for h, n in plan_mod.load_worker_shares(spec, inventory).items()})
            if not len(requests) and not roll_call["ok"]:
                raise RuntimeError(f"generator check failed, nothing was sent: {roll_call['detail']} (the "
                                   f"Locust logs: {HOSTS_DIR}/{loadgen}/logs/)")
        window = measure.load_window(tasks, requests, spec["warmup_s"], spec["duration_s"])
        self._book_load(window)
        summary = measure.summarise(tasks, requests, window, slots=self.record["slots"],
                                    offered_rate_per_s=float(spec["rate"]), arrival=spec.get("arrival", "constant"),
                                    locust_post_counts=store.locust_post_counts(self.run_dir),
                                    queue_leftovers=self.record.get("queue_leftovers"), load_workers=roll_call)
        summary["figures"]["requests_by_loadgen_host"] = {
            host: int(sum(scheduling_host(r, loadgens) == host for r in requests.get("request_id", [])))
            for host in loadgens}
        return tasks, window, summary

    def _drain_summary(self) -> tuple[pd.DataFrame, measure.Window, dict[str, Any]]:
        """A drain cell's tables and figures, as a local drain's: the drain window (first start to last
        finish), every preloaded task sent and finished once, and the figures timed from starting the workers
        (which here includes the workers playbook's Ansible overhead)."""
        store.write_tasks_table(self.run_dir, ledger.executions(self.run_dir / "ledger"))
        tasks = store.read_tasks_table(self.run_dir)
        window = measure.drain_window(tasks)
        count = int(self.spec["tasks"])
        summary = measure.summarise(tasks, None, window, slots=self.record["slots"], offered_rate_per_s=None,
                                    queue_leftovers=self.record.get("queue_leftovers"), expected_sent=count,
                                    final_attempts=self.final_attempts)
        if self.drain_times is not None:
            started, started_ns, done_ns, drain_s = self.drain_times
            for name, seconds in runner.from_worker_start(summary["figures"], count, window, started_ns, done_ns,
                                                          drain_s):
                self.phases.add(name, seconds, started)
                started += max(0.0, seconds)
        return tasks, window, summary

    def _book_load(self, window: measure.Window) -> None:
        """The load playbook's time: the measured window, and the rest (Ansible, Locust's start-up, warm-up
        and tail, the first progress report), so sweep.json's measured fraction holds for these runs too."""
        if self.load_s is None:
            return
        started, seconds = self.load_s
        window_s = min(seconds, window.length_s)
        self.phases.add("window", window_s, started)
        self.phases.add("load_other", seconds - window_s, started + window_s)
        self.load_s = None

    def _finish(self, status: str, detail: str) -> CellResult:
        self._return_brokers()  # already returned, unless the cell ended before its hosts started
        if self.load_s is not None:
            self.phases.add("load", self.load_s[1], self.load_s[0])
        self.record |= {"status": status, "detail": detail,
                        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "phases_s": self.phases.record()}
        if self.clocks_start and "clocks" not in self.record:
            self.record["clocks"] = {"hosts": {name: {"start": e.record(), "end": self.clocks_end[name].record()
                                                      if name in self.clocks_end else None}
                                               for name, e in self.clocks_start.items()}}
        store.write_run(self.run_dir, self.record)
        return CellResult(self.run_id, status, detail, self.run_dir, self.record["phases_s"])


def broker_rtt_by_host(result: driver.PlaybookResult) -> dict[str, dict[str, Any]]:
    """Each host's broker round trip as its `benchmarks.deploy.host` ``broker-rtt`` reported it."""
    return {host: json.loads(stdout) for host, stdout in
            sorted(result.stdout_of("Measure the broker's round trip").items())}


def rtt_samples(rtt_by_host: Mapping[str, Mapping[str, Any]]) -> int:
    """How many round trips each host timed (the most any host did; fewer only where the broker failed)."""
    return max((int(r.get("samples", 0)) for r in rtt_by_host.values()), default=0)


def scheduling_host(request_id: Any, loadgens: Sequence[str]) -> str:
    """The loadgen host that sent a request, and so stamped its ``X-Scheduled-At``: the host its request id
    names (``<host>:<pid>-<n>``, `scenarios/inflight.py`; the inventory keeps loadgen names as they are
    there); the first loadgen host (the only one, or the Locust master's) for an id naming none of them."""
    if isinstance(request_id, str):
        tag, separator, _ = request_id.partition(":")
        if separator and tag in loadgens:
            return tag
    return loadgens[0]


def corrected_requests(run_dir: Path, host_clocks: Mapping[str, clocks.HostClock],
                       loadgens: Sequence[str]) -> pd.DataFrame:
    """Every loadgen host's collected raw request rows, each host's timestamps on the coordinator's clock by
    that host's offset, as one frame in scheduled order (`store.read_requests`'s columns)."""
    frames = []
    for host in loadgens:
        requests = store.read_requests(run_dir / HOSTS_DIR / host / store.REQUEST_LOGS_DIR)
        for column in ("scheduled_ns", "sent_ns", "done_ns"):
            if column in requests:
                corrected = host_clocks[host].to_coordinator_ns(requests[column])
                requests[column] = corrected if corrected.isna().any() else corrected.astype("int64")
        frames.append(requests)
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True).sort_values("scheduled_ns").reset_index(drop=True)


def correct_ledgers(run_dir: Path, host_clocks: Mapping[str, clocks.HostClock], loadgens: Sequence[str]) -> Path:
    """Every host's collected ledger rows, on the coordinator's clock, into ``run_dir/ledger/`` (one file per
    host file). A row's ``sent_ns``/``enqueued_ns``/``t_ns`` were stamped by the host whose ledger holds it,
    its ``scheduled_ns`` by the loadgen host that sent the request (Locust's ``X-Scheduled-At``), which its
    ``request_id`` names (`scheduling_host`; `loadgens`: the loadgen host names, the Locust master's first).
    A line cut short is skipped, as `backends.ledger` does."""
    out = run_dir / "ledger"
    out.mkdir(parents=True, exist_ok=True)
    for host, clock in host_clocks.items():
        for path in sorted((run_dir / HOSTS_DIR / host / "ledger").glob("*.jsonl")):
            lines = []
            for line in path.read_bytes().splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                for key in ("sent_ns", "enqueued_ns", "t_ns"):
                    if isinstance(row.get(key), int):
                        row[key] = clock.to_coordinator_ns(row[key])
                if isinstance(row.get("scheduled_ns"), int):
                    sender = scheduling_host(row.get("request_id"), loadgens)
                    row["scheduled_ns"] = host_clocks[sender].to_coordinator_ns(row["scheduled_ns"])
                lines.append(json.dumps(row, separators=(",", ":")))
            (out / f"{host}--{path.name}").write_text("".join(line + "\n" for line in lines))
    return out


def correct_samples(run_dir: Path, host_clocks: Mapping[str, clocks.HostClock]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every host's collected resource samples on the coordinator's clock, with a ``host`` column, into
    ``run_dir/resources.csv`` and ``run_dir/machine.csv``; returns both as stored. A host without samples
    (its sampler did not start) adds no rows."""
    tables = []
    for name, read in ((store.RESOURCES_CSV, store.read_resources), (store.MACHINE_CSV, store.read_machine)):
        frames = [rows.assign(t_ns=clock.to_coordinator_ns(rows["t_ns"]), host=host)
                  for host, clock in host_clocks.items() if len(rows := read(run_dir / HOSTS_DIR / host))]
        if frames:
            pd.concat(frames, ignore_index=True).to_csv(run_dir / name, index=False)
        tables.append(read(run_dir))
    return tables[0], tables[1]


def run_matrix(matrix: Matrix, inventory: Inventory, out_dir: Path, *, force: bool = False, progress: Any = None,
               log: Callable[[str], None] = print,
               external: plan_mod.ExternalBrokers | None = None) -> list[CellResult]:
    """Install queuebench on the hosts once, then run every cell not already done, one at a time, under the
    measuring lock (as `benchmarks.runner.run_matrix` does for local cells). `external`: the user's brokers,
    for an inventory without a broker host."""
    external = external or plan_mod.ExternalBrokers()
    check(matrix, inventory, external)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in matrix.cells if force or not store.is_done(out_dir / run_id(c, inventory))]
    results = [CellResult(run_id(c, inventory), store.read_run(out_dir / run_id(c, inventory))["status"],
                          "already done", out_dir / run_id(c, inventory))
               for c in matrix.cells if c not in todo]
    with runner.sweep(out_dir, matrix.name, broker_url=external.broker_url) as current:
        if progress is not None:
            progress.cell_seconds = cell_seconds
            progress.start_sweep(todo, len(results))
        if todo:
            (progress.note if progress is not None else log)(f"installing queuebench on {len(inventory.hosts)} host(s)")
            with tempfile.TemporaryDirectory(prefix="queuebench-install-") as workdir:
                driver.install(inventory, Path(workdir), out_dir / f"install-{inventory.name}.log")
        for cell in todo:
            if progress is not None:
                progress.start_cell(cell)
            cell_run = HostsCellRun(cell, matrix.name, out_dir, inventory,
                                    log=progress.note if progress is not None else log,
                                    status=progress.draining if progress is not None else None,
                                    external=external, left_by_sweep=current.left_keys)
            result = cell_run.run()
            if cell_run.stack is not None and cell_run.stack.left_keys is not None:
                current.left_keys = cell_run.stack.left_keys  # as a local sweep on the user's Redis
            current.add(result)
            if progress is not None:
                progress.end_cell(cell, result)
            results.append(result)
    return results
