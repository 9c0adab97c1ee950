"""The Flask API's contract (README, "The API") on the inline backend: tasks run synchronously in-process.

Every accepted task must have exactly one `sent` ledger row, every client mistake must be a 4xx JSON
answer naming the field, and no client input may reach a 5xx.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.app import MAX_BODY_BYTES
from backends import dispatch, get_backend, ledger, workload
from backends.base import (
    BackendSettings,
    BackendUnavailable,
    EnqueueReceipt,
    JobRequest,
    TaskStatus,
    UnsupportedOption,
)
from backends.inline_backend import InlineBackend

JSON = "application/json"


def make_app(**settings: Any) -> Flask:
    return create_app(get_backend("inline", BackendSettings(**settings)))


@pytest.fixture
def client(ledger_dir: Path) -> FlaskClient:
    """The API on the inline backend with shared routing and results on, writing to a fresh ledger."""
    return make_app().test_client()


@pytest.fixture
def client_for(ledger_dir: Path) -> Callable[..., FlaskClient]:
    """A factory: the API over a given backend instance, or over the inline backend with given settings."""

    def build(backend: Any = None, **settings: Any) -> FlaskClient:
        app = create_app(backend) if backend is not None else make_app(**settings)
        return app.test_client()

    return build


def post_task(client: FlaskClient, task: str, args: dict[str, Any] | None = None, **extra: Any):
    body: dict[str, Any] = {"task": task, **extra}
    if args is not None:
        body["args"] = args
    return client.post("/tasks", json=body)


def sent_rows(ledger_dir: Path) -> list[dict[str, Any]]:
    return [row for row in ledger.iter_rows(ledger_dir) if row["ev"] == "sent"]


def assert_json_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == JSON
    error = response.get_json()["error"]
    assert isinstance(error, str) and error
    for word in words:
        assert word in error, f"{word!r} not in {error!r}"
    return error


# --- backends that misbehave on purpose ------------------------------------------------------------------


class DownBackend(InlineBackend):
    """A broker that does not answer: every call raises `BackendUnavailable`."""

    def ping(self) -> None:
        raise BackendUnavailable("inline broker at redis://127.0.0.1:1/0 did not answer: ConnectionRefusedError")

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        self.ping()
        raise AssertionError("unreachable")

    def queue_depths(self) -> dict[str, int]:
        self.ping()
        raise AssertionError("unreachable")


class LeakyDownBackend(DownBackend):
    """A broker that is down, but whose library's own error leaks out of the calls (only ping classifies)."""

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    def queue_depths(self) -> dict[str, int]:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


class StatusBackend(InlineBackend):
    """Runs nothing; reports every enqueued task in a fixed state (to see every state mapped)."""

    def __init__(self, settings: BackendSettings, state: str, error: str | None = None) -> None:
        super().__init__(settings)
        self.state, self.error = state, error

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        self._results[job.id] = TaskStatus(job.id, self.state, None, self.error)  # type: ignore[arg-type]
        return EnqueueReceipt(job.id, job.queue, 0)


class BuggyBackend(InlineBackend):
    """A backend with a bug in `status` while its broker is fine."""

    def status(self, task_id: str) -> TaskStatus | None:
        raise KeyError("a bug")


class PickyBackend(InlineBackend):
    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        raise UnsupportedOption("scheduled_ns", job.scheduled_ns, self.name, "for this test")


# --- every task kind round-trips -----------------------------------------------------------------------


ECHO_SIZE = 4096
KINDS = [
    ("noop", {}, None),
    ("sleep_ms", {"ms": 1}, 1),
    ("cpu_ms", {"ms": 1}, 1),
    ("echo", {"size": ECHO_SIZE},
     {"length": ECHO_SIZE, "crc32": workload.payload_checksum(workload.make_payload(ECHO_SIZE))}),
    ("echo", {"size": 0}, {"length": 0, "crc32": 0}),
    ("flaky", {"fail_times": 2}, 3),
    ("flaky", {"fail_times": 0}, 1),
    ("add", {"x": 5, "y": 3}, 8),
    ("add", {"x": -(2**53), "y": 2**53}, 0),
]


