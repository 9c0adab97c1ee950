"""``report.md`` and a self-contained ``report.html`` from a results directory (``queuebench report``).

The report is a pure function of the stored runs: every number in it is read from a ``run.json`` or
recomputed from a run's raw rows. It never writes into a run directory. Its parts:

1. a headline table: per workload (what was sent), the best configuration for that question, named only
   when the winner rule (`verdicts.pick_best`) says it beats every other one, else ``no clear winner``
   with the configurations within noise of the leader; every figure with its sample size, and
   warnings about the numbers beside them;
2. warnings: runs left out (failed, error, skipped, interrupted), generator-limited runs and unstable
   cells (coefficient of variation over repeats above `CV_LIMIT`);
3. one section per chart (`charts.CHARTS`), each with two sentences computed from its data, or a note
   saying why it was not drawn;
4. "Capacity notes" (`notes.capacity_notes` of the results) and the stored step searches;
5. methodology and caveats, from the runs' own metadata (slots, prefetch, acks, retries, results,
   windows, versions), and the quantile and winner rules stated once.

The report is kept as a list of blocks rendered twice: to Markdown (figures referenced beside it) and to
HTML through a Jinja2 template (``templates/report.html.j2``, autoescaped; figures embedded as ``data:``
URIs, so the page opens anywhere, and also linked as SVG files).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from benchmarks import measure, store, verdicts
from benchmarks.analysis import charts, faults, tuning, uncertainty
from benchmarks.analysis.load import (
    FLOORS,
    WORKLOAD_KEYS,
    Results,
    ResultsError,
    count_column,
    is_missing,
    labels,
    over_repeats,
    percentile_of,
    row_key,
    search_table,
)
from benchmarks.analysis.notes import capacity_notes
from benchmarks.verdicts import KNEE_LATENCY_GROWTH, SUSTAINED_RATIO

#: A cell is unstable when the coefficient of variation of a headline figure over its repeats exceeds this.
CV_LIMIT = 0.10
#: Figures whose stability over repeats is checked: (column, readable name, unit).
STABILITY_METRICS = (("throughput_per_s", "throughput", "/s"), ("e2e_ms_p95", "end-to-end p95", "ms"))
#: Figures recomputed from raw rows whose stability is checked too.
EXTRA_STABILITY_METRICS = (("short_e2e_ms_p95", "short-task end-to-end p95", "ms"),)
#: Which figures each chart shows, so only instability in those is warned about beside it.
CHART_METRICS: dict[str, tuple[str, ...]] = {
    "worker_count": ("throughput_per_s",), "serializer_costs": ("throughput_per_s",),
    "serializers": ("throughput_per_s", "e2e_ms_p95"),
    "routing": ("short_e2e_ms_p95",), "latency_vs_rate": ("throughput_per_s", "e2e_ms_p95"),
    "latency_decomposition": (), "resource_cost": (),
}
#: Settings (from each backend's describe()) shown in the methodology: keys containing one of these.
SETTING_WORDS = ("prefetch", "acks", "retr", "result", "worker_command", "worker_class", "pool", "time_limit",
                 "timeout", "ttl", "concurrency", "serializer")
WARNING_MARK = "⚠"


# --- blocks -------------------------------------------------------------------------------------------


@dataclass
class Block:
    """One piece of the report: a heading, a paragraph, a list, a table or a figure."""

    kind: str  # "h1", "h2", "h3", "p", "ul", "table", "figure", "warn"
    text: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    image: Path | None = None
    alt: str = ""
    also: list[Path] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block], out_dir: Path) -> str:
    """The blocks as Markdown; figures referenced relative to `out_dir`."""
    lines: list[str] = []
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(block.kind[1]) + " " + block.text, ""]
        elif block.kind == "p":
            lines += [block.text, ""]
        elif block.kind == "warn":
            lines += [f"> {WARNING_MARK} {block.text}", ""]
        elif block.kind == "ul":
            lines += [f"- {item}" for item in block.items] + [""]
        elif block.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in block.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif block.kind == "figure" and block.image is not None:
            rel = block.image.relative_to(out_dir).as_posix()
            also = " · ".join(f"[{p.suffix[1:].upper()}]({p.relative_to(out_dir).as_posix()})" for p in block.also)
            lines += [f"![{block.alt}]({rel})", ""]
            lines += [f"*{block.text}*" + (f" ({also})" if also else ""), ""]
    return "\n".join(lines).rstrip() + "\n"


#: The HTML page's template (Jinja2, autoescaped): the blocks in order, figures embedded.
HTML_TEMPLATE = "report.html.j2"
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("benchmarks.analysis", "templates"),
                                autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


@dataclass(frozen=True)
class HtmlBlock:
    """One block as the template shows it: the block, plus what HTML needs beyond the Markdown (a heading's
    anchor, a figure's PNG as base64 and its other files as relative links)."""

    block: Block
    anchor: str = ""
    png_base64: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (href, label)


def _html_block(block: Block, out_dir: Path) -> HtmlBlock | None:
    """The block ready for the template; None for a figure without an image (nothing to show)."""
    if block.kind in ("h1", "h2", "h3"):
        return HtmlBlock(block, anchor="".join(c if c.isalnum() else "-" for c in block.text.lower()).strip("-"))
    if block.kind == "figure":
        if block.image is None:
            return None
        return HtmlBlock(block, png_base64=base64.b64encode(block.image.read_bytes()).decode("ascii"),
                         links=[(p.relative_to(out_dir).as_posix(), p.suffix[1:].upper()) for p in block.also])
    return HtmlBlock(block)


def render_html(blocks: Sequence[Block], out_dir: Path, title: str) -> str:
    """The blocks as one HTML page (`HTML_TEMPLATE`): figures embedded as PNG data URIs, SVGs linked
    relatively."""
    views = [view for view in (_html_block(block, out_dir) for block in blocks) if view is not None]
    return _TEMPLATES.get_template(HTML_TEMPLATE).render(title=title, views=views, warning_mark=WARNING_MARK)


def _text_blocks(text: str) -> list[Block]:
    """Plain text (paragraphs separated by blank lines, ``- `` list items) as blocks."""
    blocks: list[Block] = []
    for chunk in text.strip().split("\n\n"):
        lines = [line.rstrip() for line in chunk.splitlines() if line.strip()]
        if lines and all(line.lstrip().startswith(("- ", "* ")) for line in lines):
            blocks.append(Block("ul", items=[line.lstrip()[2:] for line in lines]))
        elif lines:
            blocks.append(Block("p", " ".join(lines)))
    return blocks


# --- warnings -----------------------------------------------------------------------------------------


def run_warnings(results: Results) -> dict[str, list[str]]:
    """run_id -> what makes its numbers doubtful: generator-limited, a check that did not hold, or a status
    that keeps it out of the figures."""
    out: dict[str, list[str]] = {}
    for run in results.runs.itertuples(index=False):
        if run.fault_run:  # reported, with its status, under "When things fail"
            continue
        notes = []
        record = results.records[run.run_id]
        checks = (record.get("summary") or {}).get("checks") or {}
        if run.status == "generator-limited":
            # Said again from the run's figures rather than the check's stored sentence, so the schedule
            # lag's percentile carries its sample size like every other percentile here.
            row = run._asdict()
            detail = (f"achieved {uncertainty.num(row.get('achieved_rate_per_s'), '/s')} of "
                      f"{uncertainty.num(row.get('offered_rate_per_s'), '/s')} offered, needs ≥ "
                      f"{measure.ACHIEVED_MIN_RATIO:.0%} of it; schedule lag p99 "
                      f"{uncertainty.column_text(row, 'schedule_lag_ms_p99')}, limit {measure.LAG_P99_LIMIT_MS:g} ms")
            notes.append(f"generator-limited: the load generator fell short, so these figures are not the "
                         f"queue's limit ({detail})")
        elif not run.usable:
            notes.append(f"{run.status}" + (f": {run.detail}" if run.detail else "") + "; left out of the figures")
        for name, check in checks.items():
            if not check.get("ok") and name != "generator_kept_up":
                notes.append(f"self-check {name} failed: {check.get('detail', '')}")
        if notes:
            out[run.run_id] = notes
    return out


def unstable_cells(results: Results, extra: pd.DataFrame | None = None) -> dict[str, dict[str, str]]:
    """cell_id -> {metric: note} for figures whose coefficient of variation over repeats exceeds `CV_LIMIT`.

    `extra`: per-run figures computed from raw rows (e.g. `charts.routing_figures`), checked too.
    """
    metrics = list(STABILITY_METRICS)
    runs = results.usable
    if extra is not None and len(extra):
        added = [m for m, _, _ in EXTRA_STABILITY_METRICS if m in extra.columns]
        counts = [c for c in (count_column(m) for m in added) if c in extra.columns]
        runs = runs.merge(extra[["run_id", *added, *counts]], on="run_id", how="left")
        metrics += [m for m in EXTRA_STABILITY_METRICS if m[0] in added]
    cells = over_repeats(runs, [m for m, _, _ in metrics])
    out: dict[str, dict[str, str]] = {}
    for _, cell in cells.iterrows():
        for metric, name, unit in metrics:
            cv = cell.get(f"{metric}_cv")
            if not is_missing(cv) and cv > CV_LIMIT:
                tasks = ""
                if not is_missing(cell.get(f"{metric}_tasks")):
                    low, high = int(cell[f"{metric}_tasks"]), int(cell[f"{metric}_tasks_max"])
                    tasks = f", n={low} tasks each" if low == high else f", n={low} to {high} tasks each"
                out.setdefault(cell["cell_id"], {})[metric] = (
                    f"unstable {name}: CV {100 * cv:.0f} % over {int(cell[f'{metric}_n'])} repeats "
                    f"({uncertainty.num(cell[f'{metric}_min'], unit)} to {uncertainty.num(cell[f'{metric}_max'], unit)}"
                    f"{tasks})")
    return out


def warnings_for(results: Results, run_ids: Iterable[str], per_run: Mapping[str, list[str]],
                 per_cell: Mapping[str, Mapping[str, str]], metrics: Iterable[str] | None = None) -> list[str]:
    """The warnings that touch these runs: each run's own, and its cell's instability in `metrics` (None: any)."""
    run_ids = [r for r in run_ids if r]
    items = [f"{run_id}: {note}" for run_id in run_ids for note in per_run.get(run_id, [])]
    cell_ids = list(dict.fromkeys(results.runs.set_index("run_id").loc[run_ids, "cell_id"])) if run_ids else []
    wanted = None if metrics is None else set(metrics)
    items += [f"cell {cell}: {note}" for cell in cell_ids for metric, note in per_cell.get(cell, {}).items()
              if wanted is None or metric in wanted]
    return items


# --- headline -----------------------------------------------------------------------------------------


#: The headline's questions, in the order it shows them.
QUESTIONS = ("Throughput", "Latency", "Serializer", "Routing")


def _question(row: pd.Series) -> tuple[str, str, str, str]:
    """(question, metric column, metric name, unit) for one workload; which way is better is the
    metric's own (`verdicts.higher_is_better`)."""
    if row.get("mode") == "drain" or row.get("scenario") == "throughput":
        return "Throughput", "throughput_per_s", "throughput (tasks/s)", "/s"
    if row.get("scenario") == "routing_mix":
        return "Routing", "short_e2e_ms_p95", "short-task end-to-end p95 (ms)", "ms"
    if row.get("scenario") == "payload":
        return "Serializer", "e2e_ms_p95", "end-to-end p95 (ms)", "ms"
    return "Latency", "e2e_ms_p95", "end-to-end p95 (ms)", "ms"


#: Headline metrics recomputed from a subset of a run's raw rows: (percentile column over those rows, the
#: routing frame's column naming the kind whose rows they are).
RAW_ROWS_OF = {"short_e2e_ms_p95": ("e2e_ms_p95", "short_digest")}


def _figure_text(results: Results, cell: Mapping[str, Any], metric: str, unit: str) -> str:
    """The headline's figure for one configuration: over repeats, the geometric mean (the centre the winner
    rule compares) with the spread and the tasks each repeat's percentile rests on; from a single run, a
    percentile with its distribution-free interval from the raw rows."""
    values = uncertainty.values_of(cell, metric)
    shown = dict(cell) | {metric: verdicts.geometric_mean(values) if values else cell.get(metric)}
    found = percentile_of(metric)
    if found is None or len(values) != 1 or int(cell.get("repeats", 1)) != 1:
        return uncertainty.repeats_text(shown, metric, unit, centre="geometric mean")
    run_id = str(cell["run_ids"]).split(",")[0]
    column, digest_column = RAW_ROWS_OF.get(metric, (metric, None))
    digests = [cell[digest_column]] if digest_column and not is_missing(cell.get(digest_column)) else None
    low, high, n = results.quantile_interval(run_id, column, digests)
    return uncertainty.quantile_text(values[0], n, found[1], unit, (low, high)) + " · 1 run"


def headline(results: Results, per_run: Mapping[str, list[str]], per_cell: Mapping[str, Mapping[str, str]],
             routing_runs: pd.DataFrame | None = None) -> tuple[list[str], list[list[str]]]:
    """Per workload, the best configuration for its question, named only when the winner rule
    (`verdicts.pick_best`) says it beats every other; else ``no clear winner`` and the configurations the
    rule cannot tell from the leader, each with its ratio to the leader and that ratio's interval.

    The floor backends (`FLOORS`) are not candidates when a library was measured: their figure is shown
    beside as the reference. A configuration whose percentile rests on too few samples is not ranked.
    """
    runs = results.usable.copy()
    if runs.empty:
        return [], []
    if routing_runs is not None and len(routing_runs):
        runs = runs.merge(routing_runs[["run_id", "short_e2e_ms_p95", "short_e2e_ms_count", "short_digest"]],
                          on="run_id", how="left")
    runs["workload"] = runs.apply(charts.workload_title, axis=1)
    runs["workload_key"] = row_key(runs, [k for k in WORKLOAD_KEYS if k in runs.columns])
    header = ["Question", "Workload", "Best configuration", "Figure", "Best (or leading) configuration's figure",
              "Runner-up against the leader", "Within noise of the leader", "Floor (baseline)",
              "Tasks per CPU-s", "Notes"]
    rows = []

    def order(item: tuple[Any, pd.DataFrame]) -> tuple[Any, ...]:
        first = item[1].iloc[0]
        size = first.get("rate") if first.get("mode") == "load" else first.get("tasks")
        return (QUESTIONS.index(_question(first)[0]), str(first.get("mode")), str(first.get("scenario")),
                str(first.get("task")), str(first.get("args")), float(size) if not is_missing(size) else 0.0, item[0])

    for _, family in sorted(runs.groupby("workload_key", sort=True), key=order):
        question, metric, metric_name, unit = _question(family.iloc[0])
        counts = count_column(metric)
        if metric not in family.columns or (counts is not None and
                                            (counts not in family.columns or family[counts].isna().all())):
            continue  # this figure was never computed for these runs (routing runs without task kinds)
        cells = over_repeats(family, [metric, "tasks_per_cpu_s"]).copy()
        cells["config"] = labels(cells)
        floors = cells[cells["backend"].isin(FLOORS)]
        candidates = cells[~cells["backend"].isin(FLOORS)]
        if candidates.empty:
            candidates, floors = cells, cells.iloc[0:0]
        by_config = {str(c["config"]): c for c in candidates.to_dict("records")}
        pick = verdicts.pick_best({label: uncertainty.values_of(c, metric) for label, c in by_config.items()}, metric)
        unranked = [f"{label}: {uncertainty.repeats_text(c, metric, unit)}" for label, c in by_config.items()
                    if not uncertainty.values_of(c, metric)]
        figure = f"{metric_name}, {verdicts.direction_text(metric)}"
        notes: list[str] = []
        if unranked:
            notes.append("not ranked: " + "; ".join(unranked))
        if pick.leader is None:
            need = ""
            found = percentile_of(metric)
            if found is not None:
                need = f" ({metric_name.removesuffix(' (ms)')} needs n ≥ {verdicts.min_samples(found[1])})"
            rows.append([question, family["workload"].iloc[0], "no clear winner: no configuration has a figure the "
                         f"data bounds{need}", figure, "-", "-", "-", _floor_text(results, floors, metric, unit),
                         "-", " ".join(f"{WARNING_MARK} {note}" for note in notes) or "-"])
            continue
        leader = by_config[pick.leader]
        leader_text = f"{pick.leader}: {_figure_text(results, leader, metric, unit)}"
        if pick.winner is not None:
            runner = pick.others[pick.runner_up]
            best = (f"{pick.winner}: beats every other configuration; runner-up {pick.runner_up} at "
                    f"{runner.interval_text} of it (p={runner.p_value:.2g})")
        elif not pick.others:
            best = f"no clear winner: only {pick.leader} measured"
        elif not pick.judged:
            best = f"no clear winner ({pick.reason})"
        else:
            best = "no clear winner"
        runner_up = "-"
        if pick.runner_up is not None:
            diff = pick.others[pick.runner_up]
            # With too few repeats the Best column already says why nothing is judged: the ratio suffices.
            judged = diff.text if diff.judged else diff.interval_text
            runner_up = (f"{pick.runner_up}: {_figure_text(results, by_config[pick.runner_up], metric, unit)}; "
                         f"runner-up / leader {judged}")
        within = "-"
        if pick.winner is None and pick.others:
            single = not pick.judged
            close = list(pick.others) if single else pick.within_noise
            within = ("not judged, every configuration: " if single else "") + "; ".join(
                [f"{pick.leader} (leader)"] + [f"{label} {pick.others[label].interval_text}" for label in close])
        notes += warnings_for(results, str(leader["run_ids"]).split(","), per_run, per_cell, (metric,))
        rows.append([question, family["workload"].iloc[0], best, figure, leader_text, runner_up, within,
                     _floor_text(results, floors, metric, unit),
                     uncertainty.repeats_text(leader, "tasks_per_cpu_s"),
                     " ".join(f"{WARNING_MARK} {note}" for note in notes) or "-"])
    return header, rows


def _floor_text(results: Results, floors: pd.DataFrame, metric: str, unit: str) -> str:
    if floors.empty:
        return "-"
    floor = floors.iloc[0].to_dict()
    return f"{floor['config']}: {_figure_text(results, floor, metric, unit)}"


# --- methodology --------------------------------------------------------------------------------------


def _values(series: pd.Series, unit: str = "") -> str:
    values = sorted({v for v in series if not is_missing(v)}, key=lambda v: (str(type(v)), v))
    return ", ".join(f"{v:g}{unit}" if isinstance(v, float | int) and not isinstance(v, bool) else f"{v}{unit}"
                     for v in values) or "-"


def _setting_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = re.sub(r"\b[a-z]+://\S+?(?=[,\s]|$)", "<url>", text)  # per-run ports: not a setting
    return text if len(text) <= 200 else text[:197] + "..."


def quantile_rule_text() -> str:
    """The quantile rule as the methodology states it, with the smallest sample for each percentile."""
    smallest = ", ".join(f"{verdicts.min_samples(q)} for {name}" for name, q in verdicts.SLO_QUANTILES.items())
    return (f"The quantile rule: a percentile is shown as a number only when its tasks bound it, i.e. its "
            f"{verdicts.CONFIDENCE_TEXT} distribution-free interval (scipy.stats.quantile_test: two order "
            "statistics with binomial ranks, nothing assumed about the distribution) has both ends inside the "
            f"sample; otherwise it reads `{verdicts.too_few_samples(3)}` and is not ranked, judged or drawn. "
            f"Smallest n: {smallest}. Every percentile states its n (tasks in the window with that figure); a "
            "single run's percentile in the headline has that interval beside it. Intervals of quantiles are "
            "not bootstrapped: resampling a small sample never goes past its largest value, so a bootstrap "
            "interval of p95 or p99 looks narrow exactly when the sample is too small.")


def winner_rule_text() -> str:
    """The winner rule as the methodology states it."""
    return (f"The winner rule: configuration A beats B on a figure when both have at least "
            f"{verdicts.MIN_REPEATS} repeats, Welch's t-test on the logs of the per-repeat figures gives "
            f"p < {verdicts.ALPHA:g}, and the ratio of geometric means differs from 1 by more than "
            f"{verdicts.NOISE_FLOOR:.0%} (the run-to-run noise floor on this kind of machine); the ratio's "
            f"{verdicts.CONFIDENCE_TEXT} interval comes from the same t distribution on logs. Throughput and tasks "
            "per CPU-second are better higher, latencies and CPU costs lower. With fewer repeats nothing is "
            f"called (\"{verdicts.SINGLE_RUNS}\"). The headline, the chart sentences and `queuebench compare` "
            "(where both sides have the repeats) all use it.")


def methodology(results: Results) -> list[Block]:
    """Methodology and caveats, from the runs' own metadata."""
    runs, usable = results.runs, results.usable
    blocks = [Block("h2", "Methodology and caveats")]
    statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().sort_index().items())
    repeats = usable.groupby("cell").size() if len(usable) else pd.Series(dtype="int64")
    commits = sorted({f"{c[:10]}{' (dirty)' if d else ''}" for c, d in zip(runs["git_commit"], runs["git_dirty"],
                                                                          strict=True) if not is_missing(c)})
    started = runs["started_at"].dropna()
    items = [
        f"Runs: {len(runs)} ({statuses}) in {runs['cell'].nunique()} cells from matrix "
        f"{_values(runs['matrix'])}; result schema version {results.schema_version}; harness "
        f"{_values(runs['harness_version'])}; git {', '.join(commits) or 'unknown'}.",
        f"Started between {started.min() if len(started) else '?'} and {started.max() if len(started) else '?'}.",
        f"Machine: {_values(runs['host'])}; {_values(runs['cpu_model'])}, {_values(runs['cpu_count_logical'])} "
        f"logical cores; Python {_values(runs['python'])}.",
    ]
    if len(repeats):
        items.append(f"Repeats per cell (usable runs): {int(repeats.min())} to {int(repeats.max())}; the spread shown "
                     f"is min to max over repeats; a cell is flagged unstable when the coefficient of variation of "
                     f"its throughput or end-to-end p95 exceeds {CV_LIMIT:.0%}.")
    slots = runs.dropna(subset=["processes"]).apply(
        lambda r: f"{int(r['processes'])} x {int(r.get('threads') or 1)} = {int(r['slots'])}", axis=1)
    items.append(f"Slots (processes x threads = slots): {_values(slots)}. Every throughput is shown with its slots "
                 "and the Little's-law bound slots / mean service time.")
    load = runs[runs["mode"] == "load"]
    if len(load):
        items.append(f"Load mode: open-loop arrivals ({_values(load['arrival'])}) at {_values(load['rate'], '/s')} "
                     f"offered; warm-up {_values(load['warmup_s'], ' s')} discarded, measured window "
                     f"{_values(load['duration_s'], ' s')}; API under gunicorn with {_values(load['api_workers'])} "
                     f"workers x {_values(load['api_threads'])} threads.")
    drain = runs[runs["mode"] == "drain"]
    if len(drain):
        items.append(f"Drain mode: {_values(drain['tasks'])} tasks preloaded, then the workers started; the window "
                     "runs from the first execution's start to the last success.")
    items.append(f"Task results kept: {_values(runs['results'])}; prefetch set by the matrix: "
                 f"{_values(runs['prefetch']) if 'prefetch' in runs else '-'} (else the library default, below); "
                 f"acks late: {_values(runs['acks_late']) if 'acks_late' in runs else '-'} (else the default).")
    blocks.append(Block("ul", items=items))

    packages = sorted(c for c in runs.columns if c.startswith("pkg."))
    version_rows = [[c.removeprefix("pkg."), _values(runs[c])] for c in packages if runs[c].notna().any()]
    brokers = runs.dropna(subset=["broker_kind"])
    version_rows += [[f"{kind} server", _values(group["broker_version"])]
                     for kind, group in brokers.groupby("broker_kind")]
    if version_rows:
        blocks += [Block("h3", "Versions"), Block("table", header=["component", "version(s)"], rows=version_rows)]

    setting_rows = []
    for backend in sorted(usable["backend"].dropna().unique()) if len(usable) else []:
        settings = [results.records[r].get("settings") or {} for r in usable.loc[usable["backend"] == backend, "run_id"]]
        keys = sorted({k for s in settings for k in s if any(w in k for w in SETTING_WORDS)})
        for key in keys:
            values = list(dict.fromkeys(_setting_text(s[key]) for s in settings if s.get(key) is not None))
            if not values:
                continue
            setting_rows.append([backend, key, values[0] if len(values) == 1 else "varies: " + " | ".join(values)])
    if setting_rows:
        blocks += [Block("h3", "Effective library settings"),
                   Block("p", "As each backend described itself in its runs (prefetch, acknowledgement, retries, "
                              "results, worker command)."),
                   Block("table", header=["backend", "setting", "value"], rows=setting_rows)]

    blocks += [Block("h3", "How the figures are computed"), Block("ul", items=[
        "Throughput: successful executions finished in the measured window / its length.",
        "Latencies are exact percentiles (numpy, linear interpolation) over the raw rows of the tasks scheduled in "
        "the window: HTTP enqueue (Locust's side), queue wait (first start - enqueued), service (finish - start of "
        "the successful attempt), end to end (finish - scheduled time, so a stalled generator cannot hide latency).",
        quantile_rule_text(),
        winner_rule_text(),
        f"A run is generator-limited when Locust sent under {measure.ACHIEVED_MIN_RATIO:.0%} of the offered rate "
        f"or its schedule lag p99 exceeded {measure.LAG_P99_LIMIT_MS:g} ms: its figures are true but not the "
        "queue's limit. Runs with another failed self-check are left out.",
        f"The knee of a latency curve is the lowest offered rate where p95 exceeds {KNEE_LATENCY_GROWTH:g}x its "
        f"value at the lowest rate, or where throughput falls under {SUSTAINED_RATIO:.0%} of the sent rate, "
        "and every higher rate measured does too (one noisy cell is not a knee).",
        "Short and long tasks of routing_mix, and payload sizes, are told apart by each row's argument digest.",
    ])]

    caveats = []
    hosts = runs["host"].dropna().unique()
    if len(hosts) == 1:
        caveats.append(f"Load generator, API, broker and workers share one machine ({hosts[0]}, "
                       f"{_values(runs['cpu_count_logical'])} logical cores): they compete for its CPU.")
    if len(load):
        caveats.append("In load mode throughput cannot exceed the offered rate: compare latency there, and "
                       "throughput in drain mode.")
    caveats.append("CPU seconds cover each component over the whole run (warm-up and drain included) and are "
                   "divided by every task that finished ok.")
    if len(repeats) and int(repeats.min()) < 2:
        caveats.append(f"{int((repeats < 2).sum())} cell(s) have a single usable run: no spread can be shown.")
    caveats.append("Numbers are specific to this machine, these versions and these settings.")
    blocks += [Block("h3", "Caveats"), Block("ul", items=caveats)]
    return blocks


