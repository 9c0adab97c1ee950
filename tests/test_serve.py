"""`queuebench serve` as a user runs it: healthy, serving, and leaving nothing behind on SIGTERM.

Also the CLI's refusals: bad flags exit 2 with a clear message and start nothing.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

import backends
from benchmarks.stack import PROJECT_ROOT

READY_TIMEOUT_S = 60


def queuebench(*args: str, **kwargs) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "benchmarks", *args], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def read_url(proc: subprocess.Popen, timeout_s: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline().decode().strip()
            if line.startswith("http://"):
                return line
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"serve did not print its URL in {timeout_s} s: {proc.stderr.read1().decode()}")


@pytest.mark.service
@pytest.mark.parametrize(("backend", "broker"), [
    (name, broker) for name in backends.libraries() for broker in sorted(backends.backend_class(name).brokers)])
def test_serve_is_healthy_serves_tasks_and_leaves_no_process_after_sigterm(backend, broker, request):
    if broker != "sqlite":
        request.getfixturevalue("need_redis")
    if broker == "rabbitmq":
        request.getfixturevalue("need_rabbitmq")
    with queuebench("serve", "--backend", backend, "--broker", broker, "--processes", "2") as proc:
        try:
            url = read_url(proc, READY_TIMEOUT_S)
            started = psutil.Process(proc.pid).children(recursive=True)
            assert started, "serve started no process"
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                assert response.status == 200
            body = json.dumps({"task": "add", "args": {"x": 5, "y": 3}}).encode()
            post = urllib.request.Request(f"{url}/tasks", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(post, timeout=5) as response:
                task_id = json.loads(response.read())["id"]
            deadline = time.monotonic() + 30
            while True:
                with urllib.request.urlopen(f"{url}/tasks/{task_id}", timeout=5) as response:
                    status = json.loads(response.read())
                if status["status"] == "success" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert status["result"] == 8
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        gone, alive = psutil.wait_procs(started, timeout=5)
        assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--backend", "rq", "--broker", "rabbitmq"], "rq"),
    (["serve", "--backend", "nosuch"], "nosuch"),
    (["serve", "--backend", "celery", "--serializer", "yaml"], "yaml"),
    (["serve", "--backend", "baseline", "--serializer", "pickle"], "pickle"),
    (["serve", "--backend", "celery", "--processes", "0"], "processes"),
    (["serve", "--backend", "rq", "--threads", "4"], "threads"),
    (["serve", "--backend", "celery", "--routing", "dedicated", "--processes", "1"], "dedicated"),
    (["serve", "--backend", "celery", "--option", "no_such_knob=1"], "no_such_knob"),
])
def test_a_bad_flag_exits_2_with_a_message_naming_it_and_starts_nothing(args, message):
    with queuebench(*args) as proc:
        children_seen = []
        while proc.poll() is None:
            try:
                children_seen += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        stderr = proc.stderr.read().decode()
    assert proc.returncode == 2, stderr
    assert message in stderr
    assert not [p for p in children_seen if "redis" in " ".join(_cmdline(p))], "a broker was started"


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_backends_lists_every_backend_with_its_brokers_and_serializers():
    with queuebench("backends") as proc:
        out = proc.stdout.read().decode()
    assert proc.returncode == 0
    for name in backends.REGISTRY:
        assert name in out
