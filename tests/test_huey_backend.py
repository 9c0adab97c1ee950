"""The Huey backend's own pieces: serializers, the status mapping over Huey's real result store, knobs,
and how processes x threads become ``huey_consumer`` commands.

The unit tests run Huey's real code on a SQLite file in the test's directory (no broker, no process):
the producer side is the backend, the worker side is an instance built as `backends.huey_worker` builds
it, executing tasks in this process. The service tests at the end go through the harness's Stack.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from huey.registry import Message
from huey.utils import Error

from backends import ledger, workload
from backends.base import BackendSettings, BackendUnavailable, JobRequest, UnsupportedOption, WorkerSpec
from backends.huey_backend import (
    DOCS_URL,
    QUEUE_ENV,
    TAG,
    HueyBackend,
    JSONSerializer,
    MsgpackSerializer,
    build_huey,
    from_tree,
    to_tree,
)
from benchmarks.stack import PROJECT_ROOT, Stack, StackConfig

SERIALIZERS = ("json", "pickle", "msgpack")


def sqlite_settings(tmp_path, **overrides) -> BackendSettings:
    fields = dict(broker="sqlite", broker_url=f"sqlite:///{tmp_path.resolve() / 'broker.sqlite3'}",
                  serializer="json")
    return BackendSettings(**(fields | overrides))


def job(task: str, args: dict | None = None, *, queue: str = "default", task_id: str | None = None) -> JobRequest:
    args = workload.message_args(task, args or {})
    return JobRequest(id=task_id or f"{task}-{time.time_ns()}", task=task, args=args, queue=queue,
                      sent_ns=time.time_ns())


def work_one(settings: BackendSettings, queue: str = "default") -> bool:
    """Dequeue and execute one task the way a consumer's worker does; False when the queue is empty."""
    instance, _ = build_huey(settings, queue)
    task = instance.dequeue()
    if task is None:
        return False
    instance.execute(task)
    instance.storage.close()
    return True


@pytest.fixture
def backend(tmp_path, request):
    serializer = getattr(request, "param", "json")
    made = HueyBackend(sqlite_settings(tmp_path, serializer=serializer))
    yield made
    made.close()


# --- serializers ---------------------------------------------------------------------------------------


TRICKY = {
    "text": "é ☃",
    "int": 2**53,
    "float": 1.5,
    "none": None,
    "bool": True,
    "list": [1, (2, 3)],
    "tuple": (1, "a", None),
    "nested": {"a": {"b": [{"c": ()}]}},
    "int keys": {1: "one", 2: "two"},
    "looks like a tag": {TAG: ["tuple", [1]]},
    "when": dt.datetime(2026, 1, 2, 3, 4, 5, 678),
    "aware": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
    "bytes": b"\x00\xff",
}


@pytest.mark.parametrize("serializer", [JSONSerializer(), MsgpackSerializer(), JSONSerializer(compression=True)])
def test_the_json_and_msgpack_serializers_give_back_every_value_huey_stores_unchanged(serializer):
    message = Message("id-1", "backends.huey_backend.queuebench_run", dt.datetime(2026, 5, 6, 7, 8, 9), 2, 0, None,
                      ("flaky", {"fail_times": 2}, {"id": "id-1", "sent_ns": 1}), {}, None, None, None, None,
                      None, ("chord", 2, 0, Message("cb", "x")), 0)
    error = Error({"error": "FlakyFailure('x')", "retries": 0, "traceback": "Traceback...\nX: y", "task_id": "t"})
    for value in (TRICKY, message, error, (None, True), None, 3, "text", [message, error]):
        back = serializer.deserialize(serializer.serialize(value))
        assert back == value and type(back) is type(value)
    assert type(serializer.deserialize(serializer.serialize(message)).chord_config[3]) is Message


def test_a_value_json_cannot_carry_faithfully_is_refused_rather_than_changed():
    for value in ({1, 2}, object(), dt.date(2026, 1, 1)):
        with pytest.raises(TypeError, match="use serializer pickle"):
            JSONSerializer().serialize(value)