@pytest.mark.parametrize(("task", "args", "expected"), KINDS)
def test_each_task_kind_is_accepted_and_its_result_is_reported(client, task, args, expected):
    response = post_task(client, task, args)
    assert response.status_code == 202
    body = response.get_json()
    assert body == {"id": body["id"], "status": "queued", "backend": "inline", "queue": "default"}
    assert dispatch.is_issued_id(body["id"])
    assert response.headers["Location"] == f"/tasks/{body['id']}"
    status = client.get(f"/tasks/{body['id']}")
    assert status.status_code == 200
    assert status.get_json() == {"id": body["id"], "status": "success", "result": expected, "error": None}


def test_a_noop_may_leave_out_its_args(client):
    response = client.post("/tasks", json={"task": "noop"})
    assert response.status_code == 202
    assert client.get(f"/tasks/{response.get_json()['id']}").get_json()["status"] == "success"


def test_the_tutorial_routes_add_five_and_three_to_eight(client):
    response = client.get("/add/5/3")
    assert response.status_code == 202
    body = response.get_json()
    assert body == {"task_id": body["task_id"], "status": "Task Queued"}
    status = client.get(f"/task_status/{body['task_id']}")
    assert status.status_code == 200
    assert status.get_json() == {"task_id": body["task_id"], "status": "SUCCESS", "result": 8}


@pytest.mark.parametrize(("x", "y", "total"), [(-5, 3, -2), (-5, -7, -12), (0, -0, 0), (2**53, -(2**53), 0)])
def test_the_tutorial_add_route_takes_negative_integers(client, x, y, total):
    task_id = client.get(f"/add/{x}/{y}").get_json()["task_id"]
    assert client.get(f"/task_status/{task_id}").get_json()["result"] == total


@pytest.mark.parametrize(("path", "field"), [
    ("/add/abc/3", "args.x"),
    ("/add/5/1.5", "args.y"),
    ("/add/+5/3", "args.x"),
    ("/add/5/--3", "args.y"),
    (f"/add/{2**53 + 1}/3", "args.x"),
    (f"/add/3/{'9' * 5000}", "args.y"),
])
def test_the_tutorial_add_route_rejects_what_is_not_an_integer_in_range(client, ledger_dir, path, field):
    assert_json_error(client.get(path), 400, field)
    assert sent_rows(ledger_dir) == []


@pytest.mark.parametrize(("state", "error", "tutorial_state", "tutorial_result"), [
    ("queued", None, "PENDING", None),
    ("started", None, "STARTED", None),
    ("failure", "FlakyFailure: attempt 1 of 2 fails on purpose", "FAILURE",
     "FlakyFailure: attempt 1 of 2 fails on purpose"),
])
def test_every_state_is_reported_and_mapped_to_celery_names_for_the_tutorial(
        client_for, state, error, tutorial_state, tutorial_result):
    client = client_for(StatusBackend(BackendSettings(), state, error))
    task_id = post_task(client, "flaky", {"fail_times": 1}).get_json()["id"]
    assert client.get(f"/tasks/{task_id}").get_json() == {"id": task_id, "status": state, "result": None,
                                                          "error": error}
    assert client.get(f"/task_status/{task_id}").get_json() == {"task_id": task_id, "status": tutorial_state,
                                                                "result": tutorial_result}


# --- validation -------------------------------------------------------------------------------------


