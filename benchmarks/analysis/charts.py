"""One matplotlib function per question, each saving PNG and SVG captioned with what was measured where.

Every function takes a `Results` and an output directory and returns a `Chart`: the files it wrote, two
sentences that say what the chart shows (computed from the same numbers it draws), the runs it drew
(so warnings about them can sit beside it) and the numbers themselves. A chart whose data is absent
from the results is not drawn: it comes back with ``files == []`` and a note saying what is missing.

- `worker_count`: throughput against slots per backend, the spread of repeats, the Little's-law bound
  (slots / mean service time), throughput per slot and tasks per CPU-second.
- `serializers`: HTTP enqueue cost, throughput and end-to-end p95 per serializer x payload size.
- `routing`: latency of short tasks while long ones flow, shared vs dedicated queues, per backend.
- `latency_vs_rate`: p50/p95/p99 against offered rate, the knee marked.
- `latency_decomposition`: HTTP enqueue, queue wait and service as stacked bars (means).
- `resource_cost`: CPU seconds per 1000 tasks by broker, workers, API and Locust.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import backends  # noqa: E402
from benchmarks.analysis.load import (  # noqa: E402
    COMPONENTS,
    SYSTEM_KEYS,
    WORKLOAD_KEYS,
    Results,
    is_missing,
    kind_label,
    labels,
    over_repeats,
    percentile_of,
    row_key,
)
from benchmarks.analysis.uncertainty import (  # noqa: E402
    leader_phrase,
    num,
    pick_cells,
    ratio_phrase,
    repeats_text,
    values_of,
)
from benchmarks.verdicts import (  # noqa: E402
    KNEE_LATENCY_GROWTH,
    SUSTAINED_RATIO,
    difference,
    geometric_mean,
    kept_up,
    knee_index,
    latency_grew,
    min_samples,
    pick_best,
)

#: Fewest distinct offered rates that make a latency-against-rate curve.
MIN_RATES = 3
#: Backends' colours, fixed so a backend looks the same in every chart: the registry's order picks from a
#: palette (a backend named by dotted path gets the next free one), the floor and the ceiling are grey.
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#e377c2", "#8c564b")
BACKEND_COLOURS = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(backends.libraries())} | {
    **{name: "#7f7f7f" for name in backends.FLOORS}, **{name: "#bcbd22" for name in backends.HARNESS}}
COMPONENT_COLOURS = {"broker": "#8c564b", "workers": "#1f77b4", "api": "#ff7f0e", "locust": "#9467bd"}
LATENCY_PARTS = (("http_enqueue_ms_mean", "HTTP enqueue", "#ff7f0e"), ("queue_wait_ms_mean", "queue wait", "#9467bd"),
                 ("service_ms_mean", "service", "#1f77b4"))
FIGURE_DPI = 110

plt.rcParams.update({"svg.hashsalt": "queuebench", "font.size": 9, "axes.titlesize": 9, "axes.grid": True,
                     "grid.alpha": 0.3})


@dataclass
class Chart:
    """One question's chart: files written (empty when skipped), two sentences, the runs drawn, the data."""

    name: str
    title: str
    files: list[Path] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    note: str = ""
    caption: str = ""
    data: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def drawn(self) -> bool:
        return bool(self.files)

    @property
    def png(self) -> Path | None:
        return next((p for p in self.files if p.suffix == ".png"), None)


# --- shared pieces ------------------------------------------------------------------------------------


def _unique(values: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in values if not is_missing(v)})


def _library_package(backend: str) -> str | None:
    """The distribution a backend's caption names: the first package it declares (the library itself;
    redis-py for the bare-Redis floor)."""
    try:
        packages = backends.backend_class(backend).packages
    except (KeyError, ImportError, AttributeError):
        return None
    return packages[0] if packages else None


def caption(results: Results, run_ids: Sequence[str]) -> str:
    """Library versions, broker, machine (CPU model, cores) and repeats of the runs drawn."""
    runs = results.runs[results.runs["run_id"].isin(run_ids)]
    if runs.empty:
        return ""
    parts = []
    for backend in _unique(runs["backend"]):
        package = _library_package(backend)
        column = f"pkg.{package}"
        if package and column in runs.columns:
            versions = _unique(runs.loc[runs["backend"] == backend, column])
            name = backend if package == backend else f"{package} ({backend})"
            parts.append(f"{name} {'/'.join(versions) or '?'}")
    brokers = _unique(f"{k} {v}" for k, v in zip(runs["broker_kind"], runs["broker_version"], strict=True)
                      if not is_missing(k))
    if brokers:
        parts.append("broker " + ", ".join(brokers))
    machines = _unique(f"{m}, {int(c)} logical cores" for m, c in zip(runs["cpu_model"], runs["cpu_count_logical"],
                                                                     strict=True)
                       if not is_missing(m) and not is_missing(c))
    parts.append("; ".join(machines) or "machine unknown")
    repeats = runs.groupby("cell").size()
    low, high = int(repeats.min()), int(repeats.max())
    parts.append(f"{low} repeat{'s' if low != 1 else ''} per point" if low == high
                 else f"{low}-{high} repeats per point")
    return " · ".join(parts)


