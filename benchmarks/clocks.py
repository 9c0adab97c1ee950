"""Clocks across hosts: each host's offset to the coordinator, its uncertainty and drift, and the correction.

Ledger rows carry wall-clock nanoseconds stamped by the host that wrote them (`backends/ledger.py`). When
the API runs on one host and the workers on another, an interval such as the queue wait (started on a
worker host - enqueued on the API host) mixes two clocks, so it is only as good as their agreement.

How an offset is measured (NTP's on-wire exchange, one sample per probe): the coordinator stamps `t0` and
sends a UDP datagram to the host's clock responder (`serve`, started on every host by the deployment), which
stamps `t1` on receipt and `t2` just before it answers; the coordinator stamps `t3` on the answer. Then

    offset = ((t1 - t0) + (t2 - t3)) / 2        the host's clock minus the coordinator's
    rtt    = (t3 - t0) - (t2 - t1)              the round trip, the responder's own time left out

and whatever the path's asymmetry, the true offset lies within ``offset +- rtt / 2``. Of several probes
the one with the smallest round trip is kept (the least queueing on the way, so the tightest bound).
Measured at the start and at the end of a run, the two give the drift (the change of offset per second of
coordinator time), and a host timestamp is put on the coordinator's clock by subtracting the offset
interpolated linearly between the two (`HostClock.to_coordinator_ns`).

A corrected interval is only trustworthy to the sum of its two ends' uncertainties; a run whose reported
latencies are not large against that is flagged (`uncertainty_flags`). An interval that comes out negative
after correction is counted (`negative_intervals`), never dropped: dropping would bias every figure.

Everything here but `serve` and `probe` is a pure function, so tests can fake any offset. The module
imports neither pandas nor numpy: every host runs it as its clock responder.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Probes per measurement; the one with the smallest round trip is kept.
PROBES = 8
#: Seconds to wait for one probe's answer before counting it lost.
PROBE_TIMEOUT_S = 0.5
#: A corrected interval family is flagged when its clock uncertainty exceeds this share of its median.
UNCERTAINTY_SHARE_LIMIT = 0.10
#: A host clock made wrong on purpose for tests (ns added to what the responder reports); the same variable
#: skews a worker's ledger rows (`backends.ledger.CLOCK_SKEW_ENV`, which this leaf module cannot import).
CLOCK_SKEW_ENV = "QUEUEBENCH_CLOCK_SKEW_NS"
#: The wire format: a request is a 16-byte nonce; an answer is the nonce, t1 and t2 (big-endian int64 ns).
_REQUEST = struct.Struct("!16s")
_ANSWER = struct.Struct("!16sqq")


@dataclass(frozen=True)
class Sample:
    """One probe's four timestamps (ns): coordinator send `t0`, host receive `t1`, host send `t2`,
    coordinator receive `t3`."""

    t0: int
    t1: int
    t2: int
    t3: int

    @property
    def offset_ns(self) -> float:
        return ((self.t1 - self.t0) + (self.t2 - self.t3)) / 2

    @property
    def rtt_ns(self) -> int:
        return (self.t3 - self.t0) - (self.t2 - self.t1)


@dataclass(frozen=True)
class Estimate:
    """A host's offset at one moment: the minimum-round-trip sample of several."""

    #: Coordinator time of the kept sample (midpoint of its t0 and t3), ns.
    at_ns: int
    offset_ns: float
    rtt_ns: int
    samples: int

    @property
    def uncertainty_ns(self) -> float:
        """Half the kept sample's round trip: the true offset lies within ``offset_ns`` +- this."""
        return self.rtt_ns / 2

    def record(self) -> dict[str, Any]:
        return {"at_ns": self.at_ns, "offset_ns": round(self.offset_ns), "rtt_ns": self.rtt_ns,
                "uncertainty_ns": round(self.uncertainty_ns), "samples": self.samples}


def estimate(samples: Iterable[Sample]) -> Estimate:
    """The minimum-round-trip sample's offset; ValueError when there is none."""
    kept = [s for s in samples if s.rtt_ns >= 0]
    if not kept:
        raise ValueError("no clock probe was answered")
    best = min(kept, key=lambda s: s.rtt_ns)
    return Estimate(at_ns=(best.t0 + best.t3) // 2, offset_ns=best.offset_ns, rtt_ns=best.rtt_ns,
                    samples=len(kept))


