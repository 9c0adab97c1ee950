"""The backend contract, against real brokers and real worker processes, through the API under gunicorn.

One test body, parametrised over every backend x broker x serializer it supports: every task kind
round-trips through `POST /tasks` and `GET /tasks/<id>` with the right result, and the ledger holds
exactly one successful execution per task (flaky: the right failed attempts before it).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

import backends
from backends import ledger, workload
from benchmarks.stack import Stack, StackConfig

pytestmark = pytest.mark.service

ECHO_SIZE = 1000
#: (task, args, expected result)
KINDS: list[tuple[str, dict[str, int], Any]] = [
    ("noop", {}, None),
    ("sleep_ms", {"ms": 50}, 50),
    ("cpu_ms", {"ms": 20}, 20),
    ("echo", {"size": ECHO_SIZE},
     {"length": ECHO_SIZE, "crc32": workload.payload_checksum(workload.make_payload(ECHO_SIZE))}),
    ("flaky", {"fail_times": 2}, 3),
    ("add", {"x": 5, "y": 3}, 8),
]

#: Every backend the registry measures x every broker and serializer it declares.
COMBOS = [(name, broker, serializer) for name in backends.measurable()
          for broker in sorted(backends.backend_class(name).brokers)
          for serializer in sorted(backends.backend_class(name).serializers)]


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def wait_for_status(api: str, task_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = http("GET", f"{api}/tasks/{task_id}")
        assert code == 200, body
        if body["status"] in ("success", "failure") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _config(backend: str, broker: str, serializer: str, **extra: Any) -> StackConfig:
    return StackConfig.of(backend=backend, broker=broker, serializer=serializer, api_workers=1, api_threads=4,
                          **extra)


@pytest.fixture
def need_broker(request, broker_name):
    if broker_name in ("redis", "rabbitmq"):
        request.getfixturevalue("need_redis")  # RabbitMQ cells keep their results in Redis
    if broker_name == "rabbitmq":
        request.getfixturevalue("need_rabbitmq")


@pytest.mark.parametrize(("backend", "broker_name", "serializer"), COMBOS,
                         ids=[f"{b}-{k}-{s}" for b, k, s in COMBOS])
def test_every_task_kind_round_trips_through_the_api_and_runs_exactly_once(
        backend, broker_name, serializer, need_broker, tmp_path):
    with Stack(_config(backend, broker_name, serializer, processes=2), tmp_path) as stack:
        api = stack.api_url
        sent: dict[str, tuple[str, Any]] = {}
        for task, args, expected in KINDS:
            code, body = http("POST", f"{api}/tasks", {"task": task, "args": args})
            assert code == 202, body
            assert body["status"] == "queued" and body["backend"] == backend and body["queue"] == "default"
            sent[body["id"]] = (task, expected)

        code, body = http("GET", f"{api}/add/5/3")
        assert code == 202 and body["status"] == "Task Queued"
        tutorial_id = body["task_id"]

        for task_id, (task, expected) in sent.items():
            final = wait_for_status(api, task_id)
            assert final["status"] == "success", (task, final)
            assert final["result"] == expected, task

        deadline = time.monotonic() + 30
        while (body := http("GET", f"{api}/task_status/{tutorial_id}")[1])["status"] != "SUCCESS":
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert body["result"] == 8

        code, body = http("POST", f"{api}/tasks", {"task": "sleep_ms", "args": {"ms": -1}})
        assert code == 400 and "ms" in body["error"]
        code, body = http("GET", f"{api}/tasks/{'0' * 32}")
        assert code == 404

        runs = ledger.executions(stack.ledger_dir)
        ok = runs[runs["outcome"] == "ok"]
        assert sorted(ok["id"]) == sorted([*sent, tutorial_id]), "one successful execution per task"
        assert (ok["n_finished"] == 1).all(), "no task finished twice for one attempt"
        flaky_id = next(i for i, (task, _) in sent.items() if task == "flaky")
        flaky = runs[runs["id"] == flaky_id].sort_values("attempt")
        assert list(flaky["attempt"]) == [1, 2, 3]
        assert list(flaky["outcome"]) == ["error", "error", "ok"]
        assert len(runs) == len(sent) + 1 + 2, "no execution beyond the expected ones"


@pytest.mark.parametrize("backend", backends.measurable())
def test_dedicated_routing_runs_long_tasks_on_their_own_queue(backend, need_redis, tmp_path):
    config = _config(backend, "redis", "json", routing="dedicated", processes=2, long_threshold_ms=100)
    with Stack(config, tmp_path) as stack:
        api = stack.api_url
        code, long_task = http("POST", f"{api}/tasks", {"task": "sleep_ms", "args": {"ms": 300}})
        assert code == 202 and long_task["queue"] == "long"
        code, short_task = http("POST", f"{api}/tasks", {"task": "noop"})
        assert code == 202 and short_task["queue"] == "short"
        code, queues = http("GET", f"{api}/queues")
        assert code == 200 and set(queues["queues"]) == {"short", "long"}
        for task_id in (long_task["id"], short_task["id"]):
            assert wait_for_status(api, task_id)["status"] == "success"
        runs = ledger.executions(stack.ledger_dir)
        by_id = runs.set_index("id")
        # The short task did not wait behind the long one: it finished first.
        assert by_id.loc[short_task["id"], "finished_ns"] < by_id.loc[long_task["id"], "finished_ns"]


@pytest.mark.parametrize("backend", backends.measurable())
def test_tasks_still_run_with_results_off_and_status_says_results_are_off(backend, need_redis, tmp_path):
    with Stack(_config(backend, "redis", "json", results=False), tmp_path) as stack:
        ids = [http("POST", f"{stack.api_url}/tasks", {"task": "noop"})[1]["id"] for _ in range(5)]
        deadline = time.monotonic() + 30
        while True:
            runs = ledger.executions(stack.ledger_dir)
            if (runs["outcome"] == "ok").sum() == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sorted(runs.loc[runs["outcome"] == "ok", "id"]) == sorted(ids)
        code, body = http("GET", f"{stack.api_url}/tasks/{ids[0]}")
        assert code == 409 and "results" in body["error"]