def _save(fig: plt.Figure, out_dir: Path, name: str, text: str) -> list[Path]:
    """Caption the figure, write PNG and SVG, close it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.text(0.0, -0.01, text, fontsize=7, color="#444444", ha="left", va="top", wrap=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=FIGURE_DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return paths


def _colour(backend: Any, index: int = 0) -> str:
    return BACKEND_COLOURS.get(str(backend), f"C{index % 10}")


def workload_title(row: pd.Series | dict[str, Any]) -> str:
    """What a family of cells sends: ``drain 500 x noop()`` or ``latency · sleep_ms(ms=20) · 30/s``."""
    args = json.loads(row["args"]) if isinstance(row.get("args"), str) else {}
    kind = kind_label(str(row["task"]), args) if not is_missing(row.get("task")) else ""
    if row.get("mode") == "drain":
        return f"drain {int(row['tasks'])} x {kind}"
    parts = [str(row.get("scenario") or "load")]
    if kind and row.get("scenario") not in ("routing_mix", "payload"):
        parts.append(kind)
    if not is_missing(row.get("rate")):
        parts.append(f"{row['rate']:g}/s" + (" poisson" if row.get("arrival") == "poisson" else ""))
    return " · ".join(parts)


def _skipped(name: str, title: str, note: str) -> Chart:
    return Chart(name=name, title=title, note=note)


def _note_too_few(ax: plt.Axes, cells: pd.DataFrame, metrics: Sequence[str], what: str = "points") -> None:
    """Say on the panel which percentiles are left out because their tasks cannot bound them (the
    quantile rule): a missing bar or point is not a zero, nor a measurement that failed."""
    notes = []
    for metric in metrics:
        found = percentile_of(metric)
        if found is None or metric not in cells or f"{metric}_tasks" not in cells or not cells[metric].isna().any():
            continue
        fewest = int(pd.to_numeric(cells.loc[cells[metric].isna(), f"{metric}_tasks"]).min())
        notes.append(f"p{round(found[1] * 100)} needs n ≥ {min_samples(found[1])} tasks a run (as few as {fewest})")
    if notes:
        ax.text(0.02, 0.03, "\n".join([f"missing {what}: too few samples", *notes]), transform=ax.transAxes,
                ha="left", va="bottom", fontsize=6.5, color="#a05000",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})


def _errors(frame: pd.DataFrame, metric: str) -> np.ndarray:
    """Asymmetric error bars (min, max over repeats) around the mean."""
    mean = frame[metric].to_numpy(dtype="float64")
    low = np.nan_to_num(mean - frame[f"{metric}_min"].to_numpy(dtype="float64"))
    high = np.nan_to_num(frame[f"{metric}_max"].to_numpy(dtype="float64") - mean)
    return np.vstack([np.clip(low, 0, None), np.clip(high, 0, None)])


# --- worker count -------------------------------------------------------------------------------------

WORKER_METRICS = ("throughput_per_s", "littles_bound_per_s", "tasks_per_cpu_s", "tasks_per_worker_cpu_s",
                  "offered_rate_per_s", "achieved_rate_per_s", "mean_service_ms")
#: What a line of the worker-count chart is (a configuration whose slots vary).
LINE_KEYS = tuple(k for k in SYSTEM_KEYS if k not in ("processes", "threads", "broker", "serializer", "routing",
                                                       "long_threshold_ms", "results", "api_workers",
                                                       "api_threads"))
#: What a panel row of the worker-count chart is (the workload and the rest of the set-up).
FAMILY_KEYS = tuple(k for k in (*WORKLOAD_KEYS, *SYSTEM_KEYS) if k not in LINE_KEYS and k not in ("processes",
                                                                                                  "threads"))


def worker_count(results: Results, out_dir: Path) -> Chart:
    """Throughput against slots per backend (and pool / worker class), with the spread of repeats and the
    Little's-law bound; throughput per slot and tasks per CPU-second beside it."""
    name, title = "worker_count", "Worker count: throughput against execution slots"
    cells = over_repeats(results.usable, WORKER_METRICS)
    if cells.empty:
        return _skipped(name, title, "no usable runs")
    cells["family"] = row_key(cells, FAMILY_KEYS)
    cells["line"] = row_key(cells, LINE_KEYS)
    families = [f for f, group in cells.groupby("family", sort=False)
                if group.groupby("line")["slots"].nunique().max() >= 2]
    if not families:
        return _skipped(name, title, "no configuration was measured at two or more slot counts "
                                     "(processes x threads) with everything else equal")
    # Drain families first: their throughput is the queue's own limit, not the offered rate.
    families.sort(key=lambda f: (cells.loc[cells["family"] == f, "mode"].iloc[0] != "drain", f))
    drawn = cells[cells["family"].isin(families)].copy()
    drawn["line_label"] = labels(drawn, LINE_KEYS)
    drawn["per_slot_per_s"] = drawn["throughput_per_s"] / drawn["slots"]

    fig, axes = plt.subplots(len(families), 3, figsize=(12, 3.4 * len(families)), squeeze=False,
                             layout="constrained")
    for row_axes, family in zip(axes, families, strict=True):
        group = drawn[drawn["family"] == family].sort_values("slots")
        first = group.iloc[0]
        ax_thr, ax_slot, ax_cpu = row_axes
        log_scale = False
        seen: dict[str, int] = {}  # lines per backend so far: a backend's second line (pool...) is dashed
        for i, (line, points) in enumerate(group.groupby("line_label", sort=True)):
            backend = str(points["backend"].iloc[0])
            colour = _colour(backend, i)
            style = ("-", "--", ":", "-.")[seen.get(backend, 0) % 4]
            seen[backend] = seen.get(backend, 0) + 1
            ax_thr.errorbar(points["slots"], points["throughput_per_s"], yerr=_errors(points, "throughput_per_s"),
                            marker="o", color=colour, linestyle=style, capsize=3, label=line)
            if points["littles_bound_per_s"].notna().any():
                ax_thr.plot(points["slots"], points["littles_bound_per_s"], color=colour, linestyle=":",
                            marker="_", label=f"{line}: Little's bound")
                if points["littles_bound_per_s"].max() > 5 * max(points["throughput_per_s"].max(), 1e-9):
                    log_scale = True
            ax_slot.plot(points["slots"], points["per_slot_per_s"], marker="o", color=colour, linestyle=style,
                         label=line)
            ax_cpu.errorbar(points["slots"], points["tasks_per_cpu_s"], yerr=_errors(points, "tasks_per_cpu_s"),
                            marker="o", color=colour, linestyle=style, capsize=3, label=line)
        if first.get("mode") == "load" and not is_missing(first.get("rate")):
            ax_thr.axhline(float(first["rate"]), color="#555555", linestyle="-.", linewidth=0.8, label="offered rate")
        if log_scale:
            ax_thr.set_yscale("log")
        else:
            ax_thr.set_ylim(bottom=0)
        ax_slot.set_ylim(bottom=0)
        ax_cpu.set_ylim(bottom=0)
        subtitle = f"{workload_title(first)} · {first.get('broker')} · {first.get('serializer')} · {first.get('routing')}"
        ax_thr.set_title(f"throughput ({subtitle})")
        ax_slot.set_title("throughput per slot")
        ax_cpu.set_title("tasks per CPU-second (all components)")
        ax_thr.set_ylabel("tasks/s")
        ax_slot.set_ylabel("tasks/s per slot")
        ax_cpu.set_ylabel("tasks per CPU-s")
        for ax in row_axes:
            ax.set_xlabel("slots (processes x threads)")
            ax.set_xticks(sorted(group["slots"].unique()))
        ax_thr.legend(fontsize=7)
    run_ids = _run_ids(drawn)
    text = caption(results, run_ids) + " · bars: min-max over repeats; dotted: slots / mean service time"
    files = _save(fig, out_dir, name, text)
    return Chart(name, title, files, _worker_sentences(drawn, families), run_ids, caption=text,
                 data=drawn.drop(columns=["family", "line"]))


