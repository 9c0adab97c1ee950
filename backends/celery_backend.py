"""Celery behind the queuebench backend protocol.

Design, in the order a task meets it:

- One app, two sides. `build_app(settings)` builds the Celery app from `BackendSettings` for the API
  (producer) and, through ``backends.celery_worker`` (the module ``celery -A`` imports), for every worker,
  so both sides share broker, serializer, result backend and every config knob. The one task,
  ``queuebench.run`` (`run` below, ``bind=True``), takes ``(task, args, meta)`` and calls the shared body.
- Producer. ``task.apply_async(args, task_id=job.id, queue=job.queue)``: Celery's own publish path, its
  broker connection and producer pools (``broker_pool_limit``, Celery default 10) and its automatic
  queues (queue = exchange = routing key = the queue name). The serializer is the app's
  ``task_serializer``.
- Serializer. json | pickle | msgpack: ``task_serializer``, ``result_serializer`` and ``accept_content``
  are all set to the chosen one (kombu's own msgpack codec). Worker events stay JSON (Celery always
  accepts JSON for events). Celery refuses to start a worker that accepts pickle as root unless
  ``C_FORCE_ROOT`` is set: the worker command sets it only for pickle when running as root. The API never
  accepts pickle from clients, and the broker is private to the run.
- Retries. Only `flaky` and `poison` fail: they are retried by Celery's own ``self.retry(exc=...,
  countdown=0, max_retries=workload.max_retries_for(...))`` (re-published at once, no backoff); attempt =
  ``self.request.retries + 1``. `flaky` gets the retries it needs; `poison` gets Celery's own default cap,
  ``Task.max_retries`` (3), so it runs 4 times (`retry_policy`). Any other exception propagates (no
  ``autoretry_for``), so every other task runs once. After the last allowed retry ``self.retry``
  re-raises the task's own exception: FAILURE.
- Results. On: ``result_backend`` = the Redis at ``settings.effective_result_url`` (with RabbitMQ too),
  Celery's defaults otherwise (``result_expires`` 1 day). Off: no result backend and
  ``task_ignore_result=True``; the API answers 409 before asking, and `status` answers None.
  Both sides reach that Redis through `QueuebenchRedisBackend`, Celery's Redis result backend with two
  changes, each fixing a failure seen or documented with this usage:
  (1) Producer: Celery SUBSCRIBEs the producer to a pub/sub channel for every task it sends (for a later
  ``.get()``, which the API never calls) and nothing drains that connection, so over a long run the
  subscriptions pile up in the API process and Redis buffers every result notification for it until it
  drops the connection at its pub/sub output limit (celery/celery#6963). The producer skips that
  subscription unless the knob ``result_subscribe = true`` asks for Celery's stock behaviour.
  (2) Worker: ``self.retry`` publishes attempt n+1 *before* the tracer stores attempt n's RETRY state,
  and Celery's guard against overwriting a SUCCESS is a GET then a SET. With an immediate retry and two
  slots, attempt n+1 finished and stored SUCCESS in between (seen in the contract test on RabbitMQ), the
  late RETRY replaced it, and the task read "queued" forever. RETRY writes are made conditional in one
  Redis transaction (never over SUCCESS, FAILURE or REVOKED); every other state is stored by Celery's
  own code, so only retried tasks pay the extra round trip.
- Workers. Celery's own CLI, ``celery -A backends.celery_worker worker -Q <queues> -n <name>@%h -c N -P
  <pool>``. threads = 1 and no pool named: one prefork worker with ``-c processes``. threads > 1: one
  worker command per process, each ``-P threads`` (or ``-P gevent`` if the spec says so) with
  ``-c threads``: slots = processes x threads. ``solo``: one command per process, threads must be 1.
  ``prefetch`` -> ``--prefetch-multiplier``, a multiplier per execution slot of each worker command
  (prefetch count = multiplier x ``-c``; Celery default 4). ``acks_late`` -> ``task_acks_late``, passed to
  the worker in ``QUEUEBENCH_CELERY_WORKER`` (a worker setting, not a shared one).
- Unchanged Celery defaults (slots aside): mingle, gossip and heartbeat on, ``task_track_started`` off,
  ``worker_prefetch_multiplier`` 4, acks early, no task events, log level WARNING (Celery's CLI default;
  the tutorials' ``--loglevel=INFO`` logs two lines per task: sweep it with the ``loglevel`` knob). One
  setting is spelled out: ``broker_connection_retry_on_startup`` is True, the behaviour Celery already has
  when it is unset, to silence Celery's warning about its future default. Two that decide what a fault
  does are pinned at today's defaults unless the matrix sets them, and recorded (``describe()["recovery"]``):
  ``worker_cancel_long_running_tasks_on_connection_loss`` False (Celery 6.0 turns it on), and on RabbitMQ
  the transport option ``confirm_publish`` False (py-amqp's default: ``amqp.Connection(confirm_publish=...)``
  through kombu's transport options; True puts every channel in confirm mode, ``basic_publish_confirm``).

State mapping (Celery's ``AsyncResult(id).state`` -> ours): PENDING -> queued (Celery's answer for any id
it has no record of, including one still waiting in the queue; the API 404s ids it never issued);
RECEIVED and RETRY (a `flaky` task waiting for its immediate re-run) -> queued; STARTED -> started (stored
only with ``track_started``, off by default, so a running task normally still reads queued);
SUCCESS -> success with the stored result; FAILURE, REVOKED, REJECTED and IGNORED -> failure, with the
last line of the stored traceback (else the exception's type and message) as the error. With results off
Celery keeps no record: `status` answers None.

Codec (`codec`, timed by the serializer benchmark; kombu 5.7 / Celery 5.7 line numbers). Encode: the task
message Celery builds in ``send_task`` (celery/app/base.py:1192, ``amqp.create_task_message`` =
``as_task_v2``, celery/app/amqp.py:370) serialized with kombu's registry and the app's ``task_serializer``
(``kombu.serialization.dumps``, as ``Producer._prepare`` does, kombu/messaging.py:441-448); on Redis also
the virtual transport's envelope: the body base64-encoded and the message dict JSON-encoded
(kombu/transport/virtual/base.py:773-784 ``prepare_message``, 626-638 ``_inplace_augment_message``,
kombu/transport/redis.py:1679-1686 ``_put``): the bytes LPUSHed. On RabbitMQ the body alone (the AMQP
frames carry the headers). Decode, as the worker does: the envelope's ``json.loads`` and base64 on Redis
(kombu/transport/redis.py:1651, virtual/base.py:336), then ``kombu.serialization.loads`` with the app's
``accept_content`` (``Message.decode``, kombu/message.py:204-206), whose ``(args, kwargs, embed)`` the
worker's ``Request`` unpacks (celery/worker/request.py:117, 180).

Nothing but this module and ``backends.celery_worker`` imports celery.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any, ClassVar

import billiard
import celery
import kombu
import kombu.pools
import kombu.serialization
import kombu.utils.json
import redis
from celery import Celery, Task, states
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.exceptions import OperationalError
from kombu.transport.virtual.base import Base64
from kombu.utils.encoding import bytes_to_str
from kombu.utils.url import maybe_sanitize_url
from kombu.utils.uuid import uuid as kombu_uuid

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
)
from backends.base import parse_knobs as base_parse_knobs

#: The one registered task, by name (the worker and the producer register the same function).
TASK_NAME = "queuebench.run"
#: The module ``celery -A`` imports: it builds the app from ``QUEUEBENCH_SETTINGS`` at import.
WORKER_MODULE = "backends.celery_worker"
#: Environment variable carrying per-worker settings (``acks_late``) to ``backends.celery_worker``.
WORKER_ENV = "QUEUEBENCH_CELERY_WORKER"
APP_NAME = "queuebench"
#: An app setting of ours (not Celery's) read by `QueuebenchRedisBackend`: the ``result_subscribe`` knob.
_SUBSCRIBE_SETTING = "queuebench_result_subscribe"

#: kombu's virtual transport's body codec (Redis: ``body_encoding = "base64"``).
_BASE64 = Base64()

#: Seconds `ping` (and the other short-lived admin connections) wait for the broker.
PING_TIMEOUT_S = 2.0

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOGLEVEL = "WARNING"  # Celery's own CLI default
OPTIMIZATIONS = ("default", "fair")

#: Pools ``-P`` accepts here. eventlet is left out: it is not a dependency.
POOLS = ("prefork", "threads", "gevent", "solo")
#: Pools that run `threads` tasks in one process (one worker command per process).
THREADED_POOLS = ("threads", "gevent")

#: Knobs of the matrix's ``[celery]`` table (settings.options). Absent means Celery's own default.
KNOBS: dict[str, Knob] = {
    "pool": Knob(str, None, "worker -P: the execution pool. Default here: prefork when threads = 1, threads "
                 "when threads > 1 (Celery's own default is prefork). prefork and solo run one task per "
                 "process; threads and gevent run `threads` tasks per process.",
                 choices=POOLS, candidates=("prefork", "threads", "solo")),
    "without_mingle": Knob(bool, False, "worker flag --without-mingle: skip the start-up sync with other "
                           "workers (Celery default: mingle on).", candidates=(False, True)),
    "without_gossip": Knob(bool, False, "worker flag --without-gossip: ignore other workers' events "
                           "(Celery default: gossip on).", candidates=(False, True)),
    "without_heartbeat": Knob(bool, False, "worker flag --without-heartbeat: send no worker heartbeat "
                              "events (default: on).", candidates=(False, True)),
    "task_events": Knob(bool, False, "worker flag -E: send task events (Celery default off)."),
    "loglevel": Knob(str, DEFAULT_LOGLEVEL, "worker --loglevel. Celery's CLI default WARNING (INFO, the "
                     "tutorials' choice, logs two lines per task).", choices=LOG_LEVELS,
                     candidates=("WARNING", "INFO")),
    "optimization": Knob(str, "default", "worker -O: how prefork hands tasks to children.",
                         choices=OPTIMIZATIONS, candidates=OPTIMIZATIONS),
    "max_tasks_per_child": Knob(int, None, "worker --max-tasks-per-child: replace a prefork child after this "
                                "many tasks (prefork only; Celery default: never).", low=1),
    "disable_prefetch": Knob(bool, False, "worker flag --disable-prefetch (Celery 5.6+, Redis broker only): "
                             "fetch a task only when a slot is free.", candidates=(False, True)),
    "track_started": Knob(bool, False, "task_track_started: store STARTED when a task starts (without it a "
                          "running task reads queued)."),
    "reject_on_worker_lost": Knob(bool, False, "task_reject_on_worker_lost: re-queue a task whose child "
                                  "died (with acks_late).", candidates=(False, True)),
    "disable_rate_limits": Knob(bool, False, "worker_disable_rate_limits (no task here has a limit)."),
    "broker_pool_limit": Knob(int, 10, "broker_pool_limit: the producer's broker connection pool (0: a "
                              "connection per publish).", low=0),
    "visibility_timeout_s": Knob(int, 3600, "Redis broker only: broker_transport_options visibility_timeout, "
                                 "seconds before an unacknowledged task is redelivered.", low=1,
                                 candidates=(30, 300, 3600)),
    "unacked_restore_interval_s": Knob(int, 10, "Redis broker only (kombu 5.7+): broker_transport_options "
                                       "unacked_restore_interval, seconds between a worker's looks for "
                                       "unacknowledged tasks older than the visibility timeout.", low=1),
    "unacked_restore_throttle": Knob(int, 10, "Redis broker only (kombu 5.7+): broker_transport_options "
                                     "unacked_restore_throttle, looks per actual scan (a scan every interval x "
                                     "throttle seconds).", low=1),
    "confirm_publish": Knob(bool, False, "RabbitMQ broker only: broker_transport_options confirm_publish, "
                            "py-amqp's publisher confirms (kombu default off): every publish waits for the "
                            "node's basic.ack, so an enqueue that returned is on the node (with Celery's durable "
                            "queues and persistent messages, on its disk) and a rejected publish raises.",
                            candidates=(False, True)),
    "cancel_long_running_tasks_on_connection_loss": Knob(
        bool, False, "worker_cancel_long_running_tasks_on_connection_loss (Celery 5.1+; default false, true from "
        "Celery 6.0): when a worker loses its broker connection, cancel its running acks_late tasks, which can no "
        "longer be acknowledged and come back from the broker, instead of letting them finish (and run again).",
        candidates=(False, True)),
    "result_expires_s": Knob(int, 86400, "result_expires: seconds results are kept (0: forever).", low=0),
    "result_subscribe": Knob(bool, False, "keep Celery's per-task SUBSCRIBE of the producer to the result "
                             "channel (stock Celery; never drained by the API, see the module docstring). "
                             "queuebench default false."),
}
#: Knobs that only mean something on one broker: knob -> that broker.
_BROKER_ONLY = {"visibility_timeout_s": "redis", "disable_prefetch": "redis", "unacked_restore_interval_s": "redis",
                "unacked_restore_throttle": "redis", "confirm_publish": "rabbitmq"}
_BROKER_NAMES = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
#: Boolean knobs that are worker command-line flags.
_FLAG_KNOBS = {
    "without_mingle": "--without-mingle",
    "without_gossip": "--without-gossip",
    "without_heartbeat": "--without-heartbeat",
    "task_events": "-E",
    "disable_prefetch": "--disable-prefetch",
}

#: Celery state -> ours (anything else, e.g. a custom state, reads queued).
_STATES: dict[str, str] = {
    states.PENDING: "queued",
    states.RECEIVED: "queued",
    states.RETRY: "queued",
    states.STARTED: "started",
    states.SUCCESS: "success",
    states.FAILURE: "failure",
    states.REVOKED: "failure",
    states.REJECTED: "failure",
    states.IGNORED: "failure",
}


# --- the task ------------------------------------------------------------------------------------------


def run(self: Task, task: str, args: dict[str, Any], meta: dict[str, Any]) -> Any:
    """The one Celery task: run `task` through the shared body with Celery's attempt number.

    `flaky`'s and `poison`'s failures are retried by Celery's own ``self.retry`` at once (countdown 0), at
    most `workload.max_retries_for` times (`poison`: the task's ``max_retries``, Celery's default 3); every
    other exception propagates and is not retried.
    """
    attempt = self.request.retries + 1
    try:
        return workload.execute(task, args, meta, attempt)
    except workload.RETRIED_ERRORS as exc:
        max_retries = workload.max_retries_for(task, args, poison_retries=self.max_retries)
        raise self.retry(exc=exc, countdown=0, max_retries=max_retries) from exc


# --- the result backend ------------------------------------------------------------------------------


class QueuebenchRedisBackend(RedisBackend):
    """Celery's Redis result backend with two changes, each for a reason given in the module docstring.

    - Producer: no pub/sub SUBSCRIBE per sent task (unless the ``result_subscribe`` knob asks for it).
    - Worker: a RETRY write never replaces a final state. Celery's own check ("a SUCCESS is never
      overwritten") is a GET then a SET; the RETRY of attempt n is written after attempt n+1 was
      published, and with an immediate retry and more than one slot attempt n+1 may have finished in
      between. Here that GET and SET are one Redis transaction (WATCH/MULTI), and FAILURE and REVOKED are
      protected as well. Other states are stored exactly as Celery stores them.

    Celery creates one instance per thread; each is remembered (weakly) so `CeleryBackend.close` can
    close their connection pools.
    """

    instances: ClassVar[weakref.WeakSet[QueuebenchRedisBackend]] = weakref.WeakSet()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscribe_on_send = bool(self.app.conf.get(_SUBSCRIBE_SETTING))
        QueuebenchRedisBackend.instances.add(self)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        if self._subscribe_on_send:
            super().on_task_call(producer, task_id)

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        if state != states.RETRY:
            return super()._store_result(task_id, result, state, traceback=traceback, request=request,
                                         **kwargs)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        key = self.get_key_for_task(task_id)
        self.ensure(self._set_unless_ready, (key, self.encode(meta)))
        return result

    def _set_unless_ready(self, key: str, value: Any) -> None:
        """Celery's SET + PUBLISH of a state, skipped when the stored state is already final."""

        def write(pipe: Any) -> None:
            current = pipe.get(key)
            if current and self.decode(current).get("status") in states.READY_STATES:
                return
            pipe.multi()
            pipe.set(key, value, ex=self.expires or None)  # Celery: SETEX when results expire, else SET
            pipe.publish(key, value)

        self.client.transaction(write, key)


