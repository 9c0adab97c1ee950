"""``queuebench report`` and ``queuebench compare``: Click commands registered on the ``queuebench`` group.

    cli.add_command(report)
    cli.add_command(compare)

Both read stored results only. Exit codes: 0 done; 2 results that cannot be used (no runs, mixed schema
versions, two sets with no cell in common, an --out inside a run directory).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

#: Where reports go by default: results/sets/<name of the results directory>/.
SETS_DIR = Path("results/sets")
EXIT_REFUSED = 2


class Refused(click.ClickException):
    """Results that cannot be reported or compared; printed as one line, exit code 2."""

    exit_code = EXIT_REFUSED


@click.command("report")
@click.argument("results_dir", metavar="RESULTS", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where report.md, report.html, summary.csv and figures/ go (default: "
                   "results/sets/<name of RESULTS>/).")
def report(results_dir: Path, out: Path | None) -> None:
    """Write a report (Markdown, self-contained HTML, figures) from the runs in RESULTS.

    RESULTS is a directory `queuebench run` wrote (e.g. results/runs). Runs that failed, errored, were
    skipped or interrupted are listed as warnings and left out of the figures. Nothing is written into
    RESULTS. Exits 2 when RESULTS holds no runs or mixes result schema versions.
    """
    # Imported when the command runs, not when the CLI starts: the report draws with matplotlib and reads
    # with pandas, and the console is rich's; `queuebench --help` and every other command pay for none.
    from rich.console import Console

    from benchmarks.analysis.load import ResultsError, load_results
    from benchmarks.analysis.report import write_report

    console = Console(stderr=True)
    try:
        results = load_results(results_dir)
        written = write_report(results, out if out is not None else SETS_DIR / results.name)
    except ResultsError as exc:
        raise Refused(str(exc)) from exc
    for chart in written.charts:
        if not chart.drawn:
            console.print(f"chart {chart.name} not drawn: {chart.note}")
    if written.warnings:
        console.print(f"{len(written.warnings)} warning(s); see the report's Warnings section")
    click.echo(f"report: {written.markdown}")
    click.echo(f"report: {written.html}")


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


@click.command("compare")
@click.argument("a_dir", metavar="A", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("b_dir", metavar="B", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table: FILE.csv (tidy rows) or FILE.md (Markdown).")
@click.option("--ignore", multiple=True, metavar="KEY",
              help="Leave this spec key out of the match (repeatable), e.g. --ignore serializer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
def compare(a_dir: Path, b_dir: Path, out: Path | None, ignore: tuple[str, ...], seed: int) -> None:
    """Compare result set B with result set A, cell by cell: ratio B/A of throughput and end-to-end p95.

    Cells match when their specs are equal apart from the repeat and from keys that hold one value in
    all of A and another in all of B (printed: that is what the comparison is about). Where both sides
    have 3 or more runs of a cell, the winner rule the report uses decides: Welch's t-test on the logs of
    the per-run figures (p < 0.05), the ratio of geometric means with its 95 % t interval, and a change
    beyond the 10 % run-to-run noise floor. With fewer runs, the raw rows of tasks.parquet are compared
    instead and labelled so: they see no run-to-run noise, so a change must exceed 20 % and its interval
    exclude 1. Every figure shows its runs and, for p95, the tasks it rests on; a p95 too few tasks can
    bound reads "too few samples". Exits 2 when the sets cannot be compared (different schema versions,
    no cell in common).
    """
    # Imported when the command runs (pandas, numpy, rich), as in `report`.
    from rich.table import Table

    from benchmarks.analysis.compare import METHODS
    from benchmarks.analysis.compare import compare as compare_sets
    from benchmarks.analysis.load import ResultsError
    from benchmarks.progress import table_console

    try:
        result = compare_sets(a_dir, b_dir, ignore=ignore, seed=seed)
    except ResultsError as exc:
        raise Refused(str(exc)) from exc
    console = table_console()
    if result.treatment:
        console.print("B differs from A in: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in result.treatment.items()))
    table = Table("cell", "figure", "A", "B", "B/A", "95 % CI", "p", "over", "change",
                  title=f"queuebench compare: B = {b_dir} against A = {a_dir}")
    for row in result.rows.itertuples(index=False):
        raw = row.method == "raw rows"
        change = {"better": "[green]significant, better", "worse": "[red]significant, worse",
                  "within noise": "[dim]within noise"}.get(row.verdict, row.verdict)
        if raw and row.significant:
            change += " (raw rows only)"
        table.add_row(row.cell, f"{row.figure}, {row.better} is better", _side(row.a, row.a_runs, row.a_tasks, raw),
                      _side(row.b, row.b_runs, row.b_tasks, raw), _fmt(row.ratio),
                      f"{_fmt(row.ci_low)} to {_fmt(row.ci_high)}",
                      "-" if not math.isfinite(row.p_value) else f"{row.p_value:.2g}", row.method, change)
    console.print(table)
    for method in sorted(set(result.rows["method"])):
        console.print(f"over {METHODS[method]}")
    if result.only_a or result.only_b:
        console.print(f"cells only in A: {result.only_a}, only in B: {result.only_b} (not compared)")
    console.print(f"{len(result.significant)} significant change(s) of {len(result.rows)}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".md":
            out.write_text(_markdown(result.rows))
        else:
            result.rows.to_csv(out, index=False)
        console.print(f"written: {out}")


def _side(value: float, runs: int, tasks: str, pooled: bool) -> str:
    """One side's figure with what it rests on: ``39.6 (3 runs; n=88-90 tasks each)``, ``95.1 (1 run)``,
    ``41.0 (2 runs; n=180 tasks pooled)`` (raw rows)."""
    rests = f"{runs} run{'s' if runs != 1 else ''}"
    if tasks:
        rests += f"; n={tasks} tasks" + ("" if runs == 1 else " pooled" if pooled else " each")
    if not math.isfinite(value) and tasks:
        return f"too few samples ({rests})"
    return f"{_fmt(value)} ({rests})"


def _markdown(rows: pd.DataFrame) -> str:
    """The comparison rows as a Markdown table (figures rounded as in the printed table)."""
    header = list(rows.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
