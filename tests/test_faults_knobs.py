"""Recovery knobs: pinned where the library's own workers read them, recorded in run.json, and the contract
that follows from them; one short end-to-end check that RQ's Retry brings a killed work horse's job back."""

from __future__ import annotations

from typing import Any

import pytest
from fault_cells import run_one

from backends import backend_class, rq_backend
from backends.base import BackendSettings, UnsupportedOption, WorkerSpec
from benchmarks import fault_verdict, faults
from benchmarks.stack import Stack, StackConfig

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing is contacted: backends connect lazily
RECOVERY = {"worker_ttl_s": 20, "maintenance_interval_s": 5, "job_monitoring_interval_s": 5}


def rq_settings(**options) -> BackendSettings:
    return BackendSettings(broker_url=UNREACHABLE, options=options)


def test_rq_recovery_knobs_reach_the_pools_workers_as_the_arguments_rq_worker_would_pass(monkeypatch):
    settings = rq_settings(worker_class="SimpleWorker", **RECOVERY)
    backend = rq_backend.RQBackend(settings)
    (command,) = backend.worker_commands(WorkerSpec(processes=2))
    assert command.argv[command.argv.index("-w") + 1] == "backends.rq_backend.PinnedSimpleWorker"
    # The pool builds each worker from the class alone; the class reads the knobs the worker's environment has.
    monkeypatch.setenv(*next(iter(command.env.items())))
    worker = rq_backend.PinnedSimpleWorker(["default"], connection=backend._redis, prepare_for_work=False)
    assert (worker.worker_ttl, worker.maintenance_interval, worker.job_monitoring_interval) == (20, 5, 5)
    assert isinstance(worker, rq_backend.SimpleWorker)


def test_rq_records_its_recovery_timers_and_when_a_dead_workers_job_comes_back():
    recovery = rq_backend.RQBackend(rq_settings(**RECOVERY)).describe()["recovery"]
    assert recovery["pinned"] == sorted(RECOVERY)
    assert {k: recovery[k] for k in RECOVERY} == RECOVERY
    assert recovery["entry_expires_s"] == 5 + rq_backend.STARTED_TTL_EXTRA_S
    defaults = rq_backend.RQBackend(rq_settings()).describe()["recovery"]
    assert defaults["pinned"] == [] and defaults["maintenance_interval_s"] == rq_backend.DEFAULT_MAINTENANCE_TASK_INTERVAL


def test_rq_refuses_recovery_knobs_with_a_worker_class_it_cannot_subclass_naming_the_knob():
    with pytest.raises(UnsupportedOption, match=r"\[rq\] worker_class.*maintenance_interval_s"):
        rq_backend.RQBackend(rq_settings(worker_class="mypkg.workers.Custom", maintenance_interval_s=5))


def test_rq_with_a_retry_promises_at_least_once_and_without_one_at_most_once():
    spec = WorkerSpec()
    assert rq_backend.RQBackend(rq_settings()).delivery_contract(spec).guarantee == "at-most-once"
    assert rq_backend.RQBackend(rq_settings(retry_max=1)).delivery_contract(spec).guarantee == "at-least-once"


@pytest.mark.service
def test_rq_with_a_retry_runs_a_killed_work_horses_job_again_and_loses_nothing(need_redis, tmp_path):
    _, record = run_one(tmp_path, 'backend = "rq"\nprocesses = 2\nmode = "drain"\ntask = "sleep_ms"\n'
                        'args = {ms = 1000}\ntasks = 4\nfault = "kill_child"\nfault_at_s = 1.5\nobserve_s = 15\n'
                        'drain_timeout_s = 60\n[rq]\nretry_max = 1\n')
    faults = record["faults"]
    assert record["status"] == "ok", record["detail"]
    assert record["settings"]["retry_max"] == 1
    assert faults["expected"]["guarantee"] == "at-least-once"
    assert faults["lost_in_flight"] == faults["lost_queued"] == 0, faults["ids"]
    assert faults["reexecuted"] >= 1 and faults["verdict"] == "as-documented"
    assert faults["orphans"] == []


@pytest.mark.service
@pytest.mark.parametrize("backend", ["huey", "arq"])
def test_the_tasks_huey_and_arq_still_hold_are_read_from_what_the_library_itself_wrote(backend, need_redis,
                                                                                       tmp_path):
    # Enqueued by the library's own producer (arq's in its own environment), no worker started: the broker
    # holds every task, and reading it takes nothing away.
    stack = Stack(StackConfig.of(backend=backend, processes=1), tmp_path)
    try:
        stack.start_brokers()
        ids = set(stack.submit([{"task": "noop"}] * 3))
        assert stack.backend.held_task_ids() == ids
        assert stack.backend.held_task_ids() == ids and sum(stack.backend.queue_depths().values()) == 3
    finally:
        stack.stop()


