"""Accepts every task and runs nothing: the ceiling of the harness's own path (Locust -> API -> ledger).

Not a queue and never compared with one: it exists so the harness can measure what it costs. `enqueue`
writes the task's `started` and `finished` ledger rows at once (attempt 1, outcome ok) without touching
a broker, so a run through it passes the same self-checks as a real one, and its throughput is what the
API and Locust can carry on this machine with no queue at all (see benchmarks/NOTES.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from backends import ledger
from backends.base import (
    BackendBase,
    BackendSettings,
    Codec,
    DeliveryContract,
    EnqueueReceipt,
    JobRequest,
    TaskStatus,
    UnsupportedOption,
    WorkerCommand,
    WorkerSpec,
    check_common,
    parse_knobs,
)


class DiscardBackend(BackendBase):
    name: ClassVar[str] = "discard"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis", "rabbitmq"})
    serializers: ClassVar[frozenset[str]] = frozenset({"json", "pickle", "msgpack"})

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        parse_knobs(self.name, self.knobs, settings.options)
        self.settings = settings

    def ping(self) -> None:
        return None

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        ledger.record_ran(job.meta(), job.task, 1, outcome="ok")
        return EnqueueReceipt(job.id, job.queue, time.time_ns())

    def codec(self, job: JobRequest) -> Codec:
        """No codec: it accepts each task and drops it: nothing is serialized."""
        raise UnsupportedOption("codec", job.task, self.name, "it accepts each task and drops it: nothing is serialized")

    def status(self, task_id: str) -> TaskStatus | None:
        return TaskStatus(task_id, "success")

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        return []  # nothing runs tasks: there are none to run

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        return DeliveryContract("at-most-once", "n/a: no task runs (each is recorded as done and dropped)", "none", "none",
                                "backends/discard_backend.py")

    def queue_depths(self) -> Mapping[str, int]:
        return {queue: 0 for queue in self.settings.queues}

    def purge(self) -> None:
        return None

    def describe(self) -> Mapping[str, Any]:
        return {"backend": self.name, "note": "harness ceiling: tasks are accepted and dropped",
                "routing": self.settings.routing, "queues": list(self.settings.queues)}

    def close(self) -> None:
        return None
