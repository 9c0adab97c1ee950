"""What every producer does around `QueueBackend.enqueue`: ids, routing, timestamps, the `sent` row.

The API and the runner's drain-mode preloader both submit through `submit`, so every task that reaches
a broker has exactly one `sent` ledger row with its scheduled, sent and enqueued times.

Task ids are 32 hex digits: 24 random and 8 of an HMAC over them. A status lookup can then tell an id
this deployment issued (the library may not have a record yet: "queued") from one it never issued
(404) without storing anything per task; Celery and Dramatiq cannot tell those apart themselves.
The HMAC key comes from ``QUEUEBENCH_ID_KEY`` (`queuebench serve` sets a fresh one per session).
"""

from __future__ import annotations

import hmac
import os
import random
import re
import time
from collections.abc import Mapping
from typing import Any

from backends import ledger, workload
from backends.base import (
    DEFAULT_QUEUE,
    LONG_QUEUE,
    SHORT_QUEUE,
    BackendSettings,
    EnqueueReceipt,
    JobRequest,
    QueueBackend,
)

ID_KEY_ENV = "QUEUEBENCH_ID_KEY"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def _key() -> bytes:
    return os.environ.get(ID_KEY_ENV, "queuebench").encode()


def _tag(random_part: str) -> str:
    return hmac.digest(_key(), random_part.encode(), "sha256").hex()[:8]


_rng: random.Random | None = None
_rng_pid: int | None = None


def _random_hex24() -> str:
    """96 random bits as 24 hex digits, from a generator seeded once per process from the OS.

    Ids need to be unique, not secret (the HMAC tag is what proves an id was issued here), and reading
    the OS's randomness for every request is a system call on the API's hot path. Reseeded after a fork,
    so forked workers never repeat their parent's sequence."""
    global _rng, _rng_pid
    pid = os.getpid()
    if _rng is None or _rng_pid != pid:
        _rng, _rng_pid = random.Random(os.urandom(32)), pid
    return f"{_rng.getrandbits(96):024x}"


def new_task_id() -> str:
    random_part = _random_hex24()
    return random_part + _tag(random_part)


def is_issued_id(task_id: str) -> bool:
    """True when `task_id` has the shape and tag of an id issued under this deployment's key."""
    return bool(_ID_RE.match(task_id)) and hmac.compare_digest(task_id[24:], _tag(task_id[:24]))


def route(task: str, args: Mapping[str, Any], settings: BackendSettings) -> str:
    """The queue a task goes to: one queue when shared; long timed tasks apart when dedicated."""
    if settings.routing == "shared":
        return DEFAULT_QUEUE
    if task in workload.TIMED_TASKS and int(args.get("ms", 0)) >= settings.long_threshold_ms:
        return LONG_QUEUE
    return SHORT_QUEUE


def make_job(settings: BackendSettings, task: str, args: Mapping[str, Any], *, queue: str | None = None,
             scheduled_ns: int | None = None, task_id: str | None = None, probe: bool = False) -> JobRequest:
    """The `JobRequest` every producer hands a backend: a fresh id, the queue routing picks, the arguments
    as they travel (`workload.message_args`: an `echo` task carries its payload), sent now."""
    return JobRequest(
        id=task_id or new_task_id(),
        task=task,
        args=workload.message_args(task, args),
        queue=queue or route(task, args, settings),
        scheduled_ns=scheduled_ns,
        sent_ns=time.time_ns(),
        probe=probe,
    )


def submit(backend: QueueBackend, task: str, args: Mapping[str, Any], *, queue: str | None = None,
           scheduled_ns: int | None = None, task_id: str | None = None,
           probe: bool = False, request_id: str | None = None) -> EnqueueReceipt:
    """Enqueue one task through `backend` and write its `sent` ledger row.

    `args` are the validated task arguments; the message carries `workload.message_args(task, args)`
    (an `echo` task's payload is made here, so it travels through the broker and serializer).
    `request_id` is the client's id for the HTTP request (``X-Request-Id``), kept in the `sent` row.
    """
    job = make_job(backend.settings, task, args, queue=queue, scheduled_ns=scheduled_ns, task_id=task_id,
                   probe=probe)
    receipt = backend.enqueue(job)
    ledger.record_sent(task_id=job.id, task=task, args=args, queue=receipt.queue,
                       scheduled_ns=scheduled_ns, sent_ns=job.sent_ns,
                       enqueued_ns=receipt.enqueued_ns, probe=probe, request_id=request_id)
    return receipt
