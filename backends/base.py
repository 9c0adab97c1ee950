"""The one small interface every queue library sits behind, and the value types it speaks.

A backend adapts one library (Celery, RQ, Dramatiq, Huey, arq, the bare-Redis baseline, the inline test double)
to the harness. It knows nothing of the harness: it enqueues a `JobRequest`, reports a task's status
from the library's own result mechanism, and says which command line starts that library's workers.
The harness, not the backend, measures (see `backends.ledger`).

Settings travel to worker processes as JSON in the environment variable ``QUEUEBENCH_SETTINGS``
(`BackendSettings.to_env` / `from_env`), so a worker started with the library's own CLI builds the
same configuration as the API that feeds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from backends import redis_url

SETTINGS_ENV = "QUEUEBENCH_SETTINGS"

Broker = Literal["redis", "rabbitmq", "sqlite"]
Serializer = Literal["json", "pickle", "msgpack"]
Routing = Literal["shared", "dedicated"]
State = Literal["queued", "started", "success", "failure"]

#: Broker kinds the harness can provide: a private Redis, RabbitMQ, or a SQLite file in the run directory
#: (for libraries that can queue in SQLite: no server at all).
BROKERS: tuple[str, ...] = ("redis", "rabbitmq", "sqlite")
SERIALIZERS: tuple[str, ...] = ("json", "pickle", "msgpack")
ROUTINGS: tuple[str, ...] = ("shared", "dedicated")
#: RabbitMQ queue types: classic (RabbitMQ's default) or quorum (replicated, Raft; RabbitMQ 3.8+).
QUEUE_TYPES: tuple[str, ...] = ("classic", "quorum")
#: Broker shapes beyond one Redis server and classic RabbitMQ queues. A backend may use one only when it
#: declares it (`QueueBackend.broker_shapes`): a Redis master found through Redis Sentinel
#: (``redis+sentinel://`` URLs, `backends.redis_url`), a Redis Cluster, RabbitMQ quorum queues.
SHAPES: tuple[str, ...] = ("sentinel", "cluster", "quorum")

#: Queue names. `shared` routing sends everything to DEFAULT_QUEUE; `dedicated` splits SHORT/LONG.
DEFAULT_QUEUE = "default"
SHORT_QUEUE = "short"
LONG_QUEUE = "long"

#: `sleep_ms`/`cpu_ms` tasks at or above this many milliseconds count as long under dedicated routing.
DEFAULT_LONG_THRESHOLD_MS = 100


class BackendError(Exception):
    """Base class of the errors a backend raises on purpose."""


class BackendUnavailable(BackendError):
    """The broker (or result store) cannot be reached; the message names the URL and the cause."""


class UnsupportedOption(BackendError):
    """An option this library cannot honour. Never substitute a default silently: raise this."""

    def __init__(self, option: str, value: Any, backend: str, reason: str = "") -> None:
        self.option, self.value, self.backend, self.reason = option, value, backend, reason
        text = f"{backend} does not support {option}={value!r}"
        super().__init__(f"{text}: {reason}" if reason else text)


@dataclass(frozen=True)
class BackendSettings:
    """What the API and the workers of one configuration share.

    `options` holds library-specific knobs (the matrix's ``[celery]``, ``[rq]``, ``[dramatiq]`` tables);
    a backend raises `UnsupportedOption` for a key it does not know.
    """

    broker: str = "redis"
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: Redis URL holding task results (and nothing the harness measures). None: the broker's URL when
    #: the broker is Redis or SQLite (``sqlite:////abs/path.sqlite3``); required for results with RabbitMQ.
    result_url: str | None = None
    serializer: str = "json"
    results: bool = True
    routing: str = "shared"
    long_threshold_ms: int = DEFAULT_LONG_THRESHOLD_MS
    options: Mapping[str, Any] = field(default_factory=dict)
    #: RabbitMQ only: the type of the queues the library declares (`QUEUE_TYPES`).
    queue_type: str = "classic"

    @property
    def shapes(self) -> tuple[str, ...]:
        """The broker shapes (`SHAPES`) these settings use: the topology of each Redis URL that is not a
        single server, and ``quorum`` for quorum queues."""
        found = [redis_url.topology(url) for url in (self.broker_url, self.result_url) if url]
        if self.queue_type != "classic":
            found.append(self.queue_type)
        return tuple(dict.fromkeys(t for t in found if t != "single"))

    @property
    def effective_result_url(self) -> str | None:
        if self.result_url:
            return self.result_url
        return self.broker_url if self.broker != "rabbitmq" else None

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this routing uses, in the order a worker should listen to them."""
        return (DEFAULT_QUEUE,) if self.routing == "shared" else (SHORT_QUEUE, LONG_QUEUE)

    def to_env(self) -> dict[str, str]:
        return {SETTINGS_ENV: json.dumps(dataclasses.asdict(self) | {"options": dict(self.options)})}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BackendSettings:
        environ = os.environ if environ is None else environ
        raw = environ.get(SETTINGS_ENV)
        if not raw:
            return cls()
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class WorkerSpec:
    """One group of workers: which queues, how much concurrency, and how they take messages.

    Only what every library has a notion of lives here; a library's own worker options (Celery's pool,
    RQ's worker class, ...) are knobs it declares (`QueueBackend.knobs`), read from `settings.options`.
    None means "the library's own default" for that setting.
    """

    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    processes: int = 1
    threads: int = 1
    prefetch: int | None = None
    acks_late: bool | None = None

    @property
    def slots(self) -> int:
        """Processes x threads: the effective concurrency, unless the backend's `slots` says otherwise."""
        return self.processes * self.threads


@dataclass(frozen=True)
class WorkerCommand:
    """A worker process to start: the library's own CLI, with the environment it needs."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Knob:
    """One setting of a library that a matrix (``[<backend>]`` table) or ``serve --option`` may set.

    Declared once, on the backend (`QueueBackend.knobs`); the matrix validator, ``serve``, ``queuebench
    backends`` and the tuning sweep all read this declaration. `default` is the library's own default
    (what runs when the knob is unset; None when the library derives it, which `help` then explains);
    `candidates` are the values worth trying when tuning, the default among them.
    """

    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    candidates: tuple[Any, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (a phrase after "must be"), or None when it is."""
        kind = self.type
        if kind is bool:
            ok = isinstance(value, bool)
            return None if ok else "true or false"
        if kind in (int, float):
            numeric = (int,) if kind is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, numeric):
                return f"{'an integer' if kind is int else 'a number'}{self._bounds()}"
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                return f"{'an integer' if kind is int else 'a number'}{self._bounds()}"
        elif not isinstance(value, kind):
            return f"a {kind.__name__}"
        if self.choices and value not in self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        return None

    def _bounds(self) -> str:
        def number(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        if self.low is not None and self.high is not None:
            return f" from {number(self.low)} to {number(self.high)}"
        if self.low is not None:
            return f" >= {number(self.low)}"
        return f" <= {number(self.high)}" if self.high is not None else ""

    @property
    def values_text(self) -> str:
        """The allowed values in a few words (for tables and messages)."""
        if self.choices:
            return " | ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true | false"
        return f"{self.type.__name__}{self._bounds()}"


#: `threads` as ``queuebench tune`` varies it: threads per process at equal slots (a backend lists it in its
#: `spec_knobs` when it runs several tasks per process).
THREADS_KNOB = Knob(int, 1, "threads per process at equal slots (processes = slots / threads); 1 is the "
                    "harness's shape, one process per slot", low=1, high=256, candidates=(1, 2))

Guarantee = Literal["at-most-once", "at-least-once"]


@dataclass(frozen=True)
class DeliveryContract:
    """What a library promises about a task when the worker running it dies, in its own docs' terms.

    `guarantee` is the contract for a task whose worker is killed (SIGKILL) while it runs;
    `in_flight` and `prefetched` say what happens to the task running and to tasks claimed but not yet
    started; `recovery` names the timer or mechanism that brings them back ("none" when nothing does);
    `source` is where the library documents it.
    """

    guarantee: Guarantee
    in_flight: str
    prefetched: str
    recovery: str
    source: str
    #: The guarantee when the whole worker dies rather than the process running the task (None: the same).
    #: Celery with acks_late alone: a dead child's task is acknowledged (lost), a dead worker's comes back.
    whole_worker: Guarantee | None = None
    #: RabbitMQ: whether the producer publishes with confirms (an enqueue returns once the node has the message),
    #: which decides what a broker restart may lose from durable queues of persistent messages; None where the
    #: broker has no such setting.
    publish_confirms: bool | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How a library, as configured, retries a task that fails every time (the `poison` task).

    `max_retries` is what the library's own retry setting promises (its default where it retries failures
    by default, else what this configuration sets), so a poison task runs exactly `attempts` times and
    then fails for good; `delay` says how long the library waits between attempts here, and `source` names
    the setting in the library's docs or code.
    """

    max_retries: int
    delay: str
    source: str

    @property
    def attempts(self) -> int:
        """Executions a poison task gets: the first, then every retry."""
        return 1 + self.max_retries

    def record(self) -> dict[str, Any]:
        return {"max_retries": self.max_retries, "attempts": self.attempts, "delay": self.delay,
                "source": self.source}


def parse_knobs(backend_name: str, declared: Mapping[str, Knob], options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` checked against the backend's declared knobs; raises `UnsupportedOption` naming the knob
    and what it must be. Returns the options that were given (absent knobs keep the library's default)."""
    for key, value in options.items():
        knob = declared.get(key)
        if knob is None:
            raise UnsupportedOption(f"[{backend_name}] {key}", value, backend_name,
                                    f"known knobs: {', '.join(sorted(declared)) or 'none'}")
        problem = knob.problem(value)
        if problem:
            raise UnsupportedOption(f"[{backend_name}] {key}", value, backend_name, f"must be {problem}")
    return dict(options)


