"""Serializers where they differ: each library's own codec, bytes per message read from the broker, the
drain hook that records both, the serializers matrix, and the table analysis builds from them.

No test asserts a timing or a measured value: codecs must round-trip, sizes must be positive and grow
with the payload, records must be where the docs say.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

import backends
from backends import codec, dispatch, get_backend, submit
from backends.base import BackendSettings, UnsupportedOption
from benchmarks import brokers, envs, matrix, serialization
from benchmarks.analysis import load, serializers
from benchmarks.procs import Supervisor

ROOT = Path(__file__).resolve().parent.parent
SERIALIZERS_MATRIX = ROOT / "benchmarks" / "matrices" / "serializers.toml"
#: Jobs every codec must carry unchanged: a payload, retries, big integers.
JOBS = (("echo", {"size": 1000}), ("flaky", {"fail_times": 2}), ("add", {"x": -(2**53), "y": 2**53}),
        ("noop", {}))


def _url(broker: str, tmp_path: Path) -> str:
    """A broker URL nothing listens on (codecs never connect), or a SQLite file in `tmp_path`."""
    if broker == "redis":
        return "redis://127.0.0.1:1/0"
    if broker == "rabbitmq":
        return "amqp://guest:guest@127.0.0.1:1//"
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


def _combinations(names):
    for name in names:
        cls = backends.backend_class(name)
        for broker in sorted(cls.brokers):
            for serializer in sorted(cls.serializers):
                yield name, broker, serializer


SHARED = [c for c in _combinations(backends.measurable()) if not backends.backend_class(c[0]).environment]
PRIVATE = sorted({c[0] for c in _combinations(backends.measurable()) if backends.backend_class(c[0]).environment})


@pytest.mark.parametrize(("name", "broker", "serializer"), SHARED)
def test_every_backend_codec_gives_back_the_jobs_task_and_arguments(name, broker, serializer, tmp_path):
    backend = get_backend(name, BackendSettings(broker=broker, broker_url=_url(broker, tmp_path),
                                                serializer=serializer, results=broker != "rabbitmq"))
    try:
        for task, args in JOBS:
            job = dispatch.make_job(backend.settings, task, args)
            data, decode = backend.codec(job)
            assert isinstance(data, bytes) and data
            decoded_task, decoded_args, meta = decode()
            assert (decoded_task, dict(decoded_args)) == (task, dict(job.args)), (name, broker, serializer, task)
            assert meta["id"] == job.id
    finally:
        backend.close()


@pytest.mark.parametrize("name", PRIVATE)
def test_a_private_environment_backend_codec_round_trips_in_its_own_interpreter(name):
    cls = backends.backend_class(name)
    python = envs.python_for(cls)
    script = ("import json, sys\n"
              "from backends import codec, dispatch, get_backend\n"
              "from backends.base import BackendSettings\n"
              "for serializer, broker in json.loads(sys.argv[1]):\n"
              f"    backend = get_backend({name!r}, BackendSettings(broker=broker, serializer=serializer,\n"
              "                          broker_url='redis://127.0.0.1:1/0'))\n"
              f"    for task, args in {list(JOBS)!r}:\n"
              "        codec.check_round_trip(backend, dispatch.make_job(backend.settings, task, args))\n"
              "    backend.close()\n"
              "print('ok')\n")
    pairs = [[s, b] for b in sorted(cls.brokers) for s in sorted(cls.serializers)]
    done = subprocess.run([python, "-c", script, json.dumps(pairs)], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("name", ["discard", "inline"])
def test_backends_without_serialization_say_so(name):
    backend = get_backend(name, BackendSettings())
    with pytest.raises(UnsupportedOption, match="codec"):
        backend.codec(dispatch.make_job(backend.settings, "noop", {}))


def test_timing_a_codec_reports_its_encoded_size_and_ordered_statistics():
    backend = get_backend("baseline", BackendSettings(broker_url="redis://127.0.0.1:1/0"))
    job = dispatch.make_job(backend.settings, "echo", {"size": 500})
    result = codec.time_codec(backend, job, batches=3, target_batch_s=0.001)
    assert result["encoded_bytes"] == len(backend.codec(job)[0])
    assert result["batches"] == 3 and result["per_batch"] >= codec.MIN_PER_BATCH
    for part in ("encode_us", "decode_us", "us_per_message"):
        stats = result[part]
        assert stats["min"] <= stats["median"] <= stats["max"], part
    assert "json.dumps" in result["timed"]


def test_a_codec_that_does_not_round_trip_is_refused_before_it_is_timed():
    backend = get_backend("baseline", BackendSettings(broker_url="redis://127.0.0.1:1/0"))
    job = dispatch.make_job(backend.settings, "add", {"x": 1, "y": 2})
    broken = types.SimpleNamespace(name="broken", codec=lambda j: (b"x", lambda: ("add", {"x": 1}, {})))
    with pytest.raises(codec.CodecMismatch):
        codec.time_codec(broken, job)
    assert codec.check_round_trip(backend, job)


def test_submit_codec_prints_one_timing_and_enqueues_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(submit.BACKEND_ENV, "rq")
    monkeypatch.setenv("QUEUEBENCH_SETTINGS", BackendSettings(broker_url="redis://127.0.0.1:1/0",
                                                              serializer="msgpack").to_env()["QUEUEBENCH_SETTINGS"])
    monkeypatch.setenv("QUEUEBENCH_LEDGER_DIR", str(tmp_path / "ledger"))
    out = io.StringIO()
    code = submit.main(["--codec", "--task", "echo", "--args", '{"size": 100}'], stdin=io.StringIO(), stdout=out)
    assert code == 0
    result = json.loads(out.getvalue())
    assert result["encoded_bytes"] > 0 and set(result) >= {"encode_us", "decode_us", "us_per_message", "timed"}
    assert not (tmp_path / "ledger").exists(), "no task was sent"
    assert submit.main(["--codec"], stdin=io.StringIO(), stdout=io.StringIO()) == 2


def test_rabbitmqctl_is_asked_about_the_urls_vhost_and_a_private_nodes_name():
    assert serialization.rabbitmqctl_argv("amqp://guest:guest@127.0.0.1:5672/%2F", owned=False)[-7:] == [
        "-p", "/", "name", "messages", "message_bytes", "--formatter", "json"]
    argv = serialization.rabbitmqctl_argv("amqp://guest:guest@127.0.0.1:5999//", owned=True)
    assert argv[argv.index("-n") + 1] == "qb5999@localhost" and argv[argv.index("-p") + 1] == "/"
    assert serialization.rabbitmqctl_argv("amqp://u:p@localhost:5672/qb", owned=False)[-6] == "qb"
    remote = serialization.rabbitmq_queues("amqp://u:p@10.0.0.9:5672/%2F", ("default",), owned=False)
    assert "not_measured" in remote


def test_a_part_that_cannot_be_measured_says_why_and_never_fails_the_cell():
    stack = types.SimpleNamespace(broker=None, settings=None, backend=None, external=False)
    before = serialization.snapshot(stack)
    record = serialization.after_preload(stack, before, {"tasks": 5, "task": "noop", "args": {}, "serializer": "json"})
    assert "not_measured" in record["broker"] and "not_measured" in record["codec"]


# --- on a private Redis ----------------------------------------------------------------------------------


@pytest.mark.service
def test_bytes_per_message_read_from_redis_are_positive_and_grow_with_the_payload(need_redis, tmp_path):
    supervisor = Supervisor()
    try:
        broker = brokers.start_private_redis(supervisor, tmp_path)
        backend = get_backend("huey", BackendSettings(broker_url=broker.url, serializer="json"))
        stack = types.SimpleNamespace(broker=broker, settings=backend.settings, backend=backend, external=False)
        per_message = {}
        for size in (100, 10_000):
            before = serialization.snapshot(stack)
            for _ in range(100):
                dispatch.submit(backend, "echo", {"size": size})
            found = serialization.broker_bytes_per_message(stack, before, 100)
            assert found["method"] == "redis", found
            per_message[size] = found
            backend.purge()
        backend.close()
    finally:
        supervisor.stop_all()
    for key in ("bytes_per_message", "key_bytes_per_message"):
        assert 0 < per_message[100][key] < per_message[10_000][key], key


def test_bytes_per_message_in_a_sqlite_file_are_positive_and_grow_with_the_payload(tmp_path, ledger_dir):
    per_message = {}
    for size in (100, 10_000):
        url = f"sqlite:///{tmp_path / f'broker-{size}.sqlite3'}"
        backend = get_backend("huey", BackendSettings(broker="sqlite", broker_url=url, serializer="msgpack"))
        broker = brokers.BrokerHandle("sqlite", url, owned=True)
        stack = types.SimpleNamespace(broker=broker, settings=backend.settings, backend=backend, external=False)
        backend.queue_depths()  # creates the tables, as the stack's check that queues start empty does
        before = serialization.snapshot(stack)
        for _ in range(50):
            dispatch.submit(backend, "echo", {"size": size})
        per_message[size] = serialization.broker_bytes_per_message(stack, before, 50)
        backend.close()
    assert per_message[100]["method"] == "sqlite pages in use", per_message[100]
    assert 0 < per_message[100]["bytes_per_message"] < per_message[10_000]["bytes_per_message"]


#: Where each library stores one enqueued message on Redis (shared-environment backends, default queue).
STORED = {
    "baseline": lambda client, job_id: client.lrange("queuebench:baseline:queue:default", 0, -1),
    "celery": lambda client, job_id: client.lrange("default", 0, -1),
    "huey": lambda client, job_id: client.lrange("huey.redis.default", 0, -1),
    "rq": lambda client, job_id: [client.hget(f"rq:job:{job_id}", "data")],
    "dramatiq": lambda client, job_id: client.hvals("dramatiq:default.msgs"),
}


@pytest.mark.service
@pytest.mark.parametrize("name", sorted(STORED))
def test_the_codec_gives_the_bytes_the_library_stores_on_redis(name, need_redis, tmp_path, ledger_dir):
    supervisor = Supervisor()
    try:
        broker = brokers.start_private_redis(supervisor, tmp_path)
        client = redis.Redis.from_url(broker.url)
        for serializer in sorted(backends.backend_class(name).serializers):
            backend = get_backend(name, BackendSettings(broker_url=broker.url, serializer=serializer))
            job = dispatch.make_job(backend.settings, "echo", {"size": 1000})
            data, _decode = backend.codec(job)
            backend.enqueue(job)
            (stored,) = STORED[name](client, job.id)
            # Ids, timestamps and uuids differ between two encodings of one job; their lengths do not.
            assert len(stored) == len(data), (name, serializer)
            backend.purge()
            backend.close()
        client.close()
    finally:
        supervisor.stop_all()


@pytest.mark.service
def test_a_drain_cell_stores_its_serializer_figures_in_run_json(need_redis, tmp_path):
    spec = tmp_path / "drain.toml"
    spec.write_text('backend = "rq"\nserializer = "msgpack"\nprocesses = 1\nmode = "drain"\ntask = "echo"\n'
                    'args = {size = 2000}\ntasks = 20\ndrain_timeout_s = 60\n')
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(spec), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert record["status"] == "ok", record.get("detail")
    found = record["serialization"]
    assert (found["serializer"], found["task"], found["args"], found["messages"]) == ("msgpack", "echo",
                                                                                      {"size": 2000}, 20)
    assert found["broker"]["bytes_per_message"] > 0 and found["broker"]["key_bytes_per_message"] > 0
    assert found["codec"]["encoded_bytes"] > 0 and found["codec"]["us_per_message"]["median"] > 0
    row = load.run_row(record)
    assert row["payload_bytes"] == 2000 and row["encoded_bytes"] == found["codec"]["encoded_bytes"]


# --- the matrix and the table ------------------------------------------------------------------------------


def test_the_serializers_matrix_parses_into_every_library_and_serializer_at_three_payloads():
    parsed = matrix.load(SERIALIZERS_MATRIX)
    cells = [c.spec for c in parsed.cells if not c.skip_reason]
    assert cells and all(c["mode"] == "drain" and c["task"] == "echo" for c in cells)
    redis_cells = {(c["backend"], c["serializer"], c["args"]["size"]) for c in cells if c["broker"] == "redis"}
    for name in backends.libraries():
        for serializer in backends.backend_class(name).serializers:
            assert {(name, serializer, size) for size in (100, 10_000, 100_000)} <= redis_cells, (name, serializer)
    assert not [c.run_id for c in parsed.cells if c.skip_reason], "every cell runs"


def _run(backend, serializer, size, repeat, **figures):
    return {"backend": backend, "broker": "redis", "serializer": serializer, "payload_bytes": size, "mode": "drain",
            "usable": True, "processes": 2, "threads": 1, "options": "{}", "results": True, "repeat": repeat,
            **{f: figures.get(f, np.nan) for f in serializers.FIGURES}}


def test_the_serializer_table_summarises_each_figure_over_repeats():
    runs = pd.DataFrame([
        _run("rq", "json", 100, 0, encoded_bytes=180, codec_us_per_message=40.0, throughput_per_s=300.0),
        _run("rq", "json", 100, 1, encoded_bytes=180, codec_us_per_message=50.0, throughput_per_s=320.0),
        _run("rq", "json", 100, 2, encoded_bytes=180, codec_us_per_message=45.0),
        _run("rq", "pickle", 100, 0, encoded_bytes=190, codec_us_per_message=30.0),
        _run("huey", "json", 10_000, 0, encoded_bytes=10_281) | {"usable": False},
        _run("huey", "json", 10_000, 1) | {"mode": "load", "encoded_bytes": 1},
    ])
    table = serializers.serializer_table(runs)
    assert list(table.columns) == list(serializers.COLUMNS)
    assert set(table["backend"]) == {"rq"}, "unusable and load-mode runs are left out"
    cost = table[(table["serializer"] == "json") & (table["figure"] == "codec_us_per_message")].iloc[0]
    assert (cost["n"], cost["median"], cost["min"], cost["max"], cost["spread"]) == (3, 45.0, 40.0, 50.0, 10.0)
    throughput = table[(table["serializer"] == "json") & (table["figure"] == "throughput_per_s")].iloc[0]
    assert throughput["n"] == 2, "a repeat without the figure is not counted"
    assert "broker_bytes_per_message" not in set(table["figure"]), "a figure no run has is not listed"
    figures = list(table[table["serializer"] == "json"]["figure"])
    assert figures == sorted(figures, key=serializers.FIGURES.index)


def test_configurations_that_differ_in_worker_count_are_kept_apart():
    runs = pd.DataFrame([_run("rq", "json", 100, 0, encoded_bytes=180),
                         _run("rq", "json", 100, 0, encoded_bytes=180) | {"processes": 4}])
    table = serializers.serializer_table(runs)
    assert "processes" in table.columns and sorted(table["processes"]) == [2, 4]
    assert serializers.serializer_table(runs.iloc[0:0]).empty