BAD_BODIES = [
    ({"task": "sleep_ms", "args": {"ms": 60_001}}, "args.ms must be an integer between 0 and 60000"),
    ({"task": "sleep_ms", "args": {"ms": -1}}, "args.ms"),
    ({"task": "sleep_ms", "args": {"ms": "5"}}, "args.ms"),
    ({"task": "sleep_ms", "args": {"ms": 5.0}}, "args.ms"),
    ({"task": "sleep_ms", "args": {"ms": True}}, "args.ms"),
    ({"task": "sleep_ms", "args": {"ms": None}}, "args.ms"),
    ({"task": "sleep_ms", "args": {"ms": [5]}}, "args.ms"),
    ({"task": "sleep_ms", "args": {"ms": {"value": 5}}}, "args.ms"),
    ({"task": "sleep_ms"}, "args.ms is required"),
    ({"task": "sleep_ms", "args": {}}, "args.ms is required"),
    ({"task": "sleep_ms", "args": {"ms": 5, "extra": 1}}, "args.extra"),
    ({"task": "cpu_ms", "args": {"ms": 60_001}}, "args.ms"),
    ({"task": "noop", "args": {"x": 1}}, "args.x"),
    ({"task": "echo", "args": {"size": 1_000_001}}, "args.size"),
    ({"task": "echo", "args": {"payload": "abc", "size": 3}}, "args.payload"),
    ({"task": "flaky", "args": {"fail_times": 11}}, "args.fail_times"),
    ({"task": "add", "args": {"x": 2**53 + 1, "y": 0}}, "args.x"),
    ({"task": "add", "args": {"x": 1}}, "args.y"),
    ({"task": "add", "args": {"x": "1", "y": False}}, "args.y"),
    ({"task": "nope"}, "task must be one of"),
    ({"task": "NOOP"}, "task"),
    ({}, "task"),
    ({"task": 5}, "task"),
    ({"task": None}, "task"),
    ({"task": ["noop"]}, "task"),
    ({"task": {"name": "noop"}}, "task"),
    ({"task": "noop", "args": [1]}, "args must be a JSON object"),
    ({"task": "noop", "args": None}, "args"),
    ({"task": "noop", "args": "ms=5"}, "args"),
    ({"task": "noop", "queue": "long"}, "queue must be one of: default"),
    ({"task": "noop", "queue": 5}, "queue"),
    ({"task": "noop", "queue": ["default"]}, "queue"),
    ({"task": "noop", "priority": 1}, "priority"),
    ({"task": "noop", "serializer": "pickle"}, "serializer"),
]


@pytest.mark.parametrize(("body", "words"), BAD_BODIES)
def test_a_bad_task_request_is_rejected_naming_the_field(client, ledger_dir, body, words):
    assert_json_error(client.post("/tasks", json=body), 400, words)
    assert sent_rows(ledger_dir) == []


def test_an_out_of_range_sleep_is_rejected_naming_the_field(client):
    error = assert_json_error(post_task(client, "sleep_ms", {"ms": 60_001}), 400)
    assert error == "args.ms must be an integer between 0 and 60000"


def test_every_problem_with_the_args_is_named_at_once(client):
    error = assert_json_error(post_task(client, "add", {"x": "1", "z": 2}), 400)
    assert "args.x" in error and "args.y" in error and "args.z" in error


MALFORMED = [
    (b"{not json", JSON, "not valid JSON"),
    (b"", JSON, "JSON object"),
    (b"   ", JSON, "JSON object"),
    (b"[]", JSON, "JSON object, not an array"),
    (b'"noop"', JSON, "JSON object, not a string"),
    (b"null", JSON, "JSON object, not null"),
    (b"42", JSON, "JSON object, not a number"),
    (b'{"task": "noop"} trailing', JSON, "not valid JSON"),
    (b'{"task": "sleep_ms", "args": {"ms": 1e400}}', JSON, "args.ms"),
    (b'{"task": "sleep_ms", "args": {"ms": NaN}}', JSON, "NaN"),
    (b'{"task": "sleep_ms", "args": {"ms": Infinity}}', JSON, "Infinity"),
    (b'{"task": "sleep_ms", "args": {"ms": 1, "ms": 99999}}', JSON, "duplicate key 'ms'"),
    (b'{"task": "noop", "task": "noop"}', JSON, "duplicate key"),
    (b"[" * 200_000, JSON, "nested too deeply"),
    (b'{"a":' * 100_000, JSON, "nested too deeply"),
    (b'{"task": "add", "args": {"x": ' + b"9" * 5000 + b', "y": 1}}', JSON, "not valid JSON"),
    (b"\xff\xfe\xfd", JSON, "not valid JSON"),
    (b'{"task": "noop"}', "text/plain", "Content-Type"),
    (b'{"task": "noop"}', None, "Content-Type"),
    (b"task=noop", "application/x-www-form-urlencoded", "Content-Type"),
    (b"\x80\x04\x95\x00", "application/x-python-pickle", "Content-Type"),
    (b"\x80\x04\x95\x00", "application/octet-stream", "Content-Type"),
]


