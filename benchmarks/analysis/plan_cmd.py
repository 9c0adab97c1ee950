"""``queuebench plan``: how many slots of which backend serve a rate within a latency SLO, from measured runs.

Registered on the ``queuebench`` group by the CLI:

    from benchmarks.analysis.plan_cmd import plan
    cli.add_command(plan)

The answers come from `benchmarks.analysis.planner.plan_capacity` (see its module docstring for what
counts as measured) and the matrix that would cover the rest from `benchmarks.analysis.cover`; this
module only parses the request, prints and writes that matrix.
Exit codes: 0 answered (covered or not: the output says which), 2 a bad request or unusable results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

import backends

if TYPE_CHECKING:
    from benchmarks.analysis.cover import CoveringMatrix
    from benchmarks.analysis.planner import Plan

EXIT_REFUSED = 2


class Refused(click.ClickException):
    """Results that cannot be planned from (e.g. mixed result schema versions); exit code 2."""

    exit_code = EXIT_REFUSED


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def _error(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.0%}"


def _ms(value: float | None) -> str:
    """Three significant digits: service times run from microseconds (noop) to seconds."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g} ms"


@click.command("plan")
@click.argument("results_dir", metavar="[RESULTS]", required=False, default=Path("results/runs"),
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), required=True, metavar="TASKS_PER_S",
              help="The rate to serve, in tasks/s.")
@click.option("--task", "task_text", required=True, metavar="TASK[:ARGS]",
              help="The task kind: noop, sleep_ms:50, cpu_ms:20, echo:1000, add:x=1,y=2.")
@click.option("--slo", "slo_text", required=True, metavar="pNN=LIMIT",
              help="End-to-end latency objective: p50, p90, p95 or p99 = a limit in ms or s "
                   "(p95=1s, p99=250ms).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(backends.measurable()),
              help="Plan only for this backend (repeatable; default: every backend in RESULTS).")
@click.option("--matrix-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the covering matrix when the results do not cover the request "
                   "(default: results/plans/capacity-<task>-r<rate>-<slo>.toml).")
@click.option("--write-matrix/--no-write-matrix", default=True, show_default=True,
              help="Write the covering matrix when the request is not covered.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the answer as JSON (machine-readable) instead of tables.")