def test_the_tagged_tree_is_plain_json_with_tags_only_where_json_falls_short():
    assert to_tree({"a": [1, "b", None]}) == {"a": [1, "b", None]}
    assert to_tree((1, 2)) == {TAG: ["tuple", [1, 2]]}
    assert from_tree(json.loads(json.dumps(to_tree({"k": (1, b"x")})))) == {"k": (1, b"x")}


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_a_real_huey_task_message_round_trips_through_the_configured_serializer(tmp_path, serializer):
    settings = sqlite_settings(tmp_path, serializer=serializer)
    instance, task = build_huey(settings, "default")
    sent = task.s("echo", {"size": 3, "payload": "abc"}, {"id": "x", "sent_ns": 5}, id="x", retries=2,
                  eta=dt.datetime(2030, 1, 1))
    back = instance.deserialize_task(instance.serialize_task(sent))
    assert (back.id, back.args, back.kwargs, back.retries, back.eta) == (
        "x", ("echo", {"size": 3, "payload": "abc"}, {"id": "x", "sent_ns": 5}), {}, 2, sent.eta)


# --- status over Huey's result store -------------------------------------------------------------------


@pytest.mark.parametrize("backend", SERIALIZERS, indirect=True)
def test_a_task_returning_none_reads_success_and_reading_it_does_not_consume_the_result(backend):
    backend.enqueue(job("noop", task_id="n1"))
    assert backend.status("n1").status == "queued"
    assert work_one(backend.settings)
    for _ in range(3):
        status = backend.status("n1")
        assert (status.status, status.result) == ("success", None)


def test_results_come_back_with_their_values(backend):
    backend.enqueue(job("add", {"x": 2, "y": 3}, task_id="a1"))
    backend.enqueue(job("echo", {"size": 100}, task_id="e1"))
    while work_one(backend.settings):
        pass
    assert backend.status("a1").result == 5
    assert backend.status("e1").result == {"length": 100,
                                           "crc32": workload.payload_checksum(workload.make_payload(100))}


def test_a_flaky_task_reads_queued_between_attempts_and_its_attempts_come_from_hueys_retries(backend, ledger_dir):
    backend.enqueue(job("flaky", {"fail_times": 2}, task_id="f1"))
    for _ in range(2):
        assert work_one(backend.settings)
        # The failed attempt is back in the queue; Huey stored no intermediate error.
        assert backend.status("f1").status == "queued"
        assert backend.queue_depths() == {"default": 1}
    assert work_one(backend.settings)
    assert (backend.status("f1").status, backend.status("f1").result) == ("success", 3)
    rows = [r for r in ledger.iter_rows(ledger_dir) if r["ev"] == "finished"]
    assert [(r["attempt"], r["outcome"]) for r in rows] == [(1, "error"), (2, "error"), (3, "ok")]


def test_a_failed_task_reads_failure_with_the_last_line_of_its_traceback(backend):
    # An unknown task name fails in the shared body, once: there are no retries for it.
    backend.enqueue(JobRequest(id="bad", task="no_such_task", args={}, queue="default"))
    assert work_one(backend.settings)
    status = backend.status("bad")
    assert status.status == "failure"
    assert status.error.startswith("ValueError: unknown task 'no_such_task'")


def test_with_results_off_status_has_no_record_and_huey_stores_nothing(tmp_path):
    backend = HueyBackend(sqlite_settings(tmp_path, results=False))
    backend.enqueue(job("add", {"x": 1, "y": 1}, task_id="r0"))
    assert work_one(backend.settings)
    assert backend.status("r0") is None
    instance, _ = build_huey(backend.settings, "default")
    assert instance.result_count() == 0
    backend.close()


def test_dedicated_routing_puts_each_queue_in_its_own_huey_instance_and_finds_results_in_either(tmp_path):
    backend = HueyBackend(sqlite_settings(tmp_path, routing="dedicated"))
    backend.enqueue(job("noop", queue="short", task_id="s1"))
    backend.enqueue(job("sleep_ms", {"ms": 1}, queue="long", task_id="l1"))
    backend.enqueue(job("sleep_ms", {"ms": 1}, queue="long", task_id="l2"))
    assert backend.queue_depths() == {"short": 1, "long": 2}
    assert work_one(backend.settings, "long")
    assert backend.queue_depths() == {"short": 1, "long": 1}
    assert work_one(backend.settings, "short")
    assert backend.status("s1").status == backend.status("l1").status == "success"
    backend.close()