@pytest.mark.parametrize(("data", "content_type", "words"), MALFORMED)
def test_a_malformed_body_is_a_400_saying_what_is_wrong(client, ledger_dir, data, content_type, words):
    response = client.post("/tasks", data=data, content_type=content_type)
    assert_json_error(response, 400, words)
    assert sent_rows(ledger_dir) == []


def test_a_json_content_type_with_a_charset_or_a_json_suffix_is_accepted(client):
    for content_type in ("application/json; charset=utf-8", "application/vnd.queuebench+json"):
        response = client.post("/tasks", data=b'{"task": "noop"}', content_type=content_type)
        assert response.status_code == 202, content_type


def test_a_compressed_body_is_refused_rather_than_misread(client, ledger_dir):
    response = client.post("/tasks", json={"task": "noop"}, headers={"Content-Encoding": "gzip"})
    assert_json_error(response, 400, "Content-Encoding")
    assert sent_rows(ledger_dir) == []


def test_a_body_over_two_mebibytes_is_a_413(client, ledger_dir):
    data = json.dumps({"task": "noop", "pad": "x" * (3 * 1024 * 1024)}).encode()
    response = client.post("/tasks", data=data, content_type=JSON)
    assert_json_error(response, 413, "2 MiB")
    assert sent_rows(ledger_dir) == []


def test_a_body_just_under_the_limit_is_parsed_not_refused(client):
    data = json.dumps({"task": "noop", "pad": ""}).encode()
    data = data.replace(b'""', b'"' + b"x" * (MAX_BODY_BYTES - len(data)) + b'"')
    assert len(data) == MAX_BODY_BYTES
    assert_json_error(client.post("/tasks", data=data, content_type=JSON), 400, "pad")


# --- ids, routes, methods -------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", [
    "0" * 32,  # the right shape, but not issued under this key
    dispatch.new_task_id()[:24] + "00000000",
    "abc",
    "A" * 32,
    "x" * 5000,
    "..",
    "%00",
])
@pytest.mark.parametrize("route", ["/tasks/", "/task_status/"])
def test_an_id_this_api_did_not_issue_is_a_404(client, route, task_id):
    assert_json_error(client.get(route + task_id), 404)


@pytest.mark.parametrize("route", ["/tasks/", "/task_status/"])
def test_an_issued_id_the_library_has_no_record_of_is_a_404(client, route):
    assert_json_error(client.get(route + dispatch.new_task_id()), 404, "no record")


@pytest.mark.parametrize("path", ["/", "/nope", "/tasks/", "/tasks/a/b", "/add/1", "/add/1/2/3", "/task_status"])
def test_an_unknown_route_is_a_json_404(client, path):
    assert_json_error(client.get(path), 404)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/tasks", "POST"),
    ("PUT", "/tasks", "POST"),
    ("DELETE", f"/tasks/{'0' * 32}", "GET"),
    ("POST", "/healthz", "GET"),
    ("POST", "/queues", "GET"),
    ("POST", "/add/1/2", "GET"),
])
def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(client, method, path, allowed):
    response = client.open(path, method=method)
    assert_json_error(response, 405, allowed)
    assert allowed in response.headers["Allow"]


