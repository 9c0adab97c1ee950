"""Backends that break the delivery contract on purpose, to prove the runner's self-checks catch it.

Both are the bare-Redis floor (`BaselineBackend`) with one defect in the producer, and are loaded by
dotted path (``backend = "tests.sabotage:DropEveryTenth"``), the way a user's own backend would be.
Each API process counts its own enqueues; the harness's probe (the first enqueue in its process) always
goes through, so the run starts normally and the defect shows only in what it measures.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import ClassVar

from backends import workload
from backends.base import EnqueueReceipt, JobRequest
from backends.baseline_backend import BaselineBackend, queue_key

#: Every this-many-th enqueue of a process is sabotaged.
EVERY = 10


class _Counting(BaselineBackend):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def _sabotage_this_one(self) -> bool:
        with self._lock:
            return next(self._count) % EVERY == 0

    def _push(self, job: JobRequest, times: int) -> EnqueueReceipt:
        message = {"id": job.id, "task": job.task, "args": dict(job.args), "meta": job.meta(), "attempt": 1,
                   "max_retries": workload.max_retries_for(job.task, job.args)}
        for _ in range(times):
            self._redis.lpush(queue_key(job.queue), json.dumps(message, separators=(",", ":")))
        return EnqueueReceipt(job.id, job.queue, time.time_ns())


class DropEveryTenth(_Counting):
    """Answers 202 for every task but never pushes every tenth one: those tasks are lost."""

    name: ClassVar[str] = "sabotage-drop"

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        return self._push(job, 0 if self._sabotage_this_one() else 1)


class RunEveryTenthTwice(_Counting):
    """Pushes every tenth task twice: those tasks run (and finish) twice for one attempt."""

    name: ClassVar[str] = "sabotage-twice"

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        return self._push(job, 2 if self._sabotage_this_one() else 1)