def plan(results_dir: Path, rate: float, task_text: str, slo_text: str, backends: tuple[str, ...],
         matrix_out: Path | None, write_matrix: bool, as_json: bool) -> None:
    """The fewest slots (processes x threads) per backend that serve --rate tasks/s of --task within --slo.

    Answers from the runs in RESULTS (default results/runs): load-mode runs of that task kind with status
    ok, and drain runs of it for capacity. Prints the measured cells each answer relies on, the M/M/c
    estimate beside it (service time: the backend's measured mean; c: slots) and the model's error at the
    measured cells. When the runs do not cover the request it says so, labels any extrapolation as such,
    and writes a matrix that measures it, with the command to run.
    """
    # Imported when the command runs, not when the CLI starts: they load pandas, which `queuebench --help`
    # and every other command should not pay for.
    from benchmarks.analysis.cover import write_covering_matrix
    from benchmarks.analysis.load import MixedSchemaError
    from benchmarks.analysis.planner import parse_task, plan_capacity
    from benchmarks.verdicts import parse_slo

    try:
        kind = parse_task(task_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--task") from exc
    try:
        slo = parse_slo(slo_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--slo") from exc
    try:
        answer = plan_capacity(results_dir, rate, kind, slo, backends=backends or None)
    except MixedSchemaError as exc:
        raise Refused(str(exc)) from exc
    if not results_dir.is_dir():
        answer.warnings.insert(0, f"{results_dir} does not exist: nothing measured yet")

    covering = None
    if not answer.covered and write_matrix:
        covering = write_covering_matrix(answer, matrix_out, results_dir=results_dir)

    if as_json:
        out = answer.to_dict() | {"results_dir": str(results_dir)}
        out["matrix"] = None if covering is None else {
            "path": str(covering.path), "command": covering.command, "cells": covering.cells,
            "minutes": round(covering.minutes, 1)}
        click.echo(json.dumps(out, indent=2, default=str))
        return
    _print(answer, covering, results_dir)


def _print(answer: Plan, covering: CoveringMatrix | None, results_dir: Path) -> None:
    """Rich tables: the answer per backend, then the measured cells each relied on."""
    # rich, and the progress module that configures its console, load when a table is printed (not at
    # CLI start-up).
    from rich.table import Table

    from benchmarks.analysis.uncertainty import quantile_text
    from benchmarks.progress import table_console

    console = table_console()
    slo = answer.slo
    console.print(f"[bold]queuebench plan[/bold]: {answer.request_text} (results: {results_dir})")
    for warning in answer.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    summary = Table("backend", "answer from measurements", "M/M/c", "service (model)", "capacity / slot",
                    f"model error ({slo.name}):\nmedian |err| (range)", title="Fewest slots per backend")
    for backend in answer.backends:
        colour = "green" if backend.covered else "yellow"
        answer_text = f"[{colour}]{backend.answer}[/{colour}]"
        model = backend.model_answer
        assumed = backend.model_service_source != "measured"
        service = _ms(backend.model_service_ms) + (" (assumed)" if assumed else "")
        error = "-"
        if backend.model_error_range is not None:
            low, high = backend.model_error_range
            error = f"{backend.model_error_median_abs:.0%} ({_error(low)} to {_error(high)})"
        per_slot = (f"{_fmt(backend.per_slot_capacity_per_s)}/s" + (
            f" ({backend.efficiency:.0%} of 1/service)" if backend.efficiency is not None else "")
            + f"\n{backend.capacity_source}")
        summary.add_row(backend.variant, answer_text, model, service, per_slot, error)
    console.print(summary)

    for backend in answer.backends:
        points = backend.points
        if points is None or points.empty:
            continue
        table = Table(title=f"{backend.variant}: measured cells of {answer.kind.label}")
        table.add_column("run ids", overflow="fold")  # whole ids: they name the directories to open
        for header in ("pxt", "slots", "offered/s", "repeats", "sent/s (mean)", "done/s (mean)",
                       f"e2e {slo.name} (worst repeat; n tasks)", f"M/M/c {slo.name} ms", "model error", "used for"):
            table.add_column(header)
        for point in points.itertuples(index=False):
            drain = point.mode == "drain"
            measured = getattr(point, f"e2e_{slo.name}_ms")
            model = getattr(point, f"model_{slo.name}_ms")
            table.add_row("\n".join(point.run_ids), f"p{point.processes}t{point.threads}", str(point.slots),
                          "drain" if drain else f"{point.offered_rate_per_s:g}", str(point.repeats),
                          "-" if drain else _fmt(point.sent_rate_per_s), _fmt(point.throughput_per_s),
                          "-" if drain else quantile_text(measured, point.e2e_tasks, slo.quantile),
                          "-" if drain else ("overloaded" if not math.isfinite(model) else _fmt(model)),
                          _error(point.model_error), point.role)
        console.print(table)
        for note in backend.notes:
            console.print(f"  note: {note}")

    if answer.covered:
        console.print("[green]Covered:[/green] every answer above rests on measured cells (M/M/c is shown "
                      "beside them, not used).")
        return
    missing = [b.variant for b in answer.backends if not b.covered]
    console.print(f"[yellow]Not covered by these results:[/yellow] {', '.join(missing)}. Their slot counts "
                  "above are extrapolations, not measurements.")
    if covering is not None:
        console.print(f"Matrix that measures it: {covering.path} ({covering.cells} cells, about "
                      f"{covering.minutes:.0f} min)")
        console.print(f"Run: [bold]{covering.command}[/bold]")
        console.print(f"Then ask again: queuebench plan --rate {answer.rate_per_s:g} "
                      f"--task {answer.kind.cli} --slo {slo.cli} {results_dir}")