@dataclass(frozen=True)
class JobRequest:
    """One task to enqueue. `id` is the harness's id; backends use it as the library's task id."""

    id: str
    task: str
    args: Mapping[str, Any]
    queue: str
    scheduled_ns: int | None = None
    sent_ns: int = 0
    probe: bool = False

    def meta(self) -> dict[str, Any]:
        """What travels in the message beside the task's own arguments (read by `workload.execute`)."""
        meta: dict[str, Any] = {"id": self.id, "sent_ns": self.sent_ns}
        if self.scheduled_ns is not None:
            meta["scheduled_ns"] = self.scheduled_ns
        if self.probe:
            meta["probe"] = True
        return meta


@dataclass(frozen=True)
class EnqueueReceipt:
    id: str
    queue: str
    enqueued_ns: int


@dataclass(frozen=True)
class TaskStatus:
    id: str
    status: State
    result: Any = None
    error: str | None = None


#: What `QueueBackend.codec` returns: the bytes the library hands its broker client for one message, and a
#: function that decodes them as the library's worker does, returning ``(task, args, meta)``.
Codec = tuple[bytes, Callable[[], tuple[str, Mapping[str, Any], Mapping[str, Any]]]]


@runtime_checkable
class QueueBackend(Protocol):
    """The contract. Keep it small: anything a library cannot do raises `UnsupportedOption`.

    The class describes itself, so nothing else in the harness needs editing to add a library:
    `knobs` (its settings, with the library's defaults and values worth tuning; `spec_knobs`,
    `tune_knobs` and `tune_drain_tasks` for ``queuebench tune``), `packages` (the
    distributions whose versions every run records), `concurrency` (one line: how processes x threads
    become the library's own workers), `environment` (pip requirements of a private virtual
    environment when the library cannot share the harness's; empty: the harness's own), `slots` and
    `delivery_contract` (per worker spec) and `retry_policy` (what a task that always fails gets).
    """

    name: ClassVar[str]
    brokers: ClassVar[frozenset[str]]
    serializers: ClassVar[frozenset[str]]
    knobs: ClassVar[Mapping[str, Knob]]
    #: Spec keys this library honours, declared as knobs for ``queuebench tune``: `prefetch`, `acks_late`
    #: and `threads` (threads per process at equal slots: processes = slots / threads), each with the
    #: library's own default and the values worth trying (`candidates`). Empty: none is tuned.
    spec_knobs: ClassVar[Mapping[str, Knob]]
    #: What ``queuebench tune`` varies when ``--knobs`` is not given: names from `knobs` or `spec_knobs`.
    tune_knobs: ClassVar[tuple[str, ...]]
    #: No-op tasks a tuning drain preloads: enough for a window of seconds at the library's default.
    tune_drain_tasks: ClassVar[int]
    #: Knobs whose default (None) the backend derives from threads per process: name -> threads -> the
    #: value used. ``queuebench tune`` does not try that value again as a candidate.
    derived_defaults: ClassVar[Mapping[str, Callable[[int], Any]]]
    packages: ClassVar[tuple[str, ...]]
    concurrency: ClassVar[str]
    environment: ClassVar[tuple[str, ...]]
    #: Broker shapes (`SHAPES`: ``sentinel``, ``cluster``, ``quorum``) the library's connection is built for
    #: here; any other is refused before anything starts (`check_shapes`).
    broker_shapes: ClassVar[frozenset[str]]
    #: Why a shape is refused, in words naming the library's own issue (``{"cluster": "..."}``).
    refused_shapes: ClassVar[Mapping[str, str]]
    settings: BackendSettings

    def ping(self) -> None:
        """Raise `BackendUnavailable` (naming the URL and the cause) unless the broker answers."""

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        """Hand `job` to the library, with `job.id` as its task id, on `job.queue`."""

    def status(self, task_id: str) -> TaskStatus | None:
        """The library's own state and result; None when the library has no record of the id."""

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        """The library's own CLI invocations that start `spec` (several for some pools).

        A command whose ``argv[0]`` is `sys.executable` runs with the interpreter of the backend's
        environment (see `environment`)."""

    @classmethod
    def slots(cls, spec: WorkerSpec) -> int:
        """Tasks `spec` runs at once (processes x threads for every library here); needs no connection."""

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        """What the library promises for tasks of workers started from `spec` with these settings."""

    def retry_policy(self) -> RetryPolicy | None:
        """How the library retries a `poison` task (fails every time) in this configuration; None when the
        backend runs no task body (so no attempt can be counted)."""

    def codec(self, job: JobRequest) -> Codec:
        """Encode `job` through the library's own serialization path, as `enqueue` would publish it, and
        return ``(data, decode)``: `data`, the bytes the library hands its broker client for this message,
        and `decode()`, which turns `data` back into ``(task, args, meta)`` through the path the library's
        worker takes when it consumes the message. Nothing is sent and no broker is needed (a backend may
        build its producer objects lazily, as `enqueue` does, without connecting).

        The harness times calls of `codec` and of `decode` (`backends.codec.time_codec`): so both must do
        what the library does per message and nothing else. The backend's docstring says which library
        functions each one runs. A backend with no serialization of its own raises `UnsupportedOption`."""

    def queue_depths(self) -> Mapping[str, int]:
        """Messages waiting per queue of `settings.queues`."""

    def purge(self) -> None:
        """Delete this configuration's queues and results, and nothing else."""

    def describe(self) -> Mapping[str, Any]:
        """Library and broker versions and the effective settings, stored with every result."""

    def close(self) -> None:
        """Release connections."""


