"""Time a backend's own message codec: encode + decode of one job, many times, in this process.

`time_codec` is what ``benchmarks.serialization.codec_cost`` runs, in the harness process or, for a backend
whose library lives in a private environment, in that environment's interpreter through ``python -m
backends.submit --codec`` (so this module imports nothing but the standard library and `backends`).

How it times: one round trip first checks that the decoded arguments equal the job's (a codec that does
not round-trip is not timed); a few warm-up round trips; then the batch size is chosen so one batch takes
about `target_batch_s` (from the fastest warm-up round trip; at most `MAX_PER_BATCH` messages and
`MAX_BATCH_BYTES` of encoded data held at once); then `batches` batches, each timing `per_batch` calls of ``backend.codec(job)``
(encode) and then the `per_batch` decoders they returned (decode), with ``time.perf_counter_ns`` around
each whole loop and the garbage collector off inside it (as `timeit` does). Per message: the batch's time
/ `per_batch`. Reported in microseconds: the median, min and max over the batches, for encode, decode and
their sum, and the encoded size in bytes.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Mapping
from typing import Any

from backends.base import JobRequest, QueueBackend

DEFAULT_BATCHES = 7
#: Seconds one batch should take (encode and decode together); the batch size follows from a first timing.
DEFAULT_TARGET_BATCH_S = 0.03
MIN_PER_BATCH = 5
MAX_PER_BATCH = 5000
#: Encoded bytes one batch may hold at once (its decoders keep their data until decoded).
MAX_BATCH_BYTES = 64 * 1024 * 1024
WARMUP_ROUND_TRIPS = 3


class CodecMismatch(AssertionError):
    """The codec's decoder did not give back the job's task and arguments."""


def check_round_trip(backend: QueueBackend, job: JobRequest) -> bytes:
    """Encode and decode `job` once; raise `CodecMismatch` unless task and arguments come back equal."""
    data, decode = backend.codec(job)
    task, args, _meta = decode()
    if task != job.task or dict(args) != dict(job.args):
        raise CodecMismatch(f"{backend.name}: decoded ({task!r}, {sorted(dict(args))}) != "
                            f"({job.task!r}, {sorted(dict(job.args))})")
    return data


def _stats(values_us: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values_us), "min": min(values_us), "max": max(values_us)}


def time_codec(backend: QueueBackend, job: JobRequest, *, batches: int = DEFAULT_BATCHES,
               target_batch_s: float = DEFAULT_TARGET_BATCH_S) -> dict[str, Any]:
    """Encode + decode `job` through `backend.codec` in batches; per-message microseconds and the size."""
    data = check_round_trip(backend, job)
    warmup_ns = []
    for _ in range(WARMUP_ROUND_TRIPS):
        started = time.perf_counter_ns()
        backend.codec(job)[1]()
        warmup_ns.append(time.perf_counter_ns() - started)
    one_ns = max(1, min(warmup_ns))
    most = max(MIN_PER_BATCH, min(MAX_PER_BATCH, MAX_BATCH_BYTES // max(1, len(data))))
    per_batch = int(min(most, max(MIN_PER_BATCH, target_batch_s * 1e9 // one_ns)))
    encode_us: list[float] = []
    decode_us: list[float] = []
    codec = backend.codec
    for _ in range(batches):
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            decoders = [codec(job)[1] for _ in range(per_batch)]
            t1 = time.perf_counter_ns()
            for decode in decoders:
                decode()
            t2 = time.perf_counter_ns()
        finally:
            if enabled:
                gc.enable()
        encode_us.append((t1 - t0) / per_batch / 1000)
        decode_us.append((t2 - t1) / per_batch / 1000)
    total_us = [e + d for e, d in zip(encode_us, decode_us, strict=True)]
    return {
        "encoded_bytes": len(data),
        "batches": batches,
        "per_batch": per_batch,
        "encode_us": _stats(encode_us),
        "decode_us": _stats(decode_us),
        "us_per_message": _stats(total_us),
        "timed": codec_description(backend),
    }


def codec_description(backend: QueueBackend) -> str:
    """The first paragraph of the backend's `codec` docstring: what is timed, in its own words."""
    doc = (type(backend).codec.__doc__ or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def summary_line(result: Mapping[str, Any]) -> str:
    """One line for logs: ``1234 B, 12.3 us/message (encode 5.1 + decode 7.2)``."""
    return (f"{result['encoded_bytes']} B, {result['us_per_message']['median']:.1f} us/message (encode "
            f"{result['encode_us']['median']:.1f} + decode {result['decode_us']['median']:.1f})")