@dataclass(frozen=True)
class HostClock:
    """A host's clock against the coordinator's, from an estimate at the start of a run and one at the end."""

    start: Estimate
    end: Estimate | None = None

    @property
    def drift_ppm(self) -> float | None:
        """Change of offset per unit of coordinator time, in parts per million (None with one estimate)."""
        if self.end is None or self.end.at_ns == self.start.at_ns:
            return None
        return (self.end.offset_ns - self.start.offset_ns) / (self.end.at_ns - self.start.at_ns) * 1e6

    @property
    def uncertainty_ns(self) -> float:
        """The larger of the two estimates' bounds: what any corrected timestamp of this host may be off by."""
        return max(self.start.uncertainty_ns, self.end.uncertainty_ns if self.end else 0.0)

    def offset_at(self, host_ns: Any) -> Any:
        """The offset at host time(s) `host_ns` (an int, or a pandas Series): linear between the start and
        end estimates, constant beyond them (no extrapolation of a drift measured over the run)."""
        if self.end is None or self.end.at_ns == self.start.at_ns:
            return self.start.offset_ns
        # Interpolate on host time: the difference to coordinator time is far below the drift's scale.
        h0 = self.start.at_ns + self.start.offset_ns
        h1 = self.end.at_ns + self.end.offset_ns
        share = (host_ns - h0) / (h1 - h0)
        share = share.clip(0.0, 1.0) if hasattr(share, "clip") else min(1.0, max(0.0, share))  # Series or number
        return self.start.offset_ns + share * (self.end.offset_ns - self.start.offset_ns)

    def to_coordinator_ns(self, host_ns: Any) -> Any:
        """Host timestamp(s) on the coordinator's clock: an int, or an integer pandas Series (gaps kept). The
        offset is rounded to whole nanoseconds and subtracted in integers, so no timestamp loses precision."""
        if hasattr(host_ns, "astype"):  # a pandas Series
            offset = self.offset_at(host_ns.astype("Float64"))  # float only for the interpolation share
            if isinstance(offset, float):
                return host_ns.astype("Int64") - int(round(offset))
            return host_ns.astype("Int64") - offset.round().astype("Int64")
        return int(host_ns) - int(round(self.offset_at(host_ns)))

    def record(self) -> dict[str, Any]:
        drift = self.drift_ppm
        return {"start": self.start.record(), "end": self.end.record() if self.end else None,
                "uncertainty_ns": round(self.uncertainty_ns),
                "drift_ppm": round(drift, 3) if drift is not None else None}


# --- what the corrected intervals say ------------------------------------------------------------------

#: Each latency family (measure.LATENCY_NAMES) as (later column, earlier column) of `measure.per_task`, and
#: the roles whose clocks stamp each end: the flag and the negative count are about these intervals.
INTERVALS: dict[str, tuple[str, str, str, str]] = {
    "queue_wait_ms": ("first_started_ns", "enqueued_ns", "workers", "api"),
    "service_ms": ("ok_finished_ns", "ok_started_ns", "workers", "workers"),
    "e2e_ms": ("ok_finished_ns", "arrival_ns", "workers", "loadgen"),
}


def negative_intervals(each: Any) -> dict[str, int]:
    """How many of each interval family are negative (`each`: `measure.per_task`'s frame, on the
    coordinator's clock). A negative interval is a clock error larger than the interval; it is kept in
    every figure and counted here."""
    out = {}
    for family, (later, earlier, _, _) in INTERVALS.items():
        delta = (each[later] - each[earlier]).dropna()
        out[family] = int((delta < 0).sum())
    return out