def test_purge_empties_this_configurations_queues_and_results_and_nothing_else(backend):
    other, other_task = build_huey(backend.settings, "someone-else")
    other_task("noop", {}, {"id": "o"}, id="o")
    other.put_result("kept", 1)
    backend.enqueue(job("noop", task_id="p1"))
    backend.enqueue(job("noop", task_id="p2"))
    assert work_one(backend.settings)
    backend.purge()
    assert backend.queue_depths() == {"default": 0}
    assert backend.status("p1").status == "queued"  # its result is gone too
    assert other.pending_count() == 1 and other.result_count() == 1
    other.storage.close()


# --- settings, knobs and worker commands ----------------------------------------------------------------


@pytest.mark.parametrize(("settings", "option"), [
    (dict(broker="rabbitmq", broker_url="amqp://x"), "broker"),
    (dict(broker_url="sqlite:///relative.sqlite3"), "broker_url"),
    (dict(result_url="redis://127.0.0.1:1/0"), "result_url"),
    (dict(options={"storage": "RedisHuey"}), "[huey] storage"),
    (dict(options={"blocking": False}), "[huey] blocking"),
    (dict(options={"no_such_knob": 1}), "[huey] no_such_knob"),
    (dict(options={"backoff": 0.5}), "[huey] backoff"),
    (dict(broker="redis", broker_url="redis://127.0.0.1:1/0", options={"expire_time_s": 60}), "[huey] expire_time_s"),
    (dict(broker="redis", broker_url="redis://127.0.0.1:1/0", options={"storage": "SqliteHuey"}), "[huey] storage"),
    (dict(broker="redis", broker_url="redis://127.0.0.1:1/0", options={"sqlite_fsync": False}), "[huey] sqlite_fsync"),
])
def test_settings_huey_cannot_honour_are_refused_by_name(tmp_path, settings, option):
    with pytest.raises(UnsupportedOption) as caught:
        HueyBackend(sqlite_settings(tmp_path, **settings))
    assert caught.value.option == option


def test_building_the_backend_touches_no_broker(tmp_path):
    HueyBackend(sqlite_settings(tmp_path)).close()
    HueyBackend(BackendSettings(broker_url="redis://127.0.0.1:1/0", options={"storage": "RedisExpireHuey",
                                                                              "expire_time_s": 60})).close()
    assert not (tmp_path / "broker.sqlite3").exists()


def test_one_thread_per_process_becomes_one_process_consumer_and_more_threads_become_thread_consumers(backend):
    (single,) = backend.worker_commands(WorkerSpec(queues=("default",), processes=3, threads=1))
    assert single.argv[:3] == [sys.executable, "-m", "huey.bin.huey_consumer"]
    assert single.argv[3:] == ["-k", "process", "-w", "3", "-g", "TERM", "backends.huey_worker.huey"]
    threaded = backend.worker_commands(WorkerSpec(queues=("long",), processes=2, threads=4))
    assert [c.argv[3:7] for c in threaded] == [["-k", "thread", "-w", "4"]] * 2
    assert len({c.name for c in threaded}) == 2
    assert all(c.env[QUEUE_ENV] == "long" and "QUEUEBENCH_SETTINGS" in c.env for c in threaded)
    assert HueyBackend.slots(WorkerSpec(processes=2, threads=4)) == 8


def test_consumer_knobs_become_huey_consumer_flags(tmp_path):
    options = {"initial_delay_s": 0.01, "max_delay_s": 1, "backoff": 2.0, "health_check": False,
               "health_check_interval_s": 5, "logging_level": "WARNING"}
    backend = HueyBackend(sqlite_settings(tmp_path, options=options))
    (command,) = backend.worker_commands(WorkerSpec())
    flags = " ".join(command.argv)
    assert "-d 0.01 -m 1.0 -b 2.0 -c 5.0 -C -q" in flags
    backend.close()


@pytest.mark.parametrize(("spec", "option"), [
    (WorkerSpec(prefetch=1), "prefetch"),
    (WorkerSpec(acks_late=True), "acks_late"),
    (WorkerSpec(queues=("short", "long")), "queues"),
    (WorkerSpec(processes=0), "processes/threads"),
])
def test_worker_settings_huey_does_not_have_are_refused(backend, spec, option):
    with pytest.raises(UnsupportedOption) as caught:
        backend.worker_commands(spec)
    assert caught.value.option == option


