"""What a fault did to the tasks, counted from the raw ledger rows, and whether the library kept its word.

A pure function of stored records (ledger rows, the fault record the injector wrote, the delivery
contract the backend declared, and optionally the task ids the broker still held at the deadline), so
anyone can recount it from ``ledger/*.jsonl``. Nothing here starts, signals or reads a broker.

Definitions (every time is a ledger stamp, wall-clock ns; probes are left out; "ok" is a finished row
with outcome ok; the *deadline* is the end of the observation, `observe_s` after the fault):

- ``acknowledged``: tasks with a ``sent`` row (the API or the preloader got the enqueue call back).
- ``in_flight_at_fault``: tasks with a start at or before the fault and no finished row of that attempt
  by then; ``queued_at_fault``: sent by the fault and not started; ``sent_after_fault``: the rest.
- ``failed_as_promised``: tasks that fail every time (`poison`) whose last promised attempt (``final_attempts``:
  1 + the retries their library's retry policy promises) failed by the deadline: settled, never lost.
- ``lost_in_flight`` / ``lost_queued``: acknowledged, no ok finish (nor a failure as promised) by the
  deadline, not held by the broker, split by where they were at the fault (``lost_queued`` counts tasks
  sent after the fault too).
- ``stranded``: no ok finish by the deadline but still held by the broker (its unacked hash, acks set,
  started registry...), so a recovery timer may still bring them back: "recovery pending", not lost.
  None when the broker was not read.
- ``duplicated``: tasks that finished ok more than once.
- ``reexecuted``: tasks started again without a retry being asked for: a start beyond the first that no
  earlier failed attempt (a finished row with outcome error, before it) accounts for.
- ``unexpected``: tasks that started without ever being sent (never allowed).
- ``affected``: tasks in flight at the fault, plus those re-executed; ``recovered_s``: from the fault to
  the last affected task's first ok finish (or its failure as promised), None if one never finished (or
  none was affected);
  ``first_redelivery_s``: from the fault to the first re-execution start.
- ``throughput_dip``: ok finishes in 1 s buckets; the baseline is their mean rate before the fault
  (buckets from the first finish), ``depth`` is 1 - the lowest bucket after the fault / baseline, and
  ``lost_task_s`` sums the shortfall below the baseline over the buckets from the fault to the deadline.
- ``e2e_p99_during_fault_ms``: nearest-rank p99 of first ok finish - scheduled (else sent) time, over tasks
  sent from the fault to the deadline (``e2e_during_fault_n`` of them), with its distribution-free 95 %
  interval (``e2e_p99_during_fault_interval_ms``). By the quantile rule (`verdicts.bounds`) fewer than 368
  cannot bound a p99: then it is None, ``e2e_p99_during_fault_note`` reads ``too few samples (n=...)``,
  and only ``e2e_max_during_fault_ms`` (the largest, a fact of any sample) is given.

The verdict compares the counts with what the fault and the contract lead one to expect (`expected`):
``as-documented`` when every count is within it, else ``violates-contract`` with the reasons.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends import ledger
from benchmarks import verdicts

AT_MOST_ONCE = "at-most-once"
AT_LEAST_ONCE = "at-least-once"
AS_DOCUMENTED = "as-documented"
VIOLATES = "violates-contract"
#: Faults that take a worker away (its tasks in flight are in danger); `hang_worker` and a `term_worker`
#: whose victim left within its grace only delay them.
KILLS = ("kill_child", "kill_worker")
#: The quantile of ``e2e_p99_during_fault_ms``.
P99 = 0.99


@dataclass(frozen=True)
class Expected:
    """What a fault may do under a contract: `lost_in_flight` up to the tasks in flight ("in-flight"),
    "none" or "any"; `lost_queued` "none" or "any"; `duplicates` allowed or not; `why` in words."""

    lost_in_flight: str
    lost_queued: str
    duplicates: bool
    why: str

    def record(self) -> dict[str, Any]:
        return {"lost_in_flight": self.lost_in_flight, "lost_queued": self.lost_queued,
                "duplicates": "allowed" if self.duplicates else "none", "why": self.why}


def expected(kind: str, guarantee: str, *, persistence: str = "off", escalated: bool = False) -> Expected:
    """What `kind` of fault may do to tasks under a library's `guarantee` (its declared `DeliveryContract`).

    ``failover_broker`` (Sentinel promotes a replica of a killed master) may lose what was not yet replicated.
    `persistence` is the broker's for ``restart_broker``: Redis ``off`` or ``aof``; a RabbitMQ node
    ``durable-confirmed`` or ``durable-unconfirmed`` (durable queues and persistent messages, published with or
    without publisher confirms). `escalated` says a ``term_worker`` victim had to be SIGKILLed after its
    grace (it is then judged as a kill)."""
    alo = guarantee == AT_LEAST_ONCE
    if kind == "failover_broker":
        return Expected("any", "any", alo, "Redis replicates asynchronously and these libraries never wait for "
                        "a replica (WAIT): a write the master acknowledged but had not yet sent to its replica is "
                        "gone after Sentinel promotes it, queued or in flight; what was replicated survives, and "
                        "at-least-once libraries may run a task twice")
    if kind == "restart_broker":
        if persistence == "off":
            return Expected("any", "any", alo, "a broker restarted without persistence forgets every message it "
                            "held (queued and unacknowledged) whatever the library promises")
        if persistence == "durable-unconfirmed":
            return Expected("any", "any", alo, "RabbitMQ writes persistent messages to disk in batches and tells "
                            "the publisher only through confirms: without them, messages it had not yet written "
                            "when it was killed may be gone, durable queue or not")
        if persistence == "durable-confirmed":
            return Expected("none", "none", alo, "a confirmed persistent message in a durable queue is on disk and "
                            "comes back with the node; unacknowledged deliveries are redelivered (at-least-once "
                            "libraries may run them twice)")
        return Expected("none", "none", alo, "an append-only file replays every acknowledged write after a "
                        "process restart; at-least-once libraries may re-run tasks whose ack was cut off")
    if kind in KILLS or (kind == "term_worker" and escalated):
        if alo:
            return Expected("none", "none", True, "at-least-once: a task whose worker dies is redelivered "
                            "(possibly after a recovery timer), so it may run twice but is never lost")
        return Expected("in-flight", "none", False, "at-most-once: a task acknowledged before it ran is lost "
                        "when its worker dies mid-task; tasks not yet started come back (or wait, stranded, "
                        "for the recovery timer)")
    if kind == "hang_worker":
        return Expected("none", "none", True, "a stopped worker resumes and finishes what it held; a hang "
                        "longer than the recovery timer lets another worker take the same tasks (run twice)")
    if kind == "term_worker":
        return Expected("none", "none", False, "a graceful stop finishes (or returns) what the worker holds")
    return Expected("none", "none", False, "no fault")


@dataclass
class _Task:
    sent_ns: int | None = None
    scheduled_ns: int | None = None
    starts: list[tuple[int, Any]] = field(default_factory=list)  # (t_ns, attempt)
    finishes: list[tuple[int, Any, str]] = field(default_factory=list)  # (t_ns, attempt, outcome)
    final_failures: list[int] = field(default_factory=list)  # t_ns of failures of the last promised attempt


def _tasks(rows: Iterable[Mapping[str, Any]], final_attempts: Mapping[str, int]) -> dict[str, _Task]:
    tasks: dict[str, _Task] = defaultdict(_Task)
    for row in rows:
        if row.get("probe") or row.get("id") is None:
            continue
        task = tasks[row["id"]]
        ev = row.get("ev")
        if ev == "sent":
            task.sent_ns = row.get("sent_ns") if task.sent_ns is None else task.sent_ns
            task.scheduled_ns = row.get("scheduled_ns")
        elif ev == "started":
            task.starts.append((int(row["t_ns"]), row.get("attempt")))
        elif ev == "finished":
            task.finishes.append((int(row["t_ns"]), row.get("attempt"), str(row.get("outcome"))))
            if ledger.is_final_failure(row, final_attempts):
                task.final_failures.append(int(row["t_ns"]))
    for task in tasks.values():
        task.starts.sort(key=lambda s: s[0])
        task.finishes.sort(key=lambda f: f[0])
    return tasks


def _reexecution_starts(task: _Task) -> list[int]:
    """Start times beyond the first that no earlier failed attempt accounts for."""
    extra = []
    errors = [t for t, _, outcome in task.finishes if outcome != "ok"]
    used = 0
    for t_ns, _ in task.starts[1:]:
        earlier_errors = sum(1 for e in errors if e <= t_ns)
        if earlier_errors > used:
            used += 1  # a retry the library was asked for (the attempt before it failed)
        else:
            extra.append(t_ns)
    return extra


def _in_flight(task: _Task, at_ns: int) -> bool:
    finished_by = {attempt for t, attempt, _ in task.finishes if t <= at_ns}
    unfinished = [attempt for t, attempt in task.starts if t <= at_ns and attempt not in finished_by]
    # one attempt started twice (a redelivery keeps its number) counts once it has a finish
    return bool(unfinished)


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _dip(tasks: Mapping[str, _Task], at_ns: int, deadline_ns: int) -> dict[str, Any]:
    ok_ns = sorted(t for task in tasks.values() for t, _, outcome in task.finishes if outcome == "ok"
                   and t <= deadline_ns)
    before = [t for t in ok_ns if t <= at_ns]
    if not before or at_ns - before[0] < 1e9:
        return {"baseline_per_s": None, "depth": None, "lost_task_s": None, "buckets_per_s": []}
    baseline = len(before) / ((at_ns - before[0]) / 1e9)
    n_buckets = max(1, math.ceil((deadline_ns - at_ns) / 1e9))
    buckets = [0] * n_buckets
    for t in ok_ns:
        if t > at_ns:
            buckets[min(n_buckets - 1, int((t - at_ns) // 1_000_000_000))] += 1
    return {"baseline_per_s": round(baseline, 3), "depth": round(max(0.0, 1 - min(buckets) / baseline), 4),
            "lost_task_s": round(sum(max(0.0, baseline - b) for b in buckets) / baseline, 3),
            "buckets_per_s": buckets}


def judge(rows: Iterable[Mapping[str, Any]], fault: Mapping[str, Any], guarantee: str, *,
          held_ids: Iterable[str] | None = None, final_attempts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The counts and the verdict for one run (see the module docstring for every definition).

    `fault` needs ``kind``, ``at_ns`` and ``deadline_ns``; ``persistence`` (restart_broker) and
    ``escalated`` (term_worker) refine what is expected. `held_ids`: the task ids the broker still held
    at the deadline (None: not read, so nothing can be called stranded). `final_attempts`: task name ->
    the attempt whose failure is final (`poison`: 1 + its library's promised retries)."""
    at_ns, deadline_ns = int(fault["at_ns"]), int(fault["deadline_ns"])
    tasks = _tasks(rows, final_attempts or {})
    held = set(held_ids) if held_ids is not None else None
    sent = {i: t for i, t in tasks.items() if t.sent_ns is not None}
    unexpected = sorted(i for i, t in tasks.items() if t.sent_ns is None and t.starts)

    in_flight = {i for i, t in sent.items() if _in_flight(t, at_ns)}
    queued = {i for i, t in sent.items() if i not in in_flight and t.sent_ns <= at_ns
              and not any(s <= at_ns for s, _ in t.starts) and not any(f <= at_ns for f, _, _ in t.finishes)}
    after = {i for i, t in sent.items() if t.sent_ns > at_ns}
    ok_first = {i: min(f for f, _, outcome in t.finishes if outcome == "ok" and f <= deadline_ns)
                for i, t in sent.items() if any(o == "ok" and f <= deadline_ns for f, _, o in t.finishes)}
    failed_final = {i: min(t.final_failures) for i, t in sent.items()
                    if i not in ok_first and t.final_failures and min(t.final_failures) <= deadline_ns}
    settled = ok_first | failed_final
    unfinished = set(sent) - set(settled)
    stranded = unfinished & held if held is not None else set()
    lost = unfinished - stranded
    duplicated = sorted(i for i, t in sent.items() if sum(1 for _, _, o in t.finishes if o == "ok") > 1)
    redelivered = {i: starts for i, t in sent.items() if (starts := _reexecution_starts(t))}
    affected = in_flight | set(redelivered)
    recovered = None
    if affected and affected <= set(settled):
        recovered = round((max(settled[i] for i in affected) - at_ns) / 1e9, 3)
    first_redelivery = (round((min(min(s) for s in redelivered.values()) - at_ns) / 1e9, 3)
                        if redelivered else None)
    e2e = [(ok_first[i] - (sent[i].scheduled_ns or sent[i].sent_ns)) / 1e6 for i in after if i in ok_first]
    p99_bounded = verdicts.bounds(len(e2e), P99)

    counts = {
        "acknowledged": len(sent), "in_flight_at_fault": len(in_flight), "queued_at_fault": len(queued),
        "sent_after_fault": len(after), "finished_ok": len(ok_first), "failed_as_promised": len(failed_final),
        "lost_in_flight": len(lost & in_flight), "lost_queued": len(lost - in_flight),
        "stranded": len(stranded) if held is not None else None,
        "stranded_in_flight": len(stranded & in_flight) if held is not None else None,
        "duplicated": len(duplicated), "reexecuted": len(redelivered), "unexpected": len(unexpected),
        "affected": len(affected), "recovered_s": recovered, "first_redelivery_s": first_redelivery,
        "throughput_dip": _dip(sent, at_ns, deadline_ns),
        "e2e_p99_during_fault_ms": _p99(e2e) if p99_bounded else None, "e2e_during_fault_n": len(e2e),
        "e2e_p99_during_fault_interval_ms": list(verdicts.quantile_interval(e2e, P99)) if p99_bounded else None,
        "e2e_p99_during_fault_note": None if p99_bounded else verdicts.too_few_samples(len(e2e)),
        "e2e_max_during_fault_ms": max(e2e) if e2e else None,
    }
    want = expected(str(fault["kind"]), guarantee, persistence=str(fault.get("persistence", "off")),
                    escalated=bool(fault.get("escalated")))
    reasons = []
    if want.lost_in_flight == "none" and counts["lost_in_flight"]:
        reasons.append(f"{counts['lost_in_flight']} task(s) in flight lost; expected none")
    if want.lost_in_flight == "in-flight" and counts["lost_in_flight"] > counts["in_flight_at_fault"]:
        reasons.append(f"{counts['lost_in_flight']} in-flight task(s) lost, more than the "
                       f"{counts['in_flight_at_fault']} in flight at the fault")
    if want.lost_queued == "none" and counts["lost_queued"]:
        reasons.append(f"{counts['lost_queued']} task(s) not yet started lost; expected none")
    if not want.duplicates and (counts["duplicated"] or counts["reexecuted"]):
        reasons.append(f"{counts['reexecuted']} task(s) re-executed, {counts['duplicated']} finished twice; "
                       f"expected {guarantee}")
    if unexpected:
        reasons.append(f"{len(unexpected)} task(s) ran that were never sent")
    return counts | {
        "expected": {"guarantee": guarantee, **want.record()},
        "verdict": VIOLATES if reasons else AS_DOCUMENTED, "reasons": reasons,
        "ids": {"lost": sorted(lost)[:50], "stranded": sorted(stranded)[:50], "duplicated": duplicated[:50],
                "reexecuted": sorted(redelivered)[:50]},
    }
