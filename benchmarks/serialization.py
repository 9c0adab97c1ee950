"""Where serializers differ: bytes per message on the broker, and the library's own encode + decode cost.

A drain cell preloads `tasks` messages with the workers stopped; the runner calls `snapshot` just before
the preload and `after_preload` right after it (before the workers start), and stores what the latter
returns under ``serialization`` in run.json:

- ``broker`` (`broker_bytes_per_message`): what the preload added to the broker, read from the broker
  and divided by the number of messages. Redis: the delta of ``INFO memory`` ``used_memory`` (the whole
  server's allocation: every key the library writes per message -- RQ's job hash and its queue entry,
  Dramatiq's message hash entry and list entry, arq's job key and sorted-set entry, Celery's envelope in
  a list -- plus Redis's own per-key overhead and allocator rounding), and, when the database holds at
  most `MAX_SCANNED_KEYS` keys, the delta of the sum of ``MEMORY USAGE <key> SAMPLES 0`` over every key
  (SCAN), which counts the keys alone. RabbitMQ: the delta of the queues' ``message_bytes`` from
  ``rabbitmqctl list_queues`` (message bodies only: AMQP properties and headers are not counted), when
  rabbitmqctl can reach the node; else "not measured" with the reason. SQLite: the growth of the pages in
  use (``page_count - freelist_count``, times ``page_size``) after a checkpoint of the write-ahead log
  into the database file (the WAL itself holds a copy of every page written, so its size counts writes,
  not what is stored); page granularity: rows fill a page before the file grows by whole pages.
- ``codec`` (`codec_cost`): `backends.codec.time_codec` on one job of the cell's task and arguments, built
  as the producer builds it (`dispatch.make_job`), through the backend's own codec
  (`QueueBackend.codec`): per-message encode, decode and total microseconds (median, min and max over
  batches) and the encoded size in bytes. A backend whose library lives in a private environment (arq)
  is timed in that interpreter through ``python -m backends.submit --codec``.

Nothing here raises into the runner: a part that cannot be measured says why (``not_measured``), and the
drain cell goes on.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from backends import codec, dispatch, redis_url

#: Above this many keys in the broker's database, the per-key ``MEMORY USAGE`` sum is skipped.
MAX_SCANNED_KEYS = 200_000
#: Keys per ``MEMORY USAGE`` pipeline.
PIPELINE_KEYS = 1000
#: Seconds ``rabbitmqctl`` may take to answer.
RABBITMQCTL_TIMEOUT_S = 30
#: Seconds ``python -m backends.submit --codec`` may take (start-up included).
CODEC_SUBPROCESS_TIMEOUT_S = 120
BACKEND_ENV = "QUEUEBENCH_BACKEND"  # as api.wsgi and backends.submit read it

REDIS_NOTE = ("used_memory: the delta of the Redis server's INFO used_memory over the preload, divided by "
              "the messages: every key the library writes per message, Redis's own per-key overhead and "
              "allocator rounding included. keys: the delta of the sum of MEMORY USAGE (SAMPLES 0) over every "
              "key of the database (SCAN), divided by the messages.")
RABBITMQ_NOTE = ("the delta of the queues' message_bytes (rabbitmqctl list_queues), divided by the messages: "
                 "message bodies only; AMQP properties and headers (Celery's task headers travel there) are "
                 "not counted.")
SQLITE_NOTE = ("the growth of the SQLite database's pages in use (page_count - freelist_count, times page_size) "
               "over the preload, read after checkpointing the write-ahead log, divided by the messages "
               "(whole pages: rows fill a page before the database grows).")


# --- the hook -----------------------------------------------------------------------------------------


def snapshot(stack: Any) -> dict[str, Any]:
    """What the broker holds before the preload (called right before it; never raises)."""
    try:
        return _snapshot(stack)
    except Exception as exc:  # recorded, never fatal to the cell
        return {"not_measured": f"{type(exc).__name__}: {exc}"}


#: Drain cells whose codec cost is timed: tasks whose message carries a payload.
CODEC_TASKS = ("echo",)


def after_preload(stack: Any, before: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``serialization`` record of a drain cell, right after its preload (workers stopped): broker
    bytes per message and the codec's cost. Never raises: a part that fails says why."""
    count = int(spec["tasks"])
    record: dict[str, Any] = {"serializer": spec.get("serializer"), "task": spec["task"],
                              "args": dict(spec.get("args") or {}), "messages": count}
    try:
        record["broker"] = broker_bytes_per_message(stack, before, count)
    except Exception as exc:
        record["broker"] = {"not_measured": f"{type(exc).__name__}: {exc}"}
    if spec["task"] not in CODEC_TASKS:
        # Timing the codec costs a drain cell 0.3-1 s of set-up; it says something only where the message
        # carries a payload, so other drains skip it.
        record["codec"] = {"not_measured": f"only for {', '.join(CODEC_TASKS)} tasks (a payload to encode)"}
        return record
    try:
        record["codec"] = codec_cost(stack, spec["task"], dict(spec.get("args") or {}))
    except Exception as exc:
        record["codec"] = {"not_measured": f"{type(exc).__name__}: {exc}"}
    return record


