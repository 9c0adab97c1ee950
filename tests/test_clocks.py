"""Clock offsets across hosts: a faked offset is recovered within its bound, drift is seen, corrections put
host timestamps back on the coordinator's clock, and negative intervals are counted, never dropped."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from backends import ledger
from benchmarks import clocks, measure
from benchmarks.deploy.cell import correct_ledgers

MS = 1_000_000
S = 1_000_000_000


def simulated_samples(*, offset_ns: int, drift: float, at_ns: int, out_ns: list[int], back_ns: list[int],
                      hold_ns: int = 20_000, ref_ns: int | None = None) -> list[clocks.Sample]:
    """Probes sent from coordinator time `at_ns` on to a host whose clock reads ``t + offset_ns + drift *
    (t - ref_ns)`` at coordinator time t, each taking `out` on the way there and `back` on the way back
    (asymmetric paths included)."""
    ref_ns = at_ns if ref_ns is None else ref_ns

    def host(t: int) -> int:
        return int(t + offset_ns + drift * (t - ref_ns))

    samples, t0 = [], at_ns
    for out, back in zip(out_ns, back_ns, strict=True):
        t1 = host(t0 + out)
        t2 = host(t0 + out + hold_ns)
        t3 = t0 + out + hold_ns + back
        samples.append(clocks.Sample(t0, t1, t2, t3))
        t0 = t3 + 1_000_000
    return samples


def test_a_faked_offset_is_recovered_within_half_the_round_trip_whatever_the_path_asymmetry():
    fake = 37 * MS
    samples = simulated_samples(offset_ns=fake, drift=0.0, at_ns=10 * S,
                                out_ns=[3 * MS, 400_000, 9 * MS, 250_000], back_ns=[100_000, 2 * MS, 50_000, 900_000])
    est = clocks.estimate(samples)
    assert abs(est.offset_ns - fake) <= est.uncertainty_ns
    # The kept sample is the one with the smallest round trip, so its bound is the tightest.
    assert est.rtt_ns == min(s.rtt_ns for s in samples)
    assert all(abs(s.offset_ns - fake) <= s.rtt_ns / 2 for s in samples)


def test_a_responder_with_a_skewed_clock_is_measured_over_real_udp_within_its_bound():
    fake = -123 * MS
    stop = threading.Event()
    bound: list[int] = []
    ready = threading.Event()

    def on_ready(port: int) -> None:
        bound.append(port)
        ready.set()

    thread = threading.Thread(target=clocks.serve, args=("127.0.0.1", 0), daemon=True,
                              kwargs={"clock": lambda: clocks.time.time_ns() + fake, "ready": on_ready,
                                      "stop": stop.is_set})
    thread.start()
    try:
        assert ready.wait(5)
        est = clocks.measure_host("127.0.0.1", bound[0], count=5)
    finally:
        stop.set()
        thread.join(5)
    assert est.samples >= 1
    assert abs(est.offset_ns - fake) <= est.uncertainty_ns


def test_no_answer_from_a_responder_is_an_error_naming_its_address():
    with pytest.raises(OSError, match="127.0.0.1"):
        clocks.probe("127.0.0.1", 9, count=2, timeout_s=0.05)


def test_drift_between_the_start_and_end_estimates_is_the_host_clocks_rate_error():
    rate = 40e-6  # the host's clock gains 40 us per second
    run_s = 30
    how = {"offset_ns": 5 * MS, "drift": rate, "ref_ns": 100 * S, "out_ns": [300_000, 200_000],
           "back_ns": [250_000, 200_000]}
    start = clocks.estimate(simulated_samples(at_ns=100 * S, **how))
    end = clocks.estimate(simulated_samples(at_ns=(100 + run_s) * S, **how))
    clock = clocks.HostClock(start, end)
    assert clock.drift_ppm == pytest.approx(rate * 1e6, rel=0.01)
    # Halfway through, a host timestamp is put back on the coordinator's clock within the bound.
    coordinator_t = 100 * S + run_s * S // 2
    host_t = int(coordinator_t + 5 * MS + rate * (coordinator_t - 100 * S))
    assert abs(clock.to_coordinator_ns(host_t) - coordinator_t) <= clock.uncertainty_ns
    series = clock.to_coordinator_ns(pd.Series([host_t, None], dtype="Int64"))
    assert abs(int(series.iloc[0]) - coordinator_t) <= clock.uncertainty_ns
    assert series.isna().iloc[1]


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_ledgers_from_two_hosts_are_corrected_onto_the_coordinators_clock(tmp_path):
    skew = 250 * MS  # host2's clock runs 250 ms ahead: uncorrected, every queue wait would read 250 ms too long
    t = 1_800_000_000 * S
    estimate_at = clocks.Estimate(at_ns=t, offset_ns=0.0, rtt_ns=100_000, samples=8)
    host_clocks = {"host1": clocks.HostClock(estimate_at),
                   "host2": clocks.HostClock(clocks.Estimate(at_ns=t, offset_ns=float(skew), rtt_ns=100_000, samples=8))}
    sent, waits_ms = [], [5, 12, 30]
    worker = []
    for i, wait in enumerate(waits_ms):
        task = f"{i:032x}"
        enqueued = t + i * 100 * MS
        sent.append({"ev": "sent", "id": task, "task": "noop", "queue": "default", "digest": "d",
                     "scheduled_ns": enqueued - MS, "sent_ns": enqueued - MS // 2, "enqueued_ns": enqueued,
                     "pid": 1, "host": "host1"})
        started = enqueued + wait * MS + skew
        worker += [{"ev": "started", "id": task, "task": "noop", "attempt": 1, "t_ns": started, "pid": 2,
                    "host": "host2"},
                   {"ev": "finished", "id": task, "task": "noop", "attempt": 1, "t_ns": started + MS,
                    "outcome": "ok", "pid": 2, "host": "host2"}]
    write_rows(tmp_path / "hosts" / "host1" / "ledger" / "host1-1.jsonl", sent)
    write_rows(tmp_path / "hosts" / "host2" / "ledger" / "host2-2.jsonl", worker)
    correct_ledgers(tmp_path, host_clocks, ["host1"])
    each = measure.per_task(ledger.executions(tmp_path / "ledger"))
    queue_wait_ms = ((each["first_started_ns"] - each["enqueued_ns"]) / MS).astype(float).sort_values().tolist()
    bound_ms = (host_clocks["host1"].uncertainty_ns + host_clocks["host2"].uncertainty_ns) / MS
    assert queue_wait_ms == pytest.approx(sorted(waits_ms), abs=bound_ms)
    # The raw rows are left as the hosts wrote them.
    raw = [json.loads(line) for line in (tmp_path / "hosts" / "host2" / "ledger" / "host2-2.jsonl").read_text().splitlines()]
    assert raw == worker


def test_negative_intervals_are_counted_and_kept_in_every_figure():
    base = 1_000 * S
    waits_ms = [-2, -1, 3, 4, 5]
    each = pd.DataFrame({
        "enqueued_ns": pd.array([base] * len(waits_ms), dtype="Int64"),
        "first_started_ns": pd.array([base + w * MS for w in waits_ms], dtype="Int64"),
        "ok_started_ns": pd.array([base + w * MS for w in waits_ms], dtype="Int64"),
        "ok_finished_ns": pd.array([base + w * MS + MS for w in waits_ms], dtype="Int64"),
        "arrival_ns": pd.array([base - MS] * len(waits_ms), dtype="Int64"),
    })
    counts = clocks.negative_intervals(each)
    assert counts["queue_wait_ms"] == sum(1 for w in waits_ms if w < 0)
    assert counts["service_ms"] == 0
    assert counts["e2e_ms"] == sum(1 for w in waits_ms if w + 1 + 1 < 0)
    figures = measure.stats((each["first_started_ns"] - each["enqueued_ns"]).astype("Float64") / MS)
    assert figures["count"] == len(waits_ms)  # none dropped
    assert figures["p50"] == pytest.approx(sorted(waits_ms)[len(waits_ms) // 2])


def test_a_run_is_flagged_when_its_clock_uncertainty_is_large_against_a_cross_host_latency():
    latency = {"queue_wait_ms": {"p50": 2.0}, "service_ms": {"p50": 0.1}, "e2e_ms": {"p50": 50.0}}
    tight = clocks.uncertainty_flags(latency, {"api": 10_000, "workers": 10_000, "loadgen": 10_000})
    assert not any(item["flagged"] for item in tight.values())
    loose = clocks.uncertainty_flags(latency, {"api": 500_000, "workers": 500_000, "loadgen": 500_000})
    assert loose["queue_wait_ms"]["flagged"]  # +-1 ms against a 2 ms median
    assert not loose["e2e_ms"]["flagged"]  # +-1 ms against 50 ms
    assert not loose["service_ms"]["flagged"]  # both ends on one host's clock: no cross-host error
    assert loose["service_ms"]["uncertainty_ms"] == 0
