"""The floor: a bare Redis list, JSON messages and a minimal worker of our own (`backends.baseline_worker`).

No library sits between the API and the task body, so what this backend measures is the cost of the
harness itself (API, Locust, ledger) plus one LPUSH and one BRPOP per task. Every library's figure is
read against it: the gap is what the library costs.

- Message: one JSON object ``{"id", "task", "args", "meta", "attempt", "max_retries"}`` LPUSHed onto
  ``queuebench:baseline:queue:<queue>``; a worker thread BRPOPs it (FIFO), runs `workload.execute`.
- Retries (`flaky` and `poison`): the worker LPUSHes the message again at once with ``attempt + 1`` until
  ``max_retries`` is spent (`poison`: `POISON_RETRIES`); no backoff.
- Results: on, the worker SETs ``queuebench:baseline:result:<id>`` (JSON, kept ``result_ttl_s``, default
  500 s like RQ) when a task ends and ``started`` when it starts; off, nothing is written. A message in a
  queue has no record, so an id without one reports ``queued``.
- Workers: ``python -m backends.baseline_worker --threads T QUEUE...``, one process per slot group
  (`processes` commands), each with `threads` threads blocking on BRPOP: slots = processes x threads.
  A popped message is gone from Redis (no acknowledgement): the floor is at-most-once by design.
- Only JSON: the floor does not vary its serializer.
- Codec (`codec`, timed by the serializer benchmark): the message dict built as `enqueue` builds it and
  ``json.dumps`` (the LPUSHed value), then ``json.loads`` as ``baseline_worker.handle`` does.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from importlib.metadata import version as _dist_version
from typing import Any, ClassVar

import redis

from backends import workload
from backends.base import (
    BackendBase,
    BackendSettings,
    BackendUnavailable,
    Codec,
    DeliveryContract,
    EnqueueReceipt,
    JobRequest,
    Knob,
    RetryPolicy,
    TaskStatus,
    UnsupportedOption,
    WorkerCommand,
    WorkerSpec,
    check_common,
    check_worker_spec,
    parse_knobs,
)

QUEUE_PREFIX = "queuebench:baseline:queue:"
RESULT_PREFIX = "queuebench:baseline:result:"
DEFAULT_RESULT_TTL_S = 500
#: Retries a `poison` task gets from the baseline's worker: Celery's default cap (``Task.max_retries``).
POISON_RETRIES = 3
PING_TIMEOUT_S = 2.0


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


def result_key(task_id: str) -> str:
    return RESULT_PREFIX + task_id


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


class BaselineBackend(BackendBase):
    """Bare Redis LPUSH / BRPOP with JSON: the floor every library is compared with."""

    name: ClassVar[str] = "baseline"
    brokers: ClassVar[frozenset[str]] = frozenset({"redis"})
    serializers: ClassVar[frozenset[str]] = frozenset({"json"})
    knobs: ClassVar[dict[str, Knob]] = {
        "result_ttl_s": Knob(int, DEFAULT_RESULT_TTL_S, "seconds a result is kept when results are on.", low=1),
    }
    packages: ClassVar[tuple[str, ...]] = ("redis", "hiredis")
    concurrency: ClassVar[str] = "<processes> x `python -m backends.baseline_worker --threads <threads>`"

    def __init__(self, settings: BackendSettings) -> None:
        check_common(self.name, self.brokers, self.serializers, settings)
        ttl = parse_knobs(self.name, self.knobs, settings.options).get("result_ttl_s", DEFAULT_RESULT_TTL_S)
        if settings.result_url and settings.result_url != settings.broker_url:
            raise UnsupportedOption("result_url", _redact(settings.result_url), self.name,
                                    "the baseline keeps results in its broker's Redis")
        self.settings = settings
        self.result_ttl_s = ttl
        self._redis = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                           socket_timeout=10)

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(f"baseline Redis at {_redact(self.settings.broker_url)} did not answer: "
                                  f"{type(exc).__name__}: {exc}")

    def ping(self) -> None:
        client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=PING_TIMEOUT_S,
                                      socket_timeout=PING_TIMEOUT_S)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            client.close()

    @staticmethod
    def encode(job: JobRequest) -> bytes:
        """The value `enqueue` LPUSHes: one JSON object (redis-py sends the str as UTF-8)."""
        message = {"id": job.id, "task": job.task, "args": dict(job.args), "meta": job.meta(), "attempt": 1,
                   "max_retries": workload.max_retries_for(job.task, job.args, poison_retries=POISON_RETRIES)}
        return json.dumps(message, separators=(",", ":")).encode()

    def codec(self, job: JobRequest) -> Codec:
        """Encode: the message dict and ``json.dumps`` (`encode`, what `enqueue` LPUSHes). Decode:
        ``json.loads`` of it, as ``backends.baseline_worker.handle`` does first with what BRPOP returns.

        The floor's whole serialization: no library, no envelope."""
        data = self.encode(job)

        def decode() -> tuple[str, Any, Any]:
            message = json.loads(data)
            return message["task"], message["args"], message["meta"]

        return data, decode

    def enqueue(self, job: JobRequest) -> EnqueueReceipt:
        try:
            self._redis.lpush(queue_key(job.queue), self.encode(job))
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return EnqueueReceipt(job.id, job.queue, time.time_ns())

    def status(self, task_id: str) -> TaskStatus | None:
        try:
            raw = self._redis.get(result_key(task_id))
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if raw is None:
            return TaskStatus(task_id, "queued")
        record = json.loads(raw)
        return TaskStatus(task_id, record["status"], record.get("result"), record.get("error"))

    def worker_commands(self, spec: WorkerSpec) -> list[WorkerCommand]:
        check_worker_spec(self.name, spec)
        for option, value, reason in (
            ("prefetch", spec.prefetch, "each thread pops one message at a time"),
            ("acks_late", spec.acks_late, "a popped message is gone (at-most-once, no acknowledgement)"),
        ):
            if value is not None:
                raise UnsupportedOption(option, value, self.name, reason)
        argv = [sys.executable, "-m", "backends.baseline_worker", "--threads", str(spec.threads), *spec.queues]
        group = "-".join(spec.queues)
        return [WorkerCommand(name=f"baseline-{group}-{i}", argv=argv, env=self.settings.to_env())
                for i in range(spec.processes)]

    def retry_policy(self) -> RetryPolicy:
        """`poison` is re-pushed `POISON_RETRIES` times (Celery's default cap, so the floor retries alike)."""
        return RetryPolicy(POISON_RETRIES, "none: re-pushed at once", "backends/baseline_backend.py POISON_RETRIES")

    def delivery_contract(self, spec: WorkerSpec) -> DeliveryContract:
        """BRPOP removes the message: a worker killed mid-task loses it (by design, no acknowledgement)."""
        return DeliveryContract("at-most-once", "lost (popped, never acknowledged)",
                                "none: each thread pops one message at a time", "none",
                                "backends/baseline_backend.py (BRPOP removes the message)")

    def queue_depths(self) -> Mapping[str, int]:
        try:
            return {queue: int(self._redis.llen(queue_key(queue))) for queue in self.settings.queues}
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def purge(self) -> None:
        """Delete this configuration's queue lists and every baseline result key (SCAN, never FLUSHDB)."""
        self._redis.delete(*(queue_key(q) for q in self.settings.queues))
        batch: list[bytes] = []
        for key in self._redis.scan_iter(match=RESULT_PREFIX + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self._redis.delete(*batch)
                batch.clear()
        if batch:
            self._redis.delete(*batch)

    def describe(self) -> Mapping[str, Any]:
        try:
            server: Any = self._redis.info("server").get("redis_version")
        except (redis.RedisError, OSError) as exc:
            server = f"unavailable: {type(exc).__name__}: {exc}"
        return {
            "backend": self.name,
            "redis_py_version": _dist_version("redis"),
            "redis_server_version": server,
            "broker": "redis",
            "broker_url": _redact(self.settings.broker_url),
            "serializer": "json",
            "worker_command": "python -m backends.baseline_worker --threads T QUEUE... (one per process)",
            "delivery": "LPUSH / BRPOP, at-most-once, no acknowledgement",
            "retry": "flaky and poison: re-pushed at once with attempt + 1 (poison: POISON_RETRIES times)",
            "retry_policy": self.retry_policy().record(),
            "results": self.settings.results,
            "result_ttl_s": self.result_ttl_s if self.settings.results else None,
            "routing": self.settings.routing,
            "queues": list(self.settings.queues),
            "knobs": dict(self.settings.options),
        }

    def close(self) -> None:
        self._redis.close()
        self._redis.connection_pool.disconnect()
