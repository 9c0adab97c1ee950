"""Runs each task synchronously in the calling process. For fast unit tests only: never measured."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from backends import workload
from backends.base import (
    BackendBase,
    BackendSettings,
    Codec,
    DeliveryContract,
    EnqueueReceipt,
    JobRequest,
    RetryPolicy,
    TaskStatus,
    UnsupportedOption,
    WorkerCommand,
    WorkerSpec,
    check_common,
    parse_knobs,
)

#: Retries a `poison` task gets here (Celery's default cap, as the baseline's).
POISON_RETRIES = 3


class InlineBackend(BackendBase):
    name: ClassVar[str] = "inline"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis", "rabbitmq"})
    serializers: ClassVar[frozenset[str]] = frozenset({"json", "pickle", "msgpack"})

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        parse_knobs(self.name, self.knobs, settings.options)
        self.settings = settings
        self._results: dict[str, TaskStatus] = {}

    def ping(self) -> None:
        return None

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        enqueued_ns = time.time_ns()
        attempts = workload.max_retries_for(job.task, job.args, poison_retries=POISON_RETRIES) + 1
        for attempt in range(1, attempts + 1):  # the inline "retry mechanism": run again at once
            try:
                result = workload.execute(job.task, job.args, job.meta(), attempt)
            except workload.RETRIED_ERRORS as exc:
                self._results[job.id] = TaskStatus(job.id, "failure", None, str(exc))
                continue
            self._results[job.id] = TaskStatus(job.id, "success", result if self.settings.results else None)
            break
        return EnqueueReceipt(job.id, job.queue, enqueued_ns)

    def codec(self, job: JobRequest) -> Codec:
        """No codec: it runs each task in the calling process: nothing is serialized."""
        raise UnsupportedOption("codec", job.task, self.name, "it runs each task in the calling process: nothing is serialized")

    def status(self, task_id: str) -> TaskStatus | None:
        return self._results.get(task_id)

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        raise UnsupportedOption("workers", spec.slots, self.name, "the inline backend runs tasks in the API process")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(POISON_RETRIES, "none: run again at once", "backends/inline_backend.py POISON_RETRIES")

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        return DeliveryContract("at-most-once", "n/a: tasks run in the API process", "none", "none",
                                "backends/inline_backend.py")

    def queue_depths(self) -> Mapping[str, int]:
        return {queue: 0 for queue in self.settings.queues}

    def purge(self) -> None:
        self._results.clear()

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "serializer": self.settings.serializer,
                "results": self.settings.results, "routing": self.settings.routing}

    def close(self) -> None:
        return None
