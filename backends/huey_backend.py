"""Huey 3 behind the queuebench backend protocol, on Redis or on a SQLite file.

Design, in the order a task meets it:

- Queues. Huey has one queue per Huey instance, named by the instance's name, so each queue of the
  routing (``default``; or ``short`` and ``long``) gets its own instance, named after it (`build_huey`):
  on Redis its list is ``huey.redis.<queue>``, on SQLite its rows carry ``queue = <queue>``. The API
  enqueues on the instance of ``job.queue``. The instance's class is its storage: ``RedisHuey`` on
  Redis (``storage`` knob: ``RedisExpireHuey``, ``PriorityRedisHuey``, ``PriorityRedisExpireHuey``),
  ``SqliteHuey`` on SQLite, where queue, results and schedule share the one file the harness names
  (``sqlite:////<run dir>/broker.sqlite3``; only an absolute path is accepted, because the API and the
  workers run in different directories). No Redis is involved with SQLite.
- Producer. The instances are built on first use (building a ``SqliteHuey`` creates its tables, which
  validating a configuration must not do) and kept; on Redis they share one connection pool with short
  connect timeouts, so a dead broker answers 503 within seconds. SQLite: Huey's storage holds one
  connection per process behind a lock, so the API's threads take turns. Each task becomes one Huey task
  of the one registered function, ``queuebench_run`` (`run`), with ``(task, args, meta)`` as positional
  arguments (Huey takes ``id``, ``retries``, ``retry_delay``... out of the keyword arguments, so none are
  used for data) and the harness's id as Huey's task id (``id=``; Huey does not check ids for duplicates).
- Serializer. Huey pickles everything it stores (huey/serializer.py): the task `Message` namedtuple,
  results, the `Error` of a failure, revocation flags. pickle is therefore Huey's own path. json and
  msgpack are supported with a small `Serializer` subclass each (`JSONSerializer`, `MsgpackSerializer`):
  they override only ``_serialize``/``_deserialize``, the hooks Huey provides for this, and carry what
  JSON/msgpack cannot express natively (the `Message` and `Error` namedtuples, tuples, datetimes, bytes,
  dicts with non-text keys) as tagged values (`to_tree`/`from_tree`), so every value Huey stores comes
  back as it went in; anything else (a set, a custom object) raises TypeError instead of arriving
  altered. Our tasks carry only JSON types, so the difference to pickle is the encoder's cost, which is
  what a serializer comparison measures. ``compression`` (Huey's gzip) applies to all three.
- Retries. Only `flaky` needs them: it is enqueued with Huey's own ``retries=fail_times,
  retry_delay=0``, so a failed attempt is re-enqueued at once (at the back of its queue: Huey LPUSHes it
  like a new task), never through the schedule. The attempt number comes from Huey's bookkeeping: the
  task is registered with ``context=True``, so `run` receives Huey's `Task`, whose ``retries`` Huey
  decrements on each re-enqueue; attempt = fail_times - retries + 1 (``fail_times`` is in the task's own
  arguments, `workload.max_retries_for`). Every other task is enqueued with ``retries=0`` (Huey's default)
  and runs once: so does `poison`, whose one failure is final (`retry_policy`).
  Instances are built with ``store_intermediate_errors=False``: Huey's default (True) stores each failed
  attempt's error as the task's result before the retry runs, so a `flaky` task would read "failure"
  while its next attempt waits in the queue.
- Results. On: Huey's result store (``results=True``) with ``store_none=True``, without which a task
  returning None stores nothing and never reads as done. Huey's reads are destructive by default
  (``Result.get``, ``huey.result``, even ``Result.is_ready`` pop the value on RedisHuey and SqliteHuey),
  so `status` only peeks (``huey.get_raw(id, peek=True)``): a status read can be repeated, and results
  stay until purged (RedisHuey and SqliteHuey keep them without expiry; the Expire storages for
  ``expire_time_s``). Off: ``results=False``, Huey stores nothing and `status` answers None.
- State mapping. Huey keeps no per-task state: the only record is the result. A stored value ->
  ``success``; a stored `Error` -> ``failure`` with the last line of its traceback (``Module.Type:
  message``); nothing -> ``queued``, which covers waiting, running, waiting for a retry, and lost (a
  task whose worker was killed). Telling "running" apart would need ``huey.pending()``, which reads and
  unpickles the whole queue on every status request (cost proportional to the queue's depth, paid by the
  API under exactly the load being measured), so it is not done. Under dedicated routing each queue's
  result store is tried in turn.
- Workers. Huey's own CLI, ``huey_consumer backends.huey_worker.huey`` (run as ``python -m
  huey.bin.huey_consumer``, the same program as the console script), one consumer per queue group (a
  consumer reads one Huey instance, i.e. one queue; ``QUEUEBENCH_HUEY_QUEUE`` tells the worker module
  which). threads == 1: one consumer ``-k process -w <processes>`` (forked children); threads > 1:
  <processes> consumers ``-k thread -w <threads>``. Slots = processes x threads. Huey has neither
  prefetch (an idle worker pops one message) nor acknowledgement: both raise `UnsupportedOption`.
  Always passed: ``-g TERM``, so that SIGTERM (the harness's stop signal) lets running tasks finish and a
  second SIGTERM interrupts them, as with the other libraries; Huey's default is the opposite (SIGTERM
  interrupts at once, SIGINT is graceful). Not passed: ``-n`` (no periodic tasks): none are registered,
  and the check it saves is one walk of an empty list per minute in the scheduler, which runs anyway
  (each consumer has one, reading the schedule every second). With ``-k process`` the children are
  daemonic but survive a SIGKILL of their parent and keep consuming; the harness stops whole process
  trees, collected before signalling (`benchmarks.procs`).
- What a worker does per task (seen with Redis MONITOR): the pop, a revocation check (HMGET of the
  task's ``r:<id>`` and its class's ``rt:`` key in the result hash), the deletion of ``r:<id>`` after the
  task ran, and the result (HSET; not with results off): four round trips on Redis, four transactions
  on SQLite. On SQLite, or Redis with ``blocking`` false, an idle worker polls: its wait grows from
  ``initial_delay_s`` (0.1 s) by ``backoff`` (x1.15) per empty poll up to ``max_delay_s`` (10 s), so the
  first task after an idle spell may wait up to that long (the delay resets on every task).

Delivery: at most once. Huey does not acknowledge: the worker's BRPOP (Redis) or its delete in an
exclusive transaction (SQLite) removes the message before the task runs, so a worker killed mid-task
loses it; the consumer's health check (``-c``, 10 s) replaces a dead process worker, not its task.

Knobs (``[huey]`` table; `KNOBS`): ``storage`` and ``expire_time_s`` (Huey class and result TTL),
``blocking`` (Redis: BRPOP, or RPOP polled on the ``-d/-m/-b`` schedule), ``initial_delay_s``,
``max_delay_s``, ``backoff`` (the consumer's polling of a non-blocking storage: SQLite always),
``health_check`` and ``health_check_interval_s`` (``-C``, ``-c``), ``compression``, ``sqlite_fsync``,
``logging_level`` (Huey logs two INFO lines per task).

Codec (`codec`, timed by the serializer benchmark; Huey 3.5 line numbers). Encode: the `Task` the task
wrapper's call builds (``TaskWrapper.s``, huey/api.py:1038-1044) with `enqueue`'s arguments, then
``Huey.serialize_task`` (api.py:296-298: the registry's `Message` namedtuple through the instance's
serializer, huey/serializer.py:26-38, compression included when on): the bytes ``storage.enqueue`` stores
(api.py:319). Decode: ``Huey.deserialize_task`` (api.py:300-302: the serializer's ``deserialize`` and the
registry's ``create_task``), as the consumer's ``dequeue`` does (api.py:373-376).

Nothing but this module and `backends.huey_worker` imports huey.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import huey
import msgpack
import redis
from huey.api import Task, TaskWrapper
from huey.constants import EmptyData
from huey.consumer_options import config_defaults
from huey.registry import Message
from huey.serializer import Serializer
from huey.utils import Error

from backends import workload
from backends.base import (
    THREADS_KNOB,
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
    check_worker_spec,
    parse_knobs,
)

#: The name the one task function is registered under, on every instance, producer and worker alike.
TASK_NAME = "queuebench_run"
#: Environment variable telling `backends.huey_worker` which queue (Huey instance) its consumer reads.
QUEUE_ENV = "QUEUEBENCH_HUEY_QUEUE"
#: The Huey instance ``huey_consumer`` loads.
WORKER_INSTANCE = "backends.huey_worker.huey"
SQLITE_PREFIX = "sqlite:///"
DOCS_URL = "https://huey.readthedocs.io/en/latest/consumer.html#consumer-shutdown"
#: Seconds `ping` (and the producer's connect) waits for Redis; the producer allows longer per command.
PING_TIMEOUT_S = 2.0
PRODUCER_SOCKET_TIMEOUT_S = 10.0

#: Huey's classes for the ``storage`` knob, by broker.
REDIS_STORAGES: dict[str, type[huey.Huey]] = {
    "RedisHuey": huey.RedisHuey,
    "RedisExpireHuey": huey.RedisExpireHuey,
    "PriorityRedisHuey": huey.PriorityRedisHuey,
    "PriorityRedisExpireHuey": huey.PriorityRedisExpireHuey,
}
EXPIRE_STORAGES = ("RedisExpireHuey", "PriorityRedisExpireHuey")
SQLITE_STORAGES: dict[str, type[huey.Huey]] = {"SqliteHuey": huey.SqliteHuey}
DEFAULT_STORAGE = {"redis": "RedisHuey", "sqlite": "SqliteHuey"}
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING")
#: huey_consumer's own defaults (huey/consumer_options.py), for `describe` and the knobs' defaults.
CONSUMER_DEFAULTS: dict[str, Any] = dict(config_defaults)

KNOBS: dict[str, Knob] = {
    "storage": Knob(str, None, "the Huey class, i.e. its storage. Redis: RedisHuey (a list popped with BRPOP, "
                    "results in one hash without expiry; the default), RedisExpireHuey (results as keys "
                    "expiring after expire_time_s), PriorityRedisHuey and PriorityRedisExpireHuey (a sorted "
                    "set popped with BZPOPMIN). SQLite: SqliteHuey (the default and only one).",
                    choices=(*REDIS_STORAGES, *SQLITE_STORAGES),
                    candidates=("RedisHuey", "RedisExpireHuey", "PriorityRedisHuey")),
    "expire_time_s": Knob(int, 86_400, "RedisExpireHuey / PriorityRedisExpireHuey only: seconds a result is "
                          "kept.", low=1),
    "blocking": Knob(bool, True, "Redis only: the worker waits in BRPOP (Huey's default) or, false, polls "
                     "with RPOP on the initial_delay_s / backoff / max_delay_s schedule.",
                     candidates=(True, False)),
    "initial_delay_s": Knob(float, CONSUMER_DEFAULTS["initial_delay"], "huey_consumer -d: the wait after "
                            "the first empty poll (polling storages: SQLite, or Redis with blocking false).",
                            low=0.001, candidates=(0.01, 0.1)),
    "max_delay_s": Knob(float, CONSUMER_DEFAULTS["max_delay"], "huey_consumer -m: the longest wait between "
                        "polls of an empty queue, i.e. the worst idle pickup latency of a polling storage.",
                        low=0.001, candidates=(0.1, 1.0, 10.0)),
    "backoff": Knob(float, CONSUMER_DEFAULTS["backoff"], "huey_consumer -b: factor the poll wait grows by "
                    "after each empty poll.", low=1.0, candidates=(1.0, 1.15, 2.0)),
    "health_check": Knob(bool, CONSUMER_DEFAULTS["check_worker_health"], "false: huey_consumer -C, no "
                         "health check, so a worker that dies is not replaced.", candidates=(True, False)),
    "health_check_interval_s": Knob(float, float(CONSUMER_DEFAULTS["health_check_interval"]),
                                    "huey_consumer -c: seconds between the checks that replace dead workers.",
                                    low=0.1),
    "compression": Knob(bool, False, "Huey(compression=True): gzip every message and result.",
                        candidates=(False, True)),
    "sqlite_fsync": Knob(bool, True, "SQLite only: true keeps SQLite's synchronous=FULL (its own default, "
                         "which Huey leaves alone: an fsync of the write-ahead log per commit); false sets "
                         "synchronous=OFF (Huey's fsync=False).", candidates=(True, False)),
    "logging_level": Knob(str, "INFO", "huey_consumer log level: INFO (Huey's default, two lines per task), "
                          "WARNING (-q) or DEBUG (-v).", choices=LOGGING_LEVELS, candidates=("INFO", "WARNING")),
}


# --- serializers ---------------------------------------------------------------------------------------

#: The key of a tagged value: ``{TAG: [kind, payload]}``. A dict of the task's own that has this key is
#: itself stored tagged (as pairs), so no value is ever mistaken for a tag.
TAG = "__huey__"


def to_tree(obj: Any, *, binary: bool = False) -> Any:
    """`obj` as JSON types (plus bytes when `binary`), with what they cannot express tagged.

    Tagged: Huey's `Message` and `Error` namedtuples, tuples, datetimes, bytes (unless `binary`), and
    dicts whose keys are not all text (or that hold `TAG`). Raises TypeError for anything else, so a value
    is never changed on the way (a set, a custom class, another namedtuple).
    """
    kind = type(obj)
    if obj is None or kind in (bool, int, float, str):
        return obj
    if kind is list:
        return [to_tree(item, binary=binary) for item in obj]
    if kind is dict:
        if TAG not in obj and all(type(key) is str for key in obj):
            return {key: to_tree(value, binary=binary) for key, value in obj.items()}
        return {TAG: ["dict", [[to_tree(k, binary=binary), to_tree(v, binary=binary)] for k, v in obj.items()]]}
    if kind is tuple:
        return {TAG: ["tuple", [to_tree(item, binary=binary) for item in obj]]}
    if kind is Message:
        return {TAG: ["message", [to_tree(item, binary=binary) for item in obj]]}
    if kind is Error:
        return {TAG: ["error", to_tree(obj.metadata, binary=binary)]}
    if kind is _dt.datetime:
        return {TAG: ["datetime", obj.isoformat()]}
    if kind is bytes:
        return obj if binary else {TAG: ["bytes", base64.b64encode(obj).decode("ascii")]}
    raise TypeError(f"the {'msgpack' if binary else 'json'} serializer of queuebench's Huey backend cannot "
                    f"carry a {kind.__module__}.{kind.__qualname__}; use serializer pickle")


def from_tree(tree: Any) -> Any:
    """The inverse of `to_tree`."""
    kind = type(tree)
    if kind is list:
        return [from_tree(item) for item in tree]
    if kind is not dict:
        return tree
    if TAG not in tree:
        return {key: from_tree(value) for key, value in tree.items()}
    tag, payload = tree[TAG]
    if tag == "tuple":
        return tuple(from_tree(item) for item in payload)
    if tag == "message":
        return Message(*(from_tree(item) for item in payload))
    if tag == "error":
        return Error(from_tree(payload))
    if tag == "dict":
        return {from_tree(k): from_tree(v) for k, v in payload}
    if tag == "datetime":
        return _dt.datetime.fromisoformat(payload)
    if tag == "bytes":
        return base64.b64decode(payload)
    raise ValueError(f"unknown tag {tag!r} in a Huey message or result")


class JSONSerializer(Serializer):
    """Huey's `Serializer` with JSON in place of pickle (compression, when asked for, still applies)."""

    def _serialize(self, data: Any) -> bytes:
        return json.dumps(to_tree(data), separators=(",", ":")).encode()

    def _deserialize(self, data: bytes) -> Any:
        return from_tree(json.loads(data))


