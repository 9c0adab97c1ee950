"""The open-loop base user every queuebench scenario builds on. HTTP only: no queue library here.

Locust's own users are closed loop (the next request waits for the last reply), which hides latency
when the server slows down (coordinated omission). `OpenLoopUser` keeps its own schedule instead:
arrivals at a target rate, evenly spaced (`constant`) or Poisson, each sent by its own greenlet at its
scheduled time with an ``X-Scheduled-At`` header, never waiting for earlier replies. How late each send
was against its schedule (schedule lag) is measured too.

Options (Locust's own mechanism, so the same file serves the runner and a person at the web UI):
``--qb-rate`` (tasks/s offered, over all users), ``--qb-arrival``, ``--qb-task``, ``--qb-args`` (JSON),
``--qb-log-dir`` (raw per-request rows for exact figures: one CSV per Locust process), ``--qb-api-urls``
(several APIs: each request goes to the next in turn; an inventory with several api hosts).

Overload policy, "send late": a process keeps at most ``--qb-max-in-flight`` requests (default 64)
waiting for their answers. When that bound is reached the schedule is not dropped: the next arrival
waits for a free slot and is sent late, with its scheduled time still in ``X-Scheduled-At``, and its
lag is recorded. So an offered rate above what the API (or this generator) can carry is sent at that
ceiling instead of piling up requests the server cannot answer, and end-to-end latency still counts
from the schedule.

Every request carries an ``X-Request-Id`` (``<pid>-<counter>``, hex; on a deployed loadgen host
``<host>:<pid>-<counter>``, `inflight.request_ids`), which the API stores in the task's `sent` ledger row. When Locust stops the run (``-t`` over, or the shape's last stage; ``--stop-timeout``
must exceed the wait below), each user stops scheduling, waits up to ``--qb-stop-wait-s`` (default 10)
for the answers of requests under way, and writes any still unanswered as a raw row with status -1 and
its request id (`inflight.InFlight`), so the runner matches it against the ledger by id.

Every request also goes to Locust's stats under the name ``POST /tasks``; the schedule lag goes under
request type ``LAG`` (not a request: it is kept apart from the request count).

Distributed (``locust --master`` and ``--worker`` processes; the runner's ``load_workers``): each worker
sends the rate divided by the master's ``--expect-workers`` (Locust passes that option on to its
workers), constant arrivals on their share of one grid (`share.py`), and writes its own raw log. Locust's
headless master quits at the run time after waiting only half a second for its workers' last reports, so
the load ends by a handshake instead: when the master's test stops it asks every worker to end
(`END_REQUEST`); each stops scheduling, waits for its answers under way as above, writes its raw rows,
sends its last stats and then reports its end (`END_REPORT`), which the master awaits (bounded by the
stop wait) before it quits. The master records its roll call of workers in ``--qb-workers-file``
(`RollCall`): who connected, under which worker index, and who reported the end of its load, so the
runner can tell a worker that went missing.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import weakref
from typing import Any

import gevent
import share
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from inflight import HOST_ENV, RAW_COLUMNS, InFlight, request_ids
from locust import FastHttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.user.task import LOCUST_STATE_STOPPING

#: Requests a Locust process keeps waiting for answers at most (``--qb-max-in-flight``): past it, sends
#: go late. 64 is 8x the API's 8 threads (2 gunicorn workers x 4): enough to keep every API thread busy
#: with requests queued behind it, few enough that the requests the API cannot serve wait in the
#: generator's schedule (counted as lag) instead of in sockets, where they would time out.
DEFAULT_MAX_IN_FLIGHT = 64
#: Seconds a stopping user waits for the answers of requests under way (``--qb-stop-wait-s``).
DEFAULT_STOP_WAIT_S = 10.0
REQUEST_ID_HEADER = "X-Request-Id"
SCHEDULED_AT_HEADER = "X-Scheduled-At"
#: Distributed runs: the master asks its workers to end the load with this message, and each worker
#: answers with the other once its last stats are sent.
END_REQUEST = "qb_end_load"
END_REPORT = "qb_load_ended"
#: A worker names its process (pid, host) to the master when its test starts, for the roll call.
HELLO = "qb_worker_hello"
#: Seconds the master waits for its workers' end reports beyond the stop wait (their last stats and the
#: report itself, on loopback or a LAN).
END_REPORT_MARGIN_S = 3.0


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("queuebench", "Open-loop task arrivals (queuebench scenarios)")
    group.add_argument("--qb-rate", type=float, default=10.0, env_var="QB_RATE",
                       help="Tasks per second offered, in all (split evenly between users).")
    group.add_argument("--qb-arrival", choices=["constant", "poisson"], default="constant", env_var="QB_ARRIVAL",
                       help="Evenly spaced arrivals, or a Poisson process with the same mean rate.")
    group.add_argument("--qb-task", default="noop", env_var="QB_TASK",
                       help="Task to send: noop, sleep_ms, cpu_ms, echo, flaky, poison, add.")
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
    group.add_argument("--qb-max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT, env_var="QB_MAX_IN_FLIGHT",
                       help="Requests a Locust process keeps waiting for answers at most; past it, the next "
                            "arrival waits and is sent late (its lag recorded).")
    group.add_argument("--qb-stop-wait-s", type=float, default=DEFAULT_STOP_WAIT_S, env_var="QB_STOP_WAIT_S",
                       help="Seconds a stopping user waits for answers under way; those still unanswered are "
                            "written as status -1 (keep --stop-timeout above it).")
    group.add_argument("--qb-api-urls", default="", env_var="QB_API_URLS",
                       help="Send each request to the next of these API base URLs in turn (comma-separated, "
                            "e.g. http://10.0.0.2:8000,http://10.0.0.3:8000); empty: Locust's --host only.")
    group.add_argument("--qb-workers-file", default="", env_var="QB_WORKERS_FILE",
                       help="On a --master: keep the roll call of its workers here (JSON: who connected, under "
                            "which worker index, who reported the end of its load).")


class RawLog:
    """Appends one CSV row per request; exact latencies come from these rows, not Locust's buckets.

    Buffered (one write per 64 KiB, not per row): flushed when a user stops and when Locust quits."""

    def __init__(self, directory: str) -> None:
        self.fh = None
        #: Rows written by this process (a distributed worker reports it with the end of its load).
        self.rows = 0
        if directory:
            os.makedirs(directory, exist_ok=True)
            self.fh = open(os.path.join(directory, f"requests-{os.getpid()}.csv"), "a", buffering=65536)  # noqa: SIM115
            if self.fh.tell() == 0:
                self.fh.write(",".join(RAW_COLUMNS) + "\n")

    def write(self, values: tuple[Any, ...]) -> None:
        if self.fh is not None:
            self.fh.write(",".join("" if v is None else str(v) for v in values) + "\n")
            self.rows += 1

    def flush(self) -> None:
        if self.fh is not None:
            self.fh.flush()


_raw_log: RawLog | None = None
_slots: BoundedSemaphore | None = None
_next_request_id = request_ids()


def raw_log(environment: Any) -> RawLog:
    global _raw_log
    if _raw_log is None:
        _raw_log = RawLog(getattr(environment.parsed_options, "qb_log_dir", "") or "")
    return _raw_log


def in_flight_slots(environment: Any) -> BoundedSemaphore:
    """The process's bound on requests awaiting answers (shared by its users)."""
    global _slots
    if _slots is None:
        _slots = BoundedSemaphore(max(1, int(getattr(environment.parsed_options, "qb_max_in_flight",
                                                     DEFAULT_MAX_IN_FLIGHT))))
    return _slots