# --- (a) bytes per message on the broker ----------------------------------------------------------------


def _snapshot(stack: Any) -> dict[str, Any]:
    broker = stack.broker
    if broker is None:
        return {"not_measured": "no broker"}
    if broker.kind == "redis":
        return {"kind": "redis", **redis_memory(broker.url)}
    if broker.kind == "rabbitmq":
        return {"kind": "rabbitmq", **rabbitmq_queues(broker.url, stack.settings.queues, owned=broker.owned)}
    if broker.kind == "sqlite":
        return {"kind": "sqlite", **sqlite_bytes(broker.url)}
    return {"not_measured": f"no method for a {broker.kind} broker"}


def broker_bytes_per_message(stack: Any, before: Mapping[str, Any], count: int) -> dict[str, Any]:
    """What the preload of `count` messages added to the broker, per message, read from the broker."""
    if "not_measured" in before:
        return {"not_measured": f"no reading before the preload: {before['not_measured']}"}
    after = _snapshot(stack)
    if "not_measured" in after:
        return dict(after)
    if count <= 0:
        return {"not_measured": "no message was preloaded"}
    kind = before["kind"]
    if kind == "redis":
        out: dict[str, Any] = {"method": "redis", "note": REDIS_NOTE,
                               "used_memory_before": before["used_memory"], "used_memory_after": after["used_memory"]}
        out["bytes_per_message"] = (after["used_memory"] - before["used_memory"]) / count
        if before.get("key_bytes") is not None and after.get("key_bytes") is not None:
            out["key_bytes_per_message"] = (after["key_bytes"] - before["key_bytes"]) / count
            out["keys_before"], out["keys_after"] = before["keys"], after["keys"]
        else:
            out["key_bytes_per_message"] = None
            out["keys_note"] = before.get("keys_note") or after.get("keys_note")
        return out
    if kind == "rabbitmq":
        queues = sorted(set(before["queues"]) | set(after["queues"]))
        grown = {q: (after["queues"].get(q, {}).get("message_bytes", 0)
                     - before["queues"].get(q, {}).get("message_bytes", 0)) for q in queues}
        messages = sum(after["queues"].get(q, {}).get("messages", 0) for q in queues) - \
            sum(before["queues"].get(q, {}).get("messages", 0) for q in queues)
        return {"method": "rabbitmqctl list_queues message_bytes", "note": RABBITMQ_NOTE,
                "bytes_per_message": sum(grown.values()) / count, "messages_counted": messages,
                "message_bytes_by_queue": grown}
    return {"method": "sqlite pages in use", "note": SQLITE_NOTE,
            "used_bytes_before": before["used_bytes"], "used_bytes_after": after["used_bytes"],
            "wal_checkpointed": bool(before["wal_checkpointed"] and after["wal_checkpointed"]),
            "bytes_per_message": (after["used_bytes"] - before["used_bytes"]) / count}