def test_the_delivery_contract_is_at_most_once_from_hueys_docs(backend):
    process = backend.delivery_contract(WorkerSpec(processes=2))
    threaded = backend.delivery_contract(WorkerSpec(processes=1, threads=8))
    assert process.guarantee == threaded.guarantee == "at-most-once"
    assert process.source == DOCS_URL
    assert "lost" in process.in_flight and "all 8 of its threads" in threaded.in_flight
    assert "health check" in process.recovery


def test_every_knob_default_is_allowed_and_every_candidate_is_a_valid_value():
    for name, knob in HueyBackend.knobs.items():
        for value in (*knob.candidates, *([knob.default] if knob.default is not None else [])):
            assert knob.problem(value) is None, (name, value)


def test_ping_names_a_missing_sqlite_directory(tmp_path):
    url = f"sqlite:///{tmp_path.resolve() / 'missing' / 'broker.sqlite3'}"
    with pytest.raises(BackendUnavailable, match="missing"):
        HueyBackend(BackendSettings(broker="sqlite", broker_url=url)).ping()


def test_ping_names_a_redis_that_does_not_answer():
    with pytest.raises(BackendUnavailable, match="127.0.0.1:1"):
        HueyBackend(BackendSettings(broker_url="redis://127.0.0.1:1/0")).ping()


def test_describe_records_versions_storage_and_effective_consumer_settings(backend):
    described = backend.describe()
    assert described["huey_version"] and described["sqlite_version"]
    assert described["storage_class"] == "huey.api.SqliteHuey"
    assert described["consumer"]["graceful_signal"] == "TERM"
    assert described["consumer"]["max_delay_s"] == 10.0


def test_the_worker_module_builds_the_instance_of_the_queue_it_is_told(tmp_path):
    settings = sqlite_settings(tmp_path, routing="dedicated")
    env = dict(os.environ) | settings.to_env() | {QUEUE_ENV: "long", "PYTHONPATH": str(PROJECT_ROOT)}
    code = "import backends.huey_worker as w; print(w.huey.name, sorted(w.huey._registry._registry))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["long", "['backends.huey_backend.queuebench_run']"]


# --- through the harness -------------------------------------------------------------------------------


@pytest.mark.service
@pytest.mark.parametrize(("broker", "options"), [
    ("sqlite", {"max_delay_s": 0.5}),
    ("redis", {"storage": "RedisExpireHuey", "expire_time_s": 600}),
    ("redis", {"storage": "PriorityRedisHuey", "blocking": False, "max_delay_s": 0.2}),
], ids=["sqlite", "redis-expire", "redis-priority-polling"])
def test_thread_consumers_and_other_storages_run_every_task_once_through_the_api(broker, options, request,
                                                                                  tmp_path):
    if broker == "redis":
        request.getfixturevalue("need_redis")
    config = StackConfig.of(backend="huey", broker=broker, serializer="json", processes=2, threads=2,
                         options=options, api_workers=1, api_threads=4)
    with Stack(config, tmp_path) as stack:
        assert [p.name for p in stack.worker_procs] == ["huey-default-0", "huey-default-1"]
        ids = []
        for task, args in [("noop", {}), ("flaky", {"fail_times": 1}), ("sleep_ms", {"ms": 20})] * 2:
            body = json.dumps({"task": task, "args": args}).encode()
            post = urllib.request.Request(f"{stack.api_url}/tasks", data=body, method="POST",
                                          headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(post, timeout=10) as response:
                ids.append(json.loads(response.read())["id"])
        deadline = time.monotonic() + 30
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                with urllib.request.urlopen(f"{stack.api_url}/tasks/{task_id}", timeout=10) as response:
                    if json.loads(response.read())["status"] == "success":
                        pending.discard(task_id)
            time.sleep(0.1)
        assert not pending
        runs = ledger.executions(stack.ledger_dir)
        ok = runs[runs["outcome"] == "ok"]
        assert sorted(ok["id"]) == sorted(ids) and (ok["n_finished"] == 1).all()
        assert len(runs) == len(ids) + 2, "each flaky task failed once, nothing else ran twice"