def test_status_is_a_409_when_results_are_off_for_the_configuration(client_for):
    client = client_for(results=False)
    response = post_task(client, "add", {"x": 1, "y": 2})
    assert response.status_code == 202
    task_id = response.get_json()["id"]
    assert_json_error(client.get(f"/tasks/{task_id}"), 409, "results are off")
    tutorial_id = client.get("/add/1/2").get_json()["task_id"]
    assert_json_error(client.get(f"/task_status/{tutorial_id}"), 409, "results are off")


def test_an_unissued_id_is_still_a_404_when_results_are_off(client_for):
    assert_json_error(client_for(results=False).get(f"/tasks/{'0' * 32}"), 404)


# --- health, queues, unavailable brokers -----------------------------------------------------------------


def test_healthz_is_ok_when_the_broker_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "backend": "inline"}


def test_healthz_is_a_503_with_the_cause_when_the_broker_does_not_answer(client_for):
    response = client_for(DownBackend(BackendSettings())).get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable" and body["backend"] == "inline"
    assert "redis://127.0.0.1:1/0" in body["error"]


@pytest.mark.parametrize("backend_class", [DownBackend, LeakyDownBackend])
def test_an_unreachable_broker_is_a_503_on_enqueue_and_queues_and_writes_no_sent_row(
        client_for, ledger_dir, backend_class):
    client = client_for(backend_class(BackendSettings()))
    assert_json_error(post_task(client, "noop"), 503, "did not answer")
    assert_json_error(client.get("/add/1/2"), 503, "did not answer")
    assert_json_error(client.get("/queues"), 503, "did not answer")
    assert sent_rows(ledger_dir) == []


@pytest.mark.parametrize(("routing", "depths"), [("shared", {"default": 0}), ("dedicated", {"short": 0, "long": 0})])
def test_queues_lists_the_depth_of_every_queue_of_the_configuration(client_for, routing, depths):
    response = client_for(routing=routing).get("/queues")
    assert response.status_code == 200
    assert response.get_json() == {"backend": "inline", "queues": depths}


def test_an_option_the_backend_cannot_honour_is_a_400(client_for, ledger_dir):
    assert_json_error(post_task(client_for(PickyBackend(BackendSettings())), "noop"), 400, "does not support")
    assert sent_rows(ledger_dir) == []


def test_a_bug_in_a_backend_is_a_logged_json_500(client_for, caplog):
    client = client_for(BuggyBackend(BackendSettings()))
    task_id = post_task(client, "noop").get_json()["id"]
    with caplog.at_level(logging.ERROR):
        assert_json_error(client.get(f"/tasks/{task_id}"), 500, "internal server error")
    assert any("unhandled error on GET" in record.getMessage() and record.exc_info for record in caplog.records)


# --- scheduling header, routing, ledger ------------------------------------------------------------------


def test_the_scheduled_at_header_is_stored_in_the_sent_row(client, ledger_dir):
    scheduled_ns = 1_700_000_000_123_456_789  # beyond float64's exact range: must survive as an int
    ids = [
        post_task_with_header(client, scheduled_ns),
        client.get("/add/1/2", headers={"X-Scheduled-At": str(scheduled_ns + 1)}).get_json()["task_id"],
    ]
    rows = ledger.read_rows(ledger_dir)
    sent = rows[rows["ev"] == "sent"].set_index("id")
    assert int(sent.loc[ids[0], "scheduled_ns"]) == scheduled_ns
    assert int(sent.loc[ids[1], "scheduled_ns"]) == scheduled_ns + 1
    assert post_task(client, "noop").status_code == 202
    assert sum(row["scheduled_ns"] is None for row in sent_rows(ledger_dir)) == 1