class QueuebenchSentinelBackend(QueuebenchRedisBackend, SentinelBackend):
    """The same two changes on Celery's Redis Sentinel result backend (results kept on a master found
    through Sentinel: ``sentinel://`` URLs and ``result_backend_transport_options`` ``master_name``)."""


_RESULT_BACKEND_PATH = f"{__name__}:{QueuebenchRedisBackend.__name__}"
_SENTINEL_RESULT_BACKEND_PATH = f"{__name__}:{QueuebenchSentinelBackend.__name__}"


# --- knobs and the app ---------------------------------------------------------------------------------


def _knob_error(key: str, value: Any, reason: str) -> UnsupportedOption:
    return UnsupportedOption(f"[celery] {key}", value, CeleryBackend.name, reason)


def parse_knobs(settings: BackendSettings) -> dict[str, Any]:
    """The ``[celery]`` knobs of `settings`, checked; raises `UnsupportedOption` for a bad one."""
    knobs = base_parse_knobs(CeleryBackend.name, KNOBS, settings.options)
    for key, broker in _BROKER_ONLY.items():
        if key in knobs and settings.broker != broker:
            raise _knob_error(key, knobs[key], f"applies to the {_BROKER_NAMES[broker]} broker only")
    return knobs


def build_app(settings: BackendSettings, *, producer: bool = False, acks_late: bool | None = None) -> Celery:
    """The Celery app of one configuration, with `TASK_NAME` registered.

    The API builds it with ``producer=True`` (then it is not made the process's current app);
    ``backends.celery_worker`` builds it for ``celery -A`` with the worker's `acks_late`. Knobs absent
    from `settings.options` keep Celery's defaults.
    """
    knobs = parse_knobs(settings)
    result_url = settings.effective_result_url if settings.results else None
    # A Sentinel URL becomes kombu's ``sentinel://`` transport (and Celery's Sentinel result backend) with the
    # master group in the transport options; any other URL is Celery's own.
    broker_url, broker_sentinel = redis_url.kombu_url(settings.broker_url)
    result_sentinel: Mapping[str, Any] = {}
    if result_url is not None:
        result_url, result_sentinel = redis_url.kombu_url(result_url)
    app = Celery(APP_NAME, broker=broker_url, backend=result_url, set_as_current=not producer)
    conf: dict[str, Any] = {
        "task_serializer": settings.serializer,
        "result_serializer": settings.serializer,
        "accept_content": [settings.serializer],
        "task_ignore_result": not settings.results,
        # Celery's behaviour when unset, made explicit to silence its warning about the 6.0 default.
        "broker_connection_retry_on_startup": True,
        _SUBSCRIBE_SETTING: bool(knobs.get("result_subscribe", False)),
    }
    if acks_late is not None:
        conf["task_acks_late"] = acks_late
    # Pinned at Celery 5's default unless the matrix says otherwise: Celery 6.0 turns it on.
    conf["worker_cancel_long_running_tasks_on_connection_loss"] = False
    config_knobs = {
        "track_started": "task_track_started",
        "reject_on_worker_lost": "task_reject_on_worker_lost",
        "disable_rate_limits": "worker_disable_rate_limits",
        "broker_pool_limit": "broker_pool_limit",
        "result_expires_s": "result_expires",
        "cancel_long_running_tasks_on_connection_loss": "worker_cancel_long_running_tasks_on_connection_loss",
    }
    for knob, setting in config_knobs.items():
        if knob in knobs:
            conf[setting] = knobs[knob]
    transport = {option: knobs[knob] for knob, option in (
        ("visibility_timeout_s", "visibility_timeout"), ("unacked_restore_interval_s", "unacked_restore_interval"),
        ("unacked_restore_throttle", "unacked_restore_throttle"), ("confirm_publish", "confirm_publish"))
        if knob in knobs}
    if settings.broker == "rabbitmq":
        transport.setdefault("confirm_publish", False)  # py-amqp's default, pinned so run.json says it
    transport |= dict(broker_sentinel)
    if transport:
        conf["broker_transport_options"] = transport
    if result_sentinel:
        conf["result_backend_transport_options"] = dict(result_sentinel)
    if settings.queue_type == "quorum":
        # Celery 5.5+: the queues it declares for -Q and for routing (created as missing) are quorum queues;
        # worker_detect_quorum_queues (default on) then turns global QoS off, which quorum queues refuse.
        conf["task_create_missing_queue_type"] = "quorum"
    app.conf.update(conf)
    if result_url is not None:
        # Celery's "<backend class>+<url>" form: the Redis at result_url through our subclass of Celery's
        # Redis (or Redis Sentinel) backend. ``result_backend`` keeps the plain URL (the worker's banner).
        path = _SENTINEL_RESULT_BACKEND_PATH if result_sentinel else _RESULT_BACKEND_PATH
        app.backend_cls = f"{path}+{result_url}"
    app.task(name=TASK_NAME, bind=True)(run)
    return app