class BackendBase:
    """Defaults a backend may inherit: no knobs (nothing to tune), no private environment, slots = processes x threads, and
    no codec (`codec` raises `UnsupportedOption` until a backend says what its library does)."""

    knobs: ClassVar[Mapping[str, Knob]] = {}
    spec_knobs: ClassVar[Mapping[str, Knob]] = {}
    tune_knobs: ClassVar[tuple[str, ...]] = ()
    tune_drain_tasks: ClassVar[int] = 2000
    derived_defaults: ClassVar[Mapping[str, Callable[[int], Any]]] = {}
    packages: ClassVar[tuple[str, ...]] = ()
    environment: ClassVar[tuple[str, ...]] = ()
    concurrency: ClassVar[str] = "processes x threads"
    broker_shapes: ClassVar[frozenset[str]] = frozenset()
    refused_shapes: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def slots(cls, spec: WorkerSpec) -> int:
        return spec.slots

    def codec(self, job: JobRequest) -> Codec:
        raise UnsupportedOption("codec", job.task, getattr(self, "name", type(self).__name__),
                                "this backend does not expose its message codec")

    def retry_policy(self) -> RetryPolicy | None:
        """None: this backend does not say how its library retries a `poison` task, so its attempts are not
        checked. Every shipped backend that runs task bodies says."""
        return None

    def held_task_ids(self) -> set[str] | None:
        """Fault runs (benchmarks/faults.py): the task ids the broker still holds — waiting in a queue, or
        delivered and not acknowledged (so a recovery timer may bring them back) — read without triggering
        the library's own clean-up. None: this backend cannot say (tasks not finished then count as lost)."""
        return None


