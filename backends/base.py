"""The one small interface every queue library sits behind, and the value types it speaks.

A backend adapts one library (Celery, RQ, Dramatiq, the bare-Redis baseline, the inline test double)
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

SETTINGS_ENV = "QUEUEBENCH_SETTINGS"

Broker = Literal["redis", "rabbitmq"]
Serializer = Literal["json", "pickle", "msgpack"]
Routing = Literal["shared", "dedicated"]
State = Literal["queued", "started", "success", "failure"]

BROKERS: tuple[str, ...] = ("redis", "rabbitmq")
SERIALIZERS: tuple[str, ...] = ("json", "pickle", "msgpack")
ROUTINGS: tuple[str, ...] = ("shared", "dedicated")

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
    #: the broker is Redis; required for results with RabbitMQ.
    result_url: str | None = None
    serializer: str = "json"
    results: bool = True
    routing: str = "shared"
    long_threshold_ms: int = DEFAULT_LONG_THRESHOLD_MS
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def effective_result_url(self) -> str | None:
        if self.result_url:
            return self.result_url
        return self.broker_url if self.broker == "redis" else None

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

    ``slots`` (processes x threads) is the effective concurrency every result records.
    None means "the library's own default" for that knob.
    """

    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    processes: int = 1
    threads: int = 1
    pool: str | None = None  # Celery: prefork | threads | gevent | solo
    worker_class: str | None = None  # RQ: Worker | SimpleWorker | SpawnWorker (or a dotted path)
    prefetch: int | None = None
    acks_late: bool | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return self.processes * self.threads


@dataclass(frozen=True)
class WorkerCommand:
    """A worker process to start: the library's own CLI, with the environment it needs."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


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


@runtime_checkable
class QueueBackend(Protocol):
    """The contract. Keep it small: anything a library cannot do raises `UnsupportedOption`."""

    name: ClassVar[str]
    brokers: ClassVar[frozenset[str]]
    serializers: ClassVar[frozenset[str]]
    settings: BackendSettings

    def ping(self) -> None:
        """Raise `BackendUnavailable` (naming the URL and the cause) unless the broker answers."""

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        """Hand `job` to the library, with `job.id` as its task id, on `job.queue`."""

    def status(self, task_id: str) -> TaskStatus | None:
        """The library's own state and result; None when the library has no record of the id."""

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        """The library's own CLI invocations that start `spec` (several for some pools)."""

    def queue_depths(self) -> Mapping[str, int]:
        """Messages waiting per queue of `settings.queues`."""

    def purge(self) -> None:
        """Delete this configuration's queues and results, and nothing else."""

    def describe(self) -> Mapping[str, Any]:
        """Library and broker versions and the effective settings, stored with every result."""

    def close(self) -> None:
        """Release connections."""


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


def check_worker_spec(backend_name: str, spec: WorkerSpec) -> None:
    if spec.processes < 1 or spec.threads < 1:
        raise UnsupportedOption("processes/threads", (spec.processes, spec.threads), backend_name,
                                "both must be at least 1")


def reject_unknown_options(backend_name: str, options: Mapping[str, Any], known: Mapping[str, str]) -> None:
    """Refuse library knobs this backend does not know; `known` maps each name to what it does."""
    for key in options:
        if key not in known:
            raise UnsupportedOption(f"[{backend_name}] {key}", options[key], backend_name,
                                    f"known knobs: {', '.join(sorted(known)) or 'none'}")
