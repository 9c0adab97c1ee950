"""arq: what its backend declares, its serializers, its private environment, and what only arq does
(time-outs as failures, enqueues from another environment, a purge that reads results back)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
import types

import pytest
import redis

from backends import ledger, workload
from backends.arq_backend import (
    FLAKY_TRIES,
    IN_PROGRESS_EXTRA_S,
    KNOBS,
    MAX_JOBS_ENV,
    QUEUE_ENV,
    RESULT_KEY_PREFIX,
    ArqBackend,
    error_text,
    json_dumps,
    json_loads,
    msgpack_dumps,
    msgpack_loads,
    queue_key,
)
from backends.base import BackendSettings, UnsupportedOption, WorkerSpec
from benchmarks import envs
from benchmarks.stack import PROJECT_ROOT, Stack, StackConfig
from tests.test_contract import http, wait_for_status


def _backend(**options) -> ArqBackend:
    return ArqBackend(BackendSettings(options=options))


# --- declarations ----------------------------------------------------------------------------------------


def test_the_backend_module_imports_and_answers_without_arq_installed():
    code = ("import sys; from backends.arq_backend import ArqBackend; from backends.base import BackendSettings, "
            "WorkerSpec; b = ArqBackend(BackendSettings(broker_url='redis://127.0.0.1:1/0')); "
            "b.worker_commands(WorkerSpec()); b.delivery_contract(WorkerSpec()); b.describe(); b.close(); "
            "print('arq' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          check=True)
    assert done.stdout.strip() == "False"


def test_every_knob_default_and_candidate_is_allowed_by_its_own_declaration():
    for name, knob in KNOBS.items():
        for value in ([knob.default] if knob.default is not None else []) + list(knob.candidates):
            assert knob.problem(value) is None, (name, value)
        assert knob.help


def test_max_tries_below_what_flaky_needs_is_refused_naming_the_knob():
    with pytest.raises(UnsupportedOption, match=r"max_tries=5: must be an integer from 11"):
        _backend(max_tries=5)
    assert _backend().max_tries == FLAKY_TRIES == 11
    with pytest.raises(UnsupportedOption, match="known knobs"):
        _backend(concurrency=4)


def test_processes_x_threads_become_arq_processes_each_with_max_jobs_threads():
    backend = _backend()
    spec = WorkerSpec(queues=("short",), processes=3, threads=7)
    commands = backend.worker_commands(spec)
    assert len(commands) == 3 and backend.slots(spec) == 21
    for command in commands:
        assert command.argv == [sys.executable, "-m", "arq", "backends.arq_worker.WorkerSettings"]
        assert command.env[QUEUE_ENV] == "short" and command.env[MAX_JOBS_ENV] == "7"
    assert backend.worker_settings("short", 7)["queue_name"] == queue_key("short")


def test_a_worker_group_on_two_queues_or_with_prefetch_or_early_acks_is_refused():
    backend = _backend()
    with pytest.raises(UnsupportedOption, match="one queue"):
        backend.worker_commands(WorkerSpec(queues=("short", "long")))
    with pytest.raises(UnsupportedOption, match="queue_read_limit"):
        backend.worker_commands(WorkerSpec(prefetch=4))
    with pytest.raises(UnsupportedOption, match="until the job finishes"):
        backend.worker_commands(WorkerSpec(acks_late=False))


def test_the_delivery_contract_is_at_least_once_with_recovery_after_job_timeout_plus_10_s():
    contract = _backend(job_timeout_s=60).delivery_contract(WorkerSpec(threads=4))
    assert contract.guarantee == "at-least-once"
    assert f"{60 + IN_PROGRESS_EXTRA_S} s" in contract.recovery
    assert "max_jobs = 4" in contract.prefetched
    assert contract.source.startswith("https://arq-docs.helpmanual.io/")


def test_results_off_means_arq_keeps_no_result():
    backend = ArqBackend(BackendSettings(results=False, options={"keep_result_s": 60}))
    assert backend.worker_settings("default", 1)["keep_result"] == 0


@pytest.mark.parametrize(("dumps", "loads"), [(json_dumps, json_loads), (msgpack_dumps, msgpack_loads)],
                         ids=["json", "msgpack"])
def test_json_and_msgpack_keep_a_failed_jobs_exception_as_its_name_and_message(dumps, loads):
    # The dict arq's serialize_result writes for a failure: the exception object itself under 'r'.
    record = {"t": 3, "f": "run", "a": ("flaky", {"fail_times": 9}, {"id": "x"}), "k": {}, "et": 1, "s": False,
              "r": workload.FlakyFailure("flaky: attempt 3 of 10 fails on purpose"), "st": 2, "ft": 3,
              "q": "arq:queue:default", "id": "x"}
    back = loads(dumps(record))
    assert back["a"] == ["flaky", {"fail_times": 9}, {"id": "x"}]
    assert error_text(back["r"]) == "FlakyFailure: flaky: attempt 3 of 10 fails on purpose"
    assert error_text(pickle.loads(pickle.dumps(record))["r"]) == error_text(back["r"])
    assert error_text(TimeoutError()) == "TimeoutError"


# --- the private environment -------------------------------------------------------------------------------


def test_a_command_on_the_harness_interpreter_runs_with_the_environments_python_instead():
    python = "/envs/arq-1/bin/python"
    assert envs.argv_for([sys.executable, "-m", "arq", "x.Y"], python) == [python, "-m", "arq", "x.Y"]
    assert envs.argv_for(["/usr/bin/redis-server", "--port", "1"], python) == ["/usr/bin/redis-server", "--port", "1"]
    assert envs.argv_for([sys.executable, "-V"], sys.executable) == [sys.executable, "-V"]


def test_a_backend_without_requirements_runs_with_the_harness_interpreter():
    class Shared:
        name = "shared"
        environment = ()
        packages = ("redis",)

    assert envs.python_for(Shared) == sys.executable
    assert envs.env_path(Shared) is None
    assert envs.packages_in(Shared)["redis"]


def test_a_failed_pip_install_removes_the_half_built_environment_and_names_the_requirement(tmp_path, monkeypatch):
    monkeypatch.setenv(envs.ENV_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip fails at once on a name it cannot find

    class Broken:
        name = "broken"
        environment = ("queuebench-no-such-distribution==1.0",)

    with pytest.raises(envs.EnvironmentBuildError) as caught:
        envs.python_for(Broken)
    message = str(caught.value)
    assert "'queuebench-no-such-distribution==1.0'" in message
    assert "No matching distribution" in message  # pip's own words, quoted
    path = envs.env_path(Broken)
    assert path is not None and not path.exists()
    assert path.name.startswith("broken-") and path.parent == tmp_path


def test_the_arq_environment_holds_arq_0_28_with_a_redis_py_below_6_and_is_reused():
    python = envs.python_for(ArqBackend)
    assert python != sys.executable and python.startswith(str(envs.env_root()))
    versions = envs.packages_in(ArqBackend)
    assert versions["arq"].startswith("0.28.")
    assert int(versions["redis"].split(".")[0]) < 6
    assert versions["hiredis"]
    started = time.monotonic()
    assert envs.python_for(ArqBackend) == python
    assert time.monotonic() - started < 0.5, "a built environment is reused, not rebuilt"
    assert envs.build_info(ArqBackend)["requirements"] == list(ArqBackend.environment)


# --- through the real stack --------------------------------------------------------------------------------


def _config(serializer: str = "json", **extra) -> StackConfig:
    return StackConfig.of(backend="arq", serializer=serializer, api_workers=1, api_threads=4, **extra)


@pytest.mark.service
@pytest.mark.parametrize("serializer", ["json", "pickle", "msgpack"])
def test_a_job_arq_times_out_is_reported_as_a_failure_with_its_error(serializer, need_redis, tmp_path):
    config = _config(serializer, options={"job_timeout_s": 1, "poll_delay_s": 0.05})
    with Stack(config, tmp_path) as stack:
        code, body = http("POST", f"{stack.api_url}/tasks", {"task": "sleep_ms", "args": {"ms": 2500}})
        assert code == 202
        final = wait_for_status(stack.api_url, body["id"], timeout_s=30)
        assert final["status"] == "failure" and final["error"] == "TimeoutError", final
        code, tutorial = http("GET", f"{stack.api_url}/task_status/{body['id']}")
        assert code == 200 and tutorial == {"task_id": body["id"], "status": "FAILURE", "result": "TimeoutError"}


@pytest.mark.service
def test_a_drain_preload_is_enqueued_by_backends_submit_in_arqs_environment(need_redis, tmp_path):
    stack = Stack(_config("msgpack", processes=1, threads=4), tmp_path)
    try:
        stack.start_brokers()
        assert stack.external
        ids = stack.submit([{"task": "sleep_ms", "args": {"ms": 1}}] * 40)
        assert len(set(ids)) == 40
        assert stack.backend.queue_depths() == {"default": 40}
        stack.start_workers()
        follower = ledger.Follower(stack.ledger_dir)
        deadline = time.monotonic() + 30
        follower.poll()
        while len(follower.done_ids) < 40:
            assert time.monotonic() < deadline, follower.outstanding()
            time.sleep(0.1)
            follower.poll()
        assert follower.sent_ids == follower.done_ids == set(ids)
        record = stack.environment_record()
        assert record["packages"]["arq"].startswith("0.28.") and record["python"] == stack.python
    finally:
        stack.stop()


@pytest.mark.service
def test_purge_deletes_this_configurations_queue_and_results_and_nothing_else(need_redis, tmp_path):
    with Stack(_config("pickle"), tmp_path) as stack:
        ids = [http("POST", f"{stack.api_url}/tasks", {"task": "add", "args": {"x": 1, "y": i}})[1]["id"]
               for i in range(3)]
        for task_id in ids:
            assert wait_for_status(stack.api_url, task_id)["status"] == "success"
        stack.stop_workers()  # nothing writes while the keys below are laid out
        client = redis.Redis.from_url(stack.broker.url)
        # A result of ours holding an exception class the harness cannot import (as arq's own are, here),
        # and another configuration's result on another queue.
        module = types.ModuleType("queuebench_gone")
        gone = type("Gone", (Exception,), {"__module__": "queuebench_gone"})
        module.Gone = gone
        sys.modules["queuebench_gone"] = module
        try:
            client.set(RESULT_KEY_PREFIX + "unimportable", pickle.dumps({"q": queue_key("default"), "r": gone("x")}))
        finally:
            del sys.modules["queuebench_gone"]
        client.set(RESULT_KEY_PREFIX + "foreign", pickle.dumps({"q": "arq:queue:someone-else", "r": 1}))
        client.set(RESULT_KEY_PREFIX + "other-serializer", json.dumps({"q": queue_key("default")}))
        client.zadd(queue_key("default"), {"waiting": 1})
        stack.backend.purge()
        left = sorted(k.decode() for k in client.scan_iter(match="arq:*"))
        assert left == [RESULT_KEY_PREFIX + "foreign", RESULT_KEY_PREFIX + "other-serializer"]
        client.close()