# --- capacity notes -----------------------------------------------------------------------------------


def search_blocks(root: Path) -> list[Block]:
    """The step searches stored beside the runs (``queuebench search``): each knee with its evidence."""
    records = store.read_searches(root)
    if not records:
        return []
    table = search_table(records)
    rows = []
    for row in table.itertuples(index=False):
        knee = "-"
        if row.knee_rate_per_s is not None and not pd.isna(row.knee_rate_per_s):
            slo = verdicts.parse_slo(row.slo)
            latency = ("" if is_missing(row.knee_e2e_tasks) else
                       f"; {slo.name} {uncertainty.quantile_text(row.knee_e2e_ms, row.knee_e2e_tasks, slo.quantile)}")
            knee = f"{row.knee_rate_per_s:g} ({uncertainty.runs_text(row.knee_repeats)}{latency})"
        above = ("-" if row.first_unsustained_rate_per_s is None or pd.isna(row.first_unsustained_rate_per_s)
                 else f"{row.first_unsustained_rate_per_s:g}")
        stopped = row.stopped_because
        if row.schema_version == 1:
            stopped += " (search schema 1: its steps were judged before the quantile rule)"
        rows.append([row.backend, row.broker, str(row.slots), row.task, row.slo, knee, above,
                     ", ".join(row.evidence_run_ids) or "-", stopped])
    return [Block("h3", "Step searches"),
            Block("p", "Each configuration's offered rate was raised step by step (`queuebench search`), every "
                       "step a full, self-checked run; the knee is the highest rate below Little's bound whose "
                       f"every repeat finished at least {SUSTAINED_RATIO:.0%} of what it was sent within "
                       "the latency objective."),
            Block("table", header=["backend", "broker", "slots", "task", "SLO", "knee (tasks/s)",
                                   "first unsustained", "evidence (run ids)", "why the search stopped"],
                  rows=rows)]


