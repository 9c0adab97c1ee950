"""Dramatiq behind the queuebench backend protocol.

Design, in the order a task meets it:

- Producer. One dramatiq broker per backend, built once (`build_broker`): ``RedisBroker`` on Redis,
  ``RabbitmqBroker`` (pika) on RabbitMQ. Each task becomes one `dramatiq.Message` whose ``message_id`` is
  the harness's id, for the one actor ``queuebench_run`` on ``job.queue``, with ``(task, args, meta)`` as
  its arguments, handed to ``broker.enqueue``: the producer never declares the actor or imports task
  code. The queues of the routing are declared on the broker first. Redis: redis-py's client is
  thread-safe. RabbitMQ: dramatiq opens one pika connection and channel per thread, lazily, so each
  gunicorn gthread thread publishes on its own channel. The producer's connections get short connect
  timeouts (`CONNECT_TIMEOUT_S`) so that a dead broker answers 503 within seconds, not a hang; the
  workers keep dramatiq's own connection defaults.
- Serializer. Dramatiq's encoder is process-global (`dramatiq.set_encoder`): json -> `JSONEncoder` (its
  default), pickle -> `PickleEncoder`, msgpack -> `MsgpackEncoder` below. The backend sets it when built
  (and re-asserts it before each enqueue, in case another configuration was built in the same process
  since), and the worker module sets the same one at import. The result store is given the same encoder
  explicitly. One process can therefore use only one serializer at a time.
- Middleware (workers and producer alike): dramatiq's defaults (AgeLimit, TimeLimit,
  ShutdownNotifications, Callbacks, Pipelines, Retries), plus CurrentMessage (the actor reads its attempt
  from the message), plus Results when results are on.
- Retries. Dramatiq's own Retries middleware, configured per message at enqueue. Dramatiq retries every
  actor 20 times by default with exponential backoff from 15 s; a task that failed for another reason (a
  time limit, a bug) would then run again minutes later, so every task is enqueued with
  ``max_retries=0`` (and the actor is declared with ``max_retries=0`` as well). `flaky` gets
  ``max_retries=fail_times`` and `poison` dramatiq's own default ``max_retries`` (20, so it runs 21 times:
  `retry_policy`), both with ``min_backoff=0, max_backoff=0``: dramatiq computes a 0 ms delay. Note
  that dramatiq always re-enqueues a retry through the queue's delay queue (``<queue>.DQ``) with an eta
  of "now": the worker's delay-queue consumer moves it back to the queue at once on RabbitMQ (push), and
  on its next poll on Redis (an idle consumer polls with a back-off capped at ``worker_timeout_ms``,
  1 s by default). Measured here: 5-15 ms per retry on RabbitMQ; on Redis about 0.5 s for the first
  retry after an idle spell, then about 50 ms. The attempt number is dramatiq's own:
  ``message.options["retries"] + 1``.
- Results. On: the Results middleware with dramatiq's ``RedisBackend`` at the result URL
  (`BackendSettings.effective_result_url`), ``store_results=True`` on the actor, TTL ``result_ttl_ms``
  (dramatiq default 10 minutes), and ``use_namespace_prefix_keys=True`` so that result keys read
  ``dramatiq-results:<queue>:queuebench_run:<id>`` (dramatiq's default is an MD5 of that text): `purge`
  can then find this configuration's results, and nothing else's. Off: no Results middleware at all.
- Workers. Dramatiq's own CLI, ``dramatiq backends.dramatiq_worker -p P -t T -Q <queues>``; -p and -t
  are always passed (the CLI defaults to CPU count x 8 threads). Slots = P x T. The prefetch per process
  and queue, the delay-queue prefetch and the idle poll cap are read by dramatiq from the environment
  (``dramatiq_queue_prefetch``, ``dramatiq_delay_queue_prefetch``, ``dramatiq_worker_timeout``); they are
  always set in the worker's environment (to dramatiq's defaults when not given), so a value left in the
  caller's shell cannot leak in. Dramatiq acknowledges a message only after the actor has run, always.

State mapping (for the README). Dramatiq keeps no "started" state and no record of a queued message in
its result store: the only record is the result, written when the actor returns, or, for a failure,
when its retries are exhausted (the Results middleware stores the exception on the final nack, never on
a failed attempt that will be retried). So: a stored value -> ``success`` with that value; a stored
exception -> ``failure`` with ``"<ExceptionType>: <message>"`` (the type alone when the message is
empty, e.g. ``TimeLimitExceeded``); no result -> ``queued``, which covers waiting, running, waiting for
a retry, and a result already expired (``result_ttl_ms``). Result keys are made from (queue, actor, id):
under dedicated routing each of the configuration's queues is tried (one pipelined round trip). An id the API never issued is refused with 404 by the API before it gets here;
with results off there is no record at all and `status` answers None.

Codec (`codec`, timed by the serializer benchmark; dramatiq 2.2 line numbers). Encode: the `dramatiq.Message`
`enqueue` builds, on Redis copied with its ``redis_message_id`` as ``RedisBroker.enqueue`` does
(dramatiq/brokers/redis.py:166-170), then ``Message.encode`` (dramatiq/message.py:121-123: the global
encoder over ``asdict()``): the bytes the Redis broker's enqueue script stores in ``<queue>.msgs``
(redis.py:184) and the RabbitMQ broker publishes as the body (rabbitmq.py:387-390). Decode: ``Message.decode``
(message.py:107-117: the encoder's ``decode``, ``args`` back to a tuple, a new `Message`), as both brokers'
consumers do (redis.py:352, rabbitmq.py:598).

Nothing but this module and `backends.dramatiq_worker` imports dramatiq.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import dramatiq
import msgpack
import pika
import pika.exceptions
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT, RedisBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.middleware import CurrentMessage, TimeLimit, default_middleware
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF, Retries
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
from dramatiq.results.errors import ResultFailure
from dramatiq.results.middleware import DEFAULT_RESULT_TTL
from dramatiq.results.result import unwrap_result
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from backends import redis_url, workload
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
    check_shapes,
    check_worker_spec,
    parse_knobs,
)

#: The one actor every message is for (declared only by the workers, in `backends.dramatiq_worker`).
ACTOR_NAME = "queuebench_run"
#: The module the ``dramatiq`` CLI imports: it builds the broker and declares the actor.
WORKER_MODULE = "backends.dramatiq_worker"
#: Namespaces of dramatiq's Redis keys (its defaults): the broker's and the result store's.
BROKER_NAMESPACE = "dramatiq"
RESULTS_NAMESPACE = "dramatiq-results"

#: Dramatiq's own defaults, for `describe` (worker.py reads the env vars at import; these are its fallbacks).
DEFAULT_WORKER_TIMEOUT_MS = 1000
DEFAULT_TIME_LIMIT_MS = 600_000
#: Environment variables dramatiq's worker reads at import.
ENV_QUEUE_PREFETCH = "dramatiq_queue_prefetch"
ENV_DELAY_QUEUE_PREFETCH = "dramatiq_delay_queue_prefetch"
ENV_WORKER_TIMEOUT = "dramatiq_worker_timeout"

#: Seconds `ping` waits for a broker or the result store; seconds the producer's connections wait to
#: connect, and for a Redis reply.
PING_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 3.0
PRODUCER_SOCKET_TIMEOUT_S = 10.0

#: Knobs of the matrix's ``[dramatiq]`` table (settings.options). Absent means dramatiq's own default.
KNOBS: dict[str, Knob] = {
    "queue_prefetch": Knob(int, None, "messages each worker process prefetches per queue (env "
                           "dramatiq_queue_prefetch). Dramatiq default 2 x threads. Same as the worker spec's "
                           "prefetch; give one or the other.", low=1, high=65535, candidates=(1, 2, 8, 64)),
    "delay_queue_prefetch": Knob(int, None, "messages each worker process prefetches per delay queue (env "
                                 "dramatiq_delay_queue_prefetch). Dramatiq default 1000 x threads, at most 65535.",
                                 low=1, high=65535),
    "worker_timeout_ms": Knob(int, DEFAULT_WORKER_TIMEOUT_MS, "cap of an idle consumer's poll back-off and of a "
                              "worker thread's wait, ms (env dramatiq_worker_timeout); a big throughput knob on "
                              "Redis.", low=1, candidates=(100, 1000)),
    "result_ttl_ms": Knob(int, 600_000, "how long the Results middleware keeps a result, ms (10 min). Ignored "
                          "when results are off.", low=1),
    "time_limit_ms": Knob(int, DEFAULT_TIME_LIMIT_MS, "TimeLimit middleware: a running actor is interrupted after "
                          "this long, ms (10 min).", low=1),
    "heartbeat_timeout_ms": Knob(int, 60_000, "Redis only: a worker silent this long is dead and its unacked "
                                 "messages are requeued, ms.", low=1, candidates=(5_000, 60_000)),
    "maintenance_chance": Knob(int, 1000, "Redis only: commands in a million that also run the broker's "
                               "maintenance, which requeues the unacknowledged messages of workers silent longer than "
                               "heartbeat_timeout_ms (dramatiq default 1000; 1000000: every command, so recovery "
                               "fits a short fault run).", low=0, high=1_000_000, candidates=(1000, 1_000_000)),
    "confirm_delivery": Knob(bool, False, "RabbitMQ only: the producer waits for publisher confirms on every "
                             "enqueue.", candidates=(False, True)),
}

#: Knobs that apply to one broker only.
_BROKER_ONLY = {"heartbeat_timeout_ms": "redis", "maintenance_chance": "redis", "confirm_delivery": "rabbitmq"}


# --- msgpack -----------------------------------------------------------------------------------------


class MsgpackEncoder(dramatiq.Encoder):
    """Dramatiq encoder (``encode(dict) -> bytes``, ``decode(bytes) -> dict``) over msgpack.

    Text stays text and bytes stay bytes (``use_bin_type``/``raw=False``). Like the JSON encoder, tuples
    come back as lists (dramatiq turns a message's ``args`` back into a tuple itself); integers are
    limited to 64 bits, as in msgpack.
    """

    def encode(self, data: dict[str, Any]) -> bytes:
        return msgpack.packb(data, use_bin_type=True)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise dramatiq.DecodeError(f"failed to decode message {data[:80]!r}", data, exc) from None


#: Our serializer names -> dramatiq encoder classes.
ENCODERS: dict[str, type[dramatiq.Encoder]] = {
    "json": dramatiq.JSONEncoder,
    "pickle": dramatiq.PickleEncoder,
    "msgpack": MsgpackEncoder,
}


# --- helpers -------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and `describe`)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def _dist(name: str) -> str | None:
    try:
        return _dist_version(name)
    except PackageNotFoundError:
        return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else text


def validate_options(settings: BackendSettings) -> dict[str, Any]:
    """The ``[dramatiq]`` knobs checked, every one present (None: dramatiq's default); raises
    `UnsupportedOption` for anything else."""
    options = parse_knobs(DramatiqBackend.name, KNOBS, settings.options)
    for key, broker in _BROKER_ONLY.items():
        if key in options and settings.broker != broker:
            raise UnsupportedOption(f"[dramatiq] {key}", options[key], DramatiqBackend.name,
                                    f"applies to the {broker} broker only")
    return {key: options.get(key) for key in KNOBS}


def build_result_backend(settings: BackendSettings, encoder: dramatiq.Encoder, *,
                         producer: bool) -> RedisBackend | None:
    """Dramatiq's Redis result backend at the result URL, or None when results are off."""
    if not settings.results:
        return None
    url = settings.effective_result_url
    assert url is not None  # check_common refuses results without a result store
    if producer:
        client = redis_url.client(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                  socket_timeout=PRODUCER_SOCKET_TIMEOUT_S)
        return RedisBackend(client=client, encoder=encoder, namespace=RESULTS_NAMESPACE,
                            use_namespace_prefix_keys=True)
    if redis_url.topology(url) == "sentinel":  # the master through Sentinel: dramatiq takes a client
        return RedisBackend(client=redis_url.client(url), encoder=encoder, namespace=RESULTS_NAMESPACE,
                            use_namespace_prefix_keys=True)
    return RedisBackend(url=url, encoder=encoder, namespace=RESULTS_NAMESPACE, use_namespace_prefix_keys=True)


def build_middleware(knobs: Mapping[str, Any], result_backend: RedisBackend | None) -> list[dramatiq.Middleware]:
    """Dramatiq's default middleware (TimeLimit with the knob if given), CurrentMessage, and Results if on."""
    middleware: list[dramatiq.Middleware] = []
    for cls in default_middleware:
        if cls is TimeLimit and knobs.get("time_limit_ms") is not None:
            middleware.append(TimeLimit(time_limit=knobs["time_limit_ms"]))
        else:
            middleware.append(cls())
    middleware.append(CurrentMessage())
    if result_backend is not None:
        middleware.append(Results(backend=result_backend, result_ttl=knobs.get("result_ttl_ms")))
    return middleware


def pika_url(url: str) -> str:
    """The URL as pika reads it: kombu (Celery) takes ``amqp://host//`` as the vhost "/", pika as the vhost
    "" (refused by RabbitMQ), so the default vhost is spelled ``%2F``, which both read as "/"."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/%2F")) if parts.path == "//" else url


def build_broker(settings: BackendSettings, *, producer: bool) -> tuple[dramatiq.Broker, RedisBackend | None]:
    """The dramatiq broker (with its middleware and this configuration's queues declared) and result backend.

    Also sets dramatiq's process-global encoder for `settings.serializer`. The producer's connections get
    short connect timeouts; a worker's keep dramatiq's own defaults.
    """
    knobs = validate_options(settings)
    encoder = ENCODERS[settings.serializer]()
    dramatiq.set_encoder(encoder)
    result_backend = build_result_backend(settings, encoder, producer=producer)
    middleware = build_middleware(knobs, result_backend)
    broker: dramatiq.Broker
    if settings.broker == "redis":
        extra: dict[str, Any] = {}
        if knobs["heartbeat_timeout_ms"] is not None:
            extra["heartbeat_timeout"] = knobs["heartbeat_timeout_ms"]
        if knobs.get("maintenance_chance") is not None:
            extra["maintenance_chance"] = knobs["maintenance_chance"]
        if producer:
            client = redis_url.client(settings.broker_url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                      socket_timeout=PRODUCER_SOCKET_TIMEOUT_S)
            broker = RedisBroker(client=client, middleware=middleware, namespace=BROKER_NAMESPACE, **extra)
        elif redis_url.topology(settings.broker_url) == "sentinel":
            # RedisBroker takes a client: the master found through Sentinel, dramatiq's connection defaults.
            broker = RedisBroker(client=redis_url.client(settings.broker_url), middleware=middleware,
                                 namespace=BROKER_NAMESPACE, **extra)
        else:
            broker = RedisBroker(url=settings.broker_url, middleware=middleware, namespace=BROKER_NAMESPACE,
                                 **extra)
    else:
        broker = RabbitmqBroker(url=pika_url(settings.broker_url), middleware=middleware,
                                confirm_delivery=bool(knobs["confirm_delivery"]))
        if producer:
            params = broker.parameters
            assert isinstance(params, pika.connection.Parameters)
            params.socket_timeout = CONNECT_TIMEOUT_S
            params.stack_timeout = CONNECT_TIMEOUT_S + 2
    for queue in settings.queues:
        broker.declare_queue(queue)
    return broker, result_backend


def actor_options(settings: BackendSettings) -> dict[str, Any]:
    """Options the worker declares the actor with: no retries unless a message says so; results if on."""
    options: dict[str, Any] = {"max_retries": 0}
    if settings.results:
        options["store_results"] = True
    return options


#: Retries the Retries middleware gives a failing message unless told otherwise (its ``max_retries``
#: default): what a `poison` task gets here.
DRAMATIQ_MAX_RETRIES: int = inspect.signature(Retries).parameters["max_retries"].default


def message_options(task: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Per-message options: `flaky` (the retries it needs) and `poison` (dramatiq's default 20) retried by
    dramatiq with no backoff, everything else never retried."""
    max_retries = workload.max_retries_for(task, args, poison_retries=DRAMATIQ_MAX_RETRIES)
    if max_retries > 0:
        return {"max_retries": max_retries, "min_backoff": 0, "max_backoff": 0}
    return {"max_retries": 0}


#: What pika raises when RabbitMQ cannot be reached (a handshake timeout is not an AMQPError).
_AMQP_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)
#: What a broker that is down, unreachable or not speaking its protocol raises through dramatiq.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, dramatiq.BrokerConnectionError,
                                                        *_AMQP_ERRORS)


# --- the backend ---------------------------------------------------------------------------------------



def _default_queue_prefetch(threads: int) -> int:
    """Dramatiq's own prefetch per queue when the knob is not set: 2 x threads (at most 65535)."""
    return min(threads * 2, 65535)

class DramatiqBackend(BackendBase):
    """Dramatiq on Redis or RabbitMQ: one actor, dramatiq's own retries and results, its own CLI for workers."""

    name: ClassVar[str] = "dramatiq"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis", "rabbitmq"})
    serializers: ClassVar[frozenset[str]] = frozenset({"json", "pickle", "msgpack"})
    knobs: ClassVar[dict[str, Knob]] = KNOBS
    spec_knobs: ClassVar[dict[str, Knob]] = {"threads": THREADS_KNOB}
    tune_knobs: ClassVar[tuple[str, ...]] = ("queue_prefetch", "threads")
    derived_defaults: ClassVar[Mapping[str, Callable[[int], Any]]] = {"queue_prefetch": _default_queue_prefetch}
    tune_drain_tasks: ClassVar[int] = 3000  # ~500/s at its default prefetch, ~5,000/s at 64 on 2 slots
    packages: ClassVar[tuple[str, ...]] = ("dramatiq", "redis", "hiredis", "pika", "msgpack")
    concurrency: ClassVar[str] = "one `dramatiq -p <processes> -t <threads>` per queue group"
    #: Sentinel: ``RedisBroker(client=...)`` and the result backend's ``client=`` take redis-py's
    #: ``Sentinel.master_for`` client.
    broker_shapes: ClassVar[frozenset[str]] = frozenset({"sentinel"})
    refused_shapes: ClassVar[dict[str, str]] = {
        "cluster": "dramatiq's Redis broker has no Redis Cluster support: its dispatch Lua script is given "
                   "only its namespace as a key and builds every other key name inside the script, which a "
                   "cluster cannot route (dramatiq 2.2 brokers/redis/dispatch.lua; Bogdanp/dramatiq#682)",
        "quorum": "dramatiq's RabbitmqBroker declares classic queues only (its queue arguments are fixed in "
                  "dramatiq 2.2); quorum queue support was proposed in Bogdanp/dramatiq#869 and #871, both "
                  "closed unmerged"}

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        check_shapes(type(self), settings)
        self._knobs = validate_options(settings)
        self.settings = settings
        self._broker, self._results = build_broker(settings, producer=True)
        self._encoder = dramatiq.get_encoder()
        self._specs: dict[tuple[str, ...], dict[str, Any]] = {}  # by queues: the worker groups, for describe

    # -- errors -------------------------------------------------------------------------------------

    def _unavailable(self, what: str, url: str, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"dramatiq {what} at {redact_url(url)} did not answer: "
                                  f"{type(exc).__name__}: {exc}")

    def _drop_thread_connection(self) -> None:
        """After an AMQP error, forget this thread's pika connection so the next call opens a fresh one."""
        if isinstance(self._broker, RabbitmqBroker):
            with contextlib.suppress(Exception):  # closing a broken connection may fail any way
                del self._broker.connection

    # -- protocol -----------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise `BackendUnavailable` naming the URL (password hidden) unless the broker, and the result
        store when results are on, answer within about 2 s."""
        if self.settings.broker == "redis":
            self._ping_redis("broker Redis", self.settings.broker_url)
        else:
            self._ping_rabbitmq()
        result_url = self.settings.effective_result_url
        if self.settings.results and result_url and (self.settings.broker != "redis"
                                                     or result_url != self.settings.broker_url):
            self._ping_redis("result store Redis", result_url)

    def _ping_redis(self, what: str, url: str) -> None:
        client = redis_url.client(url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(what, url, exc) from exc
        finally:
            client.close()

    def _rabbitmq_connection(self) -> pika.BlockingConnection:
        params = pika.URLParameters(self.settings.broker_url)
        params.socket_timeout = PING_TIMEOUT_S
        params.stack_timeout = PING_TIMEOUT_S + 1
        params.blocked_connection_timeout = PING_TIMEOUT_S
        params.connection_attempts = 1
        return pika.BlockingConnection(params)

    def _ping_rabbitmq(self) -> None:
        try:
            connection = self._rabbitmq_connection()
        except _AMQP_ERRORS as exc:
            raise self._unavailable("broker RabbitMQ", self.settings.broker_url, exc) from exc
        with contextlib.suppress(*_AMQP_ERRORS):
            connection.close()

    def _message(self, job: JobRequest) -> dramatiq.Message:
        """The message `enqueue` hands the broker for `job` (and asserts our encoder is dramatiq's global one)."""
        if dramatiq.get_encoder() is not self._encoder:
            # Another backend built in this process since replaced dramatiq's global encoder: ours must encode.
            dramatiq.set_encoder(self._encoder)
        return dramatiq.Message(
            queue_name=job.queue,
            actor_name=ACTOR_NAME,
            args=(job.task, dict(job.args), job.meta()),
            kwargs={},
            options=message_options(job.task, job.args),
            message_id=job.id,
        )

    def codec(self, job: JobRequest) -> Codec:
        """Encode: the `dramatiq.Message` `enqueue` builds (on Redis copied with a ``redis_message_id``, as
        ``RedisBroker.enqueue`` does) and ``Message.encode`` (dramatiq's encoder over ``asdict()``).
        Decode: ``Message.decode``, as the consumers of both brokers do.

        Line references in the module docstring. The broker's middleware hooks and I/O are not timed."""
        message = self._message(job)
        if isinstance(self._broker, RedisBroker):
            message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        data = message.encode()

        def decode() -> tuple[str, Any, Any]:
            task, args, meta = dramatiq.Message.decode(data).args
            return task, args, meta

        return data, decode

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        """Enqueue `job` as one dramatiq message (message_id = `job.id`) for ``queuebench_run`` on `job.queue`."""
        message = self._message(job)
        try:
            self._broker.enqueue(message)
        except _UNAVAILABLE_ERRORS as exc:
            self._drop_thread_connection()
            raise self._unavailable(f"broker {self._broker_label()}", self.settings.broker_url, exc) from exc
        return EnqueueReceipt(job.id, job.queue, time.time_ns())

    def _broker_label(self) -> str:
        return "Redis" if self.settings.broker == "redis" else "RabbitMQ"

    def _result_keys(self, task_id: str) -> list[str]:
        assert self._results is not None
        return [self._results.build_message_key(dramatiq.Message(queue_name=queue, actor_name=ACTOR_NAME, args=(),
                                                                 kwargs={}, options={}, message_id=task_id))
                for queue in self.settings.queues]

    def status(self, task_id: str) -> TaskStatus | None:
        """Dramatiq's stored result for `task_id` (see the module docstring for the mapping); None when
        results are off (dramatiq then keeps no record of a task)."""
        if self._results is None:
            return None
        url = self.settings.effective_result_url or ""
        try:
            with self._results.client.pipeline(transaction=False) as pipe:
                for key in self._result_keys(task_id):
                    pipe.lindex(key, 0)
                found = [data for data in pipe.execute() if data is not None]
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable("result store Redis", url, exc) from exc
        if not found:
            return TaskStatus(task_id, "queued")
        try:
            result = unwrap_result(self._encoder.decode(found[0]))
        except ResultFailure as exc:
            if exc.orig_exc_type:
                error = f"{exc.orig_exc_type}: {exc.orig_exc_msg}" if exc.orig_exc_msg else exc.orig_exc_type
            else:
                error = str(exc)
            return TaskStatus(task_id, "failure", None, _last_line(error))
        return TaskStatus(task_id, "success", result)

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        """One ``dramatiq backends.dramatiq_worker -p P -t T -Q <queues>`` (dramatiq's own CLI and processes)."""
        check_worker_spec(self.name, spec)
        if spec.acks_late is False:
            raise UnsupportedOption("acks_late", False, self.name,
                                    "dramatiq always acknowledges a message after its actor has run")
        prefetch = self._prefetch(spec.prefetch)
        env = self.settings.to_env() | {
            # Always set, so the effective value is known: 0 is dramatiq's own "use the default".
            ENV_QUEUE_PREFETCH: str(prefetch or 0),
            ENV_DELAY_QUEUE_PREFETCH: str(self._knobs["delay_queue_prefetch"] or 0),
            ENV_WORKER_TIMEOUT: str(self._knobs["worker_timeout_ms"] or DEFAULT_WORKER_TIMEOUT_MS),
        }
        argv = [str(Path(sys.executable).parent / "dramatiq"), WORKER_MODULE,
                "-p", str(spec.processes), "-t", str(spec.threads), "-Q", *spec.queues]
        self._specs[tuple(spec.queues)] = {
            "queues": list(spec.queues), "processes": spec.processes, "threads": spec.threads, "slots": spec.slots,
            "queue_prefetch": prefetch or _default_queue_prefetch(spec.threads),
            "queue_prefetch_source": "set" if prefetch else "dramatiq default (2 x threads)",
            "delay_queue_prefetch": self._knobs["delay_queue_prefetch"] or min(spec.threads * 1000, 65535),
            "acks": "after the actor runs (dramatiq always)",
        }
        return [WorkerCommand(name=f"dramatiq-{'-'.join(spec.queues)}", argv=argv, env=env)]

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        """Dramatiq acknowledges a message after its actor has run (at least once). On Redis a dead
        worker's unacknowledged messages come back once its heartbeat is older than the heartbeat timeout
        and some process runs the broker's maintenance; on RabbitMQ as soon as the connection closes, and the
        producer publishes with confirms only with ``confirm_delivery`` (`DeliveryContract.publish_confirms`)."""
        if self.settings.broker == "redis":
            timeout_ms = self._knobs["heartbeat_timeout_ms"] or 60_000
            recovery = (f"requeued by broker maintenance once the dead worker's heartbeat is {timeout_ms} ms "
                        "old (maintenance runs on a fraction of commands; an idle cluster may not run it)")
        else:
            recovery = "redelivered by RabbitMQ when the worker's connection closes"
        confirms = None if self.settings.broker == "redis" else bool(self._knobs["confirm_delivery"])
        return DeliveryContract("at-least-once", "redelivered: " + recovery, "redelivered with it", recovery,
                                "https://dramatiq.io/guide.html#message-delivery (acks after processing)",
                                publish_confirms=confirms)

    def _prefetch(self, spec_prefetch: int | None) -> int | None:
        knob = self._knobs["queue_prefetch"]
        if spec_prefetch is not None and knob is not None and spec_prefetch != knob:
            raise UnsupportedOption("prefetch", spec_prefetch, self.name,
                                    f"conflicts with [dramatiq] queue_prefetch={knob}; give one of them")
        if spec_prefetch is not None and not 1 <= spec_prefetch <= 65535:
            raise UnsupportedOption("prefetch", spec_prefetch, self.name, "dramatiq takes 1 to 65535")
        return spec_prefetch if spec_prefetch is not None else knob

    def queue_depths(self) -> Mapping[str, int]:
        """Messages waiting per queue of `settings.queues`: the queue plus its delay queue (retries waiting
        to be moved back); fetched-but-unacknowledged messages are not counted. Missing queues count 0."""
        try:
            if isinstance(self._broker, RedisBroker):
                client = self._broker.client
                with client.pipeline(transaction=False) as pipe:
                    for queue in self.settings.queues:
                        pipe.llen(f"{BROKER_NAMESPACE}:{queue}")
                        pipe.llen(f"{BROKER_NAMESPACE}:{dq_name(queue)}")
                    counts = pipe.execute()
                return {queue: int(counts[2 * i]) + int(counts[2 * i + 1])
                        for i, queue in enumerate(self.settings.queues)}
            assert isinstance(self._broker, RabbitmqBroker)
            depths = {}
            for queue in self.settings.queues:
                ready, delayed, _dead = self._broker.get_queue_message_counts(queue)
                depths[queue] = ready + delayed
            return depths
        except _UNAVAILABLE_ERRORS as exc:
            self._drop_thread_connection()
            raise self._unavailable(f"broker {self._broker_label()}", self.settings.broker_url, exc) from exc

    def purge(self) -> None:
        """Empty this configuration's queues (with their delay and dead-letter queues) and delete its results.

        Redis: dramatiq's ``flush`` per queue, then the workers' unacknowledged-message sets of these queues
        and the heartbeats of workers left with none, then the result keys
        ``dramatiq-results:<queue>:queuebench_run:*``. RabbitMQ: the queues (with .DQ and .XQ) are deleted,
        because Celery declares queues of the same names without dramatiq's dead-letter arguments and
        would fail on ours (PRECONDITION_FAILED). Never FLUSHDB, never another queue's keys.
        """
        for queue in self.settings.queues:
            self._broker.flush(queue)
        if isinstance(self._broker, RabbitmqBroker):
            self._delete_rabbitmq_queues()
        if isinstance(self._broker, RedisBroker):
            self._purge_redis_acks(self._broker.client)
        if self._results is not None:
            client = self._results.client
            for queue in self.settings.queues:
                batch: list[bytes] = []
                for key in client.scan_iter(match=f"{RESULTS_NAMESPACE}:{queue}:{ACTOR_NAME}:*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        client.delete(*batch)
                        batch.clear()
                if batch:
                    client.delete(*batch)

    def _delete_rabbitmq_queues(self) -> None:
        params = pika.URLParameters(pika_url(self.settings.broker_url))
        params.socket_timeout = CONNECT_TIMEOUT_S
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            for queue in self.settings.queues:
                for name in (queue, dq_name(queue), xq_name(queue)):
                    channel.queue_delete(name)
        finally:
            connection.close()

    def retry_policy(self) -> RetryPolicy:
        """`poison` gets the Retries middleware's default ``max_retries`` (20), with no backoff."""
        return RetryPolicy(DRAMATIQ_MAX_RETRIES, "min_backoff = max_backoff = 0: re-enqueued through the delay "
                           "queue with eta now",
                           "dramatiq.middleware.Retries(max_retries=20) default, per-message options, "
                           "https://dramatiq.io/guide.html#message-retries")

    def held_task_ids(self) -> set[str] | None:
        """Task ids the Redis broker still holds: waiting in a queue (or its delay queue) or fetched and not
        acknowledged (an ``__acks__`` set of some worker, requeued by maintenance once that worker's heartbeat
        is older than the heartbeat timeout). Read with plain LRANGE/SMEMBERS/HMGET, so no maintenance runs.
        None on RabbitMQ (its unacknowledged messages cannot be read without consuming them)."""
        if not isinstance(self._broker, RedisBroker):
            return None
        client = self._broker.client
        held: set[str] = set()
        for name in (n for q in self.settings.queues for n in (q, dq_name(q))):
            prefix = f"{BROKER_NAMESPACE}:{name}"
            redis_ids = set(client.lrange(prefix, 0, -1))
            for key in client.scan_iter(match=f"{BROKER_NAMESPACE}:__acks__.*.{name}", count=1000):
                redis_ids.update(client.smembers(key))
            if redis_ids:
                for data in client.hmget(f"{prefix}.msgs", list(redis_ids)):
                    if data is not None:
                        held.add(dramatiq.Message.decode(data).message_id)
        return held

    def _purge_redis_acks(self, client: redis.Redis) -> None:
        queues = "|".join(re.escape(name) for q in self.settings.queues for name in (q, dq_name(q)))
        ours = re.compile(rf"^{re.escape(BROKER_NAMESPACE)}:__acks__\.([0-9a-f-]+)\.(?:{queues})$")
        acks_prefix = f"{BROKER_NAMESPACE}:__acks__."
        remaining_owners: set[str] = set()
        for raw in client.scan_iter(match=f"{acks_prefix}*", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if ours.match(key):
                client.delete(key)
            else:
                remaining_owners.add(key[len(acks_prefix):].split(".", 1)[0])
        # As dramatiq's own maintenance does for dead workers: a heartbeat whose worker holds no
        # unacknowledged messages serves nothing (a live worker writes its own back on its next poll).
        heartbeats = f"{BROKER_NAMESPACE}:__heartbeats__"
        stale = [m for m in client.zrange(heartbeats, 0, -1)
                 if (m.decode() if isinstance(m, bytes) else m) not in remaining_owners]
        if stale:
            client.zrem(heartbeats, *stale)

    def describe(self) -> Mapping[str, Any]:
        """Versions (dramatiq, redis-py, pika, servers) and the effective settings, stored with every result."""
        knobs = self._knobs
        results = self.settings.results
        retries_policy = ("flaky: max_retries=fail_times, poison: max_retries=dramatiq's default "
                          f"{DRAMATIQ_MAX_RETRIES}, both min_backoff=max_backoff=0 (re-enqueued through the "
                          "delay queue with eta=now); every other task max_retries=0 (dramatiq default would be "
                          f"20 retries, backoff from {DEFAULT_MIN_BACKOFF} ms up to {DEFAULT_MAX_BACKOFF} ms)")
        return {
            "backend": self.name,
            "dramatiq_version": dramatiq.__version__,
            "redis_py_version": redis.__version__,
            "pika_version": pika.__version__,
            "hiredis": _dist("hiredis"),
            "msgpack_version": _dist("msgpack"),
            "broker": self.settings.broker,
            "broker_url": redis_url.redact(self.settings.broker_url),
            "broker_topology": redis_url.topology(self.settings.broker_url),
            "broker_server_version": self._server_version(),
            "broker_class": f"{type(self._broker).__module__}.{type(self._broker).__qualname__}",
            "serializer": self.settings.serializer,
            "encoder_class": f"{type(self._encoder).__module__}.{type(self._encoder).__qualname__}",
            "worker_command": "dramatiq backends.dramatiq_worker -p <processes> -t <threads> -Q <queues> "
                              "(slots = processes x threads)",
            "workers": list(self._specs.values()),
            "queue_prefetch": knobs["queue_prefetch"] or "per worker spec, else dramatiq default 2 x threads",
            "delay_queue_prefetch": knobs["delay_queue_prefetch"] or "dramatiq default 1000 x threads (max 65535)",
            "worker_timeout_ms": knobs["worker_timeout_ms"] or DEFAULT_WORKER_TIMEOUT_MS,
            "time_limit_ms": knobs["time_limit_ms"] or DEFAULT_TIME_LIMIT_MS,
            "heartbeat_timeout_ms": (knobs["heartbeat_timeout_ms"] or DEFAULT_HEARTBEAT_TIMEOUT
                                     if self.settings.broker == "redis" else None),
            "maintenance_chance": (knobs.get("maintenance_chance") or 1000) if self.settings.broker == "redis" else None,
            "confirm_delivery": bool(knobs["confirm_delivery"]) if self.settings.broker == "rabbitmq" else None,
            "acks": "after the actor runs (dramatiq always; acks_late=True is a no-op)",
            "middleware": [type(m).__name__ for m in self._broker.middleware],
            "retries": retries_policy,
            "retry_policy": self.retry_policy().record(),
            "results": results,
            "result_backend": (f"RedisBackend at {redact_url(self.settings.effective_result_url or '')}, "
                               f"keys {RESULTS_NAMESPACE}:<queue>:{ACTOR_NAME}:<id>") if results else None,
            "result_ttl_ms": (knobs["result_ttl_ms"] or DEFAULT_RESULT_TTL) if results else None,
            "result_ttl_note": None if results or knobs["result_ttl_ms"] is None else "ignored: results are off",
            "routing": self.settings.routing,
            "queues": list(self.settings.queues),
            "knobs": dict(self.settings.options),
        }

    def _server_version(self) -> str | None:
        try:
            if self.settings.broker == "redis":
                client = redis_url.client(self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                          socket_timeout=PING_TIMEOUT_S)
                try:
                    return str(client.info("server").get("redis_version"))
                finally:
                    client.close()
            connection = self._rabbitmq_connection()
            try:
                props = getattr(getattr(connection, "_impl", None), "server_properties", None) or {}
                version = props.get("version")
                return version.decode() if isinstance(version, bytes) else version
            finally:
                connection.close()
        except (redis.RedisError, *_AMQP_ERRORS) as exc:
            return f"unavailable: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Close the producer's connections (every thread's, on RabbitMQ) and the result store's pool."""
        self._broker.close()
        if isinstance(self._broker, RedisBroker):
            self._broker.client.close()
        if self._results is not None:
            self._results.client.close()
