"""Every request a Locust process sent, accounted for: answered, or unanswered when the load stopped.

No Locust import here, so tests load the file as it is. `InFlight` holds the requests a process has
sent and not yet seen answered, each under its request id (the ``X-Request-Id`` header, which the API
stores in the task's `sent` ledger row). When the load phase ends, the scenario waits a bounded time
(``--qb-stop-wait-s``) for those answers; whatever is still unanswered then is written as a row with
status `UNANSWERED` and its request id, and an answer that arrives after that is dropped (its row is
already written, and Locust does not count it either), so the raw log and Locust's count agree and the
runner can look each unanswered request up in the ledger by its id.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from typing import Any

#: Status written for a request still unanswered when the load phase ended and its wait ran out.
UNANSWERED = -1
#: Columns of the raw request log (one CSV per Locust process).
RAW_COLUMNS = ("scheduled_ns", "sent_ns", "done_ns", "status", "task", "task_id", "request_id")
#: The inventory host a deployed Locust process runs on (`backends.ledger.HOST_ENV`, set by the deployment's
#: plan); it tags that process's request ids. Unset in a local run.
HOST_ENV = "QUEUEBENCH_HOST"
#: Ends a request id's host tag: ``<host>:<pid hex>-<counter hex>``.
HOST_SEPARATOR = ":"
#: The host tag keeps the characters the API takes in an ``X-Request-Id`` but ``:`` (which ends the tag), at
#: most 40 of them, so an id stays within the API's 64 (the inventory refuses loadgen names it would change).
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
TAG_MAX = 40


def request_ids(prefix: str | None = None) -> Callable[[], str]:
    """A source of request ids unique across the processes of one run: ``<pid hex>-<counter hex>``, and on a
    deployed loadgen host (`HOST_ENV` set) ``<host>:<pid hex>-<counter hex>``, unique across hosts too, so
    the coordinator knows which host's clock stamped a request's ``X-Scheduled-At``."""
    if prefix is None:
        host = _TAG_UNSAFE.sub("_", os.environ.get(HOST_ENV, ""))[:TAG_MAX]
        prefix = (f"{host}{HOST_SEPARATOR}" if host else "") + f"{os.getpid():x}"
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}"


class InFlight:
    """Requests sent and not yet answered; `write(row)` receives each request's one raw row."""

    def __init__(self, write: Callable[[tuple[Any, ...]], None]) -> None:
        self.write = write
        self.pending: dict[str, tuple[int, int, str]] = {}
        #: Requests written as unanswered at stop whose answer came later (dropped, not counted twice).
        self.late_answers = 0

    def __len__(self) -> int:
        return len(self.pending)

    def sent(self, request_id: str, scheduled_ns: int, sent_ns: int, task: str) -> None:
        self.pending[request_id] = (scheduled_ns, sent_ns, task)

    def answered(self, request_id: str, done_ns: int, status: int, task_id: str | None) -> bool:
        """Write the answered request's row. False when it had already been written as unanswered at
        stop: the caller must then not count it anywhere else either."""
        entry = self.pending.pop(request_id, None)
        if entry is None:
            self.late_answers += 1
            return False
        scheduled_ns, sent_ns, task = entry
        self.write((scheduled_ns, sent_ns, done_ns, status, task, task_id, request_id))
        return True

    def give_up(self, now_ns: int) -> int:
        """Write every request still pending as unanswered at stop; return how many there were."""
        pending, self.pending = self.pending, {}
        for request_id, (scheduled_ns, sent_ns, task) in pending.items():
            self.write((scheduled_ns, sent_ns, now_ns, UNANSWERED, task, None, request_id))
        return len(pending)
