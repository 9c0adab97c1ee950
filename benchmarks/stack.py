"""One configuration brought up for real: broker(s), workers (each library's own CLI), gunicorn + the API.

`StackConfig` is the data; `validate` checks it against the backend without starting anything; `Stack`
starts everything in order, verifies a task round-trips through every queue, and stops everything
(whole process trees) in reverse order on `stop()`, which is safe to call at any point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import backends
from api.wsgi import BACKEND_ENV, gunicorn_argv
from backends import dispatch, ledger, redis_url
from backends.base import BackendSettings, QueueBackend, UnsupportedOption, WorkerSpec, shape_refused
from benchmarks import brokers, envs
from benchmarks import spec as spec_mod
from benchmarks.procs import PhaseClock, Supervisor, wait_until

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HEALTHY_TIMEOUT_S = 30.0
#: Seconds between two checks while the API boots or a probe round-trips: short, since every cell waits
#: for both (each check is one loopback HTTP request or a read of the ledger's new bytes).
START_POLL_S = 0.02
#: Seconds the API and workers get after SIGTERM, at the end of a cell whose brokers are all private
#: (`BrokerHandle.private`): the measurement is over and its ledger rows are on disk, and the brokers
#: are discarded or emptied next, so nothing depends on a graceful exit; then SIGKILL. On a broker that
#: is not the harness's own, they get `procs.DEFAULT_STOP_TIMEOUT_S` to leave it tidy, as always.
TEARDOWN_GRACE_S = 0.2
ROUND_TRIP_TIMEOUT_S = 60.0
#: Seconds ``python -m backends.submit`` may take: a start-up allowance plus this much per task.
SUBMIT_STARTUP_S = 60.0
SUBMIT_S_PER_TASK = 0.05


@dataclass(frozen=True)
class StackConfig:
    """One running configuration: the spec's system keys (`benchmarks.spec`), and where its brokers are.

    `spec` may be a whole cell spec (workload keys are ignored here); `broker_url` names a user's Redis
    (never flushed; None: a private redis-server), `amqp_url` a RabbitMQ (None: the local default if it
    answers, else a private node), `api_port` the API's port (None: a free loopback port).
    `per_run_vhost`: on a RabbitMQ the harness did not start, run in a virtual host of the run's own, made
    through the management API and deleted at the end (`brokers.create_run_vhost`).
    """

    spec: Mapping[str, Any]
    broker_url: str | None = None
    amqp_url: str | None = None
    allow_dirty: bool = False
    api_port: int | None = None
    per_run_vhost: bool = False

    @classmethod
    def of(cls, *, broker_url: str | None = None, amqp_url: str | None = None, allow_dirty: bool = False,
           api_port: int | None = None, per_run_vhost: bool = False, **keys: Any) -> StackConfig:
        """A config from spec keys given by name (``StackConfig.of(backend="rq", processes=2)``); the others
        take their declared defaults."""
        unknown = set(keys) - set(spec_mod.KEYS) - {"options"}
        if unknown:
            raise TypeError(f"not spec keys: {', '.join(sorted(unknown))}")
        resolved = spec_mod.defaults("system") | {"options": {}} | keys
        return cls(resolved, broker_url=broker_url, amqp_url=amqp_url, allow_dirty=allow_dirty, api_port=api_port,
                   per_run_vhost=per_run_vhost)

    @property
    def backend(self) -> str:
        return self.spec["backend"]

    @property
    def broker(self) -> str:
        return self.spec["broker"]

    @property
    def api_workers(self) -> int:
        return self.spec.get("api_workers", spec_mod.KEYS["api_workers"].default)

    @property
    def api_threads(self) -> int:
        return self.spec.get("api_threads", spec_mod.KEYS["api_threads"].default)

    @property
    def slots(self) -> int:
        return spec_mod.slots(self.spec)

    def settings(self, broker_url: str, result_url: str | None) -> BackendSettings:
        return spec_mod.settings_for(self.spec, broker_url, result_url)

    def worker_specs(self) -> list[WorkerSpec]:
        return spec_mod.worker_specs(self.spec)


def validate(config: StackConfig) -> None:
    """Raise `UnsupportedOption` (or KeyError for an unknown backend) before anything starts: the spec, and
    the topology of a user's Redis URL (a Cluster URL is refused naming the library's issue; a malformed
    one saying what is wrong)."""
    if config.broker_url:
        try:
            redis_url.parse(config.broker_url)
        except redis_url.RedisURLError as exc:
            raise UnsupportedOption("--broker-url", redis_url.redact(config.broker_url), config.backend,
                                    str(exc)) from exc
    spec_mod.validate(config.spec, broker_url=config.broker_url)


class Stack:
    """Brokers, workers and the API of one configuration, under one supervisor."""

    def __init__(self, config: StackConfig, run_dir: str | os.PathLike[str], *,
                 phases: PhaseClock | None = None, shared_redis: brokers.SharedRedis | None = None,
                 private_rabbitmq: bool = False, private_sentinel: bool = False,
                 left_by_sweep: frozenset[str] = frozenset()) -> None:
        self.config = config
        #: On a user's Redis in a sweep: the keys the previous cell left after its purge (`brokers.borrow_redis`).
        self.left_by_sweep = left_by_sweep
        #: On a user's Redis that was empty at the start: the keys still there after `stop` purged it (None:
        #: no such Redis, or no purge).
        self.left_keys: frozenset[str] | None = None
        #: The sweep's private Redis, used instead of starting one (None: start one, stop it with the stack).
        self.shared_redis = shared_redis
        #: On RabbitMQ, start a node of the stack's own even when one answers (a cell that restarts it).
        self.private_rabbitmq = private_rabbitmq
        #: On Redis, a private Sentinel group of the stack's own (a cell that fails its master over).
        self.private_sentinel = private_sentinel
        #: That group's ports and timers (`brokers.start_private_sentinel`), for run.json.
        self.sentinel_group: dict[str, Any] | None = None
        self._shared_procs: list[Any] = []
        #: Where the stack's start-up and shutdown time goes (the runner's clock for the cell, if given).
        self.phases = phases or PhaseClock()
        self.run_dir = Path(run_dir).resolve()  # children run in it: every path they get is absolute
        self.ledger_dir = self.run_dir / "ledger"
        self.logs_dir = self.run_dir / "logs"
        self.supervisor = Supervisor()
        self._broker_procs: list[Any] = []
        self.broker: brokers.BrokerHandle | None = None
        self.result_store: brokers.BrokerHandle | None = None
        #: What run.json records of each broker (`brokers.describe_redis`/`describe_rabbitmq`), by role.
        self.broker_records: dict[str, dict[str, Any]] = {}
        #: The run's own RabbitMQ virtual host (`StackConfig.per_run_vhost`), deleted by `stop`.
        self.run_vhost: brokers.RunVhost | None = None
        self.backend: QueueBackend | None = None
        self.settings: BackendSettings | None = None
        self.api_url: str | None = None
        self.id_key = secrets.token_hex(16)
        self._purge_allowed = False
        self.worker_procs: list[Any] = []
        self._python: str | None = None

    # -- interpreter --------------------------------------------------------------------------------

    @property
    def python(self) -> str:
        """The interpreter of the backend's API and workers: its private environment's (built on first use)
        when it declares one (`QueueBackend.environment`), else the harness's own."""
        if self._python is None:
            self._python = envs.python_for(backends.backend_class(self.config.backend))
        return self._python

    @property
    def external(self) -> bool:
        """True when the backend's library lives in another environment than the harness's: the harness
        then enqueues through ``python -m backends.submit`` in that environment."""
        return self.python != sys.executable

    def environment_record(self) -> dict[str, Any] | None:
        """Where the backend's library ran, for run.json: None when it shares the harness's environment."""
        cls = backends.backend_class(self.config.backend)
        if not envs.requirements_of(cls):
            return None
        return {"python": self.python, "requirements": list(envs.requirements_of(cls)),
                "packages": envs.packages_in(cls),
                "web": envs.versions_in(cls, ("flask", "werkzeug", "gunicorn", "msgpack")),
                "build": envs.build_info(cls)}

    # -- environment ------------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("QUEUEBENCH_SETTINGS", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        env[ledger.LEDGER_ENV] = str(self.ledger_dir)
        env[dispatch.ID_KEY_ENV] = self.id_key
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, probe_tasks: list[tuple[str, Mapping[str, Any]]] | None = None) -> Stack:
        """Start brokers, workers and the API; return once the API is healthy and tasks round-trip.

        `probe_tasks` are round-tripped through every queue too (default: one `noop`).
        """
        with self.phases.phase("broker_start"):
            self.start_brokers()
        with self.phases.phase("workers_start"):
            self.start_workers()
        with self.phases.phase("api_healthy"):
            self._start_api()
        with self.phases.phase("probe_round_trip"):
            self.round_trip(probe_tasks)
        return self

    def start_brokers(self) -> None:
        """Brokers (and result store), the producer-side backend, and the check that queues start empty."""
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        _ = self.python  # a private environment is built (once) before anything starts
        self._start_brokers()
        assert self.broker is not None
        for handle in (self.broker, self.result_store):
            if handle is not None and handle.topology == "cluster":  # a Cluster URL, or a server in cluster mode
                raise shape_refused(backends.backend_class(self.config.backend), "cluster",
                                    f"{brokers.redact(handle.url)} is a Redis Cluster: ")
        self.broker_records = {role: self._broker_record(handle) for role, handle in
                               (("broker", self.broker), ("result_store", self.result_store)) if handle}
        result_url = self.result_store.url if self.result_store else None
        self.settings = self.config.settings(self.broker.url, result_url)
        self.backend = backends.get_backend(self.config.backend, self.settings)
        self.backend.ping()
        self._refuse_dirty_queues()

    def _start_brokers(self) -> None:
        cfg = self.config
        before = len(self.supervisor.procs)
        if cfg.broker == "redis":
            if self.private_sentinel:
                self.broker, self.sentinel_group = brokers.start_private_sentinel(self.supervisor, self.run_dir)
            elif cfg.broker_url:
                self.broker = brokers.borrow_redis(cfg.broker_url, allow_dirty=cfg.allow_dirty,
                                                   left_by_sweep=self.left_by_sweep)
            else:
                self.broker = self._private_redis("redis")
            self.result_store = self.broker
        elif cfg.broker == "sqlite":
            self.broker = self.result_store = brokers.sqlite_file(self.run_dir)
        else:
            self.broker = (brokers.start_private_rabbitmq(self.supervisor, self.run_dir) if self.private_rabbitmq
                           else brokers.resolve_rabbitmq(self.supervisor, self.run_dir, cfg.amqp_url))
            if cfg.per_run_vhost and not self.broker.private:
                # A virtual host nobody else uses: everything in it is this run's, deleted with it at the end.
                name = f"queuebench-{self.run_dir.name}-{secrets.token_hex(3)}"
                url, self.run_vhost = brokers.create_run_vhost(self.broker.url, name)
                self.broker = dataclasses.replace(self.broker, url=url, owned=True)
            if cfg.spec["results"]:
                # RabbitMQ holds no results: a Redis does (the user's if given, else a private one).
                if cfg.broker_url:
                    self.result_store = brokers.borrow_redis(cfg.broker_url, allow_dirty=cfg.allow_dirty,
                                                             left_by_sweep=self.left_by_sweep)
                else:
                    self.result_store = self._private_redis("results-redis")
        self._broker_procs = self.supervisor.procs[before:]

    def _broker_record(self, handle: brokers.BrokerHandle) -> dict[str, Any]:
        if handle.kind == "redis":
            record = brokers.describe_redis(handle)
            return record | {"private_group": self.sentinel_group} if self.sentinel_group else record
        if handle.kind == "rabbitmq":
            record = brokers.describe_rabbitmq(handle, self.config.spec.get("queue_type", "classic"))
            vhost = self.run_vhost.name if self.run_vhost else unquote(urlsplit(handle.url).path[1:] or "/")
            return record | {"vhost": vhost or "/", "namespace": "per-run vhost" if self.run_vhost else "the URL's vhost"}
        return {"kind": handle.kind, "topology": "single", "version": handle.version or None,
                "persistence": "a file", "rtt_ms": None}

    def _private_redis(self, name: str) -> brokers.BrokerHandle:
        """The sweep's Redis, emptied for this cell (its process watched and sampled under `name`, never
        stopped by the stack), else a redis-server of the stack's own."""
        if self.shared_redis is None:
            return brokers.start_private_redis(self.supervisor, self.run_dir, name=name)
        handle, proc = self.shared_redis.acquire()
        alias = dataclasses.replace(proc, name=name, _log_fh=None)
        self.supervisor.procs.append(alias)
        self._shared_procs.append(alias)
        return handle

    def _refuse_dirty_queues(self) -> None:
        assert self.backend is not None and self.broker is not None
        if self.broker.owned:
            self._purge_allowed = True
            return
        depths = {q: n for q, n in self.backend.queue_depths().items() if n}
        if depths and not self.config.allow_dirty:
            raise brokers.BrokerError(
                f"queues on {brokers.redact(self.broker.url)} already hold messages {depths}; queuebench "
                "does not purge what it did not create. Drain them, or pass --allow-dirty.")
        self._purge_allowed = not depths

    def start_workers(self, log_suffix: str = "") -> list[Any]:
        """Start every worker command (each library's own CLI); return their `Proc`s."""
        assert self.backend is not None
        env = self.base_env()
        started = []
        for spec in self.config.worker_specs():
            for command in self.backend.worker_commands(spec):
                started.append(self.supervisor.start(
                    command.name, envs.argv_for(command.argv, self.python), env=env | command.env, cwd=self.run_dir,
                    log_path=self.logs_dir / f"{command.name}{log_suffix}.log"))
        self.worker_procs = started
        return started

    def stop_workers(self) -> None:
        """Stop the workers only (whole trees, all at once, each let finish what it is doing); brokers and
        API keep running."""
        for proc in self.worker_procs:
            if proc in self.supervisor.procs:
                self.supervisor.procs.remove(proc)
        self._stop_procs(self.worker_procs)
        self.worker_procs = []

    def _stop_procs(self, procs: list[Any], **how: float) -> None:
        if not procs:
            return
        started = time.monotonic()
        self.supervisor.stop_many(procs, **how)
        self.phases.note(f"stop {', '.join(p.name for p in procs)}", time.monotonic() - started, started)

    def _teardown(self) -> dict[str, float]:
        """How the API and workers are stopped at the end (see `TEARDOWN_GRACE_S`)."""
        handles = [h for h in (self.broker, self.result_store) if h is not None]
        if handles and all(h.private for h in handles):
            return {"timeout_s": TEARDOWN_GRACE_S, "escalate_s": 0.0}
        return {}

    def _start_api(self) -> None:
        assert self.settings is not None
        port = self.config.api_port or brokers.free_port()
        argv = envs.argv_for(gunicorn_argv(port, workers=self.config.api_workers, threads=self.config.api_threads),
                             self.python)
        env = self.base_env() | self.settings.to_env() | {BACKEND_ENV: self.config.backend}
        self.supervisor.start("api", argv, env=env, cwd=PROJECT_ROOT, log_path=self.logs_dir / "api.log")
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(self.healthy, timeout_s=HEALTHY_TIMEOUT_S, interval_s=START_POLL_S,
                   what=f"the API at {self.api_url}/healthz", supervisor=self.supervisor)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def round_trip(self, tasks: list[tuple[str, Mapping[str, Any]]] | None = None,
                   timeout_s: float = ROUND_TRIP_TIMEOUT_S) -> float:
        """Send each probe task (default: one `noop`) to every queue and wait until all have finished
        successfully; return the seconds taken. Probes are marked in the ledger and left out of every
        measurement.
        """
        started = time.monotonic()
        self.await_probes(self.send_probes(tasks), timeout_s)
        return time.monotonic() - started

    def send_probes(self, tasks: list[tuple[str, Mapping[str, Any]]] | None = None) -> set[str]:
        """Enqueue each probe task (default: one `noop`) on every queue; return their ids."""
        assert self.backend is not None and self.settings is not None
        tasks = tasks or [("noop", {})]
        return set(self.submit([{"task": task, "args": dict(args), "queue": queue, "probe": True}
                                for queue in self.settings.queues for task, args in tasks]))

    def final_attempts(self) -> dict[str, int]:
        """Task name -> the attempt whose failure is final (`final_attempts`); empty without a backend."""
        return final_attempts(self.backend) if self.backend is not None else {}

    def await_probes(self, ids: set[str], timeout_s: float = ROUND_TRIP_TIMEOUT_S) -> None:
        """Wait until every probe in `ids` has finished successfully (a `poison` probe: failed for good, after
        the attempts its library promises); TimeoutError naming the queues if not within `timeout_s` (0:
        check once), ProcessFailed if a process died meanwhile."""
        assert self.settings is not None
        follower = ledger.Follower(self.ledger_dir)  # reads only what was appended since its last look
        final = self.final_attempts()
        done: set[str] = set()

        def all_done() -> bool:
            done.update(r["id"] for r in follower.poll()
                        if r.get("probe") and r.get("ev") == "finished"
                        and (r.get("outcome") == "ok" or ledger.is_final_failure(r, final)))
            return ids <= done

        wait_until(all_done, timeout_s=timeout_s, interval_s=START_POLL_S,
                   what=f"a probe task to round-trip through {', '.join(self.settings.queues)}",
                   supervisor=self.supervisor)

    def submit(self, requests: list[Mapping[str, Any]]) -> list[str]:
        """Enqueue each ``{"task", "args", "queue"?, "probe"?}`` through the backend, writing its ``sent``
        ledger row, the way the API does; return the task ids in order.

        A backend whose library lives in another environment is fed through ``python -m backends.submit``
        in that environment's interpreter (JSON lines in and out); any other runs in this process.
        """
        assert self.backend is not None and self.settings is not None
        if not self.external:
            with ledger_env(self.ledger_dir):
                return [dispatch.submit(self.backend, r["task"], r.get("args", {}), queue=r.get("queue"),
                                        probe=bool(r.get("probe"))).id for r in requests]
        env = self.base_env() | self.settings.to_env() | {BACKEND_ENV: self.config.backend}
        argv = [self.python, "-m", "backends.submit"]
        done = subprocess.run(argv, input="".join(json.dumps(dict(r)) + "\n" for r in requests),
                              capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
                              timeout=SUBMIT_STARTUP_S + SUBMIT_S_PER_TASK * len(requests))
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return [json.loads(line)["id"] for line in done.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        """Stop the API and workers (all at once), purge what this run created, stop the brokers (but not
        the sweep's shared Redis: the next cell empties it). Idempotent."""
        keep = [*self._broker_procs, *self._shared_procs]
        others = [p for p in self.supervisor.procs if p not in keep]
        self.supervisor.procs = [p for p in self.supervisor.procs if p in keep]
        self.worker_procs = []
        self._stop_procs(others, **self._teardown())
        if self.backend is not None:
            # The sweep's shared Redis is emptied whole before the next cell: purging it first is wasted.
            purged = False
            if self._purge_allowed and not (self.broker is not None and self.broker.shared is not None):
                with contextlib.suppress(Exception):
                    self.backend.purge()  # leave a borrowed broker as clean as it was found
                    purged = True
            borrowed = [h for h in (self.broker, self.result_store)
                        if h is not None and h.kind == "redis" and h.owned and not h.private]
            if purged and borrowed:  # what the library keeps beyond its purge: the next cell tolerates it
                with contextlib.suppress(Exception):
                    self.left_keys = brokers.key_names(borrowed[0].url)
            with contextlib.suppress(Exception):
                self.backend.close()
            self.backend = None
        self.supervisor.procs = [p for p in self.supervisor.procs if p not in self._shared_procs]
        self._shared_procs = []
        while self.supervisor.procs:
            self._stop_procs([self.supervisor.procs.pop()])
        if self.run_vhost is not None:
            vhost, self.run_vhost = self.run_vhost, None
            try:
                vhost.delete()  # everything the run declared in it goes with it
            except brokers.BrokerError as exc:  # said, not raised: stopping must finish
                print(f"queuebench: the run's virtual host {vhost.name} is left on the broker: {exc}",
                      file=sys.stderr)

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def final_attempts(backend: QueueBackend) -> dict[str, int]:
    """Task name -> the attempt whose failure is final: `poison` after the retries the backend's library
    promises (`QueueBackend.retry_policy`); empty when the backend does not say."""
    policy = backend.retry_policy()
    return {"poison": policy.attempts} if policy is not None else {}


@contextlib.contextmanager
def ledger_env(directory: Path) -> Iterator[None]:
    """Point this process's ledger at `directory` while enqueuing (the API's children have it from their
    environment; the harness sets it around its own enqueues)."""
    before = os.environ.get(ledger.LEDGER_ENV)
    os.environ[ledger.LEDGER_ENV] = str(directory)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ledger.LEDGER_ENV, None)
        else:
            os.environ[ledger.LEDGER_ENV] = before
