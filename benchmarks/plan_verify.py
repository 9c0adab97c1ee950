"""``queuebench plan``: the fewest slots per backend for a rate within a latency SLO, and ``--verify``.

The command composes the two layers: the answer comes from stored runs (`benchmarks.analysis.plan_cmd`,
`benchmarks.analysis.planner`), and ``--verify`` measures it (`benchmarks.verify`, through the runner),
which analysis may never do (tests/test_layering.py). Exit codes: 0 answered (recommended or not: the
output says which), and with ``--verify`` the SLO held for every configuration the plan answered with;
1 a verification cell failed or errored, or another sweep holds the measuring lock; 2 a bad request or
unusable results; 3 the verification ran and the SLO did not hold; 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

import backends

EXIT_NOT_HELD = 3


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
@click.option("--backend", "backend_names", multiple=True, type=click.Choice(backends.measurable()),
              help="Plan only for this backend (repeatable; default: every backend in RESULTS).")
@click.option("--matrix-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the covering matrix when the results support no recommendation "
                   "(default: results/plans/capacity-<task>-r<rate>-<slo>.toml).")
@click.option("--write-matrix/--no-write-matrix", default=True, show_default=True,
              help="Write the covering matrix when the results support no recommendation.")
@click.option("--verify", is_flag=True,
              help="Then run the answer: per backend the configuration it names (recommended, else the "
                   "marginal candidate, else the extrapolation) and the one with one slot fewer, at --rate, "
                   "3 repeats interleaved, and report whether the SLO held in every repeat (with the 95 % "
                   "interval). Measures: takes the machine-wide measuring lock.")
@click.option("--verify-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --verify stores its runs and verify.toml (default: results/runs/verify/<plan id>, "
                   "e.g. .../sleep_ms-ms50-r20-p95-500ms). Runs already there are reused (resume).")
@click.option("--verify-duration", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Measured window of each verification run (default: long enough for 3 x the fewest "
                   "tasks that bound the SLO's quantile at --rate, at least 10 s).")
@click.option("--amqp-url", metavar="URL", help="RabbitMQ for --verify on rabbitmq configurations (default: "
                                                "the local one, else a private node).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the answer (and the verification) as JSON instead of tables.")
def plan(results_dir: Path, rate: float, task_text: str, slo_text: str, backend_names: tuple[str, ...],
         matrix_out: Path | None, write_matrix: bool, verify: bool, verify_out: Path | None,
         verify_duration: float | None, amqp_url: str | None, as_json: bool) -> None:
    """The fewest slots (processes x threads) per backend that serve --rate tasks/s of --task within --slo.

    Answers from the runs in RESULTS (default results/runs): load-mode runs of that task kind with status
    ok, and drain runs of it for capacity. A configuration is recommended only when at least 3 repeats
    each kept up with the upper end of the SLO quantile's 95 % interval (from the stored tasks) under the
    limit, the repeats' spread keeps a next window under it, and its utilisation rho = rate x slot time /
    slots is at most 0.85 (slot time: 1 / the measured capacity per slot, per-task overhead included).
    Point estimates under the limit without all of that are named marginal (or too few repeats), never
    recommended. Beside the answer: M/M/c with the task body's service time and with the measured slot
    time, each cell the answer relied on, and the model's error there. When the runs cannot support an
    answer it says so and writes a matrix that would (3 repeats, windows long enough for the quantile),
    with the command to run; it suggests --verify whenever an answer is marginal or rests on fewer than 3
    repeats. --verify runs the answer (see its help) as the plan's acceptance test.

    Exits 0 when answered (and, with --verify, the SLO held in every repeat of what the plan answered
    with), 1 when a verification run failed or errored or another sweep holds the measuring lock, 2 on a
    bad request or unusable results, 3 when the verification ran and the SLO did not hold, 130 on Ctrl-C.
    """
    from benchmarks.analysis.cover import write_covering_matrix
    from benchmarks.analysis.plan_cmd import compute, print_plan, print_verification, to_json

    answer = compute(results_dir, rate, task_text, slo_text, backend_names)
    covering = None
    if not answer.covered and write_matrix:
        covering = write_covering_matrix(answer, matrix_out, results_dir=results_dir)
    if as_json:
        out = to_json(answer, covering, results_dir)
    else:
        print_plan(answer, covering, results_dir)
    if not verify:
        if as_json:
            click.echo(json.dumps(out, indent=2, default=str))
        return
    verification = _verify(answer, verify_out, verify_duration, amqp_url, quiet=as_json)
    if as_json:
        out["verification"] = verification.to_dict()
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        print_verification(answer, verification)
    if not verification.measured_ok:
        sys.exit(1)
    if not verification.held:
        sys.exit(EXIT_NOT_HELD)


def _verify(answer, out: Path | None, duration_s: float | None, amqp_url: str | None, *, quiet: bool):
    """Run the verification with the sweep's progress display on stderr; the lock, Ctrl-C and a plan
    that names nothing end the command as `queuebench run` ends."""
    from rich.console import Console

    from benchmarks import runner
    from benchmarks import verify as verify_mod
    from benchmarks.progress import SweepProgress

    out = out if out is not None else verify_mod.default_out(answer)
    console = Console(stderr=True)
    progress = SweepProgress(console)
    console.print(f"queuebench plan --verify: {answer.request_text}; runs in {out}")
    try:
        return verify_mod.verify(answer, out, duration_s=duration_s, amqp_url=amqp_url, progress=progress,
                                 log=console.print if not quiet else (lambda _line: None))
    except ValueError as exc:
        raise click.UsageError(f"--verify: {exc}") from exc
    except runner.Interrupted as exc:
        progress.stop()
        console.print(f"queuebench: {exc}: stopped every process it started; completed runs are kept in {out}; "
                      "run the same command again to resume")
        sys.exit(130)
    except RuntimeError as exc:  # the measuring lock
        progress.stop()
        console.print(f"queuebench: error: {exc}")
        sys.exit(1)
    finally:
        progress.stop()
