"""The open-loop base user every queuebench scenario builds on. HTTP only: no queue library here.

Locust's own users are closed loop (the next request waits for the last reply), which hides latency
when the server slows down (coordinated omission). `OpenLoopUser` keeps its own schedule instead:
arrivals at a target rate, evenly spaced (`constant`) or Poisson, each sent by its own greenlet at its
scheduled time with an ``X-Scheduled-At`` header, never waiting for earlier replies. How late each send
was against its schedule (schedule lag) is measured too.

Options (Locust's own mechanism, so the same file serves the runner and a person at the web UI):
``--qb-rate`` (tasks/s offered, over all users), ``--qb-arrival``, ``--qb-task``, ``--qb-args`` (JSON),
``--qb-log-dir`` (raw per-request rows for exact figures: one CSV per Locust process).

When Locust stops the run (``-t`` over, or the shape's last stage) with ``--stop-timeout`` > 0, the user
stops scheduling and waits for its sends under way, so Locust's request count equals what the API saw.

Every request also goes to Locust's stats under the name ``POST /tasks``; the schedule lag goes under
request type ``LAG`` (not a request: it is kept apart from the request count).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import gevent
from gevent.pool import Group
from locust import FastHttpUser, events, task
from locust.user.task import LOCUST_STATE_STOPPING

RAW_COLUMNS = ("scheduled_ns", "sent_ns", "done_ns", "status", "task", "task_id")


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("queuebench", "Open-loop task arrivals (queuebench scenarios)")
    group.add_argument("--qb-rate", type=float, default=10.0, env_var="QB_RATE",
                       help="Tasks per second offered, in all (split evenly between users).")
    group.add_argument("--qb-arrival", choices=["constant", "poisson"], default="constant", env_var="QB_ARRIVAL",
                       help="Evenly spaced arrivals, or a Poisson process with the same mean rate.")
    group.add_argument("--qb-task", default="noop", env_var="QB_TASK",
                       help="Task to send: noop, sleep_ms, cpu_ms, echo, flaky, add.")
    group.add_argument("--qb-args", default="{}", env_var="QB_ARGS",
                       help='Task arguments as JSON, e.g. \'{"ms": 50}\'.')
    group.add_argument("--qb-mix", default="", env_var="QB_MIX",
                       help='routing_mix: JSON list of [weight, task, args], e.g. '
                            '\'[[90, "sleep_ms", {"ms": 10}], [10, "sleep_ms", {"ms": 1000}]]\'.')
    group.add_argument("--qb-sizes", default="100,10000,100000", env_var="QB_SIZES",
                       help="payload: echo payload sizes in bytes, comma-separated, sent in equal shares.")
    group.add_argument("--qb-steps", default="10,20,40,80,160", env_var="QB_STEPS",
                       help="step: offered rates (tasks/s), one per stage.")
    group.add_argument("--qb-step-s", type=float, default=10.0, env_var="QB_STEP_S",
                       help="step: seconds per stage.")
    group.add_argument("--qb-poll-interval-ms", type=float, default=50.0, env_var="QB_POLL_INTERVAL_MS",
                       help="poll: milliseconds between status polls.")
    group.add_argument("--qb-log-dir", default="", env_var="QB_LOG_DIR",
                       help="Write one raw row per request (CSV, one file per Locust process) here.")


class RawLog:
    """Appends one CSV row per request; exact latencies come from these rows, not Locust's buckets."""

    def __init__(self, directory: str) -> None:
        self.fh = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            self.fh = open(os.path.join(directory, f"requests-{os.getpid()}.csv"), "a", buffering=1)  # noqa: SIM115
            if self.fh.tell() == 0:
                self.fh.write(",".join(RAW_COLUMNS) + "\n")

    def write(self, *values: Any) -> None:
        if self.fh is not None:
            self.fh.write(",".join("" if v is None else str(v) for v in values) + "\n")


_raw_log: RawLog | None = None


def raw_log(environment: Any) -> RawLog:
    global _raw_log
    if _raw_log is None:
        _raw_log = RawLog(getattr(environment.parsed_options, "qb_log_dir", "") or "")
    return _raw_log


class OpenLoopUser(FastHttpUser):
    """Sends `choose()`'s task at `rate()` on its own schedule; subclasses pick what to send."""

    abstract = True
    # Enough pooled connections that a slow reply never delays the next scheduled send.
    concurrency = 200
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.arrival = options.qb_arrival
        self.task_name = options.qb_task
        self.task_args = json.loads(options.qb_args or "{}")
        self.random = random.Random()
        self.senders = Group()
        self.log = raw_log(self.environment)

    def users(self) -> int:
        runner = self.environment.runner
        count = getattr(runner, "target_user_count", None) or getattr(runner, "user_count", 1) or 1
        return max(1, int(count))

    def rate(self) -> float:
        """Tasks per second this user offers now (the total rate shared between users)."""
        return float(self.environment.parsed_options.qb_rate) / self.users()

    def choose(self) -> tuple[str, dict[str, Any]]:
        """The task and arguments of the next arrival."""
        return self.task_name, self.task_args

    def stopping(self) -> bool:
        """True once Locust asked this user to stop gracefully (run time over, with --stop-timeout > 0)."""
        return self._state == LOCUST_STATE_STOPPING

    @task
    def arrivals(self) -> None:
        next_ns = time.time_ns()
        while not self.stopping():
            rate = self.rate()
            if rate <= 0:
                gevent.sleep(0.1)
                next_ns = time.time_ns()
                continue
            now = time.time_ns()
            if next_ns > now:
                gevent.sleep((next_ns - now) / 1e9)
            task_name, args = self.choose()
            if self.stopping():
                break
            self.senders.spawn(self.send, next_ns, task_name, args)
            gap_s = self.random.expovariate(rate) if self.arrival == "poisson" else 1.0 / rate
            next_ns += int(gap_s * 1e9)
        # No new arrivals; the sends already under way finish, so Locust counts every request the API saw.
        self.senders.join(timeout=self.network_timeout)

    def send(self, scheduled_ns: int, task_name: str, args: dict[str, Any]) -> str | None:
        """POST one task at (or as soon as possible after) its scheduled time; return its id."""
        sent_ns = time.time_ns()
        lag_ms = (sent_ns - scheduled_ns) / 1e6
        events.request.fire(request_type="LAG", name="schedule lag", response_time=lag_ms, response_length=0,
                            exception=None, context={}, response=None, url=None, start_time=time.time())
        task_id = None
        with self.client.post("/tasks", json={"task": task_name, "args": args}, name="POST /tasks",
                              headers={"X-Scheduled-At": str(scheduled_ns)}, catch_response=True) as response:
            status = response.status_code
            if status == 202:
                try:
                    task_id = response.json().get("id")
                except ValueError:
                    response.failure("202 without a JSON body")
            else:
                # Status 0: no answer at all; the client's own error says why (refused, reset, timeout).
                error = getattr(response, "error", None)
                detail = repr(error) if error is not None else (response.text or "")[:200]
                response.failure(f"HTTP {status}: {detail}")
        self.log.write(scheduled_ns, sent_ns, time.time_ns(), status, task_name, task_id)
        return task_id

    def on_stop(self) -> None:
        # Sends already under way finish (bounded by the network timeout) so none is half-counted.
        self.senders.join(timeout=self.network_timeout)
