"""What ``queuebench plan`` says: the request parsed, the plan computed, printed as tables or JSON.

The command itself (`benchmarks.plan_verify.plan`) lives outside analysis because ``--verify`` measures;
everything here reads stored runs only. The answers come from `benchmarks.analysis.planner.plan_capacity`
(see its module docstring for what counts as measured, and `benchmarks.verdicts.judge_repeats` for the
rule a recommendation passes) and the matrix that would cover the rest from `benchmarks.analysis.cover`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

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


def compute(results_dir: Path, rate: float, task_text: str, slo_text: str,
            backends: tuple[str, ...] = ()) -> Plan:
    """The plan for a request as the command line gives it; a bad --task or --slo is a usage error (exit
    2), results mixing schema versions `Refused`."""
    # Imported when the command runs, not when the CLI starts: they load pandas, which `queuebench --help`
    # and every other command should not pay for.
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
    return answer


def to_json(answer: Plan, covering: CoveringMatrix | None, results_dir: Path) -> dict[str, Any]:
    """``queuebench plan --json``: the plan, the results it read and the covering matrix written."""
    out = answer.to_dict() | {"results_dir": str(results_dir)}
    out["matrix"] = None if covering is None else {
        "path": str(covering.path), "command": covering.command, "cells": covering.cells,
        "minutes": round(covering.minutes, 1)}
    return out


def verify_command(answer: Plan, results_dir: Path) -> str:
    """The ``queuebench plan ... --verify`` command for this request."""
    only = "".join(f" --backend {b.backend}" for b in answer.backends if b.needs_verify) \
        if not all(b.needs_verify for b in answer.backends) else ""
    return (f"queuebench plan --rate {answer.rate_per_s:g} --task {answer.kind.cli} --slo {answer.slo.cli}"
            f"{only} --verify {results_dir}")


def print_plan(answer: Plan, covering: CoveringMatrix | None, results_dir: Path) -> None:
    """Rich tables: the answer per backend, the rule per configuration, then the measured cells."""
    # rich, and the progress module that configures its console, load when a table is printed (not at
    # CLI start-up).
    from rich.table import Table

    from benchmarks.analysis.uncertainty import quantile_text
    from benchmarks.progress import table_console
    from benchmarks.verdicts import CONFIDENCE_TEXT, MIN_REPEATS, RHO_WARN, min_samples

    console = table_console()
    slo = answer.slo
    console.print(f"[bold]queuebench plan[/bold]: {answer.request_text} (results: {results_dir})")
    console.print(f"Rule: recommended only when each of >= {MIN_REPEATS} repeats kept up with n >= "
                  f"{min_samples(slo.quantile)} tasks and the upper end of its {slo.name}'s {CONFIDENCE_TEXT} "
                  f"interval under {slo.limit_text}, the repeats' spread keeps a next window under it, and "
                  f"rho = rate x slot time / slots <= {RHO_WARN:g}; else marginal (or too few repeats).")
    for warning in answer.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    summary = Table("backend", "answer from measurements", "rho", "M/M/c\nbody time", "M/M/c\nslot time",
                    "service (body) / slot time", "capacity / slot",
                    f"model error ({slo.name}, body):\nmedian |err| (range)", title="Fewest slots per backend")
    for backend in answer.backends:
        colour = "green" if backend.covered else "yellow"
        answer_text = f"[{colour}]{backend.answer}[/{colour}]"
        assumed = backend.model_service_source != "measured"
        service = _ms(backend.model_service_ms) + (" (assumed)" if assumed else "") + " / " + (
            _ms(backend.slot_time_ms) if backend.slot_time_ms is not None else "not measured")
        error = "-"
        if backend.model_error_range is not None:
            low, high = backend.model_error_range
            error = f"{backend.model_error_median_abs:.0%} ({_error(low)} to {_error(high)})"
        per_slot = (f"{_fmt(backend.per_slot_capacity_per_s)}/s" + (
            f" ({backend.efficiency:.0%} of 1/service)" if backend.efficiency is not None else "")
            + f"\n{backend.capacity_source}")
        rho = backend.rho
        rho_text = "-" if rho is None else (f"[red]{rho:.2f} > {RHO_WARN:g}[/red]" if rho > RHO_WARN else f"{rho:.2f}")
        summary.add_row(backend.variant, answer_text, rho_text, backend.model_answer, backend.model_slot_time_answer,
                        service, per_slot, error)
    console.print(summary)

    for backend in answer.backends:
        if backend.configs:
            rule = Table("pxt", "slots", f"rho ({'slot' if backend.slot_time_ms is not None else 'body'} time)",
                         "state", f"{slo.name} per repeat (n; {CONFIDENCE_TEXT} upper bound)", "why",
                         title=f"{backend.variant}: each configuration at {answer.rate_per_s:g}/s by the rule")
            for config in backend.configs:
                per_repeat = "\n".join(
                    f"{quantile_text(r['e2e_ms'], r['tasks'], slo.quantile)}; ≤ {_fmt(r['upper_ms'])}"
                    + ("" if r["kept_up"] else ", fell behind") for r in config.repeats) or "-"
                rho = "-" if config.rho is None else f"{config.rho:.2f}" + (" (!)" if config.rho > RHO_WARN else "")
                rule.add_row(config.shape, str(config.slots), rho, config.state, per_repeat, config.reason)
            console.print(rule)
        points = backend.points
        if points is None or points.empty:
            continue
        table = Table(title=f"{backend.variant}: measured cells of {answer.kind.label}")
        table.add_column("run ids", overflow="fold")  # whole ids: they name the directories to open
        for header in ("pxt", "slots", "offered/s", "repeats", "sent/s (mean)", "done/s (mean)",
                       f"e2e {slo.name} (worst repeat; n tasks)", f"M/M/c {slo.name} ms\nbody / slot time",
                       "model error\n(body)", "used for"):
            table.add_column(header)
        for point in points.itertuples(index=False):
            drain = point.mode == "drain"
            measured = getattr(point, f"e2e_{slo.name}_ms")
            models = [getattr(point, f"model_{slo.name}_ms"), getattr(point, f"model_slot_{slo.name}_ms")]
            model = " / ".join("overloaded" if m == math.inf else _fmt(m) for m in models)
            table.add_row("\n".join(point.run_ids), f"p{point.processes}t{point.threads}", str(point.slots),
                          "drain" if drain else f"{point.offered_rate_per_s:g}", str(point.repeats),
                          "-" if drain else _fmt(point.sent_rate_per_s), _fmt(point.throughput_per_s),
                          "-" if drain else quantile_text(measured, point.e2e_tasks, slo.quantile),
                          "-" if drain else model, _error(point.model_error), point.role)
        console.print(table)
        for note in backend.notes:
            console.print(f"  note: {note}")

    if answer.covered:
        console.print("[green]Covered:[/green] every answer above is a recommendation by the rule, on measured "
                      "cells (M/M/c is shown beside them, not used).")
    else:
        missing = [b.variant for b in answer.backends if not b.covered]
        console.print(f"[yellow]No recommendation from these results for:[/yellow] {', '.join(missing)}. The "
                      "stored runs cannot support one (see each answer: marginal, too few repeats, windows too "
                      "short, or nothing measured near the rate); slot counts named there are candidates or "
                      "extrapolations, not measurements that pass the rule.")
        if covering is not None:
            console.print(f"Matrix that would decide it: {covering.path} ({covering.cells} cells, about "
                          f"{covering.minutes:.0f} min)")
            console.print(f"Run: [bold]{covering.command}[/bold]")
            console.print(f"Then ask again: queuebench plan --rate {answer.rate_per_s:g} "
                          f"--task {answer.kind.cli} --slo {slo.cli} {results_dir}")
    if answer.needs_verify:
        console.print(f"[yellow]Marginal or fewer than {MIN_REPEATS} repeats:[/yellow] run the answer itself "
                      f"before relying on it: [bold]{verify_command(answer, results_dir)}[/bold]")


def print_verification(answer: Plan, verification: Any) -> None:
    """The acceptance test: per verified configuration, each repeat's quantile with its interval, and
    whether the SLO held in every one."""
    from rich.table import Table

    from benchmarks.progress import table_console

    console = table_console()
    slo = answer.slo
    table = Table("backend", "pxt", "role", "outcome", f"{slo.name} per repeat (95 % CI, n)", "statuses",
                  title=f"Verification at {answer.rate_per_s:g}/s, {slo.label} ({verification.out_dir})")
    for found in verification.accepted:
        colour = {"held": "green", "missed": "red"}.get(found.outcome, "yellow")
        repeats = "\n".join(r["text"] + ("" if r["kept_up"] else ", fell behind") for r in found.repeats) or "-"
        table.add_row(found.variant, found.shape, found.role, f"[{colour}]{found.outcome}[/{colour}]", repeats,
                      ", ".join(found.statuses))
    console.print(table)
    verdict = "[green]held[/green]" if verification.held else "[red]did not hold[/red]"
    console.print(f"Acceptance test: the SLO {verdict} in every repeat of the configuration(s) the plan "
                  f"answered with. Runs: {verification.out_dir}; matrix: {verification.matrix_path}")