# --- helpers -------------------------------------------------------------------------------------------


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced by ``***`` (kombu's own sanitiser)."""
    if url is None:
        return None
    if redis_url.topology(url) != "single":
        return redis_url.redact(url)
    # kombu's Sentinel form lists one URL per Sentinel, separated by ";".
    return ";".join(str(maybe_sanitize_url(part, mask="***")) for part in url.split(";"))


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else None


def _seconds(value: Any) -> Any:
    """A duration setting (timedelta or number of seconds) as seconds."""
    return value.total_seconds() if hasattr(value, "total_seconds") else value


def _dist(name: str) -> str | None:
    try:
        return _dist_version(name)
    except PackageNotFoundError:
        return None


# --- the backend ---------------------------------------------------------------------------------------



def _default_pool(threads: int) -> str:
    """The pool when the knob is not set: one task per process (prefork) at 1 thread, else threads."""
    return "prefork" if threads == 1 else "threads"

class CeleryBackend(BackendBase):
    """Celery on Redis or RabbitMQ: one task, Celery's own retry for `flaky` and `poison`, Celery's own CLI for
    workers."""

    name: ClassVar[str] = "celery"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis", "rabbitmq"})
    serializers: ClassVar[frozenset[str]] = frozenset({"json", "pickle", "msgpack"})
    knobs: ClassVar[dict[str, Knob]] = KNOBS
    spec_knobs: ClassVar[dict[str, Knob]] = {
        "prefetch": Knob(int, 4, "worker_prefetch_multiplier: messages claimed ahead per slot (Celery default 4).",
                         low=1, high=100_000, candidates=(1, 4, 16)),
        "acks_late": Knob(bool, False, "task_acks_late: acknowledge after running (Celery default: before).",
                          candidates=(False, True)),
    }
    tune_knobs: ClassVar[tuple[str, ...]] = ("prefetch", "pool", "without_mingle", "without_gossip", "acks_late")
    derived_defaults: ClassVar[Mapping[str, Callable[[int], Any]]] = {"pool": _default_pool}
    #: kombu's ``sentinel://`` transport and Celery's Sentinel result backend; quorum queues (Celery 5.5+).
    broker_shapes: ClassVar[frozenset[str]] = frozenset({"sentinel", "quorum"})
    refused_shapes: ClassVar[dict[str, str]] = {
        "cluster": "kombu has no Redis Cluster transport (celery/celery#2852 and celery/kombu#526, open; the "
                   "transport in celery/kombu#2204 is not merged)"}
    packages: ClassVar[tuple[str, ...]] = ("celery", "kombu", "billiard", "redis", "hiredis", "amqp", "msgpack")
    concurrency: ClassVar[str] = ("threads = 1: one `celery worker -P prefork -c <processes>`; threads > 1: "
                                  "<processes> x `celery worker -P threads -c <threads>`")

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        check_shapes(type(self), settings)
        self.knob_values = parse_knobs(settings)
        self.settings = settings
        self.loglevel: str = self.knob_values.get("loglevel", DEFAULT_LOGLEVEL)
        self._app = build_app(settings, producer=True)
        self._task = self._app.tasks[TASK_NAME]
        key = self._app.connection_for_write()
        #: Errors meaning "the broker or the result store cannot be reached": answered as BackendUnavailable.
        self._unavailable_errors: tuple[type[BaseException], ...] = (
            OperationalError, redis.ConnectionError, redis.TimeoutError, *key.connection_errors)
        key.release()
        #: A short random tag in every node name, so two runs on one broker never share a node name.
        self._node_tag = secrets.token_hex(3)
        #: What `worker_commands` produced, for `describe`.
        self._worker_groups: list[dict[str, Any]] = []

    # -- connections ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _admin_connection(self) -> Iterator[kombu.Connection]:
        """A fresh, connected, short-lived broker connection whose connect and socket operations time out
        within `PING_TIMEOUT_S`; any failure to reach the broker is raised as `BackendUnavailable`."""
        if self.settings.broker == "redis":
            options = {"socket_timeout": PING_TIMEOUT_S, "socket_connect_timeout": PING_TIMEOUT_S}
        else:
            options = {"read_timeout": PING_TIMEOUT_S, "write_timeout": PING_TIMEOUT_S}
        conn = self._app.connection_for_write(connect_timeout=PING_TIMEOUT_S, transport_options=options)
        try:
            try:
                conn.ensure_connection(max_retries=0)  # one attempt, bounded by the timeouts above
            except (*self._unavailable_errors, *conn.channel_errors) as exc:  # e.g. AMQP ACCESS_REFUSED
                raise self._unavailable(exc) from exc
            try:
                yield conn
            except self._unavailable_errors as exc:
                raise self._unavailable(exc) from exc
        finally:
            conn.release()

    def _unavailable(self, exc: BaseException, what: str = "broker") -> BackendUnavailable:
        url = self.settings.broker_url if what == "broker" else self.settings.effective_result_url
        kind = "Redis" if what != "broker" or self.settings.broker == "redis" else "RabbitMQ"
        return BackendUnavailable(f"Celery {what} {kind} at {redact_url(url)} did not answer: "
                                  f"{type(exc).__name__}: {exc}")

    # -- the protocol -----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise `BackendUnavailable` naming the URL (password hidden) unless the broker answers within 2 s
        (and, when results live in a Redis other than the broker, unless that Redis answers too)."""
        with self._admin_connection():
            pass
        result_url = self.settings.effective_result_url if self.settings.results else None
        if result_url and result_url != self.settings.broker_url:
            client = redis_url.client(result_url, socket_connect_timeout=PING_TIMEOUT_S,
                                      socket_timeout=PING_TIMEOUT_S)
            try:
                client.ping()
            except (redis.RedisError, OSError) as exc:
                raise self._unavailable(exc, "result store") from exc
            finally:
                client.close()

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        """Publish `job` as one Celery task (task id = `job.id`) on `job.queue`."""
        try:
            self._task.apply_async((job.task, dict(job.args), job.meta()), task_id=job.id, queue=job.queue)
        except self._unavailable_errors as exc:
            raise self._unavailable(exc) from exc
        return EnqueueReceipt(job.id, job.queue, time.time_ns())

    def codec(self, job: JobRequest) -> Codec:
        """Encode: ``app.amqp.create_task_message`` (Celery's ``as_task_v2``) then kombu's ``dumps`` with the
        app's ``task_serializer``, then (Redis) kombu's virtual-transport envelope: base64 body, JSON dict.
        Decode: the envelope's JSON and base64 (Redis), then kombu's ``loads`` with ``accept_content``.

        Line references in the module docstring. Not timed: routing, the producer pool, the connection and
        the publish itself (no I/O). Timed with the rest: ``argsrepr``/``kwargsrepr`` (``saferepr``, capped
        in length), which Celery computes for every message."""
        conf = self._app.conf
        headers, properties, body, _sent_event = self._app.amqp.create_task_message(
            job.id, TASK_NAME, (job.task, dict(job.args), job.meta()), {},
            reply_to=self._app.thread_oid, ignore_result=conf.task_ignore_result)
        content_type, content_encoding, payload = kombu.serialization.dumps(body, serializer=conf.task_serializer)
        if isinstance(payload, str):  # kombu's json: text, sent in its content encoding (utf-8)
            payload = payload.encode(content_encoding)
        accept = self._accept
        if self.settings.broker != "redis":
            def decode_body() -> tuple[str, Any, Any]:
                args, _kwargs, _embed = kombu.serialization.loads(payload, content_type, content_encoding,
                                                                  accept=accept)
                return args[0], args[1], args[2]

            return payload, decode_body
        properties = dict(properties, delivery_mode=2, priority=0,
                          delivery_info={"exchange": "", "routing_key": job.queue},
                          body_encoding="base64", delivery_tag=kombu_uuid())
        envelope = {"body": _BASE64.encode(payload), "content-encoding": content_encoding,
                    "content-type": content_type, "headers": headers, "properties": properties}
        data = kombu.utils.json.dumps(envelope).encode()

        def decode() -> tuple[str, Any, Any]:
            message = kombu.utils.json.loads(bytes_to_str(data))
            raw = _BASE64.decode(message["body"])
            args, _kwargs, _embed = kombu.serialization.loads(raw, message["content-type"],
                                                              message["content-encoding"], accept=accept)
            return args[0], args[1], args[2]

        return data, decode

    @property
    def _accept(self) -> set[str]:
        """The content types the worker accepts (``accept_content`` as kombu's Consumer prepares it)."""
        accept = self.__dict__.get("_accept_types")
        if accept is None:
            accept = self.__dict__["_accept_types"] = kombu.serialization.prepare_accept_content(
                self._app.conf.accept_content)
        return accept

    def status(self, task_id: str) -> TaskStatus | None:
        """Celery's state and result for `task_id` (see the module docstring for the mapping).

        None when results are off: there is no result backend, so Celery keeps no record of any task.
        """
        if not self.settings.results:
            return None
        result = self._app.AsyncResult(task_id)
        try:
            celery_state = result.state  # one GET; a ready state's result and traceback are cached with it
            state = _STATES.get(celery_state, "queued")
            if state == "success":
                return TaskStatus(task_id, "success", result.result)
            if state == "failure":
                return TaskStatus(task_id, "failure", None, self._error_text(result, celery_state))
        except self._unavailable_errors as exc:
            raise self._unavailable(exc, "result store") from exc
        return TaskStatus(task_id, state)  # type: ignore[arg-type]

    @staticmethod
    def _error_text(result: Any, celery_state: str) -> str:
        text = _last_line(result.traceback)
        if text is None and isinstance(result.result, BaseException):
            text = f"{type(result.result).__name__}: {result.result}"
        return text or f"task {celery_state}"

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        """``celery -A backends.celery_worker worker ...`` invocations giving exactly `spec.slots` slots."""
        check_worker_spec(self.name, spec)
        pool = self.knob_values.get("pool")
        if pool is None:
            pool = self.derived_defaults["pool"](spec.threads)
        if pool in ("prefork", "solo") and spec.threads > 1:
            raise UnsupportedOption("threads", spec.threads, self.name,
                                    f"the {pool} pool runs one task at a time per process; use pool threads "
                                    "or gevent for threads > 1")
        if "max_tasks_per_child" in self.knob_values and pool != "prefork":
            raise _knob_error("max_tasks_per_child", self.knob_values["max_tasks_per_child"],
                              f"only the prefork pool replaces children (pool is {pool})")
        # prefork: one worker, `processes` children. Other pools: one worker per process.
        commands, concurrency = ((1, spec.processes) if pool == "prefork"
                                 else (spec.processes, spec.threads))

        flags = ["--loglevel", self.loglevel]
        if spec.prefetch is not None:
            flags += ["--prefetch-multiplier", str(spec.prefetch)]
        if "max_tasks_per_child" in self.knob_values:
            flags += ["--max-tasks-per-child", str(self.knob_values["max_tasks_per_child"])]
        if "optimization" in self.knob_values:
            flags += ["-O", self.knob_values["optimization"]]
        flags += [flag for knob, flag in _FLAG_KNOBS.items() if self.knob_values.get(knob)]

        env = self.settings.to_env() | {WORKER_ENV: json.dumps({"acks_late": spec.acks_late})}
        if self.settings.serializer == "pickle" and os.geteuid() == 0:
            env["C_FORCE_ROOT"] = "1"  # Celery refuses a pickle-accepting worker as root otherwise
        base_name = f"celery-{'-'.join(spec.queues)}"
        result = []
        for index in range(1, commands + 1):
            name = base_name if commands == 1 else f"{base_name}-{index}"
            argv = [str(Path(sys.executable).parent / "celery"), "-A", WORKER_MODULE, "worker",
                    "-Q", ",".join(spec.queues), "-n", f"{name}-{self._node_tag}@%h",
                    "-P", pool, "-c", str(concurrency), *flags]
            result.append(WorkerCommand(name=name, argv=argv, env=env))
        self._worker_groups.append({
            "queues": list(spec.queues), "pool": pool, "worker_commands": commands,
            "concurrency_per_command": concurrency, "slots": commands * concurrency,
            "prefetch_multiplier": spec.prefetch if spec.prefetch is not None
            else self._app.conf.worker_prefetch_multiplier,
            "prefetch_count_per_command": (spec.prefetch if spec.prefetch is not None
                                           else self._app.conf.worker_prefetch_multiplier) * concurrency,
            "acks_late": spec.acks_late if spec.acks_late is not None else self._app.conf.task_acks_late,
        })
        return result

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        """Celery acknowledges a task before running it unless ``acks_late``; a child killed mid-task is
        acknowledged anyway unless ``reject_on_worker_lost`` too (Celery's FAQ and task docs). On RabbitMQ
        the producer publishes with confirms only with ``confirm_publish`` (`DeliveryContract.publish_confirms`:
        then a restarted node keeps every message an enqueue returned for)."""
        acks_late = spec.acks_late if spec.acks_late is not None else bool(self._app.conf.task_acks_late)
        reject = bool(self.knob_values.get("reject_on_worker_lost", False))
        redis_broker = self.settings.broker == "redis"
        redelivery = (f"after the visibility timeout ({self.knob_values.get('visibility_timeout_s', 3600)} s, "
                      "found by a restore scan every "
                      f"{self.knob_values.get('unacked_restore_interval_s', 10)} x "
                      f"{self.knob_values.get('unacked_restore_throttle', 10)} s)"
                      if redis_broker else "when the broker sees the connection close")
        prefetched = f"returned to the queue {redelivery}"
        source = "https://docs.celeryq.dev/en/stable/userguide/tasks.html#Task.acks_late"
        confirms = None if redis_broker else bool(self.recovery_settings()["confirm_publish"])
        if acks_late and reject:
            return DeliveryContract("at-least-once", "re-queued at once (the child's death rejects it)",
                                    prefetched, "reject_on_worker_lost; " + redelivery, source,
                                    publish_confirms=confirms)
        if acks_late:
            return DeliveryContract("at-most-once", "acknowledged as failed when only the child dies (lost); "
                                    f"redelivered {redelivery} when the whole worker dies", prefetched,
                                    redelivery, source, whole_worker="at-least-once", publish_confirms=confirms)
        return DeliveryContract("at-most-once", "lost (acknowledged before it ran)", prefetched, redelivery,
                                source, publish_confirms=confirms)

    def recovery_settings(self) -> dict[str, Any]:
        """The settings that decide what a fault does to tasks, as this configuration runs them (Celery's and
        kombu's defaults where the matrix says nothing); the other broker's settings are None."""
        conf, knobs, redis_broker = self._app.conf, self.knob_values, self.settings.broker == "redis"
        transport = conf.broker_transport_options or {}
        return {
            "reject_on_worker_lost": bool(conf.task_reject_on_worker_lost),
            "cancel_long_running_tasks_on_connection_loss":
                bool(conf.worker_cancel_long_running_tasks_on_connection_loss),
            "visibility_timeout_s": transport.get("visibility_timeout", KNOBS["visibility_timeout_s"].default)
            if redis_broker else None,
            "unacked_restore_interval_s": knobs.get("unacked_restore_interval_s",
                                                    KNOBS["unacked_restore_interval_s"].default)
            if redis_broker else None,
            "unacked_restore_throttle": knobs.get("unacked_restore_throttle", KNOBS["unacked_restore_throttle"].default)
            if redis_broker else None,
            "confirm_publish": bool(transport.get("confirm_publish")) if not redis_broker else None,
        }

    def retry_policy(self) -> RetryPolicy:
        """`poison` is retried with ``self.retry`` up to the task's ``max_retries``, Celery's default (3)."""
        return RetryPolicy(int(self._task.max_retries), "countdown 0: re-published at once",
                           "celery.app.task.Task.max_retries (Celery's default 3), "
                           "https://docs.celeryq.dev/en/stable/userguide/tasks.html#retrying")

    def held_task_ids(self) -> set[str] | None:
        """Task ids kombu's Redis transport still holds: in a queue's lists (one per priority step) or in its
        ``unacked`` hash (delivered, not acknowledged: restored once the visibility timeout has passed). Read
        with plain HGETALL/LRANGE, so kombu's restore is not triggered. None on RabbitMQ (its unacked
        messages cannot be read without consuming them)."""
        if self.settings.broker != "redis":
            return None
        client = redis_url.client(self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                  socket_timeout=10)
        held: set[str] = set()
        try:
            for queue in self.settings.queues:
                steps = self._app.conf.broker_transport_options.get("priority_steps", list(range(10)))
                keys = {queue, *(f"{queue}\x06\x16{step}" for step in steps)}
                for key in keys:
                    held.update(_message_id(raw) for raw in client.lrange(key, 0, -1))
            held.update(_message_id(json.loads(raw)[0]) for raw in client.hvals("unacked"))
        finally:
            client.close()
        held.discard("")
        return held

    def queue_depths(self) -> Mapping[str, int]:
        """Messages waiting per queue of `settings.queues` (a passive declare's message count: the Redis
        list length, or RabbitMQ's ready messages). Tasks a worker has prefetched are not counted; a queue
        that does not exist yet counts 0."""
        with self._admin_connection() as conn:
            return {name: self._on_channel(conn, lambda ch, q=name: ch.queue_declare(
                queue=q, passive=True).message_count) for name in self.settings.queues}

    @staticmethod
    def _on_channel(conn: kombu.Connection, call: Any) -> int:
        """`call(channel)` on a fresh channel; 0 when the broker says the queue does not exist."""
        channel = conn.channel()
        try:
            return int(call(channel) or 0)
        except conn.channel_errors:
            return 0  # RabbitMQ closes the channel on NOT_FOUND: hence a channel per call
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def purge(self) -> None:
        """Empty this configuration's queues, and delete Celery's result keys (``celery-task-meta-*``) from
        the result Redis.

        On RabbitMQ the queues are deleted, not just emptied: Dramatiq declares queues of the same names
        with other arguments, so a queue left behind would make the next library's declaration fail
        (PRECONDITION_FAILED). Never FLUSHDB; the stack calls this only when the harness owns the broker
        or found the queues empty (point --amqp-url at a vhost of queuebench's own on a shared RabbitMQ).
        """
        rabbit = self.settings.broker == "rabbitmq"
        with self._admin_connection() as conn:
            for name in self.settings.queues:
                if rabbit:
                    self._on_channel(conn, lambda ch, q=name: ch.queue_delete(q))
                else:
                    self._on_channel(conn, lambda ch, q=name: ch.queue_purge(q))
        result_url = self.settings.effective_result_url if self.settings.results else None
        if result_url is None:
            return
        prefix = RedisBackend.task_keyprefix
        client = redis_url.client(result_url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=10)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc, "result store") from exc
        finally:
            client.close()

    def describe(self) -> Mapping[str, Any]:
        """Versions (celery, kombu, billiard, redis-py, py-amqp, brokers) and the effective settings."""
        conf = self._app.conf
        return {
            "backend": self.name,
            "celery_version": celery.__version__,
            "kombu_version": kombu.__version__,
            "billiard_version": billiard.__version__,
            "redis_py_version": redis.__version__,
            "amqp_version": _dist("amqp"),
            "msgpack_version": _dist("msgpack"),
            "hiredis": _dist("hiredis"),
            "broker": self.settings.broker,
            "broker_url": redis_url.redact(self.settings.broker_url),
            "broker_server_version": self._broker_version(),
            "broker_topology": redis_url.topology(self.settings.broker_url),
            "queue_type": self.settings.queue_type if self.settings.broker == "rabbitmq" else None,
            "worker_detect_quorum_queues": conf.worker_detect_quorum_queues,
            "serializer": self.settings.serializer,
            "accept_content": list(conf.accept_content),
            "results": self.settings.results,
            "result_backend": redact_url(conf.result_backend) if self.settings.results else None,
            "result_server_version": self._result_store_version(),
            "task_ignore_result": conf.task_ignore_result,
            "result_expires_s": _seconds(conf.result_expires),
            "result_subscribe": conf.get(_SUBSCRIBE_SETTING),
            "routing": self.settings.routing,
            "queues": list(self.settings.queues),
            "workers": list(self._worker_groups),
            "worker_command": "celery -A backends.celery_worker worker -P <pool> -c <N>: threads = 1 -> "
                              "one prefork worker, -c processes; threads > 1 -> one threads (or gevent) "
                              "worker per process, -c threads",
            "prefetch_multiplier_default": conf.worker_prefetch_multiplier,
            "prefetch_note": "Celery's prefetch is a multiplier per execution slot: each worker command "
                             "prefetches multiplier x -c messages",
            "acks_late_default": conf.task_acks_late,
            "track_started": conf.task_track_started,
            "reject_on_worker_lost": conf.task_reject_on_worker_lost,
            "disable_rate_limits": conf.worker_disable_rate_limits,
            "broker_pool_limit": conf.broker_pool_limit,
            "broker_transport_options": dict(conf.broker_transport_options or {}),
            "recovery": self.recovery_settings(),
            "loglevel": self.loglevel,
            "mingle": not self.knob_values.get("without_mingle", False),
            "gossip": not self.knob_values.get("without_gossip", False),
            "heartbeat": not self.knob_values.get("without_heartbeat", False),
            "task_events": bool(self.knob_values.get("task_events", False)),
            "retry": "flaky: self.retry(countdown=0, max_retries=fail_times); poison: self.retry(countdown=0) "
                     "up to Task.max_retries; re-published at once",
            "retry_policy": self.retry_policy().record(),
            "knobs": dict(self.settings.options),
        }

    def _broker_version(self) -> Any:
        if self.settings.broker == "redis":
            return self._redis_version(self.settings.broker_url)
        try:
            with self._admin_connection() as conn:
                version = (getattr(conn.connection, "server_properties", None) or {}).get("version")
        except BackendUnavailable as exc:
            return f"unavailable: {exc}"
        return version.decode() if isinstance(version, bytes) else version

    def _result_store_version(self) -> Any:
        result_url = self.settings.effective_result_url if self.settings.results else None
        if result_url is None:
            return None
        return self._redis_version(result_url)

    @staticmethod
    def _redis_version(url: str) -> Any:
        client = redis_url.client(url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S)
        try:
            return client.info("server").get("redis_version")
        except (redis.RedisError, OSError) as exc:
            return f"unavailable: {type(exc).__name__}: {exc}"
        finally:
            client.close()

    def close(self) -> None:
        """Close the producer's broker pools and its result-store connections.

        Celery's broker pools live in kombu's process-wide registry, keyed by connection parameters: they
        are taken out of it before being closed, so a later backend on the same URL in this process (the
        test process builds one per test on one RabbitMQ) gets fresh pools instead of closed or drained
        ones. (A drained pool would block the next publish forever.)
        """
        with contextlib.suppress(Exception):
            app_pools = [self._app.amqp.producer_pool, self._app.pool]
            key = self._app.connection_for_write()
            for group in (kombu.pools.producers, kombu.pools.connections):
                with contextlib.suppress(KeyError):
                    del group[key]
            for pool in app_pools:
                pool.force_close_all()
        for backend in list(QueuebenchRedisBackend.instances):
            if backend.app is self._app:
                with contextlib.suppress(Exception):
                    backend.connection_pool.disconnect()
        self._app.close()


def _message_id(message: Any) -> str:
    """The task id in a kombu Redis message envelope (JSON, or already decoded), "" if it has none."""
    if isinstance(message, bytes | str):
        message = json.loads(message)
    return str((message.get("headers") or {}).get("id") or "")