class MsgpackSerializer(Serializer):
    """Huey's `Serializer` with msgpack in place of pickle. Bytes stay bytes, text stays text; integers
    are limited to 64 bits, as in msgpack itself."""

    def _serialize(self, data: Any) -> bytes:
        return msgpack.packb(to_tree(data, binary=True), use_bin_type=True)

    def _deserialize(self, data: bytes) -> Any:
        return from_tree(msgpack.unpackb(data, raw=False, strict_map_key=False))


#: Our serializer names -> Huey serializer classes (pickle: Huey's own).
SERIALIZERS: dict[str, type[Serializer]] = {
    "pickle": Serializer,
    "json": JSONSerializer,
    "msgpack": MsgpackSerializer,
}


# --- the task function -----------------------------------------------------------------------------------


def run(task_name: str, args: dict[str, Any], meta: dict[str, Any], task: Task | None = None) -> Any:
    """The one Huey task: run `task_name` through the shared body with Huey's attempt number.

    Huey passes its `Task` as ``task`` (registered with ``context=True``); ``task.retries`` starts at the
    retries given at enqueue and Huey decrements it on each re-enqueue, so attempt = max - retries + 1.
    """
    attempt = 1
    if task is not None:
        attempt = workload.max_retries_for(task_name, args) - int(task.retries or 0) + 1
    return workload.execute(task_name, args, meta, attempt)