@events.quitting.add_listener
def _flush_on_quit(**_kwargs: Any) -> None:
    if _raw_log is not None:
        _raw_log.flush()


# --- distributed runs: the end of the load as a handshake, and the master's roll call ------------------

#: Set on a worker when the master has asked it to end the load: its users stop scheduling.
_end_requested = Event()
#: The users of this process, so that the end of the load can wait for each one's answers.
_users: weakref.WeakSet[OpenLoopUser] = weakref.WeakSet()


class RollCall:
    """The master's record of its workers, rewritten (atomically) whenever it changes: the workers it
    expects (``--expect-workers``), each one that connected under its Locust worker index, when the end
    of the load was asked for, and which workers reported their end (with the raw rows they wrote)."""

    def __init__(self, path: str, expected: int, max_wait_s: float) -> None:
        self.path = path
        self.record: dict[str, Any] = {"expected": expected, "max_wait_s": max_wait_s, "workers": {},
                                       "end_requested_ns": None, "end_wait_s": None}
        self.write()

    @property
    def workers(self) -> dict[str, dict[str, Any]]:
        return self.record["workers"]

    def connected(self, client_id: str, index: int) -> None:
        self.workers.setdefault(client_id, {"index": index, "connected_ns": time.time_ns(), "ended": False})
        self.write()

    def hello(self, client_id: str, data: dict[str, Any]) -> None:
        worker = self.workers.setdefault(client_id, {"index": data.get("index"), "connected_ns": None,
                                                     "ended": False})
        worker |= {"pid": data.get("pid"), "host": data.get("host")}
        self.write()

    def ended(self, client_id: str, data: dict[str, Any]) -> None:
        worker = self.workers.setdefault(client_id, {"index": data.get("index"), "connected_ns": None})
        worker |= {"ended": True, "ended_ns": time.time_ns(), "pid": data.get("pid"), "rows": data.get("rows"),
                   "host": data.get("host")}
        self.write()

    def all_ended(self) -> bool:
        return all(w.get("ended") for w in self.workers.values())

    def write(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.record, fh, indent=2)
        os.replace(tmp, self.path)