# --- which knobs matter -------------------------------------------------------------------------------


def knob_blocks(results: Results, figures_dir: Path) -> list[Block]:
    """"Which knobs matter": per library, each knob's values against the defaults (ranked, with their
    intervals and a tornado chart), the tuned configuration against the defaults, the knobs whose best value
    for one workload worsens the other, and the libraries at defaults and tuned side by side. Computed from
    the stored runs only (`analysis.tuning`); absent when no tuning group has default runs and a knob value."""
    found = [g for g in tuning.groups(results) if g.values]
    if not found:
        return []
    blocks = [Block("h2", "Which knobs matter"),
                Block("p", "One knob at a time from each library's defaults, at equal slots (`queuebench tune`): "
                           "each value's figure against the defaults' as a ratio of geometric means over repeats, "
                           f"with its {verdicts.CONFIDENCE_TEXT} interval; " + tuning.winner_rule_sentence() + ". "
                           "Knobs are ranked by their largest effect, significant ones first. Tuned sets every "
                           "knob to its best significant value and is measured against the defaults again.")]
    flags = tuning.cross_flags(found)
    for backend in sorted({g.key["backend"] for g in found}):
        blocks.append(Block("h3", backend))
        for g in (g for g in found if g.key["backend"] == backend):
            ranking = g.ranking()
            mattering = [k for k in ranking if any(v.significant for v in g.values if v.knob == k)]
            best = tuning.best_values(g.values)
            said = "; ".join(f"{k} (best {tuning.settings_text({k: best[k].value})}: {best[k].diff.interval_text})"
                             if k in best else f"{k} (only worse values)" for k in mattering)
            blocks.append(Block("p", f"{g.label} — {g.workload.title}. Knobs that matter: "
                                     f"{said or 'none beyond noise'}."))
            rows = [tuning.value_row(v, g.workload) for k in ranking
                    for v in sorted((v for v in g.values if v.knob == k), key=lambda v: tuning.value_order(v.value))]
            blocks.append(Block("table", header=["knob", "value", f"{g.workload.figure}: value vs defaults",
                                                 "ratio to defaults", "repeats (value vs defaults)", "verdict"],
                                rows=rows))
            runs = [r for v in g.values for r in v.run_ids] + g.default_runs
            files = tuning.tornado(g, figures_dir, charts.caption(results, runs))
            png = next((f for f in files if f.suffix == ".png"), None)
            if png is not None:
                blocks.append(Block("figure", charts.caption(results, runs), image=png,
                                    alt=f"Which knobs matter: {g.label}", also=[f for f in files if f != png]))
            blocks.append(Block("p", tuning.tuned_sentence(g)))
        for flag in (f for f in flags if f["backend"] == backend):
            blocks.append(Block("warn", f"{WARNING_MARK} {flag['text']}"))
    header, rows = tuning.library_table(found)
    blocks += [Block("h3", "Libraries at their defaults and tuned"),
               Block("p", "Per workload and slot count, each library at its defaults and with every knob at its "
                          "best significant value, as measured (geometric means over repeats, n runs each)."),
               Block("table", header=header, rows=rows)]
    return blocks