@pytest.mark.parametrize(("backend", "keys"), [
    ("huey", {"task", "worker", "graceful_signal"}),
    ("arq", {"killed_worker", "terminated_worker", "tries"}),
])
def test_huey_and_arq_record_how_they_recover_a_dead_workers_tasks(backend, keys):
    cls = backend_class(backend)
    described = cls(BackendSettings(broker_url=UNREACHABLE)).describe()
    assert keys <= set(described["recovery"])


# --- Celery: publisher confirms and cancelling long-running tasks on a lost connection ------------------

AMQP = "amqp://guest:guest@127.0.0.1:1//"  # nothing is contacted


def celery_on(broker: str, **options) -> Any:
    url = AMQP if broker == "rabbitmq" else UNREACHABLE
    return backend_class("celery")(BackendSettings(broker=broker, broker_url=url, results=False, options=options))


def test_celery_records_confirm_publish_and_cancel_on_connection_loss_at_celerys_defaults_unless_set():
    default = celery_on("rabbitmq")
    assert default.describe()["recovery"]["confirm_publish"] is False
    assert default.describe()["recovery"]["cancel_long_running_tasks_on_connection_loss"] is False
    asked = celery_on("rabbitmq", confirm_publish=True, cancel_long_running_tasks_on_connection_loss=True)
    described = asked.describe()
    assert described["recovery"]["confirm_publish"] is True
    assert described["recovery"]["cancel_long_running_tasks_on_connection_loss"] is True
    # where kombu reads it: the py-amqp connection's keyword, through the transport options
    assert described["broker_transport_options"]["confirm_publish"] is True
    for backend in (default, asked):
        backend.close()


def test_celerys_workers_get_cancel_on_connection_loss_from_the_app_they_build():
    from backends.celery_backend import build_app
    settings = BackendSettings(broker_url=UNREACHABLE, results=False,
                               options={"cancel_long_running_tasks_on_connection_loss": True})
    assert build_app(settings).conf.worker_cancel_long_running_tasks_on_connection_loss is True
    plain = build_app(BackendSettings(broker_url=UNREACHABLE, results=False))
    assert plain.conf.worker_cancel_long_running_tasks_on_connection_loss is False


def test_celery_refuses_publisher_confirms_on_redis_naming_the_knob_and_the_broker():
    with pytest.raises(UnsupportedOption, match=r"\[celery\] confirm_publish.*RabbitMQ broker only"):
        celery_on("redis", confirm_publish=True)
    with pytest.raises(UnsupportedOption, match=r"\[celery\] visibility_timeout_s.*Redis broker only"):
        celery_on("rabbitmq", visibility_timeout_s=10)
    on_redis = celery_on("redis", cancel_long_running_tasks_on_connection_loss=True)  # any broker's connection
    assert on_redis.describe()["recovery"]["confirm_publish"] is None
    on_redis.close()


@pytest.mark.parametrize(("backend", "knob"), [("celery", "confirm_publish"), ("dramatiq", "confirm_delivery")])
def test_a_rabbitmq_restart_may_lose_what_was_published_without_confirms_and_nothing_published_with_them(
        backend, knob):
    # A synthetic ledger: "a" ran before the restart, "b" was queued at it and never came back.
    S = 1_000_000_000
    rows = [{"ev": "sent", "id": i, "sent_ns": 0, "scheduled_ns": None} for i in ("a", "b")]
    rows += [{"ev": "started", "id": "a", "task": "sleep_ms", "attempt": 1, "t_ns": 1 * S, "pid": 1},
             {"ev": "finished", "id": "a", "task": "sleep_ms", "attempt": 1, "t_ns": 2 * S, "outcome": "ok", "pid": 1}]
    verdicts = {}
    for confirms in (False, True):
        cls = backend_class(backend)
        instance = cls(BackendSettings(broker="rabbitmq", broker_url=AMQP, results=False, options={knob: confirms}))
        contract = instance.delivery_contract(WorkerSpec(processes=2))
        instance.close()
        assert contract.publish_confirms is confirms
        fault = {"kind": "restart_broker", "at_ns": 3 * S, "deadline_ns": 30 * S,
                 "persistence": faults.rabbitmq_durability(contract)}
        verdicts[confirms] = fault_verdict.judge(rows, fault, contract.whole_worker or contract.guarantee)
    assert verdicts[False]["lost_queued"] == verdicts[True]["lost_queued"] == 1
    assert verdicts[False]["verdict"] == fault_verdict.AS_DOCUMENTED
    assert verdicts[True]["verdict"] == fault_verdict.VIOLATES


def test_redis_brokers_declare_no_publisher_confirms():
    for name in ("celery", "dramatiq", "rq", "huey", "arq"):
        instance = backend_class(name)(BackendSettings(broker_url=UNREACHABLE, results=False))
        assert instance.delivery_contract(WorkerSpec()).publish_confirms is None, name