# --- building Huey -------------------------------------------------------------------------------------


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:////absolute/path`` URL; ValueError for any other form."""
    if not url.startswith(SQLITE_PREFIX + "/"):
        raise ValueError(f"{url!r} is not sqlite:////<absolute path>")
    return url[len(SQLITE_PREFIX):]


def storage_name(settings: BackendSettings) -> str:
    return settings.options.get("storage") or DEFAULT_STORAGE[settings.broker]


def build_huey(settings: BackendSettings, queue: str, *,
               connection_pool: redis.ConnectionPool | None = None) -> tuple[huey.Huey, TaskWrapper]:
    """The Huey instance of `queue` for this configuration, with the task registered; and the task.

    The producer passes its shared `connection_pool` (Redis); a worker leaves it None, and Huey opens its
    own from the URL with redis-py's defaults.
    """
    options = settings.options
    common: dict[str, Any] = {
        "results": settings.results,
        "store_none": True,
        "store_intermediate_errors": False,
        "serializer": SERIALIZERS[settings.serializer](compression=bool(options.get("compression", False))),
    }
    name = storage_name(settings)
    if settings.broker == "sqlite":
        fsync = options.get("sqlite_fsync")
        instance = SQLITE_STORAGES[name](queue, filename=sqlite_path(settings.broker_url),
                                         fsync=False if fsync is False else None, **common)
    else:
        storage: dict[str, Any] = ({"connection_pool": connection_pool} if connection_pool is not None
                                   else {"url": settings.broker_url})
        if "blocking" in options:
            storage["blocking"] = options["blocking"]
        if name in EXPIRE_STORAGES and "expire_time_s" in options:
            storage["expire_time"] = options["expire_time_s"]
        instance = REDIS_STORAGES[name](queue, **common, **storage)
    return instance, instance.task(context=True, name=TASK_NAME)(run)


