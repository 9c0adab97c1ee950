"""arq (asyncio, Redis) behind the queuebench backend protocol.

arq 0.28 requires redis-py < 6 and Celery 5.7's kombu refuses redis-py < 6.1, so arq runs in a private
virtual environment (`environment`, built by `benchmarks.envs`): its API (gunicorn + the Flask app) and
its workers run with that environment's interpreter. The harness process imports this module too, for
`ping`, `queue_depths`, `purge`, `describe` and `worker_commands`, which speak plain redis-py to arq's
keys; so this module never imports arq at module level: only the code that enqueues, reads a status
or runs a worker does, and that code only ever runs in arq's environment.

Design, in the order a task meets it:

- Producer. arq's producer is async (`ArqRedis.enqueue_job`), the Flask app runs in gunicorn gthread
  threads. The backend starts, on first use, one event loop in a daemon thread that owns one `ArqRedis`
  connection pool; every request thread hands its coroutine to that loop
  (`asyncio.run_coroutine_threadsafe`) and waits for the answer. No loop and no connection is ever used
  from two threads, and one pool serves all threads of an API process. Each task becomes one arq job whose
  id is the harness's id, on the sorted set ``arq:queue:<queue>``, calling the worker function ``run`` with
  ``(task, args, meta)``. arq answers None when a job or result with that id exists: that is an error here.
- Serializer. arq takes any bytes <-> dict callables, on the producer's pool and on the worker alike.
  pickle is arq's own default (passed as None, so arq's own path runs); json and msgpack are the callables
  below. arq puts the exception object itself in a failed job's result, which json and msgpack cannot
  hold: their callables write it as ``{"__exception__": name, "message": text}`` (without that, arq would
  store "unable to serialize result" and lose the error). Job dicts hold only str, int, None, tuples
  (args: json and msgpack return lists, which arq unpacks the same) and the task's own dicts.
- Worker. ``python -m arq backends.arq_worker.WorkerSettings``, arq's own CLI: one process reads one
  queue and runs up to ``max_jobs`` jobs at once as asyncio tasks. processes x threads -> `processes`
  processes per queue group with ``max_jobs = threads``; the shared task body is synchronous (it sleeps
  or burns CPU), so it runs in a thread pool of ``max_jobs`` threads (arq docs' sync_job pattern) and the
  event loop keeps polling. slots = processes x max_jobs.
- Retries. Only `flaky` and `poison` need them: the worker raises arq's own ``Retry(defer=0)`` while
  ``ctx["job_try"]`` <= ``workload.max_retries_for`` (`poison`: every try below ``max_tries``, so it runs
  ``max_tries`` times: `retry_policy`); any other exception fails the job. arq counts every start as a
  try, SIGKILL re-runs included, and fails a job past ``max_tries`` before running it (arq 5): unset,
  ``max_tries`` here is the most tries the catalogue's `flaky` needs.
- Results. On: arq keeps a success or a failure ``keep_result_s`` (arq 3600 s). Off: ``keep_result = 0``,
  arq stores nothing, and a finished job has no record (status None).
- Delivery. At least once: a job stays in its queue until it finishes, and a job whose worker died runs
  again once its in-progress key expires (job_timeout + 10 s). See `delivery_contract`.

Codec (`codec`, timed by the serializer benchmark; arq 0.28.0 line numbers): ``arq.jobs.serialize_job``
with `enqueue`'s function, arguments and this configuration's ``job_serializer`` (None: arq's pickle), as
``ArqRedis.enqueue_job`` does (arq/connections.py:172; arq/jobs.py:211-226 builds the dict ``{t, f, a,
k, et}``): the value it PSETEXes at ``arq:job:<id>``. Decode: ``arq.jobs.deserialize_job_raw`` with the
``job_deserializer`` (jobs.py:292-301), as the worker does before running a job (arq/worker.py:519). It
needs arq, so it runs in arq's environment (``python -m backends.submit --codec``).

Nothing but this module and `backends.arq_worker` imports arq.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis

from backends import workload
from backends.base import (
    THREADS_KNOB,
    BackendBase,
    BackendError,
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
    check_worker_spec,
    parse_knobs,
)

# arq's key names (arq/constants.py in 0.28.0), written out so the harness process needs no arq.
JOB_KEY_PREFIX = "arq:job:"
IN_PROGRESS_KEY_PREFIX = "arq:in-progress:"
RESULT_KEY_PREFIX = "arq:result:"
RETRY_KEY_PREFIX = "arq:retry:"
HEALTH_CHECK_KEY_SUFFIX = ":health-check"
#: Our queue names become arq queue names (sorted sets) under this prefix; arq's own default is "arq:queue".
QUEUE_PREFIX = "arq:queue:"

#: The worker function's name, as arq registers it (its ``__qualname__``) and as jobs name it.
FUNCTION = "run"
#: What arq's CLI loads in each worker process.
WORKER_SETTINGS = "backends.arq_worker.WorkerSettings"
LOG_CONFIG = "backends.arq_worker.LOG_CONFIG"
#: Per worker command: the queue it reads and its max_jobs (the settings travel in QUEUEBENCH_SETTINGS).
QUEUE_ENV = "QUEUEBENCH_ARQ_QUEUE"
MAX_JOBS_ENV = "QUEUEBENCH_ARQ_MAX_JOBS"

#: arq 0.28.0's own defaults (arq/worker.py, Worker.__init__), recorded and used to explain the knobs.
ARQ_POLL_DELAY_S = 0.5
ARQ_JOB_TIMEOUT_S = 300
ARQ_KEEP_RESULT_S = 3600
ARQ_MAX_TRIES = 5
ARQ_JOB_COMPLETION_WAIT_S = 0
#: arq keeps a job's in-progress key this much longer than its timeout (arq/worker.py: in_progress_timeout_s).
IN_PROGRESS_EXTRA_S = 10
#: The most tries the catalogue's `flaky` needs: it fails `fail_times` times, then succeeds.
FLAKY_TRIES = max(spec.high for spec in workload.CATALOGUE["flaky"] if spec.name == "fail_times") + 1

PING_TIMEOUT_S = 2.0
#: Seconds an API thread waits for its enqueue or status lookup on the event loop.
CALL_TIMEOUT_S = 10.0
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

KNOBS: dict[str, Knob] = {
    "poll_delay_s": Knob(
        float, ARQ_POLL_DELAY_S,
        "seconds between a worker's polls of its queue. A slot freed between polls waits for the next one, "
        "and a poll starts at most queue_read_limit jobs, so this caps throughput and sets pickup latency.",
        low=0.001, high=10, candidates=(0.01, 0.05, 0.5)),
    "queue_read_limit": Knob(
        int, None,
        "job ids a worker reads per poll (the most it can start per poll). arq derives it: "
        "max(5 x max_jobs, 100).",
        low=1, high=100_000, candidates=(100, 500, 1000)),
    "job_timeout_s": Knob(
        int, ARQ_JOB_TIMEOUT_S,
        "seconds before arq cancels a job (the task body's thread runs on). The in-progress key lives "
        "job_timeout + 10 s: after a worker is killed its jobs run again only then. Keep it above the "
        "longest task.",
        low=1, high=86_400, candidates=(60, 300)),
    "keep_result_s": Knob(
        int, ARQ_KEEP_RESULT_S,
        "seconds arq keeps a job's result (success or failure) when results are on. Off: 0, nothing kept.",
        low=1, high=31_536_000, candidates=(60, 3600)),
    "max_tries": Knob(
        int, None,
        f"tries before arq fails a job without running it; every start counts (Retry, SIGKILL and "
        f"SIGTERM re-runs). arq's default is {ARQ_MAX_TRIES}; unset, {FLAKY_TRIES}, the most tries the "
        f"catalogue's flaky needs.",
        low=FLAKY_TRIES, high=1000),
    "job_completion_wait_s": Knob(
        int, ARQ_JOB_COMPLETION_WAIT_S,
        "seconds a worker lets running jobs finish after SIGTERM/SIGINT before cancelling them (a cancelled "
        "job runs again at once, elsewhere or after a restart).",
        low=0, high=3600, candidates=(0, 10)),
    "logging_level": Knob(
        str, "INFO",
        "arq's worker log level; INFO (arq's default) logs two lines per job.",
        choices=LOGGING_LEVELS, candidates=("INFO", "WARNING")),
}


# --- serializers: bytes <-> dict callables, the same on the producer and the worker ---------------------

EXCEPTION_KEY = "__exception__"


def _plain(obj: Any) -> Any:
    """What json and msgpack cannot hold natively: arq puts a failed job's exception in its result."""
    if isinstance(obj, BaseException):
        return {EXCEPTION_KEY: type(obj).__name__, "message": str(obj)}
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def json_dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_plain).encode()