def _run_ids(frame: pd.DataFrame) -> list[str]:
    return [r for ids in frame["run_ids"] for r in str(ids).split(",") if r]


def _pct(part: float, whole: float) -> str:
    share = 100 * part / whole
    return "<1 %" if 0 < share < 1 else f"{share:.0f} %"


def _slots(n: Any) -> str:
    return f"{int(n)} slot{'s' if int(n) != 1 else ''}"


def _worker_sentences(drawn: pd.DataFrame, families: list[str]) -> list[str]:
    group = drawn[drawn["family"] == families[0]]
    # Only lines measured at several slot counts say something about worker count.
    group = group[group.groupby("line_label")["slots"].transform("nunique") >= 2]
    points = group.assign(point=group["line_label"] + " at " + group["slots"].map(_slots)).to_dict("records")
    pick = pick_cells(points, "throughput_per_s", "point")
    best = next(p for p in points if p["point"] == pick.leader) if pick.leader else \
        max(points, key=lambda p: p["throughput_per_s"])
    bound = best.get("littles_bound_per_s")
    share = f", {_pct(best['throughput_per_s'], bound)} of its Little's-law bound " \
            f"({repeats_text(best, 'littles_bound_per_s', '/s')})" if not is_missing(bound) and bound else ""
    lead = leader_phrase(pick)
    first = (f"In {workload_title(best)}, {best['line_label']} reaches {repeats_text(best, 'throughput_per_s', '/s')} "
             f"at {_slots(best['slots'])}{share}" + (f"; {lead}" if lead else "") + ".")
    scaling = []
    for line, own in group.sort_values("slots").groupby("line_label", sort=True):
        low, high = own.iloc[0], own.iloc[-1]
        found = difference(values_of(low, "throughput_per_s"), values_of(high, "throughput_per_s"),
                           "throughput_per_s")
        scaling.append(f"{ratio_phrase(found)} for {line}")
    low_slots, high_slots = int(group["slots"].min()), int(group["slots"].max())
    second = f"From {low_slots} to {_slots(high_slots)} throughput changes {', '.join(scaling)} " \
             f"(x{high_slots / low_slots:g} would be linear)"
    if best.get("mode") == "load" and not is_missing(best.get("rate")):
        second += f", capped by the {best['rate']:g}/s offered"
    efficient = [p for p in points if not is_missing(p.get("tasks_per_cpu_s"))]
    if efficient:
        most = max(efficient, key=lambda p: p["tasks_per_cpu_s"])
        second += (f"; the most tasks per CPU-second: {most['line_label']} at {_slots(most['slots'])}, "
                   f"{repeats_text(most, 'tasks_per_cpu_s')}")
    return [first, second + "."]

# --- serializers --------------------------------------------------------------------------------------