# --- helpers -------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and `describe`)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else None


def _dist(name: str) -> str | None:
    try:
        return _dist_version(name)
    except PackageNotFoundError:
        return None


def _error_text(error: Error) -> str:
    metadata = error.metadata if isinstance(error.metadata, dict) else {}
    return _last_line(metadata.get("traceback")) or str(metadata.get("error") or "task failed")


# --- the backend ---------------------------------------------------------------------------------------


class HueyBackend(BackendBase):
    """Huey on Redis or SQLite: one Huey instance per queue, Huey's own retries and CLI."""

    name: ClassVar[str] = "huey"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis", "sqlite"})
    serializers: ClassVar[frozenset[str]] = frozenset(SERIALIZERS)
    knobs: ClassVar[dict[str, Knob]] = KNOBS
    spec_knobs: ClassVar[dict[str, Knob]] = {"threads": THREADS_KNOB}
    tune_knobs: ClassVar[tuple[str, ...]] = ("logging_level", "threads")
    packages: ClassVar[tuple[str, ...]] = ("huey", "redis", "hiredis", "msgpack")
    concurrency: ClassVar[str] = ("per queue: threads == 1 -> one `huey_consumer -k process -w <processes>`; "
                                  "threads > 1 -> <processes> x `huey_consumer -k thread -w <threads>`")

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        options = parse_knobs(self.name, KNOBS, settings.options)
        self._check_knobs(settings, options)
        if settings.result_url and settings.result_url != settings.broker_url:
            raise UnsupportedOption("result_url", redact_url(settings.result_url), self.name,
                                    "Huey keeps results in its own storage, beside the queue")
        if settings.broker == "sqlite":
            try:
                self._sqlite_file: str | None = sqlite_path(settings.broker_url)
            except ValueError as exc:
                raise UnsupportedOption("broker_url", settings.broker_url, self.name,
                                        f"{exc}: the API and the workers run in different directories, so "
                                        "the SQLite file needs an absolute path") from exc
        else:
            self._sqlite_file = None
        self.settings = settings
        self.storage = storage_name(settings)
        self._pool: redis.ConnectionPool | None = None
        self._instances: dict[str, tuple[huey.Huey, TaskWrapper]] = {}
        self._lock = threading.Lock()

    def _check_knobs(self, settings: BackendSettings, options: Mapping[str, Any]) -> None:
        """Knobs valid in themselves but not with this broker or storage."""
        broker = settings.broker
        storage = options.get("storage")
        allowed = REDIS_STORAGES if broker == "redis" else SQLITE_STORAGES
        if storage is not None and storage not in allowed:
            raise UnsupportedOption("[huey] storage", storage, self.name,
                                    f"on {broker}: one of {', '.join(allowed)}")
        if "expire_time_s" in options and storage not in EXPIRE_STORAGES:
            raise UnsupportedOption("[huey] expire_time_s", options["expire_time_s"], self.name,
                                    f"only with storage {' or '.join(EXPIRE_STORAGES)} (results of the other "
                                    "storages do not expire)")
        foreign = {"blocking": "Redis"} if broker != "redis" else {"sqlite_fsync": "SQLite"}
        for key, kind in foreign.items():
            if key in options:
                raise UnsupportedOption(f"[huey] {key}", options[key], self.name,
                                        f"a {kind} setting; the broker is {broker}")

    # -- instances ---------------------------------------------------------------------------------------

    def _instance(self, queue: str) -> tuple[huey.Huey, TaskWrapper]:
        found = self._instances.get(queue)
        if found is None:
            with self._lock:
                found = self._instances.get(queue)
                if found is None:
                    if self.settings.broker == "redis" and self._pool is None:
                        self._pool = redis.ConnectionPool.from_url(
                            self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                            socket_timeout=PRODUCER_SOCKET_TIMEOUT_S)
                    with self._guard("broker"):
                        found = build_huey(self.settings, queue, connection_pool=self._pool)
                    self._instances[queue] = found
        return found

    def _where(self) -> str:
        if self._sqlite_file is not None:
            return f"Huey's SQLite file {self._sqlite_file}"
        return f"Huey's Redis at {redact_url(self.settings.broker_url)}"

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Broker errors (redis-py, sqlite3, sockets) as `BackendUnavailable` naming the store and the cause."""
        try:
            yield
        except (redis.RedisError, sqlite3.Error, OSError) as exc:
            raise BackendUnavailable(f"{self._where()} ({what}) failed: {type(exc).__name__}: {exc}") from exc

    # -- the protocol ------------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise `BackendUnavailable` unless Redis answers within 2 s, or the SQLite file can be opened."""
        if self._sqlite_file is not None:
            if not Path(self._sqlite_file).parent.is_dir():
                raise BackendUnavailable(f"{self._where()}: its directory does not exist")
            with self._guard("ping"):
                conn = sqlite3.connect(self._sqlite_file, timeout=PING_TIMEOUT_S)
                try:
                    conn.execute("select 1").fetchone()
                finally:
                    conn.close()
            return
        client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                      socket_timeout=PING_TIMEOUT_S)
        try:
            with self._guard("ping"):
                client.ping()
        finally:
            client.close()

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        """Enqueue `job` as one Huey task (id = `job.id`) on the instance of `job.queue`; `flaky` gets
        ``retries=fail_times``, every other task ``retries=0``."""
        _, task = self._instance(job.queue)
        with self._guard("enqueue"):
            task(job.task, dict(job.args), job.meta(), id=job.id,
                 retries=workload.max_retries_for(job.task, job.args), retry_delay=0)
        return EnqueueReceipt(job.id, job.queue, time.time_ns())

    def codec(self, job: JobRequest) -> Codec:
        """Encode: the `Task` `enqueue`'s call builds (``TaskWrapper.s``) and ``Huey.serialize_task`` (the
        `Message` namedtuple through this configuration's serializer). Decode: ``Huey.deserialize_task``,
        as the consumer's ``dequeue`` does.

        Line references in the module docstring. The storage's write and read are not timed (on SQLite,
        building the instance the first time creates its tables in the file, as `enqueue` would)."""
        instance, wrapper = self._instance(job.queue)
        task = wrapper.s(job.task, dict(job.args), job.meta(), id=job.id,
                         retries=workload.max_retries_for(job.task, job.args), retry_delay=0)
        data = instance.serialize_task(task)

        def decode() -> tuple[str, Any, Any]:
            task_name, args, meta = instance.deserialize_task(data).args
            return task_name, args, meta

        return data, decode

    def status(self, task_id: str) -> TaskStatus | None:
        """Huey's stored result for `task_id`, read without removing it (see the module docstring);
        ``queued`` when there is none yet; None when results are off (Huey then keeps no record)."""
        if not self.settings.results:
            return None
        for queue in self.settings.queues:
            instance, _ = self._instance(queue)
            with self._guard("result store"):
                raw = instance.get_raw(task_id, peek=True)
            if raw is EmptyData:
                continue
            value = instance.serializer.deserialize(raw)
            if isinstance(value, Error):
                return TaskStatus(task_id, "failure", None, _error_text(value))
            return TaskStatus(task_id, "success", value)
        return TaskStatus(task_id, "queued")

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        """``huey_consumer`` invocations for `spec`'s one queue: one ``-k process -w <processes>`` when
        threads == 1, else <processes> of ``-k thread -w <threads>``."""
        check_worker_spec(self.name, spec)
        if len(spec.queues) != 1:
            raise UnsupportedOption("queues", list(spec.queues), self.name,
                                    "a Huey consumer reads one Huey instance, i.e. one queue: give each queue "
                                    "its own worker group")
        if spec.prefetch is not None:
            raise UnsupportedOption("prefetch", spec.prefetch, self.name,
                                    "Huey has no prefetch: an idle worker pops one message at a time")
        if spec.acks_late is not None:
            raise UnsupportedOption("acks_late", spec.acks_late, self.name,
                                    "Huey has no acknowledgement: a message is removed from the queue when a "
                                    "worker takes it (at most once)")
        queue = spec.queues[0]
        env = self.settings.to_env() | {QUEUE_ENV: queue}
        if spec.threads == 1:
            argv = self._consumer_argv("process", spec.processes)
            return [WorkerCommand(name=f"huey-{queue}", argv=argv, env=env)]
        argv = self._consumer_argv("thread", spec.threads)
        return [WorkerCommand(name=f"huey-{queue}-{i}", argv=argv, env=env) for i in range(spec.processes)]

    def _consumer_argv(self, worker_type: str, workers: int) -> list[str]:
        options = self.settings.options
        argv = [sys.executable, "-m", "huey.bin.huey_consumer", "-k", worker_type, "-w", str(workers),
                "-g", "TERM"]
        for key, flag in (("initial_delay_s", "-d"), ("max_delay_s", "-m"), ("backoff", "-b"),
                          ("health_check_interval_s", "-c")):
            if key in options:
                argv += [flag, repr(float(options[key]))]
        if options.get("health_check") is False:
            argv.append("-C")
        level = options.get("logging_level")
        if level == "WARNING":
            argv.append("-q")
        elif level == "DEBUG":
            argv.append("-v")
        return [*argv, WORKER_INSTANCE]

    def retry_policy(self) -> RetryPolicy:
        """Huey retries a task only when it is given ``retries``; its default is 0, so `poison` runs once."""
        return RetryPolicy(0, "none", "huey task(retries=0) default, https://huey.readthedocs.io/en/latest/guide.html#retrying-tasks-that-fail")

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        """Huey's docs: no acknowledgement, no at-least-once delivery; a task a worker has taken is gone
        from the queue, and nothing brings it back."""
        process = spec.threads == 1
        take = "BRPOP" if self.settings.broker == "redis" else "a delete in an exclusive transaction"
        if self.storage.startswith("Priority"):
            take = "BZPOPMIN"
        if self.settings.options.get("blocking") is False:
            take = "RPOP" if not self.storage.startswith("Priority") else "ZPOPMIN"
        in_flight = (f"lost: {take} removed it from the queue before it ran and Huey never acknowledges; "
                     + ("a SIGKILLed worker process loses its one task" if process else
                        f"a SIGKILLed consumer loses the tasks of all {spec.threads} of its threads")
                     + " (SIGNAL_INTERRUPTED is emitted only on a signal the consumer catches)")
        recovery = ("none for the task; the consumer's health check (-c, "
                    f"{self.settings.options.get('health_check_interval_s', CONSUMER_DEFAULTS['health_check_interval'])}"
                    " s) replaces a dead worker process" if process else
                    "none: a killed consumer is gone with its tasks (threads share its process)")
        if process and self.settings.options.get("health_check") is False:
            recovery = "none (health check off: a dead worker process is not replaced either)"
        return DeliveryContract(
            "at-most-once",
            in_flight,
            "none: an idle worker pops one message at a time, so a worker holds only the task it runs",
            recovery,
            DOCS_URL)

    def held_task_ids(self) -> set[str] | None:
        """Task ids Huey still holds: waiting in a queue (``pending``) or in its schedule (``scheduled``: a
        retry with a delay). Both only read the storage. A task a worker has taken is no longer held
        anywhere: Huey never acknowledges, so nothing can bring it back (lost, not stranded)."""
        held: set[str] = set()
        for queue in self.settings.queues:
            instance, _ = self._instance(queue)
            with self._guard("held tasks"):
                held.update(str(task.id) for task in [*instance.pending(), *instance.scheduled()])
        return held

    def queue_depths(self) -> Mapping[str, int]:
        """Tasks waiting per queue of `settings.queues` (Huey's ``pending_count``)."""
        depths = {}
        for queue in self.settings.queues:
            instance, _ = self._instance(queue)
            with self._guard("queue depth"):
                depths[queue] = int(instance.pending_count())
        return depths

    def purge(self) -> None:
        """Huey's ``flush`` of each of this configuration's instances: its queue, schedule, results and
        counters (Redis: its own keys, never FLUSHDB; SQLite: its rows)."""
        for queue in self.settings.queues:
            instance, _ = self._instance(queue)
            with self._guard("purge"):
                instance.flush()

    def describe(self) -> Mapping[str, Any]:
        """Versions (huey, redis-py, Redis server or SQLite) and the effective settings."""
        options = self.settings.options
        storage_class = (REDIS_STORAGES | SQLITE_STORAGES)[self.storage]
        broker: dict[str, Any]
        if self._sqlite_file is not None:
            broker = {"sqlite_version": sqlite3.sqlite_version, "sqlite_file": self._sqlite_file,
                      "sqlite_fsync": options.get("sqlite_fsync", True)}
        else:
            client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                          socket_timeout=PING_TIMEOUT_S)
            try:
                server: Any = client.info("server").get("redis_version")
            except (redis.RedisError, OSError) as exc:
                server = f"unavailable: {type(exc).__name__}: {exc}"
            finally:
                client.close()
            broker = {"redis_server_version": server, "blocking": options.get("blocking", True)}
            if self.storage in EXPIRE_STORAGES:
                broker["expire_time_s"] = options.get("expire_time_s", KNOBS["expire_time_s"].default)
        consumer = {
            "initial_delay_s": options.get("initial_delay_s", CONSUMER_DEFAULTS["initial_delay"]),
            "max_delay_s": options.get("max_delay_s", CONSUMER_DEFAULTS["max_delay"]),
            "backoff": options.get("backoff", CONSUMER_DEFAULTS["backoff"]),
            "health_check": options.get("health_check", CONSUMER_DEFAULTS["check_worker_health"]),
            "health_check_interval_s": options.get("health_check_interval_s",
                                                   CONSUMER_DEFAULTS["health_check_interval"]),
            "scheduler_interval_s": CONSUMER_DEFAULTS["scheduler_interval"],
            "periodic": CONSUMER_DEFAULTS["periodic"],
            "graceful_signal": "TERM",
            "logging_level": options.get("logging_level", "INFO"),
        }
        return {
            "backend": self.name,
            "huey_version": huey.__version__,
            "redis_py_version": redis.__version__,
            "hiredis": _dist("hiredis"),
            "msgpack_version": _dist("msgpack"),
            "broker": self.settings.broker,
            "broker_url": redact_url(self.settings.broker_url),
            **broker,
            "storage_class": f"{storage_class.__module__}.{storage_class.__qualname__}",
            "storage": f"{storage_class.storage_class.__module__}.{storage_class.storage_class.__qualname__}",
            "serializer": self.settings.serializer,
            "serializer_class": f"{SERIALIZERS[self.settings.serializer].__module__}."
                                f"{SERIALIZERS[self.settings.serializer].__qualname__}",
            "compression": options.get("compression", False),
            "worker_command": f"python -m huey.bin.huey_consumer {WORKER_INSTANCE}; {self.concurrency}",
            "consumer": consumer,
            "results": self.settings.results,
            "result_reads": "peek (non-destructive); store_none=True, store_intermediate_errors=False",
            "retry": "flaky only: retries=fail_times, retry_delay=0 (re-enqueued at once, at the back of its "
                     "queue); every other task retries=0, Huey's default (poison runs once)",
            "retry_policy": self.retry_policy().record(),
            "delivery": "at most once: no acknowledgement",
            "recovery": {"task": "none: a task a worker took is gone from the storage (no acknowledgement)",
                         "worker": ("replaced by the consumer's health check every "
                                    f"{consumer['health_check_interval_s']} s" if consumer["health_check"]
                                    else "not replaced (health check off)"),
                         "graceful_signal": consumer["graceful_signal"],
                         "stranded_read": "pending() and scheduled(): the queue and the schedule"},
            "routing": self.settings.routing,
            "queues": list(self.settings.queues),
            "knobs": dict(options),
        }

    def close(self) -> None:
        """Close the producer's connections (Redis pool, or each instance's SQLite connection)."""
        with self._lock:
            instances, self._instances = list(self._instances.values()), {}
            for instance, _ in instances:
                with contextlib.suppress(Exception):
                    instance.storage.close()
            if self._pool is not None:
                self._pool.disconnect()
                self._pool = None

