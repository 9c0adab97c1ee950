"""The report's "When things fail" section: per library configuration x fault, what was lost, run twice,
stranded, how long recovery took, and whether that is what the library documents; throughput over time
with the fault marked; and retries under failure (`poison` tasks against each library's retry settings).

Read from stored runs only: each fault run's ``faults`` record in run.json (counted from the raw ledger by
`benchmarks.fault_verdict` when the run ended) and its ``tasks.parquet`` for the throughput chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks import verdicts
from benchmarks.analysis import charts
from benchmarks.analysis.load import Results

HEADER = ["configuration", "fault", "sent", "lost in flight", "lost queued", "stranded", "duplicated",
          "re-executed", "recovery", "first redelivery", "e2e p99 of tasks sent during the fault", "verdict"]
#: Seconds per bucket of the throughput-over-time chart.
BUCKET_S = 1.0
#: Line styles telling apart the runs of one backend (its colour) in one panel.
LINE_STYLES = ("-", "--", ":", "-.")


#: Statuses of fault runs that have counts (a `failed` fault run has them too: a check a fault cannot break
#: failed, and the table says so beside its verdict).
COUNTED_STATUSES = ("ok", "generator-limited", "failed")


def fault_records(results: Results) -> list[dict[str, Any]]:
    """Runs that injected a fault and were counted, as their run.json records, in a stable order."""
    records = [r for r in results.records.values()
               if (r.get("spec") or {}).get("fault") and r.get("faults") and r.get("status") in COUNTED_STATUSES]
    return sorted(records, key=lambda r: (r["spec"]["backend"], r["spec"]["fault"], configuration(r), r["run_id"]))


def configuration(record: dict[str, Any]) -> str:
    """The library and the settings that change a fault's outcome: acks, knobs, persistence."""
    spec = record["spec"]
    parts = [f"{spec['backend']} on {spec['broker']}"]
    if spec.get("acks_late") is not None:
        parts.append(f"acks_late={_value(spec['acks_late'])}")
    parts += [f"{k}={_value(v)}" for k, v in sorted((spec.get("options") or {}).items())]
    if spec.get("persistence"):  # a RabbitMQ node's is what the run found (durable, with or without confirms)
        parts.append(f"persistence={(record.get('faults') or {}).get('persistence') or spec['persistence']}")
    return ", ".join(parts)


def _recovery(faults: dict[str, Any], observe_s: float) -> str:
    """Lost tasks never recover; stranded ones may, after the observation; otherwise the recovery time."""
    parts = []
    lost = (faults.get("lost_in_flight") or 0) + (faults.get("lost_queued") or 0)
    if lost:
        parts.append(f"never for the {lost} lost")
    if faults.get("stranded"):
        parts.append(f"recovery pending at {observe_s:g} s ({faults['stranded']} stranded)")
    if parts:
        return "; ".join(parts)
    if faults.get("recovered_s") is not None:
        return f"{faults['recovered_s']:.1f} s"
    return "nothing affected" if not faults.get("affected") else "not within the observation"


def _value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def p99_text(faults: dict[str, Any]) -> str:
    """The end-to-end p99 of the tasks sent during the fault, by the quantile rule: a number with its
    interval and n only when its n can bound a p99 (368), else ``too few samples (n=...)`` and the largest.
    Runs recorded before the rule was applied here carry the raw figure; it is judged by its n as well."""
    n = faults.get("e2e_during_fault_n") or 0
    if not n:
        return "no task sent during the fault"
    value = faults.get("e2e_p99_during_fault_ms")
    if value is None or not verdicts.bounds(n, 0.99):
        largest = faults.get("e2e_max_during_fault_ms")
        return verdicts.too_few_samples(n) + (f"; largest {largest:.0f} ms" if largest is not None else "")
    interval = faults.get("e2e_p99_during_fault_interval_ms")
    if interval:
        return (f"{value:.0f} ms ({verdicts.CONFIDENCE_TEXT} CI {interval[0]:.0f} to {interval[1]:.0f}, "
                f"n={n})")
    return f"{value:.0f} ms (n={n})"


def _seconds(value: Any) -> str:
    return "–" if value is None else f"{value:.1f} s"


def fault_table(results: Results) -> list[list[str]]:
    """One row per fault run (`HEADER`)."""
    rows = []
    for record in fault_records(results):
        f = record["faults"]
        if not f.get("injected") or "verdict" not in f or f["verdict"] == "not-injected":
            rows.append([configuration(record), record["spec"]["fault"], "–", "–", "–", "–", "–", "–", "–", "–",
                         "–", f"not injected: {f.get('error', 'no task ran')}"])
            continue
        stranded = "not read" if f.get("stranded") is None else str(f["stranded"])
        verdict = f["verdict"] if not f.get("reasons") else f"⚠ {f['verdict']}: {'; '.join(f['reasons'])}"
        if record["status"] != "ok":
            verdict += f" (run {record['status']}: {record.get('detail', '')})"
        rows.append([configuration(record), record["spec"]["fault"], str(f["acknowledged"]),
                     f"{f['lost_in_flight']} of {f['in_flight_at_fault']}", str(f["lost_queued"]), stranded,
                     str(f["duplicated"]), str(f["reexecuted"]), _recovery(f, float(record["spec"]["observe_s"])),
                     _seconds(f.get("first_redelivery_s")), p99_text(f), verdict])
    return rows