def post_task_with_header(client: FlaskClient, scheduled_ns: int) -> str:
    response = client.post("/tasks", json={"task": "noop"}, headers={"X-Scheduled-At": str(scheduled_ns)})
    assert response.status_code == 202
    return response.get_json()["id"]


@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "", "1e9", "+5", "0x10", "1_000", "١٢٣", str(2**63),
                                   "9" * 5000])
def test_a_malformed_scheduled_at_header_is_rejected(client, ledger_dir, value):
    headers = {"X-Scheduled-At": value}
    assert_json_error(client.post("/tasks", json={"task": "noop"}, headers=headers), 400, "X-Scheduled-At")
    assert_json_error(client.get("/add/1/2", headers=headers), 400, "X-Scheduled-At")
    assert sent_rows(ledger_dir) == []


def test_a_repeated_scheduled_at_header_is_rejected(client):
    headers = [("X-Scheduled-At", "1"), ("X-Scheduled-At", "2")]
    assert_json_error(client.post("/tasks", json={"task": "noop"}, headers=headers), 400, "X-Scheduled-At")


def test_the_request_id_header_is_stored_in_the_sent_row_so_an_unseen_answer_can_be_found(client, ledger_dir):
    answered = client.post("/tasks", json={"task": "noop"}, headers={"X-Request-Id": "1f3a-2b"})
    tutorial = client.get("/add/2/3", headers={"X-Request-Id": "1f3a-2c"})
    assert answered.status_code == 202 and tutorial.status_code == 202
    assert post_task(client, "noop").status_code == 202  # no header: no request id, still accepted
    by_request = {row.get("request_id"): row["id"] for row in sent_rows(ledger_dir)}
    assert by_request == {"1f3a-2b": answered.get_json()["id"], "1f3a-2c": tutorial.get_json()["task_id"],
                          None: by_request[None]}


@pytest.mark.parametrize("value", ["", "has space", "a,b", "x" * 65, "é"])
def test_a_malformed_request_id_header_is_rejected_and_writes_no_sent_row(client, ledger_dir, value):
    assert_json_error(client.post("/tasks", json={"task": "noop"}, headers={"X-Request-Id": value}), 400,
                      "X-Request-Id")
    assert sent_rows(ledger_dir) == []


def test_a_repeated_request_id_header_is_rejected(client, ledger_dir):
    headers = [("X-Request-Id", "a-1"), ("X-Request-Id", "a-2")]
    assert_json_error(client.post("/tasks", json={"task": "noop"}, headers=headers), 400, "X-Request-Id")
    assert sent_rows(ledger_dir) == []


@pytest.mark.parametrize(("task", "args", "queue"), [
    ("sleep_ms", {"ms": 500}, "long"),
    ("cpu_ms", {"ms": 100}, "long"),
    ("sleep_ms", {"ms": 99}, "short"),
    ("noop", {}, "short"),
    ("echo", {"size": 10}, "short"),
])
def test_dedicated_routing_sends_long_timed_tasks_to_the_long_queue(client_for, ledger_dir, task, args, queue):
    client = client_for(routing="dedicated")
    response = post_task(client, task, args)
    assert response.status_code == 202
    assert response.get_json()["queue"] == queue
    assert [row["queue"] for row in sent_rows(ledger_dir)] == [queue]


def test_an_explicit_queue_overrides_the_routing(client_for, ledger_dir):
    client = client_for(routing="dedicated")
    assert post_task(client, "noop", queue="long").get_json()["queue"] == "long"
    assert post_task(client, "sleep_ms", {"ms": 500}, queue="short").get_json()["queue"] == "short"
    assert post_task(client, "noop", queue=None).get_json()["queue"] == "short"
    assert_json_error(post_task(client, "noop", queue="default"), 400, "short, long")