def json_loads(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def msgpack_dumps(obj: Mapping[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=_plain)


def msgpack_loads(data: bytes) -> dict[str, Any]:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


Dumps = Callable[[Mapping[str, Any]], bytes]
Loads = Callable[[bytes], dict[str, Any]]

#: Our serializer names -> (job_serializer, job_deserializer) for arq; (None, None) is arq's own pickle.
SERIALIZERS: dict[str, tuple[Dumps | None, Loads | None]] = {
    "pickle": (None, None),
    "json": (json_dumps, json_loads),
    "msgpack": (msgpack_dumps, msgpack_loads),
}


class _Unimportable(Exception):
    """Stands in, when `purge` reads a pickled result, for a class this process cannot import (arq's own
    exceptions, in the harness process that has no arq)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args)


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Unimportable


def _pickle_loads_lenient(data: bytes) -> Any:
    import io

    return _LenientUnpickler(io.BytesIO(data)).load()


# --- helpers -------------------------------------------------------------------------------------------


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and `describe`)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def error_text(result: Any) -> str:
    """A failed job's error as one line, ``Type: message``, whichever serializer stored it."""
    if isinstance(result, BaseException):
        name, message = type(result).__name__, str(result)
    elif isinstance(result, Mapping) and EXCEPTION_KEY in result:
        name, message = str(result[EXCEPTION_KEY]), str(result.get("message") or "")
    else:
        name, message = "", str(result)
    text = f"{name}: {message}" if name and message else (name or message)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else "failed"


def _dist(name: str) -> str | None:
    try:
        return _dist_version(name)
    except PackageNotFoundError:
        return None


class _LoopThread:
    """One asyncio event loop in a daemon thread, owning one `ArqRedis` pool; every coroutine runs there.

    arq's client is async and redis-py's asyncio connections belong to the loop that opened them, while
    the API calls from many gunicorn threads: they all submit to this one loop and block on the answer.
    """

    def __init__(self, settings: BackendSettings, dumps: Dumps | None, loads: Loads | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="arq-producer-loop", daemon=True)
        self.thread.start()
        try:
            self.pool = self.call(self._connect(settings, dumps, loads), timeout_s=CALL_TIMEOUT_S)
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _connect(settings: BackendSettings, dumps: Dumps | None, loads: Loads | None) -> Any:
        from arq.connections import RedisSettings, create_pool  # arq's environment only (module docstring)

        redis_settings = RedisSettings.from_dsn(settings.broker_url)
        # arq retries a failed connection 5 times, 1 s apart; an API answers 503 at once instead.
        redis_settings.conn_retries = 0
        return await create_pool(redis_settings, job_serializer=dumps, job_deserializer=loads,
                                 default_queue_name=queue_key(settings.queues[0]))

    def call(self, coro: Coroutine[Any, Any, Any], timeout_s: float = CALL_TIMEOUT_S) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            future.cancel()
            raise

    def close(self) -> None:
        try:
            self.call(self.pool.close(close_connection_pool=True), timeout_s=5)
        finally:
            self._stop()

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


# --- the backend ---------------------------------------------------------------------------------------


class ArqBackend(BackendBase):
    """arq on Redis: one job per task, arq's own Retry for `flaky`, arq's own CLI for workers, in arq's
    own virtual environment."""

    name: ClassVar[str] = "arq"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis"})
    serializers: ClassVar[frozenset[str]] = frozenset(SERIALIZERS)
    knobs: ClassVar[Mapping[str, Knob]] = KNOBS
    spec_knobs: ClassVar[Mapping[str, Knob]] = {"threads": THREADS_KNOB}
    tune_knobs: ClassVar[tuple[str, ...]] = ("poll_delay_s", "threads")
    tune_drain_tasks: ClassVar[int] = 200  # ~4/s at the default 0.5 s poll on 2 slots
    packages: ClassVar[tuple[str, ...]] = ("arq", "redis", "hiredis")
    concurrency: ClassVar[str] = ("processes x threads -> per queue, <processes> `arq` worker processes, each "
                                  "running up to max_jobs = <threads> jobs (the body in a thread pool of that "
                                  "size); slots = processes x max_jobs")
    #: pip requirements of arq's private environment: arq and what the API and the workers import
    #: (api.wsgi -> api.app -> backends.*: flask, gunicorn to serve it, msgpack; not pandas, psutil or
    #: locust, which only the harness process uses). Ranges as in pyproject.toml, redis-py as arq requires.
    environment: ClassVar[tuple[str, ...]] = (
        "arq==0.28.*", "redis[hiredis]>=4.2.0,<6", "flask>=3.0,<4", "gunicorn>=23,<28", "msgpack>=1.0,<2")

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        if settings.result_url and settings.result_url != settings.broker_url:
            raise UnsupportedOption("result_url", redact_url(settings.result_url), self.name,
                                    "arq keeps results in its broker's Redis, not in a separate store")
        options = parse_knobs(self.name, KNOBS, settings.options)
        self.settings = settings
        self.poll_delay_s: float = options.get("poll_delay_s", ARQ_POLL_DELAY_S)
        self.queue_read_limit: int | None = options.get("queue_read_limit")
        self.job_timeout_s: int = options.get("job_timeout_s", ARQ_JOB_TIMEOUT_S)
        #: 0 when results are off: arq then stores no result at all.
        self.keep_result_s: int = options.get("keep_result_s", ARQ_KEEP_RESULT_S) if settings.results else 0
        self.max_tries: int = options.get("max_tries", FLAKY_TRIES)
        self.job_completion_wait_s: int = options.get("job_completion_wait_s", ARQ_JOB_COMPLETION_WAIT_S)
        self.logging_level: str | None = options.get("logging_level")
        self._dumps, self._loads = SERIALIZERS[settings.serializer]
        self._redis = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                           socket_timeout=CALL_TIMEOUT_S)
        self._bridge: _LoopThread | None = None
        self._bridge_pid: int | None = None
        self._bridge_lock = threading.Lock()

    # -- the producer side (arq's environment only) -------------------------------------------------------

    def _loop(self) -> _LoopThread:
        """The event loop thread, started on first use (and again in a forked child, which has no threads)."""
        bridge = self._bridge
        if bridge is not None and self._bridge_pid == os.getpid():
            return bridge
        with self._bridge_lock:
            if self._bridge is None or self._bridge_pid != os.getpid():
                self._bridge = _LoopThread(self.settings, self._dumps, self._loads)
                self._bridge_pid = os.getpid()
            return self._bridge

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"arq broker Redis at {redact_url(self.settings.broker_url)} did not answer: "
                                  f"{type(exc).__name__}: {exc}")

    def _call(self, make: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
        try:
            bridge = self._loop()
            return bridge.call(make(bridge.pool))
        except (redis.ConnectionError, redis.TimeoutError, OSError, FutureTimeout) as exc:
            raise self._unavailable(exc) from exc

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        """Enqueue `job` as one arq job (id = `job.id`) on ``arq:queue:<job.queue>``."""
        queue = queue_key(job.queue)

        async def enqueue(pool: Any) -> Any:
            return await pool.enqueue_job(FUNCTION, job.task, dict(job.args), job.meta(), _job_id=job.id,
                                          _queue_name=queue)

        if self._call(enqueue) is None:
            raise BackendError(f"arq refused job {job.id}: a job or a result with that id already exists")
        return EnqueueReceipt(job.id, job.queue, time.time_ns())

    def codec(self, job: JobRequest) -> Codec:
        """Encode: ``arq.jobs.serialize_job`` of `enqueue`'s call (function, ``(task, args, meta)``, no
        kwargs, try None, the enqueue time in ms) with this configuration's ``job_serializer``, as
        ``ArqRedis.enqueue_job`` does. Decode: ``arq.jobs.deserialize_job_raw`` with the
        ``job_deserializer``, as the worker does before running the job.

        Line references in the module docstring. Needs arq: in the harness process (which has none) it
        raises ImportError; the harness runs it in arq's environment. The Redis transaction is not timed."""
        from arq.jobs import deserialize_job_raw, serialize_job  # arq's environment only (module docstring)

        loads = self._loads
        data = serialize_job(FUNCTION, (job.task, dict(job.args), job.meta()), {}, None, time.time_ns() // 1_000_000,
                             serializer=self._dumps)

        def decode() -> tuple[str, Any, Any]:
            _function, args, _kwargs, _job_try, _enqueue_time_ms = deserialize_job_raw(data, deserializer=loads)
            task, task_args, meta = args
            return task, task_args, meta

        return data, decode

    def status(self, task_id: str) -> TaskStatus | None:
        """arq's status and result for `task_id`; None when arq has no record (unknown, expired, purged,
        or finished with results off)."""
        queues = [queue_key(q) for q in self.settings.queues]

        async def lookup(pool: Any) -> tuple[str, Any]:
            from arq.jobs import Job, JobStatus  # arq's environment only (module docstring)

            state = JobStatus.not_found
            for queue in queues:  # only queued/deferred depend on the queue: the job's is not recorded here
                arq_job = Job(task_id, pool, _queue_name=queue, _deserializer=self._loads)
                state = await arq_job.status()
                if state == JobStatus.complete:
                    return state.value, await arq_job.result_info()
                if state != JobStatus.not_found:
                    break
            return state.value, None

        state, info = self._call(lookup)
        if state == "complete":
            if info is None:  # expired between the two reads
                return None
            if info.success:
                return TaskStatus(task_id, "success", info.result)
            return TaskStatus(task_id, "failure", None, error_text(info.result))
        if state == "in_progress":
            return TaskStatus(task_id, "started")
        if state in ("queued", "deferred"):
            return TaskStatus(task_id, "queued")
        return None

    # -- workers ------------------------------------------------------------------------------------------

    def worker_settings(self, queue: str, max_jobs: int) -> dict[str, Any]:
        """The `arq.worker.Worker` keyword arguments of one worker process (read by `backends.arq_worker`).

        Unset knobs are left out, so arq applies its own default (queue_read_limit)."""
        kwargs: dict[str, Any] = {
            "queue_name": queue_key(queue),
            "max_jobs": max_jobs,
            "poll_delay": self.poll_delay_s,
            "job_timeout": self.job_timeout_s,
            "keep_result": self.keep_result_s,
            "max_tries": self.max_tries,
            "job_completion_wait": self.job_completion_wait_s,
            "job_serializer": self._dumps,
            "job_deserializer": self._loads,
        }
        if self.queue_read_limit is not None:
            kwargs["queue_read_limit"] = self.queue_read_limit
        return kwargs

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        """`processes` arq CLI processes on the spec's queue, each with ``max_jobs = threads``.

        ``argv[0]`` is ``sys.executable``: the harness runs it with arq's environment's interpreter.
        """
        check_worker_spec(self.name, spec)
        for option, value, reason in (
            ("pool", getattr(spec, "pool", None), "an arq worker is one asyncio process; use processes x threads"),
            ("worker_class", getattr(spec, "worker_class", None), "arq has one worker class"),
            ("prefetch", spec.prefetch, "arq claims a job only when it starts it; the knob for how many ids "
                                        "a poll reads is [arq] queue_read_limit"),
        ):
            if value is not None:
                raise UnsupportedOption(option, value, self.name, reason)
        if spec.acks_late is False:
            raise UnsupportedOption("acks_late", False, self.name,
                                    "arq always keeps a job in its queue until the job finishes")
        if getattr(spec, "options", None):
            raise UnsupportedOption("worker options", dict(spec.options), self.name,
                                    "arq's settings are [arq] knobs: " + ", ".join(sorted(KNOBS)))
        if len(spec.queues) != 1:
            raise UnsupportedOption("queues", spec.queues, self.name,
                                    "an arq worker reads one queue: give each queue its own worker group")
        queue = spec.queues[0]
        argv = [sys.executable, "-m", "arq", WORKER_SETTINGS]
        if self.logging_level is not None:
            argv += ["--custom-log-dict", LOG_CONFIG]
        env = self.settings.to_env() | {QUEUE_ENV: queue, MAX_JOBS_ENV: str(spec.threads)}
        return [WorkerCommand(name=f"arq-{queue}-{i}", argv=list(argv), env=dict(env))
                for i in range(spec.processes)]

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        ttl = self.job_timeout_s + IN_PROGRESS_EXTRA_S
        grace = (f"after job_completion_wait ({self.job_completion_wait_s} s) " if self.job_completion_wait_s
                 else "")
        return DeliveryContract(
            guarantee="at-least-once",
            in_flight=(f"stays in its queue while it runs; after a SIGKILL it runs again once its in-progress "
                       f"key expires ({ttl} s), as the next try; SIGTERM/SIGINT cancel it {grace}and it runs "
                       f"again at once; every start counts toward max_tries ({self.max_tries}). The body's "
                       f"thread is not stopped by a cancel, so a cancelled body may still finish once."),
            prefetched=(f"nothing claimed ahead: a poll reads up to {self._read_limit(spec)} ids, but a job is "
                        f"marked in progress only when it starts (at most max_jobs = {spec.threads} per "
                        f"process); the rest stay in the queue for any worker"),
            recovery=f"the in-progress key's TTL: job_timeout + {IN_PROGRESS_EXTRA_S} s = {ttl} s",
            source=("https://arq-docs.helpmanual.io/ ('Jobs may be called more than once!'); arq 0.28.0 "
                    "arq/worker.py: in_progress_timeout_s = max timeout + 10 (lines 276-277), set on start "
                    "(line 465), job_try counted on every start (line 482)"),
        )

    def retry_policy(self) -> RetryPolicy:
        """`poison` asks arq to retry it (``Retry(defer=0)``) on every try until ``max_tries``."""
        return RetryPolicy(self.max_tries - 1, "Retry(defer=0): run again at the worker's next poll",
                           f"arq max_tries ({self.max_tries} here, the [arq] max_tries knob; arq's default "
                           f"{ARQ_MAX_TRIES}), https://arq-docs.helpmanual.io/#retrying-jobs-and-cancellation")

    def _read_limit(self, spec: WorkerSpec) -> int:
        return self.queue_read_limit or max(5 * spec.threads, 100)

    # -- plain redis-py: works in the harness process, which has no arq -------------------------------------

    def ping(self) -> None:
        """Raise `BackendUnavailable` naming the URL (password hidden) unless Redis answers within 2 s."""
        client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                      socket_timeout=PING_TIMEOUT_S)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            client.close()

    def queue_depths(self) -> Mapping[str, int]:
        """Jobs in each queue's sorted set. arq keeps a job there until it finishes, so this counts the jobs
        running (at most slots) and jobs waiting for a flaky retry too."""
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for queue in self.settings.queues:
                    pipe.zcard(queue_key(queue))
                counts = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return {queue: int(n) for queue, n in zip(self.settings.queues, counts, strict=True)}

    def held_task_ids(self) -> set[str] | None:
        """Job ids arq still holds: every member of each queue's sorted set. arq keeps a job there until it
        finishes, so a job whose worker died is still held while its in-progress key lives (job_timeout +
        10 s), and runs again after. A plain ZRANGE: nothing of arq's runs."""
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for queue in self.settings.queues:
                    pipe.zrange(queue_key(queue), 0, -1)
                members = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return {m.decode() if isinstance(m, bytes) else str(m) for ids in members for m in ids}

    def purge(self) -> None:
        """Delete this configuration's queues, their jobs' keys, the workers' health-check keys, and the
        results arq recorded for these queues (read back to find their queue; SCAN, never FLUSHDB).
        Another configuration's queues and results on the same Redis are left alone."""
        queues = [queue_key(q) for q in self.settings.queues]
        for queue in queues:
            ids = [i.decode() for i in self._redis.zrange(queue, 0, -1)]
            for start in range(0, len(ids), 1000):
                keys = [prefix + job_id for job_id in ids[start:start + 1000]
                        for prefix in (JOB_KEY_PREFIX, IN_PROGRESS_KEY_PREFIX, RETRY_KEY_PREFIX, RESULT_KEY_PREFIX)]
                self._redis.delete(*keys)
            self._redis.delete(queue, queue + HEALTH_CHECK_KEY_SUFFIX)
        for batch in self._batches(self._redis.scan_iter(match=RESULT_KEY_PREFIX + "*", count=1000)):
            values = self._redis.mget(batch)
            ours = [key for key, value in zip(batch, values, strict=True)
                    if value is not None and self._result_queue(value) in queues]
            if ours:
                self._redis.delete(*ours)

    def _result_queue(self, data: bytes) -> str | None:
        try:
            record = _pickle_loads_lenient(data) if self._loads is None else self._loads(data)
            return record.get("q") if isinstance(record, dict) else None
        except Exception:  # another configuration's result in another serializer: not ours
            return None

    @staticmethod
    def _batches(keys: Iterator[bytes], size: int = 1000) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        for key in keys:
            batch.append(key)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def describe(self) -> Mapping[str, Any]:
        """The effective settings, stored with every result. Package versions are those of arq's own
        environment, which the harness records from that environment (this process may have no arq)."""
        try:
            server: Any = self._redis.info("server").get("redis_version")
        except (redis.RedisError, OSError) as exc:
            server = f"unavailable: {type(exc).__name__}: {exc}"
        return {
            "backend": self.name,
            "environment": list(self.environment),
            "arq_version_here": _dist("arq"),
            "redis_py_version_here": redis.__version__,
            "redis_server_version": server,
            "broker": self.settings.broker,
            "broker_url": redact_url(self.settings.broker_url),
            "serializer": self.settings.serializer,
            "serializer_functions": ("arq's default (pickle.dumps / pickle.loads)" if self._dumps is None
                                     else f"backends.arq_backend.{self.settings.serializer}_dumps / _loads"),
            "worker_command": f"python -m arq {WORKER_SETTINGS} (one queue, max_jobs = threads per process)",
            "concurrency": self.concurrency,
            "producer": "one asyncio loop thread per API process owning one ArqRedis pool",
            "results": self.settings.results,
            "keep_result_s": self.keep_result_s,
            "keep_result_note": None if self.settings.results else "results off: keep_result=0, arq stores none",
            "poll_delay_s": self.poll_delay_s,
            "queue_read_limit": self.queue_read_limit or "arq's: max(5 x max_jobs, 100)",
            "job_timeout_s": self.job_timeout_s,
            "in_progress_ttl_s": self.job_timeout_s + IN_PROGRESS_EXTRA_S,
            "max_tries": self.max_tries,
            "job_completion_wait_s": self.job_completion_wait_s,
            "logging_level": self.logging_level or "INFO",
            "retry": "flaky: arq Retry(defer=0) while job_try <= fail_times; poison: while job_try < max_tries "
                     "(next poll, same score)",
            "retry_policy": self.retry_policy().record(),
            "queue_depth": "ZCARD of the queue: running jobs included (arq keeps a job queued until done)",
            "recovery": {"killed_worker": "its jobs stay in the queue; each runs again once its in-progress key "
                                          f"expires ({self.job_timeout_s + IN_PROGRESS_EXTRA_S} s: job_timeout_s + "
                                          f"{IN_PROGRESS_EXTRA_S})",
                         "terminated_worker": (f"running jobs get job_completion_wait_s ({self.job_completion_wait_s}"
                                               " s), then are cancelled and run again at once"),
                         "tries": f"every start counts toward max_tries ({self.max_tries})",
                         "stranded_read": "ZRANGE of each queue's sorted set"},
            "routing": self.settings.routing,
            "queues": [queue_key(q) for q in self.settings.queues],
            "knobs": dict(self.settings.options),
        }

    def close(self) -> None:
        """Stop the producer's loop thread (closing its pool) and close the plain client."""
        with self._bridge_lock:
            bridge, self._bridge = self._bridge, None
        if bridge is not None and self._bridge_pid == os.getpid():
            bridge.close()
        self._redis.close()
        self._redis.connection_pool.disconnect()