# --- the report ---------------------------------------------------------------------------------------


@dataclass
class Report:
    """What `write_report` wrote."""

    out_dir: Path
    markdown: Path
    html: Path
    summary_csv: Path
    charts: list[charts.Chart]
    warnings: list[str]


def check_out_dir(results: Results, out_dir: Path) -> None:
    """Refuse to write into a run directory or over the results directory's own summary."""
    out = out_dir.resolve()
    root = results.root.resolve()
    if out == root:
        raise ResultsError(f"{out_dir}: that is the results directory itself (its summary.csv belongs to "
                           "`queuebench run`); choose another --out")
    for parent in (out, *out.parents):
        if store.is_run_dir(parent):
            raise ResultsError(f"{out_dir}: inside the run directory {parent}; reports never write into runs")


def build_blocks(results: Results, out_dir: Path) -> tuple[list[Block], list[charts.Chart], list[str]]:
    """Draw every chart into ``out_dir/figures`` and lay the report out as blocks."""
    figures_dir = out_dir / "figures"
    drawn = charts.draw_all(results, figures_dir)
    routing_runs = charts.routing_figures(results)
    per_run, per_cell = run_warnings(results), unstable_cells(results, routing_runs)

    runs = results.runs
    blocks = [Block("h1", f"queuebench report: {results.name}"),
              Block("p", f"{len(results.usable)} usable runs of {len(runs)} in {results.root}, "
                         f"{results.usable['cell'].nunique()} configurations. Every number below is read from the "
                         "runs' run.json files or recomputed from their raw rows (tasks.parquet, requests.parquet).")]

    header, rows = headline(results, per_run, per_cell, routing_runs)
    blocks.append(Block("h2", "Headline"))
    if rows:
        blocks += [Block("p", "Per workload, the best configuration for its question, named only when it beats "
                              "every other one by the winner rule (see Methodology: at least "
                              f"{verdicts.MIN_REPEATS} repeats each, Welch's t-test on logs, beyond the "
                              f"{verdicts.NOISE_FLOOR:.0%} noise floor); otherwise `no clear winner`, with the "
                              "configurations the rule cannot tell from the leader and their ratio to it. Figures "
                              "over repeats are geometric means with their spread; a single run's percentile has "
                              "its distribution-free interval; every percentile states the tasks it rests on "
                              "(n), and one its tasks cannot bound reads `too few samples`. Warnings about the "
                              "leader's numbers are in the last column."),
                   Block("table", header=header, rows=rows)]
    else:
        blocks.append(Block("warn", "No usable run: there is nothing to rank."))

    all_warnings = list(results.warnings)
    all_warnings += [f"{run_id}: {note}" for run_id, notes in per_run.items() for note in notes
                     if results.runs.set_index("run_id").loc[run_id, "usable"]]
    all_warnings += [f"cell {cell}: {note}" for cell, notes in per_cell.items() for note in notes.values()]
    blocks.append(Block("h2", "Warnings"))
    if all_warnings:
        blocks.append(Block("ul", items=[f"{WARNING_MARK} {w}" for w in all_warnings]))
    else:
        sizes = results.usable.groupby("cell").size()
        single = int((sizes == 1).sum())
        spread = (f"every cell's repeats agree within {CV_LIMIT:.0%}" if not single else
                  f"{single} of {len(sizes)} configurations ran once, so their spread is not measured "
                  "(`queuebench run ... --repeats 3` measures it)")
        blocks.append(Block("p", f"None: every run is ok; {spread}."))

    for chart in drawn:
        blocks.append(Block("h2", chart.title))
        if not chart.drawn:
            blocks.append(Block("p", f"Not drawn: {chart.note}."))
            continue
        blocks.append(Block("p", " ".join(chart.sentences)))
        png = chart.png
        assert png is not None
        blocks.append(Block("figure", chart.caption, image=png, alt=chart.title,
                            also=[p for p in chart.files if p != png]))
        for note in warnings_for(results, chart.run_ids, per_run, per_cell, CHART_METRICS.get(chart.name)):
            blocks.append(Block("warn", note))

    blocks += knob_blocks(results, figures_dir)
    blocks += fault_blocks(results, figures_dir)
    blocks.append(Block("h2", "Capacity notes"))
    blocks += _text_blocks(capacity_notes(results))  # a Results: the plan rule reads raw rows
    blocks += search_blocks(results.root)
    blocks += methodology(results)
    return blocks, drawn, all_warnings