def test_the_ledger_has_one_sent_row_per_accepted_task_and_none_for_rejected_ones(client, ledger_dir):
    accepted = []
    for task, args, _ in KINDS:
        accepted.append(post_task(client, task, args).get_json()["id"])
        assert post_task(client, task, {**args, "bogus": 1}).status_code == 400
    accepted.append(client.get("/add/-1/1").get_json()["task_id"])
    assert client.get("/add/x/1").status_code == 400
    assert client.post("/tasks", data=b"{", content_type=JSON).status_code == 400
    sent = sent_rows(ledger_dir)
    assert sorted(row["id"] for row in sent) == sorted(accepted)
    assert len(set(accepted)) == len(accepted)
    runs = ledger.executions(ledger_dir)
    assert set(runs[runs["outcome"] == "ok"]["id"]) == set(accepted)


# --- no client input reaches a 5xx ---------------------------------------------------------------------


GARBAGE: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/tasks", {"data": b"\x00" * 100, "content_type": JSON}),
    ("POST", "/tasks", {"data": b"{" * 50_000, "content_type": JSON}),
    ("POST", "/tasks", {"data": b'{"task": "\\ud800"}', "content_type": JSON}),
    ("POST", "/tasks", {"data": b'{"task": "noop", "args": {"\\u0000": 1}}', "content_type": JSON}),
    ("POST", "/tasks", {"data": b'{"task": "sleep_ms", "args": {"ms": -0.0}}', "content_type": JSON}),
    ("POST", "/tasks", {"data": b'{"task": "sleep_ms", "args": {"ms": 1E2}}', "content_type": JSON}),
    ("POST", "/tasks", {"data": b'{"task": "sleep_ms", "args": {"ms": -9223372036854775809}}',
                        "content_type": JSON}),
    ("POST", "/tasks", {"data": b'\xef\xbb\xbf{"task": "noop"}', "content_type": JSON}),
    ("POST", "/tasks", {"data": '{"task": "noop"}'.encode("utf-16"), "content_type": JSON}),
    ("POST", "/tasks", {"data": b'{"task": "' + b"n" * 1_000_000 + b'"}', "content_type": JSON}),
    ("POST", "/tasks", {"data": b'{"task": "noop", "queue": "' + b"q" * 10_000 + b'"}', "content_type": JSON}),
    ("POST", "/tasks", {"json": {"task": "echo", "args": {"size": 2**64}}}),
    ("POST", "/tasks", {"json": {"task": "echo", "args": {"size": -(2**64)}}}),
    ("POST", "/tasks", {"json": {"task": "noop", "args": {str(i): i for i in range(10_000)}}}),
    ("POST", "/tasks", {"json": [{"task": "noop"}] * 1000}),
    ("POST", "/tasks", {"json": {"task": "noop"}, "headers": {"Content-Encoding": "gzip"}}),
    ("POST", "/tasks", {"json": {"task": "noop"}, "headers": {"X-Scheduled-At": " \t "}}),
    ("POST", "/tasks", {"json": {"task": "noop"}, "headers": {"X-Scheduled-At": "1" * 10_000}}),
    ("POST", "/tasks", {"data": b"--x\r\nContent-Disposition: form-data; name=task\r\n\r\nnoop\r\n--x--\r\n",
                        "content_type": "multipart/form-data; boundary=x"}),
    ("POST", "/tasks", {"data": b"{}", "content_type": "application/json; charset=bogus-charset"}),
    ("POST", "/tasks", {"data": b"{}", "content_type": ";;;==="}),
    ("POST", "/tasks?task=noop&args=1", {}),
    ("POST", "/tasks/" + "0" * 32, {"json": {"task": "noop"}}),
    ("GET", "/tasks/" + "%ff" * 100, {}),
    ("GET", "/task_status/" + "\u00e9" * 32, {}),
    ("GET", "/add/" + "9" * 100_000 + "/1", {}),
    ("GET", "/add/%00/1", {}),
    ("GET", "/add/-/-", {}),
    ("GET", "/add/٣/٤", {}),
    ("GET", "/healthz", {"data": b"{" * 1000, "content_type": JSON}),
    ("GET", "/queues?depth=" + "x" * 5000, {}),
    ("OPTIONS", "/tasks", {}),
    ("HEAD", "/healthz", {}),
    ("PATCH", "/add/1/2", {}),
    ("TRACE", "/", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), GARBAGE)