#: Columns of the retries table: runs that sent `poison` tasks (they fail every time).
RETRY_HEADER = ["configuration", "poison tasks", "attempts promised", "failed as promised", "retry setting"]


def retry_table(results: Results) -> list[list[str]]:
    """One row per run that sent `poison` tasks: the attempts its library's retry settings promise (run.json's
    ``retry_policy``) and how many of its poison tasks ran exactly that many times and then failed (the
    self-check ``retries_as_promised``, counted from the ledger)."""
    rows = []
    for record in sorted(results.records.values(), key=lambda r: (configuration(r), r["run_id"])):
        summary = record.get("summary") or {}
        check = (summary.get("checks") or {}).get("retries_as_promised")
        if check is None or record.get("status") not in COUNTED_STATUSES:
            continue
        figures, policy = summary.get("figures") or {}, record.get("retry_policy") or {}
        total, settled = figures.get("poison_tasks"), figures.get("failed_as_promised")
        outcome = f"{settled} of {total}"
        if not check["ok"]:
            outcome += f" ⚠ {check['detail']}"
        elif check.get("replaced_by"):
            outcome += " (under a fault: judged by the fault's counts)"
        rows.append([configuration(record), str(total), str(policy.get("attempts", "–")), outcome,
                     str(policy.get("source", "–"))])
    return rows


def fault_sentences(results: Results) -> list[str]:
    """What the table says, in a few sentences computed from it."""
    records = [r for r in fault_records(results) if "verdict" in r["faults"]
               and r["faults"]["verdict"] != "not-injected"]
    if not records:
        return []
    violating = [r for r in records if r["faults"]["verdict"] == "violates-contract"]
    losing = [r for r in records if r["faults"]["lost_in_flight"] + r["faults"]["lost_queued"]]
    text = [f"{len(records)} fault runs; {len(losing)} lost at least one acknowledged task, "
            f"{len(violating)} did something their library's delivery contract does not allow"
            + (": " + "; ".join(f"{configuration(r)} under {r['spec']['fault']}" for r in violating) if violating
               else ".")]
    text.append("Lost means acknowledged and never finished by the end of the observation while the broker no "
                "longer held it; stranded means the broker still held it (a recovery timer may bring it back "
                "later); re-executed means started again without a retry being asked for.")
    return text


def throughput_chart(results: Results, out_dir: Path) -> charts.Chart:
    """Successful finishes per second around the fault, one panel per fault kind, one line per run."""
    chart = charts.Chart("faults_throughput", "Throughput around the fault")
    records = [r for r in fault_records(results) if r["faults"].get("at_ns")]
    if not records:
        chart.note = "no run injected a fault"
        return chart
    kinds = sorted({r["spec"]["fault"] for r in records})
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, 2.2 * len(kinds)), squeeze=False, sharex=True)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        seen: dict[str, int] = {}  # runs drawn per backend: each gets its own line style
        for record in (r for r in records if r["spec"]["fault"] == kind):
            tasks = results.tasks(record["run_id"])
            done = tasks[tasks["outcome"] == "ok"]["finished_ns"].dropna().astype("int64").to_numpy()
            if not len(done):
                continue
            at_ns = int(record["faults"]["at_ns"])
            rel = (done - at_ns) / 1e9
            edges = np.arange(np.floor(rel.min()), float(record["spec"]["observe_s"]) + BUCKET_S, BUCKET_S)
            counts, _ = np.histogram(rel, bins=edges)
            backend = record["spec"]["backend"]
            style = LINE_STYLES[seen.get(backend, 0) % len(LINE_STYLES)]
            seen[backend] = seen.get(backend, 0) + 1
            ax.step(edges[:-1], counts / BUCKET_S, where="post", label=configuration(record),
                    color=charts.BACKEND_COLOURS.get(backend), linestyle=style, alpha=0.8)
            chart.run_ids.append(record["run_id"])
        ax.axvline(0, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{kind} (dashed: the fault)")
        ax.set_ylabel("finished ok /s")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("seconds from the fault")
    chart.caption = charts.caption(results, chart.run_ids)
    chart.files = charts._save(fig, out_dir, chart.name, chart.caption)
    chart.sentences = ["Each line counts one run's successful finishes per second from its raw ledger; the dashed "
                       "line is the moment of the fault, the line's end the end of the observation."]
    return chart
