"""``python -m backends.submit``: enqueue tasks through `dispatch.submit` from a separate process.

How the harness enqueues (round-trip probes, drain preloads) for a backend whose library lives in its
own virtual environment (`QueueBackend.environment`, e.g. arq): the harness runs this module with that
environment's interpreter, so the library is imported there and never in the harness process.

Environment: ``QUEUEBENCH_BACKEND`` (the backend's short name or dotted path), ``QUEUEBENCH_SETTINGS``
(`BackendSettings.to_env`), ``QUEUEBENCH_LEDGER_DIR`` (where the ``sent`` rows go) and
``QUEUEBENCH_ID_KEY`` (the deployment's id key, so the API recognises the ids).

Input: JSON lines ``{"task": ..., "args": {...}, "queue": ..., "probe": ...}`` on stdin (``args``,
``queue`` and ``probe`` optional; no queue: routing decides), or ``--count N --task T --args JSON`` for
N identical tasks. Output: one JSON line per task, ``{"id": ..., "queue": ..., "enqueued_ns": ...}``, in
input order. Exit 0 when every task was enqueued; 2 for bad input, 1 when the backend failed (the message
on stderr), with the lines of the tasks already enqueued printed.

``--codec --task T --args JSON [--queue Q]`` enqueues nothing: it times the backend's own message codec
(`backends.codec.time_codec`) on one job built as `dispatch.submit` builds it, and prints the result as
one JSON object. This is how the serializer benchmark times a library that lives in its own environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from backends import codec, dispatch, get_backend, workload
from backends.base import BackendError, BackendSettings

BACKEND_ENV = "QUEUEBENCH_BACKEND"  # the same variable api.wsgi reads


class InputError(ValueError):
    """A line or an argument this command cannot take; the message says which and why."""


def _request(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: a task is a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"task", "args", "queue", "probe"})
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
    task = raw.get("task")
    if task not in workload.CATALOGUE:
        raise InputError(f"{where}: task must be one of {', '.join(workload.CATALOGUE)}, got {task!r}")
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise InputError(f"{where}: args must be an object")
    queue = raw.get("queue")
    if queue is not None and not isinstance(queue, str):
        raise InputError(f"{where}: queue must be a string")
    return {"task": task, "args": args, "queue": queue, "probe": bool(raw.get("probe", False))}


def requests_from(args: argparse.Namespace, stdin: TextIO) -> Iterator[dict[str, Any]]:
    if args.count is not None:
        if args.task is None:
            raise InputError("--count needs --task")
        try:
            task_args = json.loads(args.args)
        except ValueError as exc:
            raise InputError(f"--args is not JSON: {exc}") from None
        request = _request({"task": args.task, "args": task_args, "queue": args.queue, "probe": args.probe},
                           "--task/--args")
        for _ in range(args.count):
            yield request
        return
    for number, line in enumerate(stdin, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise InputError(f"line {number}: not JSON: {exc}") from None
        yield _request(raw, f"line {number}")


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, help="enqueue this many identical tasks instead of reading stdin")
    parser.add_argument("--task", help="with --count or --codec: the task")
    parser.add_argument("--args", default="{}", help="with --count or --codec: the task's arguments as JSON")
    parser.add_argument("--queue", help="with --count or --codec: the queue (default: routing decides)")
    parser.add_argument("--probe", action="store_true", help="with --count: mark the tasks as probes")
    parser.add_argument("--codec", action="store_true",
                        help="time the backend's message codec on one --task/--args job; enqueue nothing")
    args = parser.parse_args(argv)
    name = os.environ.get(BACKEND_ENV, "").strip()
    if not name:
        print(f"{BACKEND_ENV} is not set: name the backend to enqueue through", file=sys.stderr)
        return 2
    backend = get_backend(name, BackendSettings.from_env())
    if args.codec:
        try:
            return _time_codec(backend, args, stdout)
        finally:
            backend.close()
    try:
        for request in requests_from(args, stdin):
            receipt = dispatch.submit(backend, request["task"], request["args"], queue=request["queue"],
                                      probe=request["probe"])
            stdout.write(json.dumps({"id": receipt.id, "queue": receipt.queue,
                                     "enqueued_ns": receipt.enqueued_ns}) + "\n")
            stdout.flush()
    except InputError as exc:
        print(f"backends.submit: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"backends.submit: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    return 0


def _time_codec(backend: Any, args: argparse.Namespace, stdout: TextIO) -> int:
    try:
        if args.task is None:
            raise InputError("--codec needs --task")
        try:
            task_args = json.loads(args.args)
        except ValueError as exc:
            raise InputError(f"--args is not JSON: {exc}") from None
        request = _request({"task": args.task, "args": task_args, "queue": args.queue}, "--task/--args")
        job = dispatch.make_job(backend.settings, request["task"], request["args"], queue=request["queue"])
        result = codec.time_codec(backend, job)
    except InputError as exc:
        print(f"backends.submit: {exc}", file=sys.stderr)
        return 2
    except (BackendError, codec.CodecMismatch) as exc:
        print(f"backends.submit: {backend.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    stdout.write(json.dumps(result) + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