_roll_call: RollCall | None = None


@events.init.add_listener
def _distributed_roles(environment: Any, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # Concurrent: the worker's message loop (heartbeats) goes on while its users finish their sends.
        runner.register_message(END_REQUEST, _end_load, concurrent=True)
        environment.events.test_start.add_listener(
            lambda environment, **_kw: runner.send_message(HELLO, _whoami(runner)))
    elif isinstance(runner, MasterRunner):
        global _roll_call
        options = environment.parsed_options
        _roll_call = RollCall(getattr(options, "qb_workers_file", "") or "", int(options.expect_workers),
                              float(getattr(options, "expect_workers_max_wait", 0) or 0))
        runner.register_message(END_REPORT, lambda environment, msg, **_kw: _roll_call.ended(msg.node_id,
                                                                                             msg.data or {}))
        runner.register_message(HELLO, lambda environment, msg, **_kw: _roll_call.hello(msg.node_id,
                                                                                        msg.data or {}))
        environment.events.worker_connect.add_listener(
            lambda client_id, **_kw: _roll_call.connected(client_id, runner.get_worker_index(client_id)))
        environment.events.test_stopping.add_listener(_end_workers_load)


def _end_workers_load(environment: Any, **_kwargs: Any) -> None:
    """On the master, when its test stops (run time over): ask every worker to end the load and wait for
    their end reports, at most the stop wait and a margin, before Locust goes on to quit."""
    if _roll_call is None or _roll_call.record["end_requested_ns"] is not None:
        return
    started = time.monotonic()
    _roll_call.record["end_requested_ns"] = time.time_ns()
    environment.runner.send_message(END_REQUEST)
    deadline = started + float(getattr(environment.parsed_options, "qb_stop_wait_s", DEFAULT_STOP_WAIT_S)) \
        + END_REPORT_MARGIN_S
    while not _roll_call.all_ended() and time.monotonic() < deadline:
        gevent.sleep(0.05)
    _roll_call.record["end_wait_s"] = round(time.monotonic() - started, 3)
    _roll_call.write()


def _end_load(environment: Any, msg: Any = None, **_kwargs: Any) -> None:
    """On a worker, asked by the master: stop scheduling, let every user finish its sends (answers
    awaited up to the stop wait, the rest written off), write the raw rows, send the last stats, then
    report the end to the master. Messages from one worker arrive in order, so the master has counted
    every request of this worker when it reads the report."""
    _end_requested.set()
    for user in list(_users):
        user.finish_sends()
    log = raw_log(environment)
    log.flush()
    runner = environment.runner
    runner._send_stats()  # what Locust's own worker sends on quit: its last samples, before the report
    runner.send_message(END_REPORT, _whoami(runner) | {"rows": log.rows})


def _whoami(runner: Any) -> dict[str, Any]:
    """A worker's Locust worker index and its process (pid, host: its inventory host when deployed, else the
    machine's name), as the master's roll call keeps them."""
    return {"index": runner.worker_index, "pid": os.getpid(),
            "host": os.environ.get(HOST_ENV) or os.uname().nodename}


class _AnsweredAfterStop(Exception):
    """Raised inside Locust's response block so that an answer already written off is not counted."""


class OpenLoopUser(FastHttpUser):
    """Sends `choose()`'s task at `rate()` on its own schedule; subclasses pick what to send."""

    abstract = True
    # Pooled connections: more than the in-flight bound, so a send never waits for a connection.
    concurrency = 256
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
        self.slots = in_flight_slots(self.environment)
        self.in_flight = InFlight(self.log.write)
        self.stop_wait_s = float(getattr(options, "qb_stop_wait_s", DEFAULT_STOP_WAIT_S))
        urls = [u.strip().rstrip("/") + "/tasks" for u in (getattr(options, "qb_api_urls", "") or "").split(",")
                if u.strip()]
        # Several APIs: each process starts at its own index, so the processes' first requests spread too.
        self.targets = itertools.islice(itertools.cycle(urls or ["/tasks"]), max(0, self.processes()[0]), None)
        self.stopped = False
        #: Set once `finish_sends` is done (a second caller waits for the first).
        self.finished = Event()
        _users.add(self)

    def users(self) -> int:
        runner = self.environment.runner
        count = getattr(runner, "target_user_count", None) or getattr(runner, "user_count", 1) or 1
        return max(1, int(count))

    def processes(self) -> tuple[int, int]:
        """(this Locust process's index, how many processes share the schedule): (0, 1) unless this is a
        Locust worker, whose index is Locust's worker index (-1 until the master acknowledged it) and whose
        count is the master's ``--expect-workers`` (Locust passes it on to its workers)."""
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):
            count = int(getattr(self.environment.parsed_options, "expect_workers", 1) or 1)
            return runner.worker_index, max(1, count)
        return 0, 1

    def rate(self) -> float:
        """Tasks per second this user offers now (the total rate shared between users and processes)."""
        return float(self.environment.parsed_options.qb_rate) / self.users() / self.processes()[1]

    def choose(self) -> tuple[str, dict[str, Any]]:
        """The task and arguments of the next arrival."""
        return self.task_name, self.task_args

    def stopping(self) -> bool:
        """True once Locust asked this user to stop gracefully (run time over, with --stop-timeout > 0), or
        the master asked this worker to end the load."""
        return self._state == LOCUST_STATE_STOPPING or _end_requested.is_set()

    def _take_slot(self) -> bool:
        """Wait for room under the in-flight bound (the send goes late meanwhile); False if stopping."""
        while not self.slots.acquire(timeout=0.1):
            if self.stopping():
                return False
        return True

    @task
    def arrivals(self) -> None:
        index, count = self.processes()
        # Constant arrivals split between Locust processes take this process's share of one grid
        # (share.py); one process alone, or Poisson arrivals, keep their own schedule from now.
        shared = count > 1 and index >= 0 and self.arrival == "constant" and self.users() == 1
        next_ns = time.time_ns()
        slot, slot_rate = 0, 0.0
        while not self.stopping():
            rate = self.rate()
            if rate <= 0:
                gevent.sleep(0.1)
                next_ns = time.time_ns()
                slot_rate = 0.0
                continue
            if shared:
                if rate * count != slot_rate:  # the first arrival, or a new rate: this process's next slot
                    slot_rate = rate * count
                    slot = share.first_slot(max(next_ns, time.time_ns()), slot_rate, index, count)
                next_ns = share.slot_ns(slot, slot_rate)
            now = time.time_ns()
            if next_ns > now:
                gevent.sleep((next_ns - now) / 1e9)
            task_name, args = self.choose()
            if self.stopping() or not self._take_slot():
                break
            self.senders.spawn(self.send, next_ns, task_name, args)
            if shared:
                slot += count
            else:
                gap_s = self.random.expovariate(rate) if self.arrival == "poisson" else 1.0 / rate
                next_ns += int(gap_s * 1e9)
        self.finish_sends()
        while _end_requested.is_set() and self._state != LOCUST_STATE_STOPPING:
            gevent.sleep(0.1)  # the master ended the load: send nothing until Locust stops this user

    def finish_sends(self) -> None:
        """No new arrivals: wait up to `stop_wait_s` for the answers under way, write the rest off as
        unanswered at stop (status -1, with their request ids), and flush the raw log. Called again (the
        user's own stop, and a distributed end of the load), it waits for the first call to be done."""
        if self.stopped:
            self.finished.wait(timeout=self.stop_wait_s + 2)
            return
        self.stopped = True
        try:
            self.senders.join(timeout=self.stop_wait_s)
            if self.in_flight.give_up(time.time_ns()):
                self.senders.kill(block=True, timeout=1.0)
            self.log.flush()
        finally:
            self.finished.set()

    def send(self, scheduled_ns: int, task_name: str, args: dict[str, Any]) -> str | None:
        """POST one task (holding one in-flight slot) at, or as soon as possible after, its scheduled
        time; return its id."""
        request_id = _next_request_id()
        sent_ns = time.time_ns()
        events.request.fire(request_type="LAG", name="schedule lag", response_time=(sent_ns - scheduled_ns) / 1e6,
                            response_length=0, exception=None, context={}, response=None, url=None,
                            start_time=sent_ns / 1e9)
        self.in_flight.sent(request_id, scheduled_ns, sent_ns, task_name)
        task_id = None
        try:
            with self.client.post(next(self.targets), json={"task": task_name, "args": args}, name="POST /tasks",
                                  headers={SCHEDULED_AT_HEADER: str(scheduled_ns), REQUEST_ID_HEADER: request_id},
                                  catch_response=True) as response:
                status = response.status_code
                if status == 202:
                    # The id is the Location's last segment: no JSON parse per request.
                    task_id = (response.headers.get("Location") or "").rpartition("/")[2] or None
                    if task_id is None:
                        response.failure("202 without a Location header")
                else:
                    # Status 0: no answer at all; the client's own error says why (refused, reset, timeout).
                    error = getattr(response, "error", None)
                    detail = repr(error) if error is not None else (response.text or "")[:200]
                    response.failure(f"HTTP {status}: {detail}")
                if not self.in_flight.answered(request_id, time.time_ns(), status, task_id):
                    raise _AnsweredAfterStop
        except _AnsweredAfterStop:
            return None
        finally:
            self.slots.release()
        return task_id

    def on_stop(self) -> None:
        self.finish_sends()