def test_garbage_never_yields_a_server_error(client, method, path, kwargs):
    response = client.open(path, method=method, **kwargs)
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400 and method != "HEAD":
        assert response.mimetype == JSON
        assert isinstance(response.get_json()["error"], str)


# --- the gunicorn entry point --------------------------------------------------------------------------


@pytest.fixture
def fresh_wsgi(monkeypatch):
    """`api.wsgi` imported afresh, with neither of its environment variables set."""
    monkeypatch.delenv("QUEUEBENCH_BACKEND", raising=False)
    monkeypatch.delenv("QUEUEBENCH_SETTINGS", raising=False)
    monkeypatch.delitem(sys.modules, "api.wsgi", raising=False)
    return importlib.import_module("api.wsgi")


def test_importing_the_wsgi_module_needs_no_environment_but_loading_the_app_names_the_variable(fresh_wsgi):
    with pytest.raises(fresh_wsgi.ConfigurationError, match="QUEUEBENCH_BACKEND is not set"):
        fresh_wsgi.app  # noqa: B018 - the attribute access is what builds the app


def test_the_wsgi_app_is_built_from_the_environment(fresh_wsgi, monkeypatch, ledger_dir):
    settings = BackendSettings(routing="dedicated", results=False)
    monkeypatch.setenv("QUEUEBENCH_BACKEND", "inline")
    monkeypatch.setenv("QUEUEBENCH_SETTINGS", settings.to_env()["QUEUEBENCH_SETTINGS"])
    app = fresh_wsgi.app
    assert fresh_wsgi.app is app  # built once per process
    client = app.test_client()
    assert client.get("/queues").get_json() == {"backend": "inline", "queues": {"short": 0, "long": 0}}


@pytest.mark.parametrize(("environ", "words"), [
    ({"QUEUEBENCH_BACKEND": "nosuchqueue"}, "unknown backend 'nosuchqueue'"),
    ({"QUEUEBENCH_BACKEND": "inline", "QUEUEBENCH_SETTINGS": "{not json"}, "QUEUEBENCH_SETTINGS"),
    ({"QUEUEBENCH_BACKEND": "inline", "QUEUEBENCH_SETTINGS": '{"colour": "blue"}'}, "QUEUEBENCH_SETTINGS"),
    ({"QUEUEBENCH_BACKEND": "inline", "QUEUEBENCH_SETTINGS": '{"serializer": "yaml"}'}, "serializer='yaml'"),
])
def test_a_bad_environment_is_reported_clearly(fresh_wsgi, environ, words):
    with pytest.raises(fresh_wsgi.ConfigurationError) as excinfo:
        fresh_wsgi.build_app(environ)
    assert words in str(excinfo.value)


def test_the_gunicorn_command_line_binds_loopback_with_threaded_workers(fresh_wsgi):
    argv = fresh_wsgi.gunicorn_argv(8123)
    assert argv[:3] == [sys.executable, "-m", "gunicorn"], "run by the interpreter, so a backend's own env can"
    assert argv[-1] == "api.wsgi:app"

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("-k") == "gthread" and value("-w") == "2" and value("--threads") == "4"
    assert value("-b") == "127.0.0.1:8123"
    assert int(value("--graceful-timeout")) > 0
    assert value("--chdir") == str(Path(fresh_wsgi.__file__).resolve().parent.parent)
    other = fresh_wsgi.gunicorn_argv(1, workers=3, threads=8)
    assert other[other.index("-w") + 1] == "3" and other[other.index("--threads") + 1] == "8"
    with pytest.raises(ValueError):
        fresh_wsgi.gunicorn_argv(1, workers=0)
