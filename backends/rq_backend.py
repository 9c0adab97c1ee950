"""RQ (Redis Queue) behind the queuebench backend protocol.

Design, in the order a task meets it:

- Producer. One `redis.Redis` client (its own connection pool) per backend and one `rq.Queue` per queue
  name, built once and reused: the API enqueues at a high rate, and a cached `Queue` also caches the
  Redis server version RQ reads on every enqueue. Each task becomes one RQ job whose id is the harness's
  id and whose function is the module-level `run` (by dotted path, so the producer never needs the task
  code). The job's description is just the task name: RQ's default is the repr of every argument,
  which for an `echo` task would be the whole payload.
- Serializer. json -> `rq.serializers.JSONSerializer`, pickle -> RQ's default pickle serializer,
  msgpack -> `MsgpackSerializer` below. The producer's `Queue(serializer=...)` and the worker's
  ``--serializer`` name the same class; RQ puts job data, job meta and results through it.
- Retries. RQ retries nothing unless a job is enqueued with a ``Retry``. The knob ``retry_max`` (default
  0, RQ's default: no Retry) gives every job RQ's own ``Retry(max=retry_max, interval=0)``: a failed job,
  and a job whose work horse died or whose worker was found dead (abandoned), is then re-queued at once
  (no backoff, so no scheduler round trip) until its retries are spent. `flaky` gets at least the
  ``fail_times`` retries it needs; `poison` gets exactly ``retry_max`` (`retry_policy`). The attempt
  number comes from RQ's bookkeeping: `job.retries_left` (RQ decrements it on each retry) and the
  maximum, stored in the job's RQ meta at enqueue.
- Results. On: RQ keeps a success for ``result_ttl_s`` (RQ default 500 s) and a failure for
  ``failure_ttl_s`` (RQ default 1 year). Off: jobs are enqueued with ``result_ttl=0``, RQ's own "do not
  keep results": a successful job is deleted, hash and timestamps included, as soon as it finishes, so
  `status` then answers None ("no record"), exactly as RQ itself would. Failures are still kept
  (``failure_ttl``), so a failed task stays visible. The harness times every task from its ledger,
  never from RQ's timestamps, so deleting them costs no measurement.
- Workers. RQ's own CLI, ``rq worker-pool -n N``: one job at a time per worker process, so slots = N;
  threads > 1, prefetch and acks_late raise `UnsupportedOption`. The worker class is RQ's default
  (`rq.worker.Worker`, a fork per job) unless the spec names `Worker`, `SimpleWorker`, `SpawnWorker` or a
  dotted path. ``-c backends.rq_backend`` makes RQ import this module in the pool process as its
  "config module" (it defines none of RQ's setting names), which preloads the task code once before the
  pool forks its workers, as RQ's performance notes advise; without it every forked work horse of the
  default worker class would import the task code again for each job, and only msgpack runs (whose
  serializer path imports this module anyway) would be spared.
- Job timeout. Per job (``job_timeout_s``, RQ default 180 s): RQ stores it in the job and the work
  horse enforces it, so it holds under ``worker-pool`` too, which has no timeout flag of its own.
- Recovery knobs. ``worker_ttl_s``, ``maintenance_interval_s`` and ``job_monitoring_interval_s`` are the
  worker's constructor arguments ``worker_ttl``, ``maintenance_interval`` and ``job_monitoring_interval``
  (``rq worker --worker-ttl / --maintenance-interval / --job-monitoring-interval``; RQ 3.0 defaults 420,
  600 and 30 s). ``rq worker-pool`` has no flag for them and builds its workers with the class's defaults,
  so when one is set the pool gets ``-w backends.rq_backend.Pinned<Worker|SimpleWorker|SpawnWorker>``: the
  chosen class, taking the knobs from ``QUEUEBENCH_SETTINGS`` as those arguments, nothing else changed.
  They decide when a dead worker's job comes back (`abandoned_after_s`): its started-registry entry
  expires min(job timeout, job monitoring interval) + 60 s after its last heartbeat, and the next
  registry clean-up (every maintenance interval; an idle worker looks only between its worker_ttl - 15 s
  waits for a job) fails it, or re-queues it while its ``Retry`` has retries left.

Codec (`codec`, timed by the serializer benchmark; RQ 3.0 line numbers). Encode: the job RQ's
``enqueue_call`` creates (``Queue.create_job``, rq/queue.py:558-665, no Redis call), given the fields
``_prepare_for_queue`` sets (rq/queue.py:1381-1395, but not the cached Redis server version), then
``Job.to_dict`` (rq/job.py:1087-1177): the hash ``save`` HSETs, whose ``data`` field is
``zlib.compress(serializer.dumps((func_name, instance, args, kwargs)))`` (rq/job.py:615-631, 1102). The
bytes returned are that ``data`` field; the whole hash (timestamps, status, origin, ttl...) is what the
broker measurement sees. Decode, as the worker's ``Job.fetch`` and ``perform`` do: ``Job.restore`` of the
hash as Redis returns it (rq/job.py:965-1000: ``zlib.decompress`` and every other field) and the job's
``args`` (``_deserialize_data``, rq/job.py:602-612: ``serializer.loads``).

Nothing but this module imports rq.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis
import rq
from redis.connection import Encoder
from rq.defaults import (
    DEFAULT_FAILURE_TTL,
    DEFAULT_JOB_MONITORING_INTERVAL,
    DEFAULT_MAINTENANCE_TASK_INTERVAL,
    DEFAULT_RESULT_TTL,
    DEFAULT_WORKER_CLASS,
    DEFAULT_WORKER_TTL,
)
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus, Retry, get_current_job
from rq.results import Result
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.worker import SimpleWorker, SpawnWorker, Worker

from backends import redis_url, workload
from backends.base import (
    BackendBase,
    BackendSettings,
    BackendUnavailable,
    Codec,
    DeliveryContract,
    EnqueueReceipt,
    JobRequest,
    Knob,
    RetryPolicy,
    TaskStatus,
    UnsupportedOption,
    WorkerCommand,
    WorkerSpec,
    check_common,
    check_shapes,
    check_worker_spec,
    parse_knobs,
)

#: The job function, by dotted path: the producer does not import task code to name it.
RUN_FUNC = "backends.rq_backend.run"
#: This module, named to ``rq worker-pool -c`` so the pool process imports the task code before forking.
PRELOAD_MODULE = "backends.rq_backend"
#: The ``-c`` module on a Sentinel URL: the same preload, plus RQ's own ``SENTINEL`` setting built from it.
SENTINEL_CONFIG_MODULE = "backends.rq_sentinel"

LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Knobs of the matrix's ``[rq]`` table (settings.options). Absent means RQ's own default.
KNOBS: dict[str, Knob] = {
    "worker_class": Knob(str, "Worker", "rq worker-pool -w: Worker (fork a work horse per job, RQ's default), "
                         "SimpleWorker (run jobs in the worker process), SpawnWorker (posix_spawn per job), or "
                         "a dotted path to a Worker subclass.", candidates=("Worker", "SimpleWorker")),
    # SpawnWorker is left out of the candidates: it starts a Python interpreter per job, about 1 no-op task/s
    # per process on 2 shared cores (2026-12-02), so a tuning drain of it would take many minutes.
    "job_timeout_s": Knob(int, 180, "seconds before RQ kills a running job (-1: never).", low=-1),
    "result_ttl_s": Knob(int, 500, "seconds RQ keeps a success and its result when results are on (-1: "
                         "forever). Ignored when results are off (then 0: deleted on success).", low=-1),
    "failure_ttl_s": Knob(int, 31_536_000, "seconds RQ keeps a failed job (-1: forever; default 1 year).",
                          low=-1),
    "logging_level": Knob(str, "INFO", "worker log level (rq worker-pool -l). RQ's INFO logs about three "
                          "lines per job.", choices=LOGGING_LEVELS, candidates=("INFO", "WARNING")),
    "worker_ttl_s": Knob(int, DEFAULT_WORKER_TTL, "Worker(worker_ttl=...): seconds a worker's registration lives "
                         "without a heartbeat; an idle worker blocks worker_ttl - 15 s waiting for a job and looks "
                         "at the maintenance interval only between waits (rq worker --worker-ttl; worker-pool has "
                         "no flag: see the module docstring).", low=16, high=86_400),
    "maintenance_interval_s": Knob(int, DEFAULT_MAINTENANCE_TASK_INTERVAL, "Worker(maintenance_interval=...): "
                                   "seconds between a worker's registry clean-ups, which fail (or, with a Retry, "
                                   "re-queue) the jobs of a worker found dead (rq worker --maintenance-interval).",
                                   low=1, high=86_400),
    "job_monitoring_interval_s": Knob(int, DEFAULT_JOB_MONITORING_INTERVAL, "Worker(job_monitoring_interval=...): "
                                      "seconds between a running job's heartbeats; a job is abandoned once its "
                                      "last heartbeat is min(job timeout, this) + 60 s old (rq worker "
                                      "--job-monitoring-interval).", low=1, high=86_400),
    "retry_max": Knob(int, 0, "Retry(max=N, interval=0) on every job: RQ re-queues a job that failed, whose "
                      "work horse died or whose worker was found dead, up to N times (RQ default 0: no Retry, "
                      "such a job goes to the failed registry). poison runs 1 + N times.", low=0, high=100),
}

#: Short worker-class names a spec may use; any other value must be a dotted path.
WORKER_CLASSES: dict[str, str] = {
    "Worker": "rq.worker.Worker",
    "SimpleWorker": "rq.worker.SimpleWorker",
    "SpawnWorker": "rq.worker.SpawnWorker",
}

#: Knobs that are `rq.worker.BaseWorker` constructor arguments (`rq worker` flags), -> the argument.
RECOVERY_KNOBS: dict[str, str] = {"worker_ttl_s": "worker_ttl", "maintenance_interval_s": "maintenance_interval",
                                  "job_monitoring_interval_s": "job_monitoring_interval"}
#: RQ adds this to a job's heartbeat TTL in its started registry (rq/worker/base.py get_heartbeat_ttl).
STARTED_TTL_EXTRA_S = 60

#: The job's RQ meta key holding the retry maximum set at enqueue (only jobs that may retry carry it).
_META_MAX_RETRIES = "qb_max_retries"
#: Seconds `ping` waits for Redis; the producer's own client allows longer per command.
PING_TIMEOUT_S = 2.0
PRODUCER_SOCKET_TIMEOUT_S = 10.0


# --- msgpack -----------------------------------------------------------------------------------------

_EXT_TUPLE, _EXT_SET, _EXT_FROZENSET, _EXT_DATETIME = 1, 2, 3, 4


def _msgpack_default(obj: Any) -> Any:
    """What msgpack cannot pack natively (with strict types): tuples and sets as extension types,
    datetimes as ISO text, subclasses of the basic types (str enums such as RQ's `JobStatus`) as their base."""
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, MsgpackSerializer.dumps(list(obj)))
    if isinstance(obj, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, MsgpackSerializer.dumps(list(obj)))
    if isinstance(obj, set):
        return msgpack.ExtType(_EXT_SET, MsgpackSerializer.dumps(list(obj)))
    if isinstance(obj, _dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    for base in (bool, int, float, str, bytes, list, dict):
        if isinstance(obj, base):
            return base(obj) if base is not str else str.__str__(obj)
    raise TypeError(f"MsgpackSerializer cannot serialize {type(obj).__name__}")


def _msgpack_ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(MsgpackSerializer.loads(data))
    if code == _EXT_SET:
        return set(MsgpackSerializer.loads(data))
    if code == _EXT_FROZENSET:
        return frozenset(MsgpackSerializer.loads(data))
    if code == _EXT_DATETIME:
        return _dt.datetime.fromisoformat(data.decode())
    return msgpack.ExtType(code, data)


class MsgpackSerializer:
    """RQ serializer (the ``dumps``/``loads`` protocol of `rq.serializers`) over msgpack.

    Bytes stay bytes and text stays text (``use_bin_type``/``raw=False``); tuples, sets and datetimes
    round-trip through extension types, so RQ's ``(func_name, instance, args, kwargs)`` job tuple comes
    back as a tuple. Integers are limited to 64 bits, as in msgpack itself.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_msgpack_default)

    @staticmethod
    def loads(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_msgpack_ext_hook)


#: Our serializer names -> (the class, the worker's ``--serializer`` argument).
SERIALIZERS: dict[str, tuple[Any, str]] = {
    "json": (JSONSerializer, "json"),
    "pickle": (DefaultSerializer, "pickle"),
    "msgpack": (MsgpackSerializer, "backends.rq_backend.MsgpackSerializer"),
}


# --- worker classes with the recovery knobs ------------------------------------------------------------


def _pinned(base: type[Any]) -> type[Any]:
    """`base` taking the recovery knobs of this configuration (``QUEUEBENCH_SETTINGS``, `RECOVERY_KNOBS`) as
    constructor arguments. ``rq worker`` has a flag for each of them; ``rq worker-pool`` has none and builds
    its workers with the class's defaults, so the pool is given this subclass (``-w``) instead: the same
    worker with the same arguments ``rq worker --worker-ttl ... --maintenance-interval ...
    --job-monitoring-interval ...`` would pass."""

    class Pinned(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            options = BackendSettings.from_env().options
            for knob, argument in RECOVERY_KNOBS.items():
                if knob in options:
                    kwargs.setdefault(argument, int(options[knob]))
            super().__init__(*args, **kwargs)

    Pinned.__name__ = Pinned.__qualname__ = f"Pinned{base.__name__}"
    Pinned.__module__ = __name__
    return Pinned


# Module-level names: RQ imports the worker class by dotted path, and SpawnWorker pickles it for its horse.
PinnedWorker = _pinned(Worker)
PinnedSimpleWorker = _pinned(SimpleWorker)
PinnedSpawnWorker = _pinned(SpawnWorker)


# --- the job function ----------------------------------------------------------------------------------


def run(task: str, args: dict[str, Any], meta: dict[str, Any]) -> Any:
    """The one RQ job function: run `task` through the shared body with RQ's attempt number.

    RQ counts down ``job.retries_left`` from the ``Retry.max`` given at enqueue (kept in the job's RQ meta),
    so attempt = max - retries_left + 1; a job without a retry policy runs once, as attempt 1.
    """
    attempt = 1
    job = get_current_job()
    if job is not None and job.retries_left is not None:
        max_retries = int(job.meta.get(_META_MAX_RETRIES, job.retries_left))
        attempt = max_retries - job.retries_left + 1
    return workload.execute(task, args, meta, attempt)


# --- helpers -------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and `describe`)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def _int_knob(options: Mapping[str, Any], key: str, *, allow_zero: bool = False) -> int | None:
    if key not in options:
        return None
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int) or (value == 0 and not allow_zero) or value < -1:
        raise UnsupportedOption(f"[rq] {key}", value, RQBackend.name,
                                "an integer number of seconds, > 0, or -1 for no limit")
    return value


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else None


#: redis-py's own encoding of command arguments (what HSET sends, so what HGETALL returns).
_REDIS_ENCODER = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)


def _redis_value(value: Any) -> bytes:
    """A hash field as redis-py sends it and HGETALL returns it."""
    return bytes(_REDIS_ENCODER.encode(value))


def _dist(name: str) -> str | None:
    try:
        return _dist_version(name)
    except PackageNotFoundError:
        return None


#: RQ's job status -> ours. A `flaky` job waiting for its retry is back in "queued" (RQ re-queues it).
_STATES: dict[str, str] = {
    JobStatus.CREATED.value: "queued",
    JobStatus.QUEUED.value: "queued",
    JobStatus.DEFERRED.value: "queued",
    JobStatus.SCHEDULED.value: "queued",
    JobStatus.STARTED.value: "started",
    JobStatus.FINISHED.value: "success",
    JobStatus.FAILED.value: "failure",
    JobStatus.STOPPED.value: "failure",
    JobStatus.CANCELED.value: "failure",
    # RQ 3 only: a job held back by a rate limit, or waiting to be enqueued after its dependencies.
    "rate_limited": "queued",
    "ready_to_enqueue": "queued",
}


# --- the backend ---------------------------------------------------------------------------------------


class RQBackend(BackendBase):
    """RQ on Redis: one job per task, RQ's own Retry when a job may retry, RQ's own CLI for workers."""

    name: ClassVar[str] = "rq"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis"})
    serializers: ClassVar[frozenset[str]] = frozenset({"json", "pickle", "msgpack"})
    knobs: ClassVar[dict[str, Knob]] = KNOBS
    tune_knobs: ClassVar[tuple[str, ...]] = ("worker_class",)
    tune_drain_tasks: ClassVar[int] = 500  # 16-120/s with the default Worker (a fork per job) on 2 slots
    packages: ClassVar[tuple[str, ...]] = ("rq", "redis", "hiredis", "msgpack")
    concurrency: ClassVar[str] = "one `rq worker-pool -n <processes>` (one job at a time per process; threads must be 1)"
    #: Sentinel: redis-py's ``Sentinel.master_for`` in the producer, RQ's own ``SENTINEL`` setting (its config
    #: module, ``-c``) in ``rq worker-pool``.
    broker_shapes: ClassVar[frozenset[str]] = frozenset({"sentinel"})
    refused_shapes: ClassVar[dict[str, str]] = {
        "cluster": "RQ does not support Redis Cluster (rq/rq#1048 and rq/rq#2021, open: its queue moves use "
                   "keys in different hash slots)"}

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        check_shapes(type(self), settings)
        parse_knobs(self.name, KNOBS, settings.options)
        if settings.result_url and settings.result_url != settings.broker_url:
            raise UnsupportedOption("result_url", redact_url(settings.result_url), self.name,
                                    "RQ keeps results in its broker's Redis, not in a separate store")
        options = settings.options
        self.job_timeout_s = _int_knob(options, "job_timeout_s")
        self.failure_ttl_s = _int_knob(options, "failure_ttl_s")
        result_ttl_s = _int_knob(options, "result_ttl_s")
        #: The recovery knobs given (`RECOVERY_KNOBS`); the rest keep RQ's defaults.
        self.recovery: dict[str, int] = {knob: int(options[knob]) for knob in RECOVERY_KNOBS if knob in options}
        base = options.get("worker_class", "Worker")
        if self.recovery and base not in WORKER_CLASSES:
            raise UnsupportedOption("[rq] worker_class", base, self.name,
                                    f"{', '.join(sorted(self.recovery))} reach a worker-pool's workers through "
                                    f"queuebench's subclass of {', '.join(WORKER_CLASSES)} only")
        self.worker_class = (f"{PRELOAD_MODULE}.Pinned{base}" if self.recovery
                             else self._worker_class(options.get("worker_class")))
        #: What jobs are enqueued with: 0 (RQ deletes a success at once) when results are off.
        self.result_ttl_s: int | None = result_ttl_s if settings.results else 0
        self.logging_level: str | None = options.get("logging_level")
        #: Retry(max=...) given to every job (0: none, RQ's default).
        self.retry_max = int(options.get("retry_max", 0))
        self.settings = settings
        self._serializer, self._serializer_arg = SERIALIZERS[settings.serializer]
        self._redis = redis_url.client(settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                       socket_timeout=PRODUCER_SOCKET_TIMEOUT_S)
        self._queues: dict[str, rq.Queue] = {}

    def _queue(self, name: str) -> rq.Queue:
        queue = self._queues.get(name)
        if queue is None:
            # A harmless race between API threads may build two; one is kept.
            queue = rq.Queue(name, connection=self._redis, serializer=self._serializer)
            self._queues[name] = queue
        return queue

    def ping(self) -> None:
        """Raise `BackendUnavailable` naming the URL (password hidden) unless Redis answers within 2 s."""
        client = redis_url.client(self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                  socket_timeout=PING_TIMEOUT_S)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise BackendUnavailable(f"RQ broker Redis at {redact_url(self.settings.broker_url)} did not answer: "
                                     f"{type(exc).__name__}: {exc}") from exc
        finally:
            client.close()

    def _job_options(self, job: JobRequest) -> dict[str, Any]:
        """What `enqueue` gives RQ for `job` (`codec` builds the same job)."""
        max_retries = max(workload.max_retries_for(job.task, job.args), self.retry_max)
        retry = Retry(max=max_retries, interval=0) if max_retries > 0 else None
        return {"args": (job.task, dict(job.args), job.meta()), "job_id": job.id, "timeout": self.job_timeout_s,
                "result_ttl": self.result_ttl_s, "failure_ttl": self.failure_ttl_s, "description": job.task,
                "meta": {_META_MAX_RETRIES: max_retries} if retry else None, "retry": retry}

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        """Enqueue `job` as one RQ job (id = `job.id`) on `job.queue`, with RQ's `Retry` when it may retry."""
        self._queue(job.queue).enqueue_call(RUN_FUNC, **self._job_options(job))
        return EnqueueReceipt(job.id, job.queue, time.time_ns())

    def codec(self, job: JobRequest) -> Codec:
        """Encode: ``Queue.create_job`` with `enqueue`'s arguments, the fields ``_prepare_for_queue`` sets,
        and ``Job.to_dict`` (the hash RQ HSETs; its ``data`` field, the zlib-compressed serialized call, is
        returned). Decode: ``Job.restore`` of that hash as Redis returns it, then ``job.args`` (the
        serializer's ``loads``), as the worker's ``Job.fetch`` and ``perform`` do.

        Line references in the module docstring; no Redis call is made or timed."""
        queue = self._queue(job.queue)
        options = self._job_options(job)
        rq_job = queue.create_job(RUN_FUNC, args=options.pop("args"), **options)
        rq_job.origin = queue.name
        rq_job.enqueued_at = _dt.datetime.now(_dt.UTC)
        if rq_job.timeout is None:
            rq_job.timeout = queue._default_timeout
        rq_job._status = JobStatus.QUEUED
        stored = {key.encode(): _redis_value(value) for key, value in rq_job.to_dict().items()}
        serializer, connection = self._serializer, self._redis

        def decode() -> tuple[str, Any, Any]:
            fetched = Job(job.id, connection=connection, serializer=serializer)
            fetched.restore(stored)
            task, args, meta = fetched.args
            return task, args, meta

        return stored[b"data"], decode

    def status(self, task_id: str) -> TaskStatus | None:
        """RQ's state and result for `task_id`; None when RQ has no record (unknown, expired, or a success
        deleted at once because results are off)."""
        try:
            rq_job = Job.fetch(task_id, connection=self._redis, serializer=self._serializer)
        except NoSuchJobError:
            return None
        rq_status = rq_job.get_status(refresh=False)
        raw = str(getattr(rq_status, "value", rq_status))
        state = _STATES.get(raw, "queued")
        if state == "success":
            return TaskStatus(task_id, "success", rq_job.return_value())
        if state == "failure":
            return TaskStatus(task_id, "failure", None, self._failure_text(rq_job, raw))
        return TaskStatus(task_id, state)  # type: ignore[arg-type]

    @staticmethod
    def _failure_text(rq_job: Job, raw: str) -> str:
        result = rq_job.latest_result()
        text = _last_line(result.exc_string if result is not None else None)
        if text is None and result is not None and result.type == Result.Type.MAX_RETRIES_EXCEEDED:
            text = "maximum retries exceeded"
        return text or f"job {raw}"

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        """One ``rq worker-pool -n <processes>`` on the spec's queues (RQ's own CLI and process manager)."""
        check_worker_spec(self.name, spec)
        if spec.threads > 1:
            raise UnsupportedOption("threads", spec.threads, self.name,
                                    "RQ runs one job at a time per worker process; raise processes instead")
        if spec.prefetch is not None:
            raise UnsupportedOption("prefetch", spec.prefetch, self.name,
                                    "RQ has no prefetch: an idle worker pops one job at a time")
        if spec.acks_late is not None:
            raise UnsupportedOption("acks_late", spec.acks_late, self.name,
                                    "RQ has no acknowledgement setting: a dequeued job sits in the started "
                                    "registry, and one whose worker dies goes to the failed registry, not back "
                                    "to the queue")
        argv = [str(Path(sys.executable).parent / "rq"), "worker-pool", "-n", str(spec.processes)]
        if redis_url.topology(self.settings.broker_url) == "sentinel":
            if self.worker_class == WORKER_CLASSES["SpawnWorker"]:
                raise UnsupportedOption("[rq] worker_class", "SpawnWorker", self.name,
                                        "RQ's SpawnWorker cannot rebuild a Sentinel connection in the process "
                                        "it spawns (rq/rq#2281, open)")
            # No -u: RQ then connects through the SENTINEL setting of its config module.
            argv += ["-S", self._serializer_arg, "-c", SENTINEL_CONFIG_MODULE]
        else:
            argv += ["-u", self.settings.broker_url, "-S", self._serializer_arg, "-c", PRELOAD_MODULE]
        if self.worker_class is not None:
            argv += ["-w", self.worker_class]
        if self.logging_level is not None:
            argv += ["-l", self.logging_level]
        argv += list(spec.queues)
        return [WorkerCommand(name=f"rq-{'-'.join(spec.queues)}", argv=argv, env=self.settings.to_env())]

    def _worker_class(self, value: str | None) -> str | None:
        if value is None:
            return None
        path = WORKER_CLASSES.get(value, value)
        if "." not in path:
            raise UnsupportedOption("[rq] worker_class", value, self.name,
                                    f"one of {', '.join(WORKER_CLASSES)} or a dotted path")
        try:
            from rq.utils import import_worker_class

            import_worker_class(path)
        except (ImportError, AttributeError, ValueError) as exc:
            raise UnsupportedOption("[rq] worker_class", value, self.name,
                                    f"not an RQ worker class: {exc}") from exc
        return path

    def recovery_knobs(self) -> dict[str, int]:
        """The worker's recovery timers in effect (the knobs given, else RQ's defaults), in seconds."""
        defaults = {"worker_ttl_s": DEFAULT_WORKER_TTL, "maintenance_interval_s": DEFAULT_MAINTENANCE_TASK_INTERVAL,
                    "job_monitoring_interval_s": DEFAULT_JOB_MONITORING_INTERVAL}
        return defaults | self.recovery

    def abandoned_after_s(self) -> dict[str, int]:
        """When a dead worker's job comes back: its started-registry entry expires min(job timeout, job
        monitoring interval) + 60 s after its last heartbeat (RQ's get_heartbeat_ttl), and the next registry
        clean-up, at most a maintenance interval later (an idle worker looks only between its worker_ttl - 15 s
        waits for a job), fails it, or re-queues it when it has retries left."""
        knobs = self.recovery_knobs()
        timeout = self.job_timeout_s if self.job_timeout_s is not None else rq.Queue.DEFAULT_TIMEOUT
        expiry = knobs["job_monitoring_interval_s"] if timeout < 0 else min(timeout, knobs["job_monitoring_interval_s"])
        return {"entry_expires_s": expiry + STARTED_TTL_EXTRA_S,
                "clean_up_within_s": max(knobs["maintenance_interval_s"], knobs["worker_ttl_s"] - 15)}

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        """RQ moves a job to its started registry when a worker takes it; a job whose work horse dies is
        failed at once, and one whose whole worker dies is found abandoned by the registry clean-up and
        failed. Either is re-queued instead while the job's `Retry` has retries left (``retry_max``), which
        makes RQ at-least-once for as many deaths. RQ has no prefetch."""
        after = self.abandoned_after_s()
        recovery = (f"a dead work horse: at once; a dead worker: the registry clean-up, once the job's started-"
                    f"registry entry has expired ({after['entry_expires_s']} s after its last heartbeat), within "
                    f"{after['clean_up_within_s']} s more (maintenance interval, worker_ttl)")
        source = ("https://python-rq.org/docs/exceptions/ (abandoned jobs, retrying failed jobs); rq 3.0 "
                  "rq/worker/base.py handle_job_failure, rq/registry.py StartedJobRegistry.cleanup")
        if self.retry_max > 0:
            return DeliveryContract(
                "at-least-once",
                f"failed, then re-queued by its Retry (max={self.retry_max}): run again, up to {self.retry_max} "
                "death(s) or failures",
                "none: an idle worker takes one job at a time", recovery, source)
        return DeliveryContract(
            "at-most-once", "failed (moved to the failed registry; re-run only if enqueued with Retry)",
            "none: an idle worker takes one job at a time", recovery, source)

    def retry_policy(self) -> RetryPolicy:
        """`poison` gets ``Retry(max=retry_max, interval=0)``: RQ retries nothing without a Retry."""
        return RetryPolicy(self.retry_max, "interval 0: re-queued at once",
                           "rq.Retry(max=..., interval=...) given at enqueue (the [rq] retry_max knob; RQ's "
                           "default is no Retry), https://python-rq.org/docs/exceptions/#retrying-failed-jobs")

    def held_task_ids(self) -> set[str] | None:
        """Job ids RQ still holds: waiting in a queue, in its intermediate queue (taken by a worker, not yet
        started), or in its started registry (a job whose worker died stays there until the registry's
        clean-up finds it abandoned). Read with ``cleanup=False``: RQ's clean-up would itself fail or retry
        the abandoned jobs."""
        held: set[str] = set()
        for name in self.settings.queues:
            queue = self._queue(name)
            held.update(queue.get_job_ids())
            held.update(v.decode() if isinstance(v, bytes) else v
                        for v in queue.connection.lrange(queue.intermediate_queue_key, 0, -1))
            held.update(queue.started_job_registry.get_job_ids(cleanup=False))
        return held

    def queue_depths(self) -> Mapping[str, int]:
        """Jobs waiting per queue of `settings.queues` (RQ's ``Queue.count``)."""
        return {name: self._queue(name).count for name in self.settings.queues}

    def purge(self) -> None:
        """Empty this configuration's queues and their job registries (with those jobs and results).

        Only keys of these queues' jobs are deleted: never FLUSHDB, never another queue's keys.
        """
        for name in self.settings.queues:
            queue = self._queue(name)
            queue.delete(delete_jobs=True)  # its waiting jobs, the list, and its entry in RQ's queue set
            registries = (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry,
                          queue.deferred_job_registry, queue.scheduled_job_registry, queue.canceled_job_registry)
            for registry in registries:
                ids = registry.get_job_ids(cleanup=False)
                for start in range(0, len(ids), 1000):
                    with self._redis.pipeline(transaction=False) as pipe:
                        for job_id in ids[start:start + 1000]:
                            pipe.delete(Job.key_for(job_id), Job.dependents_key_for(job_id),
                                        f"{Job.key_for(job_id)}:dependencies", Result.get_key(job_id),
                                        f"rq:executions:{job_id}")
                        pipe.execute()
                self._redis.delete(registry.key)
            self._redis.delete(queue.intermediate_queue_key)

    def describe(self) -> Mapping[str, Any]:
        """Versions (rq, redis-py, Redis server) and the effective settings, stored with every result."""
        try:
            server: Any = self._redis.info("server").get("redis_version")
        except (redis.RedisError, OSError) as exc:
            server = f"unavailable: {type(exc).__name__}: {exc}"
        results = self.settings.results
        return {
            "backend": self.name,
            "rq_version": rq.__version__,
            "redis_py_version": redis.__version__,
            "hiredis": _dist("hiredis"),
            "msgpack_version": _dist("msgpack"),
            "redis_server_version": server,
            "broker": self.settings.broker,
            "broker_url": redis_url.redact(self.settings.broker_url),
            "broker_topology": redis_url.topology(self.settings.broker_url),
            "serializer": self.settings.serializer,
            "serializer_class": f"{self._serializer.__module__}.{self._serializer.__qualname__}",
            "worker_command": "rq worker-pool -n <processes> (one job at a time per process: slots = processes)",
            "worker_class_default": f"{DEFAULT_WORKER_CLASS} (rq.worker.Worker: a fork per job)",
            "preload": f"-c {PRELOAD_MODULE} (task code imported once in the pool before forking)",
            "results": results,
            "result_ttl_s": (self.result_ttl_s if self.result_ttl_s is not None else DEFAULT_RESULT_TTL),
            "result_ttl_note": None if results else "results off: result_ttl=0, RQ deletes a success at once",
            "failure_ttl_s": self.failure_ttl_s if self.failure_ttl_s is not None else DEFAULT_FAILURE_TTL,
            "job_timeout_s": self.job_timeout_s if self.job_timeout_s is not None else rq.Queue.DEFAULT_TIMEOUT,
            "logging_level": self.logging_level or "INFO",
            "retry": "Retry(max=max(retry_max, flaky's fail_times), interval=0) when that is > 0, re-queued "
                     "at once; poison: Retry(max=retry_max)",
            "retry_max": self.retry_max,
            "worker_class": self.worker_class or DEFAULT_WORKER_CLASS,
            "recovery": self.recovery_knobs() | self.abandoned_after_s()
            | {"pinned": sorted(self.recovery), "how": "worker-pool -w backends.rq_backend.Pinned<class> (the "
               "class's constructor arguments; rq worker-pool has no flag for them)" if self.recovery else None},
            "retry_policy": self.retry_policy().record(),
            "routing": self.settings.routing,
            "queues": list(self.settings.queues),
            "knobs": dict(self.settings.options),
        }

    def close(self) -> None:
        """Close the producer's connection pool."""
        self._redis.close()
        self._redis.connection_pool.disconnect()
        self._queues.clear()
