"""Unit tests of the shared core: task bodies, ids, routing and the ledger (inline backend, no broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from backends import dispatch, get_backend, ledger, workload
from backends.base import BackendSettings, UnsupportedOption


def test_an_echo_payload_has_exactly_the_requested_size_and_is_deterministic():
    for size in (0, 1, 63, 64, 1000, 100_000):
        payload = workload.make_payload(size)
        assert len(payload.encode()) == size
        assert payload == workload.make_payload(size)


def test_cpu_ms_burns_at_least_the_requested_cpu_time_on_its_thread():
    before = time.thread_time_ns()
    workload.cpu_ms(30)
    assert time.thread_time_ns() - before >= 30 * 1_000_000


def test_flaky_fails_until_its_attempt_exceeds_fail_times():
    with pytest.raises(workload.FlakyFailure):
        workload.flaky(2, attempt=2)
    assert workload.flaky(2, attempt=3) == 3


def test_issued_ids_are_recognised_and_foreign_ids_are_not():
    issued = dispatch.new_task_id()
    assert dispatch.is_issued_id(issued)
    assert not dispatch.is_issued_id("0" * 32)
    assert not dispatch.is_issued_id(issued.upper())
    assert not dispatch.is_issued_id("not-an-id")


def test_ids_issued_under_one_key_are_unknown_under_another(monkeypatch):
    monkeypatch.setenv(dispatch.ID_KEY_ENV, "one")
    issued = dispatch.new_task_id()
    monkeypatch.setenv(dispatch.ID_KEY_ENV, "two")
    assert not dispatch.is_issued_id(issued)


@pytest.mark.parametrize(("task", "args", "queue"), [
    ("sleep_ms", {"ms": 100}, "long"),
    ("cpu_ms", {"ms": 500}, "long"),
    ("sleep_ms", {"ms": 99}, "short"),
    ("noop", {}, "short"),
    ("echo", {"size": 10_000}, "short"),
])
def test_dedicated_routing_sends_long_timed_tasks_to_their_own_queue(task, args, queue):
    settings = BackendSettings(routing="dedicated", long_threshold_ms=100)
    assert dispatch.route(task, args, settings) == queue
    assert dispatch.route(task, args, BackendSettings(routing="shared")) == "default"


def test_rabbitmq_with_results_but_no_result_store_is_refused():
    with pytest.raises(UnsupportedOption, match="result"):
        get_backend("inline", BackendSettings(broker="rabbitmq", broker_url="amqp://x//", results=True))


def test_every_submitted_task_leaves_one_sent_row_and_one_finished_row(ledger_dir):
    backend = get_backend("inline")
    ids = [dispatch.submit(backend, "sleep_ms", {"ms": 1}, scheduled_ns=123).id for _ in range(5)]
    runs = ledger.executions(ledger_dir)
    assert sorted(runs["id"]) == sorted(ids)
    assert (runs["n_finished"] == 1).all() and (runs["outcome"] == "ok").all()
    assert (runs["scheduled_ns"] == 123).all()
    assert (runs["sent_ns"] <= runs["enqueued_ns"]).all()
    assert (runs["started_ns"] <= runs["finished_ns"]).all()


def test_a_flaky_task_leaves_one_row_per_attempt(ledger_dir):
    backend = get_backend("inline")
    task_id = dispatch.submit(backend, "flaky", {"fail_times": 2}).id
    runs = ledger.executions(ledger_dir)
    assert list(runs["attempt"]) == [1, 2, 3]
    assert list(runs["outcome"]) == ["error", "error", "ok"]
    assert backend.status(task_id).result == 3


def test_probe_rows_are_left_out_unless_asked_for(ledger_dir):
    backend = get_backend("inline")
    dispatch.submit(backend, "noop", {}, probe=True)
    dispatch.submit(backend, "noop", {})
    assert len(ledger.executions(ledger_dir)) == 1
    assert len(ledger.executions(ledger_dir, include_probes=True)) == 2


def test_nanosecond_stamps_survive_the_reader_exactly(ledger_dir):
    stamp = 1_795_599_376_801_207_037  # not representable in a float64
    ledger.record_sent(task_id="x", task="noop", args={}, queue="default", scheduled_ns=stamp,
                       sent_ns=stamp, enqueued_ns=stamp + 1)
    row = ledger.executions(ledger_dir).iloc[0]
    assert int(row["scheduled_ns"]) == stamp and int(row["enqueued_ns"]) == stamp + 1


def test_a_task_that_never_started_keeps_a_row_with_no_times(ledger_dir):
    ledger.record_sent(task_id="lost", task="noop", args={}, queue="default", scheduled_ns=None,
                       sent_ns=1, enqueued_ns=2)
    row = ledger.executions(ledger_dir).iloc[0]
    assert row["attempt"] == 0 and row["n_finished"] == 0 and row["started_ns"] is pd.NA


def test_ledger_rows_written_before_a_sigkill_survive_and_a_cut_line_is_skipped(tmp_path):
    directory = tmp_path / "ledger"
    script = textwrap.dedent("""
        import os, sys, time
        from backends import ledger
        for i in range(100):
            ledger.record_started({"id": f"t{i}"}, "noop", 1)
        print("written", flush=True)
        time.sleep(60)
    """)
    env = os.environ | {"QUEUEBENCH_LEDGER_DIR": str(directory), "PYTHONPATH": os.getcwd()}
    with subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline().strip() == b"written"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (path,) = ledger.files(directory)
    with open(path, "ab") as fh:
        fh.write(b'{"ev":"started","id":"cut')  # what a writer killed mid-row would leave
    rows = list(ledger.iter_rows(directory))
    # Every row written before the kill comes back whole and in order; the cut one is not among them.
    assert [r["id"] for r in rows] == [f"t{i}" for i in range(100)]
    assert {(r["ev"], r["task"], r["attempt"], r["pid"]) for r in rows} == {("started", "noop", 1, proc.pid)}
    assert all(isinstance(r["t_ns"], int) and r["t_ns"] > 0 for r in rows)