def _kind_cells(results: Results, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-kind figures of each run (`Results.kind_figures`) joined with the run's spec columns."""
    frames = [results.kind_figures(run_id) for run_id in runs["run_id"]]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    kinds = pd.concat(frames, ignore_index=True)
    spec = [c for c in runs.columns if c in (*SYSTEM_KEYS, *WORKLOAD_KEYS, "run_id", "cell", "cell_id", "slots")]
    return kinds.merge(runs[spec], on="run_id", how="left")


def serializers(results: Results, out_dir: Path) -> Chart:
    """Enqueue cost (HTTP enqueue, median), throughput and end-to-end p95 per serializer x payload size."""
    name, title = "serializers", "Serializers: enqueue cost, throughput and end-to-end p95 by payload size"
    runs = results.usable[(results.usable["mode"] == "load") & ((results.usable["scenario"] == "payload") |
                                                                (results.usable["task"] == "echo"))]
    if runs.empty:
        return _skipped(name, title, "no usable run sent echo payloads (scenario payload)")
    kinds = _kind_cells(results, runs)
    if kinds.empty or kinds["payload_bytes"].notna().sum() == 0:
        return _skipped(name, title, "payload runs carry no task_kinds, so their sizes are unknown")
    kinds = kinds[kinds["payload_bytes"].notna()].copy()
    kinds["point"] = kinds["cell"] + "|" + kinds["payload_bytes"].astype(str)
    metrics = ("http_enqueue_ms_p50", "throughput_per_s", "e2e_ms_p95")
    points = over_repeats(kinds, metrics, by="point")
    points["line_label"] = labels(points, SYSTEM_KEYS + WORKLOAD_KEYS, always=("backend", "serializer"))

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    panels = (("http_enqueue_ms_p50", "HTTP enqueue, median (ms)"), ("throughput_per_s", "throughput (tasks/s)"),
              ("e2e_ms_p95", "end-to-end p95 (ms)"))
    for i, (line, group) in enumerate(points.groupby("line_label", sort=True)):
        group = group.sort_values("payload_bytes")
        colour = _colour(group["backend"].iloc[0], i)
        style = "-" if group["serializer"].iloc[0] == "json" else "--" if group["serializer"].iloc[0] == "msgpack" \
            else ":"
        for ax, (metric, _) in zip(axes, panels, strict=True):
            ax.errorbar(group["payload_bytes"], group[metric], yerr=_errors(group, metric), marker="o", capsize=3,
                        color=colour, linestyle=style, label=line)
    for ax, (metric, ylabel) in zip(axes, panels, strict=True):
        _note_too_few(ax, points, (metric,))
        ax.set_xscale("log")
        ax.set_xlabel("payload (bytes)")
        ax.set_title(ylabel)
        ax.set_ylim(bottom=0)  # from zero: small differences are not drawn as large ones
    axes[0].legend(fontsize=7)
    run_ids = _run_ids(points)
    text = caption(results, run_ids) + " · solid: json, dashed: msgpack · bars: min-max over repeats"
    files = _save(fig, out_dir, name, text)
    return Chart(name, title, files, _serializer_sentences(points), run_ids, caption=text, data=points)


def _serializer_sentences(points: pd.DataFrame) -> list[str]:
    largest = points[points["payload_bytes"] == points["payload_bytes"].max()]
    size = f"{largest['payload_bytes'].iloc[0]:,.0f} B"
    rows = largest.to_dict("records")
    enqueue = pick_cells(rows, "http_enqueue_ms_p50", "line_label")
    if enqueue.leader is None:
        each = "; ".join(f"{r['line_label']} " + repeats_text(r, "http_enqueue_ms_p50", "ms") for r in rows)
        first = f"At the largest payload ({size}) no configuration's median HTTP enqueue rests on enough samples: {each}."
    else:
        cheap = next(r for r in rows if r["line_label"] == enqueue.leader)
        dear_label = next(reversed(enqueue.others), None)
        first = (f"At the largest payload ({size}) the cheapest enqueue is {cheap['line_label']} "
                 f"({repeats_text(cheap, 'http_enqueue_ms_p50', 'ms')} median HTTP enqueue)")
        if dear_label is not None:
            dear = next(r for r in rows if r["line_label"] == dear_label)
            first += (f" and the dearest {dear_label} ({repeats_text(dear, 'http_enqueue_ms_p50', 'ms')}), "
                      f"{ratio_phrase(enqueue.others[dear_label])}")
        first += "."
    e2e = pick_cells(rows, "e2e_ms_p95", "line_label")
    if e2e.leader is None:
        smallest = min((r.get("e2e_ms_p95_tasks") or 0 for r in rows), default=0)
        second = (f"End-to-end p95 at that size rests on too few samples in every configuration (n={smallest} or "
                  f"fewer tasks per run; p95 needs n ≥ {min_samples(0.95)}).")
        return [first, second]
    fast = next(r for r in rows if r["line_label"] == e2e.leader)
    slow_label = next(reversed(e2e.others), None)
    second = f"End-to-end p95 at that size is lowest for {fast['line_label']} ({repeats_text(fast, 'e2e_ms_p95', 'ms')})"
    if slow_label is not None:
        slow = next(r for r in rows if r["line_label"] == slow_label)
        smallest = points[(points["payload_bytes"] == points["payload_bytes"].min())
                          & (points["line_label"] == slow_label)]
        at_small = (f"; {repeats_text(smallest.iloc[0], 'e2e_ms_p95', 'ms')} at "
                    f"{smallest['payload_bytes'].iloc[0]:,.0f} B" if len(smallest) else "")
        second += (f" and highest for {slow_label} ({repeats_text(slow, 'e2e_ms_p95', 'ms')}{at_small}), "
                   f"{ratio_phrase(e2e.others[slow_label])}")
    return [first, second + "."]

# --- routing ------------------------------------------------------------------------------------------


def routing_figures(results: Results, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per routing_mix run: end-to-end p50/p95/p99 of its short tasks and p95 of its long tasks (ms),
    each with its sample size (``short_e2e_ms_count``, ``long_e2e_ms_count``: the kind's tasks in the
    window with an end-to-end figure) and the quantile rule applied; ``short_digest`` names the kind.

    Short and long are told apart by digest (``task_kinds``): a kind whose ``ms`` is below the run's
    ``long_threshold_ms`` is short. Runs without task kinds are left out.
    """
    runs = results.usable if runs is None else runs
    runs = runs[(runs["mode"] == "load") & (runs["scenario"] == "routing_mix")]
    kinds = _kind_cells(results, runs)
    if kinds.empty or kinds["work_ms"].isna().all():
        return pd.DataFrame()
    kinds = kinds[kinds["work_ms"].notna()].copy()
    kinds["short"] = kinds["work_ms"] < kinds["long_threshold_ms"].astype("float64")
    rows = []
    for run_id, group in kinds.groupby("run_id", sort=False):
        short, long_ = group[group["short"]], group[~group["short"]]
        if short.empty:
            continue
        row = {"run_id": run_id, "short_kind": short["kind"].iloc[0], "short_digest": short["digest"].iloc[0],
               "short_e2e_ms_p50": short["e2e_ms_p50"].iloc[0], "short_e2e_ms_p95": short["e2e_ms_p95"].iloc[0],
               "short_e2e_ms_p99": short["e2e_ms_p99"].iloc[0], "short_e2e_ms_count": short["e2e_ms_count"].iloc[0],
               "short_tasks": int(short["window_tasks"].iloc[0])}
        if len(long_):
            row |= {"long_kind": long_["kind"].iloc[0], "long_digest": long_["digest"].iloc[0],
                    "long_e2e_ms_p95": long_["e2e_ms_p95"].iloc[0], "long_e2e_ms_count": long_["e2e_ms_count"].iloc[0],
                    "long_tasks": int(long_["window_tasks"].iloc[0])}
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).merge(runs, on="run_id", how="left")


def routing(results: Results, out_dir: Path) -> Chart:
    """End-to-end latency of short tasks while long tasks flow: shared vs dedicated queues, per backend."""
    name, title = "routing", "Routing: short-task latency while long tasks flow, shared vs dedicated queues"
    per_run = routing_figures(results)
    if per_run.empty:
        return _skipped(name, title, "no usable routing_mix run with known task kinds")
    metrics = ("short_e2e_ms_p50", "short_e2e_ms_p95", "short_e2e_ms_p99", "long_e2e_ms_p95")
    cells = over_repeats(per_run, metrics)
    group_keys = [k for k in SYSTEM_KEYS + WORKLOAD_KEYS if k != "routing"]
    cells["group_label"] = labels(cells, group_keys)
    routings = [r for r in ("shared", "dedicated") if r in set(cells["routing"])]
    groups = sorted(cells["group_label"].unique())
    width = 0.8 / max(len(routings), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    x = np.arange(len(groups))
    hatches = {"shared": "", "dedicated": "//"}
    for j, route in enumerate(routings):
        part = cells[cells["routing"] == route].set_index("group_label").reindex(groups)
        colours = [_colour(b, i) for i, b in enumerate(part["backend"])]
        for ax, metric in zip(axes, ("short_e2e_ms_p95", "long_e2e_ms_p95"), strict=True):
            if part[metric].isna().all():
                continue
            ax.bar(x + (j - (len(routings) - 1) / 2) * width, part[metric].fillna(0), width, color=colours,
                   hatch=hatches.get(route, ""), edgecolor="black", linewidth=0.5, label=route,
                   yerr=_errors(part.fillna(0), metric), capsize=3)
        axes[0].scatter(x + (j - (len(routings) - 1) / 2) * width, part["short_e2e_ms_p50"], marker="_", s=200,
                        color="black", zorder=3, label="p50" if j == 0 else None)
    short_kind = per_run["short_kind"].iloc[0]
    long_kind = per_run["long_kind"].dropna().iloc[0] if "long_kind" in per_run and per_run["long_kind"].notna().any() \
        else "long"
    axes[0].set_title(f"short tasks ({short_kind}): end-to-end p95 (bar), p50 (tick)")
    axes[1].set_title(f"long tasks ({long_kind}): end-to-end p95")
    for ax, metric in zip(axes, ("short_e2e_ms_p95", "long_e2e_ms_p95"), strict=True):
        ax.set_xticks(x, groups, rotation=15, ha="right")
        ax.set_ylabel("ms")
        _note_too_few(ax, cells, (metric,), "bars")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    run_ids = _run_ids(cells)
    text = caption(results, run_ids) + " · plain: shared queue, hatched: dedicated queues · bars: min-max over repeats"
    files = _save(fig, out_dir, name, text)
    return Chart(name, title, files, _routing_sentences(cells, groups), run_ids, caption=text, data=cells)


def _routing_sentences(cells: pd.DataFrame, groups: list[str]) -> list[str]:
    shorts, longs = [], []
    for group in groups:
        part = cells[cells["group_label"] == group].set_index("routing")
        if {"shared", "dedicated"} <= set(part.index):
            shared, dedicated = part.loc["shared"], part.loc["dedicated"]
            found = difference(values_of(shared, "short_e2e_ms_p95"), values_of(dedicated, "short_e2e_ms_p95"),
                               "short_e2e_ms_p95")
            ratio = f" ({ratio_phrase(found)})" if np.isfinite(found.ratio) else ""
            shorts.append(f"{repeats_text(dedicated, 'short_e2e_ms_p95', 'ms')} vs "
                          f"{repeats_text(shared, 'short_e2e_ms_p95', 'ms')} for {group}{ratio}")
            longs.append(f"{repeats_text(dedicated, 'long_e2e_ms_p95', 'ms')} vs "
                         f"{repeats_text(shared, 'long_e2e_ms_p95', 'ms')} for {group}")
    if not shorts:
        pick = pick_cells(cells.to_dict("records"), "short_e2e_ms_p95", "group_label")
        measured = ", ".join(sorted(set(cells["routing"])))
        if pick.leader is None:
            return [f"Only {measured} routing was measured, and no short-task p95 rests on enough samples "
                    f"(p95 needs n ≥ {min_samples(0.95)}).",
                    "Measure both routings of one configuration, longer, to see what dedicated queues change."]
        best = cells[cells["group_label"] == pick.leader].iloc[0]
        return [f"Only {measured} routing was measured; the lowest short-task p95 is "
                f"{repeats_text(best, 'short_e2e_ms_p95', 'ms')} ({best['group_label']}).",
                "Measure both routings of one configuration to see what dedicated queues change."]
    return [f"Short tasks' end-to-end p95, dedicated vs shared: {'; '.join(shorts)}.",
            f"Long tasks' p95, dedicated vs shared: {'; '.join(longs)}."]

# --- latency against offered rate ---------------------------------------------------------------------


def knee(rates: Sequence[float], p95_ms: Sequence[float], throughput_per_s: Sequence[float],
         sent_per_s: Sequence[float] | None = None) -> float | None:
    """The lowest offered rate where p95 exceeds `verdicts.KNEE_LATENCY_GROWTH` x its value at the lowest
    rate, or where the queue did not keep up with what was sent (`verdicts.kept_up`: the backlog grew), and
    every higher rate does too (`verdicts.knee_index`); None if there is no such rate."""
    order = np.argsort(rates)
    rates_a = np.asarray(rates, dtype="float64")[order]
    p95_a = np.asarray(p95_ms, dtype="float64")[order]
    thr_a = np.asarray(throughput_per_s, dtype="float64")[order]
    sent_a = np.asarray(sent_per_s if sent_per_s is not None else rates, dtype="float64")[order]
    sent_a = np.where(np.isnan(sent_a), rates_a, sent_a)
    base = p95_a[0]
    # A missing throughput proves no backlog: only two figures present can fail the sustained rule.
    bent = [latency_grew(p95, base) or bool(math.isfinite(thr) and math.isfinite(sent) and not kept_up(thr, sent))
            for p95, thr, sent in zip(p95_a, thr_a, sent_a, strict=True)]
    at = knee_index(bent)
    return None if at is None else float(rates_a[at])


def latency_vs_rate(results: Results, out_dir: Path) -> Chart:
    """End-to-end p50/p95/p99 against offered rate for each configuration measured at several rates."""
    name, title = "latency_vs_rate", "Latency against offered rate (knee marked)"
    runs = results.usable[results.usable["mode"] == "load"]
    metrics = ("e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99", "throughput_per_s", "achieved_rate_per_s")
    cells = over_repeats(runs, metrics) if len(runs) else pd.DataFrame()
    if cells.empty:
        return _skipped(name, title, "no usable load-mode runs")
    cells["curve"] = row_key(cells, [k for k in (*SYSTEM_KEYS, *WORKLOAD_KEYS) if k != "rate"])
    curves = [c for c, g in cells.groupby("curve", sort=False) if g["rate"].nunique() >= MIN_RATES]
    if not curves:
        return _skipped(name, title, f"no configuration was measured at {MIN_RATES} or more offered rates "
                                     "with everything else equal")
    drawn = cells[cells["curve"].isin(curves)].copy()
    drawn["curve_label"] = labels(drawn, [k for k in (*SYSTEM_KEYS, *WORKLOAD_KEYS) if k != "rate"])
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    knees: dict[str, float | None] = {}
    for i, (label, curve) in enumerate(drawn.groupby("curve_label", sort=True)):
        curve = curve.sort_values("rate")
        colour = _colour(curve["backend"].iloc[0], i) if drawn["backend"].nunique() > 1 else f"C{i}"
        for metric, style in (("e2e_ms_p50", ":"), ("e2e_ms_p95", "-"), ("e2e_ms_p99", "--")):
            ax_lat.errorbar(curve["rate"], curve[metric], yerr=_errors(curve, metric), color=colour, linestyle=style,
                            marker="o", capsize=2, label=f"{label} {metric.rsplit('_', 1)[1]}")
        ax_thr.errorbar(curve["rate"], curve["throughput_per_s"], yerr=_errors(curve, "throughput_per_s"),
                        color=colour, marker="o", capsize=2, label=label)
        found = knee(curve["rate"], curve["e2e_ms_p95"], curve["throughput_per_s"], curve["achieved_rate_per_s"])
        knees[label] = found
        if found is not None:
            for ax in (ax_lat, ax_thr):
                ax.axvline(found, color=colour, linestyle="-.", linewidth=1)
            # Label the knee at the curve's highest p95; a curve without one bounded by its samples is
            # labelled on the throughput panel instead.
            top_p95 = curve["e2e_ms_p95"].max()
            ax, y = (ax_lat, top_p95) if np.isfinite(top_p95) else (ax_thr, curve["throughput_per_s"].max())
            ax.annotate(f"knee {found:g}/s", (found, y), color=colour, fontsize=7, xytext=(4, 0),
                        textcoords="offset points")
    top = float(drawn["rate"].max())
    ax_thr.plot([0, top], [0, top], color="#999999", linewidth=0.8, label="throughput = offered")
    ax_lat.set_yscale("log")
    _note_too_few(ax_lat, drawn, ("e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99"))
    ax_lat.set_title("end-to-end latency: p50 dotted, p95 solid, p99 dashed")
    ax_lat.set_ylabel("ms")
    ax_thr.set_title("throughput against offered rate (below the diagonal: backlog grows)")
    ax_thr.set_ylabel("tasks/s")
    for ax in (ax_lat, ax_thr):
        ax.set_xlabel("offered rate (tasks/s)")
        ax.legend(fontsize=6)
    run_ids = _run_ids(drawn)
    text = (caption(results, run_ids) + f" · knee: p95 > {KNEE_LATENCY_GROWTH:g}x its lowest-rate value or throughput "
            f"< {SUSTAINED_RATIO:.0%} of the achieved send rate, from there up")
    files = _save(fig, out_dir, name, text)
    drawn["knee_rate_per_s"] = drawn["curve_label"].map(knees)
    return Chart(name, title, files, _rate_sentences(drawn, knees), run_ids, caption=text,
                 data=drawn.drop(columns=["curve"]))


def _rate_sentences(drawn: pd.DataFrame, knees: dict[str, float | None]) -> list[str]:
    # Describe a curve with a knee when there is one: that is what the chart is for.
    label = next((k for k in sorted(knees) if knees[k] is not None), sorted(knees)[0])
    curve = drawn[drawn["curve_label"] == label].sort_values("rate")
    low, high = curve.iloc[0], curve.iloc[-1]
    found = knees[label]
    if found is None:
        first = (f"For {label}, no knee up to the highest rate measured ({high['rate']:g}/s): p95 at "
                 f"{low['rate']:g}/s: {repeats_text(low, 'e2e_ms_p95', 'ms')}, at {high['rate']:g}/s: "
                 f"{repeats_text(high, 'e2e_ms_p95', 'ms')}.")
    else:
        at = curve[curve["rate"] == found].iloc[0]
        first = (f"For {label}, the knee is at {found:g}/s, where p95 reaches {repeats_text(at, 'e2e_ms_p95', 'ms')} "
                 f"and {repeats_text(at, 'throughput_per_s', '/s')} were done of {at['rate']:g}/s offered; p95 at "
                 f"{low['rate']:g}/s: {repeats_text(low, 'e2e_ms_p95', 'ms')}.")
    others = [f"{other} at {knees[other]:g}/s" if knees[other] is not None else f"none for {other}"
              for other in sorted(knees) if other != label]
    # Growth is measured from the lowest rate's p95: where its tasks could not bound it, only saturation
    # could show a knee, and the sentence says so rather than let "none" read as "flat".
    lowest = drawn.sort_values("rate").groupby("curve_label", sort=True).head(1)
    untested = sorted(lowest.loc[lowest["e2e_ms_p95"].isna(), "curve_label"])
    second = (f"At {high['rate']:g}/s offered it completes {repeats_text(high, 'throughput_per_s', '/s')}, p99: "
              f"{repeats_text(high, 'e2e_ms_p99', 'ms')}")
    second += f"; other knees: {', '.join(others)}" if others else ""
    if untested:
        second += (f"; p95 growth not tested for {', '.join(untested)} (the lowest rate's p95 rests on too few "
                   f"tasks; n ≥ {min_samples(0.95)} needed), only saturation")
    return [first, second + "."]

# --- latency decomposition ----------------------------------------------------------------------------


def latency_decomposition(results: Results, out_dir: Path) -> Chart:
    """Mean HTTP enqueue, queue wait and service time per configuration, as stacked bars."""
    name, title = "latency_decomposition", "Latency decomposition: HTTP enqueue, queue wait, service (means)"
    runs = results.usable[results.usable["mode"] == "load"]
    needed = [m for m, _, _ in LATENCY_PARTS]
    if runs.empty or not set(needed) <= set(runs.columns) or runs[needed].isna().all().all():
        return _skipped(name, title, "no usable load-mode run with HTTP enqueue, queue wait and service latencies")
    cells = over_repeats(runs, (*needed, "e2e_ms_mean"))
    cells["cell_label"] = labels(cells)
    cells = cells.sort_values("cell_label", ascending=False).reset_index(drop=True)
    fig, (ax, ax_share) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.32 * len(cells)), sharey=True,
                                       layout="constrained", gridspec_kw={"width_ratios": [3, 2]})
    left = np.zeros(len(cells))
    total = cells[[m for m, _, _ in LATENCY_PARTS]].fillna(0).sum(axis=1).to_numpy(dtype="float64")
    share_left = np.zeros(len(cells))
    for metric, label, colour in LATENCY_PARTS:
        values = cells[metric].fillna(0).to_numpy(dtype="float64")
        ax.barh(cells["cell_label"], values, left=left, color=colour, label=label)
        shares = np.divide(100 * values, total, out=np.zeros_like(values), where=total > 0)
        ax_share.barh(cells["cell_label"], shares, left=share_left, color=colour)
        left += values
        share_left += shares
    ax.scatter(cells["e2e_ms_mean"], cells["cell_label"], marker="D", color="black", s=14, zorder=3,
               label="end to end (mean)")
    ax.set_xlabel("ms (mean per task)")
    ax.set_title("mean latency by part (linear scale)")
    ax_share.set_xlabel("% of the parts' sum")
    ax_share.set_xlim(0, 100)
    ax_share.set_title("share of each part")
    ax.legend(fontsize=7, loc="lower right")
    run_ids = _run_ids(cells)
    text = (caption(results, run_ids) + " · means (percentiles do not add up); end to end also includes "
            "the generator's schedule lag")
    files = _save(fig, out_dir, name, text)
    return Chart(name, title, files, _decomposition_sentences(cells), run_ids, caption=text, data=cells)


def _decomposition_sentences(cells: pd.DataFrame) -> list[str]:
    parts = {m: label for m, label, _ in LATENCY_PARTS}
    dominant = cells[list(parts)].fillna(0).idxmax(axis=1)
    counts = dominant.map(parts).value_counts()
    records = cells.to_dict("records")
    pick = pick_cells(records, "e2e_ms_mean", "cell_label")
    worst = cells.loc[cells["e2e_ms_mean"].idxmax()]
    worst_part = dominant.loc[cells["e2e_ms_mean"].idxmax()]
    first = (f"{counts.index[0].capitalize()} is the largest part for {counts.iloc[0]} of {len(cells)} "
             f"configurations; in the slowest, {worst['cell_label']}, {parts[worst_part]} is "
             f"{repeats_text(worst, worst_part, 'ms')} of {repeats_text(worst, 'e2e_ms_mean', 'ms')} mean end to end.")
    best = next(r for r in records if r["cell_label"] == pick.leader) if pick.leader else \
        cells.loc[cells["e2e_ms_mean"].idxmin()]
    lead = leader_phrase(pick)
    second = (f"The fastest, {best['cell_label']}, takes {repeats_text(best, 'e2e_ms_mean', 'ms')} mean end to end, of "
              f"which {repeats_text(best, 'service_ms_mean', 'ms')} is service" + (f" ({lead})" if lead else ""))
    enqueue = cells.dropna(subset=["http_enqueue_ms_mean"])
    if len(enqueue):
        cheap = enqueue.loc[enqueue["http_enqueue_ms_mean"].idxmin()]
        dear = enqueue.loc[enqueue["http_enqueue_ms_mean"].idxmax()]
        second += (f"; HTTP enqueue costs {repeats_text(cheap, 'http_enqueue_ms_mean', 'ms')} to "
                   f"{repeats_text(dear, 'http_enqueue_ms_mean', 'ms')} mean across configurations")
    return [first, second + "."]

# --- resource cost ------------------------------------------------------------------------------------


def resource_cost(results: Results, out_dir: Path) -> Chart:
    """CPU seconds per 1000 successful tasks, by component (broker, workers, API, Locust)."""
    name, title = "resource_cost", "Resource cost: CPU seconds per 1000 tasks by component"
    runs = results.usable.copy()
    columns = [f"{c}_cpu_s" for c in COMPONENTS if f"{c}_cpu_s" in runs.columns]
    if runs.empty or not columns:
        return _skipped(name, title, "no usable run recorded resources (resources.csv)")
    runs = runs[(runs["finished_ok"] > 0) & runs[columns].notna().any(axis=1)]
    if runs.empty:
        return _skipped(name, title, "no usable run recorded resources and finished a task")
    per_1000 = []
    for column in columns:
        metric = column.replace("_cpu_s", "_cpu_s_per_1000")
        runs[metric] = 1000 * runs[column].astype("float64") / runs["finished_ok"].astype("float64")
        per_1000.append(metric)
    runs["total_cpu_s_per_1000"] = runs[per_1000].sum(axis=1, min_count=1)
    cells = over_repeats(runs, (*per_1000, "total_cpu_s_per_1000"))
    cells["cell_label"] = labels(cells)
    cells = cells.sort_values("cell_label", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * len(cells)), layout="constrained")
    left = np.zeros(len(cells))
    for metric in per_1000:
        component = metric.removesuffix("_cpu_s_per_1000")
        values = cells[metric].fillna(0).to_numpy(dtype="float64")
        ax.barh(cells["cell_label"], values, left=left, color=COMPONENT_COLOURS.get(component), label=component)
        left += values
    ax.set_xlabel("CPU seconds per 1000 successful tasks")
    ax.legend(fontsize=7, loc="lower right")
    run_ids = _run_ids(cells)
    text = (caption(results, run_ids) + " · CPU over the whole run (warm-up and drain included) / tasks that "
            "finished ok")
    files = _save(fig, out_dir, name, text)
    return Chart(name, title, files, _resource_sentences(cells, per_1000), run_ids, caption=text, data=cells)


def _resource_sentences(cells: pd.DataFrame, per_1000: list[str]) -> list[str]:
    records = cells.to_dict("records")
    pick = pick_cells(records, "total_cpu_s_per_1000", "cell_label")
    cheap = next(r for r in records if r["cell_label"] == pick.leader) if pick.leader else \
        cells.loc[cells["total_cpu_s_per_1000"].idxmin()]
    dear = cells.loc[cells["total_cpu_s_per_1000"].idxmax()]
    workers = "workers_cpu_s_per_1000"
    lead = leader_phrase(pick)
    first = (f"{cheap['cell_label']} is the cheapest: {repeats_text(cheap, 'total_cpu_s_per_1000')} CPU-s per 1000 "
             f"tasks in all" + (f", {num(cheap[workers])} of it in the workers" if workers in cheap else "")
             + (f"; {lead}." if lead else "."))
    shares = {m.removesuffix("_cpu_s_per_1000"): dear[m] for m in per_1000 if not is_missing(dear[m])}
    top = max(shares, key=lambda k: shares[k])
    second = (f"{dear['cell_label']} is the dearest: {repeats_text(dear, 'total_cpu_s_per_1000')} CPU-s per 1000 "
              f"tasks, {100 * shares[top] / dear['total_cpu_s_per_1000']:.0f} % of it in the {top}.")
    return [first, second]


# --- serializers where they differ --------------------------------------------------------------------

#: The serializer figures a drain of echo payloads records, as (column, panel title, unit).
SERIALIZER_FIGURES = (("broker_bytes_per_message", "bytes per message on the broker", "B"),
                      ("codec_us_per_message", "the library's encode + decode per message", "us"),
                      ("throughput_per_s", "drain throughput", "tasks/s"))
SERIALIZER_ORDER = ("json", "msgpack", "pickle")


def _serializer_sentence(group: str, size: float, in_group: pd.DataFrame, serializers: Sequence[str]) -> str | None:
    """Per figure, the best serializer by the winner rule, or that they are within noise (or not judged)."""
    parts = []
    for figure, panel, unit in SERIALIZER_FIGURES:
        if figure not in in_group.columns:
            continue
        candidates = {s: in_group.loc[in_group["serializer"] == s, figure].dropna().astype(float).tolist()
                      for s in serializers}
        candidates = {s: values for s, values in candidates.items() if values}
        if len(candidates) < 2:
            continue
        pick = pick_best(candidates, figure)
        if pick.winner:
            runner = pick.runner_up
            parts.append(f"{panel}: {pick.winner} is best ({num(geometric_mean(candidates[pick.winner]), unit)}, "
                         f"{len(candidates[pick.winner])} repeats; {runner} {pick.others[runner].interval_text} of it)")
        elif pick.judged:
            parts.append(f"{panel}: no clear winner ({', '.join([str(pick.leader), *pick.within_noise])} "
                         "within noise of each other)")
        else:
            parts.append(f"{panel}: not judged ({pick.reason})")
    return f"{group}, {size:,.0f} B payload: " + "; ".join(parts) + "." if parts else None


def serializer_costs(results: Results, out_dir: Path) -> Chart:
    """Per backend and payload size, what each serializer costs where serializers really differ: bytes
    per message read from the broker, the library's own encode + decode time, and the drain throughput
    with serialization on its critical path (drain cells of echo payloads). The sentences say, per
    backend and figure, which serializer is best by the winner rule, or that they are within noise."""
    name = "serializer_costs"
    title = "Serializers where they differ: broker bytes, codec time and drain throughput by payload size"
    runs = results.usable
    if "broker_bytes_per_message" not in runs.columns or "payload_bytes" not in runs.columns:
        return _skipped(name, title, "no drain of echo payloads recorded serializer figures")
    runs = runs[(runs["mode"] == "drain") & runs["payload_bytes"].notna()].copy()
    if runs.empty:
        return _skipped(name, title, "no drain of echo payloads recorded serializer figures")
    runs = runs[runs.groupby(["backend", "broker", "payload_bytes"])["serializer"].transform("nunique") >= 2]
    if runs.empty:
        return _skipped(name, title, "no backend drained echo payloads with two or more serializers")
    runs["group"] = runs["backend"].astype(str) + " on " + runs["broker"].astype(str)
    sizes = sorted(runs["payload_bytes"].unique())
    groups = sorted(runs["group"].unique())
    seen = [s for s in SERIALIZER_ORDER if s in set(runs["serializer"])]
    fig, axes = plt.subplots(len(sizes), len(SERIALIZER_FIGURES), figsize=(12, 3.2 * len(sizes)),
                             squeeze=False, layout="constrained")
    width = 0.8 / max(1, len(seen))
    sentences: list[str] = []
    for row_axes, size in zip(axes, sizes, strict=True):
        at_size = runs[runs["payload_bytes"] == size]
        for ax, (figure, panel, unit) in zip(row_axes, SERIALIZER_FIGURES, strict=True):
            if figure not in at_size.columns:
                ax.set_axis_off()
                continue
            for j, serializer in enumerate(seen):
                values = [at_size.loc[(at_size["group"] == g) & (at_size["serializer"] == serializer), figure]
                          .dropna().astype(float) for g in groups]
                means = np.array([v.mean() if len(v) else np.nan for v in values])
                low = [m - v.min() if len(v) else 0.0 for m, v in zip(means, values, strict=True)]
                high = [v.max() - m if len(v) else 0.0 for m, v in zip(means, values, strict=True)]
                ax.bar(np.arange(len(groups)) + (j - (len(seen) - 1) / 2) * width, np.nan_to_num(means), width,
                       yerr=np.clip(np.nan_to_num(np.vstack([low, high])), 0, None), capsize=2, label=serializer,
                       color=("#1f77b4", "#ff7f0e", "#2ca02c")[j % 3])
            ax.set_xticks(np.arange(len(groups)), groups, rotation=20, ha="right")
            ax.set_title(f"{panel} ({size:,.0f} B payload)")
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
        row_axes[0].legend(fontsize=7)
        for group in groups:
            sentence = _serializer_sentence(group, size, at_size[at_size["group"] == group], seen)
            if sentence:
                sentences.append(sentence)
    run_ids = runs["run_id"].tolist()
    text = caption(results, run_ids) + " · bars: mean, whiskers: min-max over repeats"
    files = _save(fig, out_dir, name, text)
    return Chart(name, title, files, sentences, run_ids, caption=text, data=runs)


#: Every chart, in the order the report shows them.
CHARTS: tuple[Callable[[Results, Path], Chart], ...] = (worker_count, serializer_costs, serializers, routing,
                                                        latency_vs_rate,
                                                        latency_decomposition, resource_cost)


def draw_all(results: Results, out_dir: Path) -> list[Chart]:
    """Every chart family; skipped ones come back with a note."""
    return [chart(results, out_dir) for chart in CHARTS]