def uncertainty_flags(latency: Mapping[str, Mapping[str, Any]], role_uncertainty_ns: Mapping[str, float],
                      limit: float = UNCERTAINTY_SHARE_LIMIT) -> dict[str, dict[str, Any]]:
    """Per interval family: its clock uncertainty (the two ends' bounds added; nothing when both ends are
    stamped on one role's hosts), its median, and ``flagged`` when the uncertainty exceeds `limit` of that
    median. `latency` is summary figures' ``latency``; `role_uncertainty_ns` the largest bound among each
    role's hosts."""
    out: dict[str, dict[str, Any]] = {}
    for family, (_, _, later_role, earlier_role) in INTERVALS.items():
        if later_role == earlier_role:
            uncertainty_ms = 0.0  # both ends on one host's clock: no cross-host error
        else:
            uncertainty_ms = (role_uncertainty_ns.get(later_role, 0.0) + role_uncertainty_ns.get(earlier_role, 0.0)) / 1e6
        median = (latency.get(family) or {}).get("p50")
        flagged = median is not None and uncertainty_ms > limit * abs(median)
        out[family] = {"uncertainty_ms": round(uncertainty_ms, 4), "p50_ms": median, "flagged": bool(flagged)}
    return out


# --- the wire: responder and prober ----------------------------------------------------------------------


def serve(address: str, port: int, *, clock: Callable[[], int] = time.time_ns,
          ready: Callable[[int], None] | None = None, stop: Callable[[], bool] = lambda: False) -> None:
    """Answer clock probes on UDP `address`:`port` until `stop()` is true (checked every second) or the
    process is signalled. `clock` is the host clock to report (tests pass a skewed one); `ready` gets the
    bound port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        sock.settimeout(1.0)
        if ready is not None:
            ready(sock.getsockname()[1])
        while not stop():
            try:
                data, peer = sock.recvfrom(64)
            except TimeoutError:
                continue
            t1 = clock()
            if len(data) != _REQUEST.size:
                continue
            (nonce,) = _REQUEST.unpack(data)
            sock.sendto(_ANSWER.pack(nonce, t1, clock()), peer)


def probe(address: str, port: int, *, count: int = PROBES, timeout_s: float = PROBE_TIMEOUT_S,
          clock: Callable[[], int] = time.time_ns) -> list[Sample]:
    """`count` probes to the responder at `address`:`port`, one at a time; the answered ones as samples.
    Raises OSError when none is answered (the responder is not running or not reachable)."""
    samples: list[Sample] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((address, port))
        for i in range(count):
            nonce = i.to_bytes(4, "big") + time.monotonic_ns().to_bytes(12, "big")
            t0 = clock()
            sock.send(_REQUEST.pack(nonce))
            try:
                while True:
                    data = sock.recv(64)
                    if len(data) == _ANSWER.size and data[:16] == nonce:
                        break  # a late answer to an earlier probe is skipped
            except (TimeoutError, ConnectionRefusedError):
                continue
            t3 = clock()
            _, t1, t2 = _ANSWER.unpack(data)
            samples.append(Sample(t0, t1, t2, t3))
    if not samples:
        raise OSError(f"no answer from the clock responder at {address}:{port} ({count} probes)")
    return samples


def measure_host(address: str, port: int, **how: Any) -> Estimate:
    """Probe one host's responder and return its minimum-round-trip estimate."""
    return estimate(probe(address, port, **how))


def role_uncertainty(clocks: Mapping[str, HostClock], roles: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """The largest clock uncertainty (ns) among each role's hosts."""
    return {role: max((clocks[h].uncertainty_ns for h in hosts if h in clocks), default=0.0)
            for role, hosts in roles.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.clocks serve ADDRESS PORT``: the clock responder each deployed host runs."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clocks",
                                     description="Answer queuebench clock probes (UDP) on one address.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="answer probes until stopped")
    serve_cmd.add_argument("address")
    serve_cmd.add_argument("port", type=int)
    args = parser.parse_args(argv)
    skew_ns = int(os.environ.get(CLOCK_SKEW_ENV) or 0)
    serve(args.address, args.port, clock=lambda: time.time_ns() + skew_ns,
          ready=lambda port: print(f"clock responder on {args.address}:{port}"
                                   + (f" (clock skewed by {skew_ns} ns on purpose)" if skew_ns else ""), flush=True))


if __name__ == "__main__":
    main()
