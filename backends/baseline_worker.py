"""The baseline's own minimal worker: `threads` threads, each BRPOP -> `workload.execute` -> result.

Run as ``python -m backends.baseline_worker --threads T QUEUE...`` with the settings in
``QUEUEBENCH_SETTINGS`` (see `backends.baseline_backend`). SIGTERM or SIGINT: every thread finishes the
task in hand and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

import redis

from backends import workload
from backends.base import BackendSettings
from backends.baseline_backend import DEFAULT_RESULT_TTL_S, queue_key, result_key

#: Seconds a BRPOP blocks before the thread checks whether it should stop.
POP_TIMEOUT_S = 1


def _store(client: redis.Redis, settings: BackendSettings, ttl_s: int, task_id: str, record: dict[str, Any]) -> None:
    if settings.results:
        client.set(result_key(task_id), json.dumps(record), ex=ttl_s)


def handle(client: redis.Redis, settings: BackendSettings, ttl_s: int, key: bytes, raw: bytes) -> None:
    """Run one message; re-push it at once (attempt + 1) while a flaky task has retries left."""
    message = json.loads(raw)
    task_id, attempt = message["id"], int(message.get("attempt", 1))
    _store(client, settings, ttl_s, task_id, {"status": "started"})
    try:
        result = workload.execute(message["task"], message["args"], message["meta"], attempt)
    except Exception as exc:
        if attempt <= int(message.get("max_retries", 0)):
            _store(client, settings, ttl_s, task_id, {"status": "queued"})
            client.lpush(key, json.dumps(message | {"attempt": attempt + 1}))  # back to its own queue
            return
        _store(client, settings, ttl_s, task_id, {"status": "failure", "error": f"{type(exc).__name__}: {exc}"})
        return
    _store(client, settings, ttl_s, task_id, {"status": "success", "result": result})


def work(settings: BackendSettings, queues: list[str], stop: threading.Event) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    ttl_s = int(settings.options.get("result_ttl_s", DEFAULT_RESULT_TTL_S))
    keys = [queue_key(q) for q in queues]
    while not stop.is_set():
        popped = client.brpop(keys, timeout=POP_TIMEOUT_S)
        if popped is None:
            continue
        key, raw = popped
        handle(client, settings, ttl_s, key, raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.baseline_worker", description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="threads popping and running tasks")
    parser.add_argument("queues", nargs="+", help="queue names, in priority order")
    args = parser.parse_args(argv)
    settings = BackendSettings.from_env()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=work, args=(settings, args.queues, stop), name=f"baseline-{i}")
               for i in range(max(1, args.threads))]
    for thread in threads:
        thread.start()
    print(f"baseline worker: {len(threads)} thread(s) on {', '.join(args.queues)}", flush=True)
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
