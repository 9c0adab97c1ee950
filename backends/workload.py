"""The task bodies, identical for every library, and the catalogue the API validates against.

Every adapter's task entry point calls `execute(task, args, meta, attempt)`, which writes the
`started` and `finished` ledger rows around the body. A task raises `FlakyFailure` on purpose
(`flaky`) so that each library's own retry mechanism re-runs it, and `PoisonFailure` every time (`poison`),
so that the library's retry settings are seen to give up after exactly the attempts they promise.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backends import ledger


class FlakyFailure(RuntimeError):
    """Raised by `flaky` until its attempt number exceeds `fail_times`."""


class PoisonFailure(RuntimeError):
    """Raised by `poison` on every attempt: a task no retry can save."""


#: The failures raised on purpose: each backend hands them to its library's own retry mechanism.
RETRIED_ERRORS: tuple[type[Exception], ...] = (FlakyFailure, PoisonFailure)


@dataclass(frozen=True)
class ArgSpec:
    """An integer argument and its inclusive bounds."""

    name: str
    low: int
    high: int


#: Task name -> its integer arguments. The API accepts exactly these; `add` serves the tutorial route.
CATALOGUE: dict[str, tuple[ArgSpec, ...]] = {
    "noop": (),
    "sleep_ms": (ArgSpec("ms", 0, 60_000),),
    "cpu_ms": (ArgSpec("ms", 0, 60_000),),
    "echo": (ArgSpec("size", 0, 1_000_000),),
    "flaky": (ArgSpec("fail_times", 0, 10),),
    "poison": (),
    "add": (ArgSpec("x", -(2**53), 2**53), ArgSpec("y", -(2**53), 2**53)),
}

#: Tasks whose duration is an argument; dedicated routing sends the long ones to their own queue.
TIMED_TASKS = frozenset({"sleep_ms", "cpu_ms"})

_PATTERN = b"queuebench-echo-payload/0123456789abcdefghijklmnopqrstuvwxyz|"


def make_payload(size: int) -> str:
    """A deterministic ASCII payload of exactly `size` bytes (the same size always gives the same text)."""
    repeats = size // len(_PATTERN) + 1
    return (_PATTERN * repeats)[:size].decode("ascii")


def payload_checksum(payload: str) -> int:
    return zlib.crc32(payload.encode("ascii"))


def max_retries_for(task: str, args: Mapping[str, Any], poison_retries: int = 0) -> int:
    """Retries a task gets from its library: `flaky` fails `fail_times` times, `poison` fails every time and
    gets what the backend's retry policy promises (`poison_retries`, `QueueBackend.retry_policy`); nothing
    else fails."""
    if task == "flaky":
        return int(args.get("fail_times", 0))
    return poison_retries if task == "poison" else 0


def noop() -> None:
    return None


def sleep_ms(ms: int) -> int:
    time.sleep(ms / 1000)
    return ms


def cpu_ms(ms: int) -> int:
    """Burn `ms` milliseconds of CPU time on this thread (equal to wall time on an idle core).

    Measured with the thread's own CPU clock rather than a calibrated loop count, so the work is the
    same whatever else runs: under contention it takes longer in wall time, as real CPU-bound work does.
    """
    deadline = time.thread_time_ns() + ms * 1_000_000
    x = 0
    while time.thread_time_ns() < deadline:
        for i in range(500):  # a small chunk between clock reads keeps the clock's cost negligible
            x ^= i * i
    return ms


def echo(size: int, payload: str = "") -> dict[str, int]:
    """Return the length and CRC-32 of the payload that travelled in the message."""
    return {"length": len(payload), "crc32": payload_checksum(payload)}


def flaky(fail_times: int, attempt: int = 1) -> int:
    if attempt <= fail_times:
        raise FlakyFailure(f"flaky: attempt {attempt} of {fail_times + 1} fails on purpose")
    return attempt


def poison(attempt: int = 1) -> None:
    raise PoisonFailure(f"poison: attempt {attempt} fails, as every attempt does")


def add(x: int, y: int) -> int:
    return x + y


_BODIES: dict[str, Callable[..., Any]] = {
    "noop": lambda args, attempt: noop(),
    "sleep_ms": lambda args, attempt: sleep_ms(int(args["ms"])),
    "cpu_ms": lambda args, attempt: cpu_ms(int(args["ms"])),
    "echo": lambda args, attempt: echo(int(args["size"]), args.get("payload", "")),
    "flaky": lambda args, attempt: flaky(int(args["fail_times"]), attempt),
    "poison": lambda args, attempt: poison(attempt),
    "add": lambda args, attempt: add(int(args["x"]), int(args["y"])),
}


def message_args(task: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as they travel in the message: `echo` carries its payload, the rest are as given."""
    out = dict(args)
    if task == "echo":
        out["payload"] = make_payload(int(args["size"]))
    return out


def execute(task: str, args: Mapping[str, Any], meta: Mapping[str, Any], attempt: int = 1) -> Any:
    """Run one task body between its `started` and `finished` ledger rows; re-raise its failure."""
    body = _BODIES.get(task)
    if body is None:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(CATALOGUE)}")
    ledger.record_started(meta, task, attempt)
    try:
        result = body(args, attempt)
    except BaseException as exc:
        ledger.record_finished(meta, task, attempt, outcome="error", error=f"{type(exc).__name__}: {exc}")
        raise
    ledger.record_finished(meta, task, attempt, outcome="ok")
    return result