def check_common(backend_name: str, brokers: frozenset[str], serializers: frozenset[str],
                 settings: BackendSettings) -> None:
    """Raise `UnsupportedOption` for the settings every backend validates the same way."""
    if settings.broker not in BROKERS:
        raise UnsupportedOption("broker", settings.broker, backend_name, f"known brokers: {', '.join(BROKERS)}")
    if settings.broker not in brokers:
        raise UnsupportedOption("broker", settings.broker, backend_name,
                                f"{backend_name} runs on {', '.join(sorted(brokers))} only")
    if settings.serializer not in serializers:
        raise UnsupportedOption("serializer", settings.serializer, backend_name,
                                f"supported: {', '.join(sorted(serializers))}")
    if settings.routing not in ROUTINGS:
        raise UnsupportedOption("routing", settings.routing, backend_name, f"known: {', '.join(ROUTINGS)}")
    if settings.results and settings.effective_result_url is None:
        raise UnsupportedOption("results", True, backend_name,
                                "results need a Redis result store (result_url) when the broker is RabbitMQ")


def check_shapes(backend: type[Any], settings: BackendSettings) -> None:
    """Raise `UnsupportedOption` for a broker shape (`BackendSettings.shapes`) the backend class does not
    declare, with its stated reason (the library's issue) or, when it gives none, the backends that do."""
    name = getattr(backend, "name", backend.__name__)
    if settings.queue_type not in QUEUE_TYPES:
        raise UnsupportedOption("queue_type", settings.queue_type, name, f"known: {', '.join(QUEUE_TYPES)}")
    if settings.queue_type != "classic" and settings.broker != "rabbitmq":
        raise UnsupportedOption("queue_type", settings.queue_type, name,
                                f"quorum queues are RabbitMQ's; the broker is {settings.broker}")
    declared = getattr(backend, "broker_shapes", frozenset())
    for shape in settings.shapes:
        if shape not in declared:
            raise shape_refused(backend, shape)


def shape_refused(backend: type[Any], shape: str, where: str = "") -> UnsupportedOption:
    """The refusal of a broker shape the backend class does not declare: its own reason (naming the
    library's issue) or, when it gives none, that queuebench's backend does not build that connection.
    `where` says where the shape was found (a server found in cluster mode behind a ``redis://`` URL)."""
    name = getattr(backend, "name", backend.__name__)
    option = "queue_type" if shape == "quorum" else "Redis topology"
    reason = getattr(backend, "refused_shapes", {}).get(shape) or (
        f"queuebench's {name} backend does not build its connection for "
        f"{'quorum queues' if shape == 'quorum' else 'a Redis ' + shape}")
    return UnsupportedOption(option, shape, name, f"{where}{reason}")


def check_worker_spec(backend_name: str, spec: WorkerSpec) -> None:
    if spec.processes < 1 or spec.threads < 1:
        raise UnsupportedOption("processes/threads", (spec.processes, spec.threads), backend_name,
                                "both must be at least 1")