def redis_memory(url: str, max_keys: int = MAX_SCANNED_KEYS) -> dict[str, Any]:
    """``used_memory`` of the Redis at `url` and, unless its database holds more than `max_keys` keys,
    the number of keys and the sum of their ``MEMORY USAGE`` (SAMPLES 0: every element counted)."""
    client = redis_url.client(url, socket_connect_timeout=2, socket_timeout=30)  # a Sentinel URL: its master
    try:
        out: dict[str, Any] = {"used_memory": int(client.info("memory")["used_memory"])}
        size = int(client.dbsize())
        if size > max_keys:
            out |= {"keys": size, "key_bytes": None,
                    "keys_note": f"{size} keys: MEMORY USAGE not summed above {max_keys}"}
            return out
        total, keys = 0, 0
        batch: list[bytes] = []
        for key in client.scan_iter(count=PIPELINE_KEYS):
            batch.append(key)
            if len(batch) >= PIPELINE_KEYS:
                total, keys = total + _usage(client, batch), keys + len(batch)
                batch = []
        if batch:
            total, keys = total + _usage(client, batch), keys + len(batch)
        return out | {"keys": keys, "key_bytes": total}
    finally:
        client.close()


def _usage(client: redis.Redis, keys: list[bytes]) -> int:
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(n or 0) for n in pipe.execute())  # None: the key went away meanwhile


def rabbitmqctl_argv(url: str, *, owned: bool) -> list[str]:
    """``rabbitmqctl list_queues`` for the vhost of `url` (and, for a node the harness started, its node
    name, ``qb<port>@localhost``, as `benchmarks.brokers.start_private_rabbitmq` names it)."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    argv = ["rabbitmqctl", "-q"]
    if owned:
        argv += ["-n", f"qb{parts.port}@localhost"]
    return [*argv, "list_queues", "-p", vhost or "/", "name", "messages", "message_bytes", "--formatter", "json"]


def rabbitmq_queues(url: str, queues: tuple[str, ...], *, owned: bool) -> dict[str, Any]:
    """``messages`` and ``message_bytes`` of `queues` from ``rabbitmqctl``; "not measured" (with the
    reason) when rabbitmqctl is missing, cannot reach the node, or the broker is not on this machine."""
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return {"not_measured": f"rabbitmqctl reads only a node on this machine; the broker is on {host}"}
    if shutil.which("rabbitmqctl") is None:
        return {"not_measured": "rabbitmqctl is not installed"}
    argv = rabbitmqctl_argv(url, owned=owned)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=RABBITMQCTL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"not_measured": f"`{' '.join(argv)}` did not answer within {RABBITMQCTL_TIMEOUT_S} s"}
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        return {"not_measured": f"`{' '.join(argv)}` failed (exit {done.returncode}): "
                                f"{reason[0] if reason else 'no output'}"}
    rows = json.loads(done.stdout or "[]")
    return {"queues": {row["name"]: {"messages": int(row.get("messages") or 0),
                                     "message_bytes": int(row.get("message_bytes") or 0)}
                       for row in rows if row.get("name") in queues}}


def sqlite_bytes(url: str) -> dict[str, Any]:
    """Bytes in use in the SQLite database of `url` (``sqlite:////abs/path``): its write-ahead log
    checkpointed into the file first (``wal_checkpointed`` false when a reader kept part of it back), then
    ``(page_count - freelist_count) * page_size``. A database not created yet holds 0 bytes."""
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        return {"used_bytes": 0, "wal_checkpointed": True}
    conn = sqlite3.connect(path, timeout=10)
    try:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return {"used_bytes": int(pages) * int(page_size), "wal_checkpointed": not busy}


# --- (b) the library's own encode + decode -------------------------------------------------------------


def codec_cost(stack: Any, task: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """`backends.codec.time_codec` on one job of `task`/`args`, through the stack's backend: in this process,
    or in the backend's own interpreter when its library lives in a private environment."""
    if not stack.external:
        job = dispatch.make_job(stack.backend.settings, task, args)
        return codec.time_codec(stack.backend, job) | {"interpreter": "harness"}
    env = stack.base_env() | stack.settings.to_env() | {BACKEND_ENV: stack.config.backend}
    argv = [stack.python, "-m", "backends.submit", "--codec", "--task", task, "--args", json.dumps(dict(args))]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent,
                          timeout=CODEC_SUBPROCESS_TIMEOUT_S)
    if done.returncode != 0:
        return {"not_measured": f"`python -m backends.submit --codec` failed (exit {done.returncode}): "
                                f"{done.stderr.strip()[-500:]}"}
    return json.loads(done.stdout) | {"interpreter": stack.python}
