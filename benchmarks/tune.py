"""``queuebench tune``: which knobs matter, measured one at a time from a library's defaults, then tuned.

Round one (`knob_matrix`): for each workload (`analysis.tuning.WORKLOADS`: a drain of no-op tasks, and the
routing mix on one shared queue), the library's defaults and, one knob at a time, every candidate value the
backend declares (`QueueBackend.knobs` and `spec_knobs`, the candidates in `Knob.candidates`; the knobs
`tune_knobs` names unless ``--knobs`` says), all at the same slots. The cells are built as a matrix in
code (`matrix.from_tables`, the same checks as a file) and run by the sweep (`runner.run_matrix`), repeats
interleaved, so every value is a set of ordinary runs, stored like any other: ``report`` and ``compare``
read them.

Round two (`tuned_matrix`): per workload, every knob at its best significant value
(`analysis.tuning.tuned_settings`, judged from the stored runs of round one) against the defaults again, in
one sweep with interleaved repeats, under the matrix name ``tune-<backend>-tuned`` and repeats numbered from
`TUNED_REPEAT_BASE` (so their run ids differ from round one's). Nothing runs in round two when no value was
significant.

Then ``OUT/tune.json`` (`analysis.tuning.summary`) and a tornado chart per workload under
``OUT/figures/``. Lives outside `benchmarks.analysis` (it measures); analysis never imports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backends
from backends.base import Knob
from benchmarks import matrix as matrix_mod
from benchmarks import runner
from benchmarks.analysis import tuning
from benchmarks.analysis.load import load_results

#: Slots every tune cell runs at unless ``--slots`` says.
DEFAULT_SLOTS = 2
#: The routing-mix workload: 10 tasks/s (9 of 10 ms, 1 of 1 s: about half of 2 slots busy), 2 s of warm-up
#: and 10 s measured, so a window holds about 90 short tasks (the quantile rule needs 72 for p95).
ROUTING_RATE = 10
ROUTING_WARMUP_S = 2
ROUTING_DURATION_S = 10
#: Hard ceiling of a tuning drain, seconds: a value that makes the library crawl fails in minutes (and is
#: never significant) instead of holding the tune for the spec's default 600 s per run.
DRAIN_CEILING_S = 120
#: Round two's repeats are numbered from here, so its runs get their own ids beside round one's.
TUNED_REPEAT_BASE = 100
#: What ``tune.json`` is called in OUT.
TUNE_JSON = "tune.json"


def declared(backend: str) -> dict[str, Knob]:
    """Everything `tune` may vary for `backend`: its knobs and the spec keys it declares as knobs."""
    cls = backends.backend_class(backend)
    return {**dict(cls.knobs), **dict(getattr(cls, "spec_knobs", {}) or {})}


def is_spec_knob(backend: str, knob: str) -> bool:
    return knob in (getattr(backends.backend_class(backend), "spec_knobs", {}) or {})


def default_knobs(backend: str) -> tuple[str, ...]:
    return tuple(getattr(backends.backend_class(backend), "tune_knobs", ()) or ())


def values_to_try(backend: str, knob: str, slots: int) -> list[Any]:
    """The knob's candidates other than the library's default (the defaults' cell stands for it); for
    `threads`, only those that divide `slots` (equal slots)."""
    domain = declared(backend)[knob]
    derived = getattr(backends.backend_class(backend), "derived_defaults", {}).get(knob)
    default = derived(1) if derived is not None and domain.default is None else domain.default  # tune runs t1
    values = [v for v in domain.candidates if v != default]
    if knob == "threads":
        values = [v for v in values if slots % v == 0]
    return values


def check_knobs(backend: str, knobs: Sequence[str]) -> list[str]:
    """The knobs to vary, checked: each declared by the backend with a candidate besides its default.
    Raises ValueError naming the problem."""
    known = declared(backend)
    chosen = list(knobs) or list(default_knobs(backend))
    if not chosen:
        raise ValueError(f"{backend} declares no knob to tune; name some with --knobs "
                         f"(`queuebench backends {backend}` lists them)")
    for knob in chosen:
        if knob not in known:
            raise ValueError(f"{knob} is not a {backend} knob; allowed: {', '.join(sorted(known))}")
        if not [v for v in known[knob].candidates if v != known[knob].default]:
            raise ValueError(f"{backend} declares no value worth trying for {knob} besides its default")
    return chosen


def workload_table(workload: str, backend: str, slots: int, tasks: int | None) -> dict[str, Any]:
    """Matrix keys of a workload at the library's defaults (one process per slot), results off: nothing
    reads them, and a result store on the critical path hides what a knob does (Dramatiq's Results
    middleware took its prefetch effect from x2.4 to x1.2 in a drain of no-op tasks on 2 shared cores), as
    in the independent cross-check (benchmarks/crosscheck_drain.py)."""
    common = {"processes": slots, "threads": 1, "results": False}
    if workload == "drain":
        count = tasks or int(getattr(backends.backend_class(backend), "tune_drain_tasks", 2000))
        return {"mode": "drain", "task": "noop", "tasks": count, "drain_timeout_s": DRAIN_CEILING_S, **common}
    if workload == "routing":
        return {"mode": "load", "scenario": "routing_mix", "routing": "shared", "rate": ROUTING_RATE,
                "warmup_s": ROUTING_WARMUP_S, "duration_s": ROUTING_DURATION_S, **common}
    raise ValueError(f"unknown workload {workload!r}; known: {', '.join(tuning.WORKLOADS)}")


def setting_table(backend: str, settings: dict[str, Any], slots: int) -> dict[str, Any]:
    """Matrix keys that set `settings` (knob -> value): spec keys at the top, library knobs in the
    backend's table, `threads` at equal slots."""
    table: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for knob, value in settings.items():
        if knob == "threads":
            table |= {"processes": slots // value, "threads": value}
        elif is_spec_knob(backend, knob):
            table[knob] = value
        else:
            options[knob] = value
    if options:
        table[backends.label(backend)] = options
    return table


def _matrix(name: str, backend: str, cells: list[dict[str, Any]], repeats: int, description: str) -> matrix_mod.Matrix:
    raw: dict[str, Any] = {"name": name, "description": description, "backend": backend, "repeats": repeats,
                           **cells[0], "include": cells[1:]}
    return matrix_mod.from_tables(raw, name=name)


def knob_matrix(backend: str, workloads: Sequence[str], knobs: Sequence[str], *, slots: int = DEFAULT_SLOTS,
                repeats: int = 3, tasks: int | None = None) -> matrix_mod.Matrix:
    """Round one: per workload, the defaults and one knob at a time over its candidates (repeat-major)."""
    cells = []
    for workload in workloads:
        base = workload_table(workload, backend, slots, tasks)
        cells.append(dict(base))
        for knob in knobs:
            for value in values_to_try(backend, knob, slots):
                cells.append(base | setting_table(backend, {knob: value}, slots))
    return _matrix(f"tune-{backend}", backend, cells, repeats,
                   f"queuebench tune: {', '.join(knobs)} one at a time from {backend}'s defaults, {slots} slots")


def tuned_matrix(backend: str, tuned: dict[str, dict[str, Any]], *, slots: int = DEFAULT_SLOTS, repeats: int = 3,
                 tasks: int | None = None) -> matrix_mod.Matrix | None:
    """Round two: per workload with a tuned configuration (workload -> settings), it and the defaults,
    repeats interleaved and numbered from `TUNED_REPEAT_BASE`. None when no workload has one."""
    cells = []
    for workload, settings in tuned.items():
        if settings:
            base = workload_table(workload, backend, slots, tasks)
            cells += [dict(base), base | setting_table(backend, settings, slots)]
    if not cells:
        return None
    built = _matrix(f"tune-{backend}{tuning.TUNED_SUFFIX}", backend, cells, repeats,
                    f"queuebench tune: {backend} tuned against its defaults, {slots} slots")
    built.cells = [matrix_mod.Cell(c.spec, c.repeat + TUNED_REPEAT_BASE, c.skip_reason) for c in built.cells]
    return built


def estimate_s(matrix: matrix_mod.Matrix) -> float:
    return sum(runner.cell_seconds(c) for c in matrix.cells)


@dataclass
class TuneResult:
    out_dir: Path
    summary: dict[str, Any]
    cells: list[runner.CellResult]
    charts: list[Path]

    @property
    def measured_ok(self) -> bool:
        return not any(c.status in ("failed", "error") for c in self.cells)


def tuned_from_store(out_dir: Path, backend: str, run_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Per workload, the tuned settings judged from the stored runs of round one: the groups whose default
    runs are among `run_ids` (round one's), so other runs kept in OUT (another slot count or drain size)
    cannot stand in for them."""
    found: dict[str, dict[str, Any]] = {}
    for group in tuning.groups(load_results(out_dir), backend):
        if run_ids.intersection(group.default_runs):
            found[group.key["workload"]] = group.tuned
    return found


def _run(matrix: matrix_mod.Matrix, out_dir: Path, amqp_url: str | None, progress: Callable[[], Any] | None,
         log: Callable[[str], None]) -> list[runner.CellResult]:
    display = progress() if progress is not None else None
    try:
        return runner.run_matrix(matrix, out_dir, amqp_url=amqp_url, progress=display, log=log)
    finally:
        if display is not None:
            display.stop()


def tune(backend: str, out_dir: Path, *, workloads: Sequence[str] = tuple(tuning.WORKLOADS),
         knobs: Sequence[str] = (), repeats: int = 3, slots: int = DEFAULT_SLOTS, tasks: int | None = None,
         amqp_url: str | None = None, progress: Callable[[], Any] | None = None,
         log: Callable[[str], None] = print) -> TuneResult:
    """Both rounds into `out_dir`, then ``tune.json`` and the tornado charts. Raises ValueError for a bad
    request, RuntimeError when another sweep holds the measuring lock, `runner.Interrupted` on Ctrl-C.
    `progress` makes a progress display per round (`benchmarks.progress.SweepProgress`)."""
    chosen = check_knobs(backend, knobs)
    first = knob_matrix(backend, workloads, chosen, slots=slots, repeats=repeats, tasks=tasks)
    log(f"round 1: {', '.join(chosen)} one at a time from the defaults; {len(first.cells)} runs "
        f"({len({json.dumps(c.spec, sort_keys=True, default=str) for c in first.cells})} configurations x "
        f"{repeats} repeats), about {estimate_s(first) / 60:.1f} min")
    cells = _run(first, out_dir, amqp_url, progress, log)
    tuned = tuned_from_store(out_dir, backend, {c.run_id for c in first.cells})
    for workload, settings in tuned.items():
        log(f"{workload}: tuned = {tuning.settings_text(settings)}")
    second = tuned_matrix(backend, tuned, slots=slots, repeats=repeats, tasks=tasks)
    if second is not None:
        log(f"round 2: tuned against the defaults, {len(second.cells)} runs, repeats interleaved, about "
            f"{estimate_s(second) / 60:.1f} min")
        cells += _run(second, out_dir, amqp_url, progress, log)
    else:
        log("round 2: no knob value is clearly better than the defaults; nothing to combine")
    results = load_results(out_dir)
    summary = tuning.summary(results, backend)
    summary |= {"backend": backend, "slots": slots, "repeats": repeats, "workloads": list(workloads),
                "knobs_varied": chosen}
    (out_dir / TUNE_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    charts: list[Path] = []
    from benchmarks.analysis.charts import caption

    for group in tuning.groups(results, backend):
        runs = [r for v in group.values for r in v.run_ids] + group.default_runs
        charts += tuning.tornado(group, out_dir / "figures", caption(results, runs))
    return TuneResult(out_dir, summary, cells, charts)


# --- the command ---------------------------------------------------------------------------------------------

import sys  # noqa: E402 - the command's own imports, below the library functions

import click  # noqa: E402


@click.command("tune")
@click.option("--backend", required=True, type=click.Choice(backends.libraries()),
              help="The library to tune.")
@click.option("--workload", "workloads", multiple=True, type=click.Choice(tuple(tuning.WORKLOADS)),
              help="drain: a drain of no-op tasks (throughput); routing: the routing mix on one shared queue "
                   "(short-task p95 while long tasks flow). Repeatable; default: both.")
@click.option("--knobs", "knobs_text", default="", metavar="K,...",
              help="Knobs to vary, comma-separated: the backend's knobs or the spec keys it declares as knobs "
                   "(prefetch, acks_late, threads). Default: the backend's own list (`queuebench backends NAME`).")
@click.option("--repeats", type=click.IntRange(1, 99), default=3, show_default=True,
              help="Runs per value, interleaved. The winner rule needs 3 to call anything.")
@click.option("--slots", type=click.IntRange(1, 256), default=DEFAULT_SLOTS, show_default=True,
              help="Execution slots (processes x threads) of every cell.")
@click.option("--tasks", type=click.IntRange(1, 10_000_000), default=None,
              help="No-op tasks per drain (default: the backend's tune_drain_tasks, a window of seconds).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the runs, tune.json and figures/ go (default: results/runs/tune/<backend>). Runs "
                   "already there are reused (resume).")
@click.option("--json", "as_json", is_flag=True, help="Print tune.json instead of tables.")
def tune_command(backend: str, workloads: tuple[str, ...], knobs_text: str, repeats: int, slots: int,
                 tasks: int | None, out: Path | None, as_json: bool) -> None:
    """Which knobs matter: one knob at a time from the library's defaults, then every knob at its best.

    Round 1: per workload, the library's defaults and each knob's candidate values (the ones
    `queuebench backends NAME` lists as worth trying), one knob at a time, at equal slots, each value
    --repeats runs interleaved. Round 2: every knob at its best significant value, against the defaults in
    one sweep (repeats interleaved); it says so when that combination does worse than the best single knob.
    A value is significant by the winner rule: at least 3 repeats a side, Welch's t-test on the logs
    p < 0.05, and more than 10 % from the defaults.

    Every value is a set of ordinary runs in OUT (`queuebench report OUT` and `compare` read them).
    OUT/tune.json has one record per knob value (figure, value, default_value, ratio_to_default, ci_low,
    ci_high, n, significant) and per workload the tuned configuration with its ratio to the defaults;
    OUT/figures/tornado-*.png|svg draw each knob's effect with its interval. Exits 1 if a run failed or
    errored or another sweep holds the measuring lock, 2 on a bad request, 130 on Ctrl-C (completed runs
    are kept; the same command resumes).
    """
    from rich.console import Console
    from rich.table import Table

    from benchmarks.progress import SweepProgress, table_console

    console = Console(stderr=True)
    out = out if out is not None else Path("results/runs/tune") / backend
    knobs = [k.strip() for k in knobs_text.split(",") if k.strip()]
    try:
        check_knobs(backend, knobs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--knobs") from exc
    console.print(f"queuebench tune {backend}: {slots} slots, {repeats} repeats, runs in {out}")
    try:
        found = tune(backend, out, workloads=workloads or tuple(tuning.WORKLOADS), knobs=knobs, repeats=repeats,
                     slots=slots, tasks=tasks, progress=lambda: SweepProgress(console),
                     log=console.print)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except runner.Interrupted as exc:
        console.print(f"queuebench: {exc}: stopped every process it started; completed runs are kept in {out}; "
                      "run the same command again to resume")
        sys.exit(130)
    except RuntimeError as exc:  # the measuring lock
        console.print(f"queuebench: error: {exc}")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(found.summary, indent=2, default=str))
    else:
        print_summary(found.summary, table_console(), Table)
    console.print(f"tune.json: {out / TUNE_JSON}; charts: {out / 'figures'}; report: queuebench report {out}")
    sys.exit(0 if found.measured_ok else 1)


def print_summary(summary: dict[str, Any], console: Any, table_cls: Any) -> None:
    """One table per workload (knobs in rank order), the tuned line, and the flags."""
    for group in summary["tuned"]:
        table = table_cls("rank", "knob", "value (default)", "ratio to default (95 % CI)", "n", "verdict",
                          title=f"{group['backend']} · {group['load']} · {group['slots']} slots: {group['figure']}")
        rows = [r for r in summary["knobs"] if (r["workload"], r["slots"], r["load"]) ==
                (group["workload"], group["slots"], group["load"])]
        for rank, knob in enumerate(group["ranking"], 1):
            for r in (r for r in rows if r["knob"] == knob):
                ratio = r["ratio_to_default"]
                interval = ("-" if ratio is None else f"x{ratio:.2f}" + (
                    f" ({r['ci_low']:.2f} to {r['ci_high']:.2f})" if r["ci_low"] is not None else ""))
                verdict = {"better": "[green]clearly better", "worse": "[red]clearly worse"}.get(
                    r["outcome"], r["outcome"])
                default = "derived" if r["default_value"] is None else r["default_value"]
                table.add_row(str(rank), knob, f"{r['value']} ({default})", interval,
                              f"{r['n']} vs {r['n_default']}", verdict)
        console.print(table)
        ratio = group["ratio_to_default"]
        line = f"tuned: {group['tuned_text']}"
        if group["tuned"] and ratio is not None:
            ci = (f" ({group['ci_low']:.2f} to {group['ci_high']:.2f})" if group["ci_low"] is not None else "")
            line += f": x{ratio:.2f}{ci} against the defaults, {group['n']} vs {group['n_default']} repeats, " \
                    f"{group['outcome']} ({group['measured_in']})"
        if group["combination_worse_than_best_single"]:
            best = group["best_single"]
            line += (f"; the combination does worse than the best single knob ({best['knob']}={best['value']}, "
                     f"x{best['ratio_to_default']:.2f})")
        console.print(line)
    for flag in summary["flags"]:
        console.print(f"[yellow]flag: {flag['text']}")