def fault_blocks(results: Results, figures_dir: Path) -> list[Block]:
    """"When things fail" (`benchmarks.analysis.faults`): only when some run injected a fault or sent
    `poison` tasks."""
    rows, retries = faults.fault_table(results), faults.retry_table(results)
    if not rows and not retries:
        return []
    blocks = [Block("h2", "When things fail")]
    if rows:
        blocks += [Block("p", " ".join(faults.fault_sentences(results))),
                   Block("table", header=faults.HEADER, rows=rows)]
        chart = faults.throughput_chart(results, figures_dir)
        if chart.drawn:
            assert chart.png is not None
            blocks += [Block("p", " ".join(chart.sentences)),
                       Block("figure", chart.caption, image=chart.png, alt=chart.title,
                             also=[p for p in chart.files if p != chart.png])]
    if retries:
        blocks += [Block("p", "Retries under failure: each poison task fails every time, so its library must run "
                              "it exactly the attempts its retry settings promise and then give up; counted "
                              "from the raw ledger."),
                   Block("table", header=faults.RETRY_HEADER, rows=retries)]
    return blocks


def write_report(results: Results, out_dir: Path) -> Report:
    """Write ``report.md``, ``report.html``, ``summary.csv`` and ``figures/`` into `out_dir`."""
    check_out_dir(results, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks, drawn, all_warnings = build_blocks(results, out_dir)
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(blocks, out_dir))
    page = out_dir / "report.html"
    page.write_text(render_html(blocks, out_dir, f"queuebench report: {results.name}"))
    summary = store.write_summary(results.root, out_dir / store.SUMMARY_CSV)
    return Report(out_dir, markdown, page, summary, drawn, all_warnings)
