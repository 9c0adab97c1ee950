"""The `queuebench` command line (also `python -m benchmarks`).

Bad flags and impossible combinations exit 2 with a one-line reason before anything is started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

import backends
from backends import backend_class
from backends.base import BROKERS, BackendError, UnsupportedOption
from benchmarks import __version__, brokers, runner, store
from benchmarks import matrix as matrix_mod
from benchmarks import overhead as oh
from benchmarks import search as search_mod
from benchmarks import spec as spec_mod
from benchmarks.deploy import cell as hosts_cell
from benchmarks.deploy.inventory import InventoryError
from benchmarks.deploy.inventory import load as load_inventory
from benchmarks.deploy.plan import ExternalBrokers, PlanError
from benchmarks.progress import SweepProgress, table_console
from benchmarks.smoke import KINDS, smoke_one
from benchmarks.stack import Stack, StackConfig, validate
from benchmarks.verdicts import parse_slo

EXIT_USAGE = 2


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: unwind to `finally` and stop everything."""


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--option key=value` pairs; values parse as TOML scalars (ints, floats, booleans, "strings")."""
    import tomllib

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            options[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = value
    return options


@contextlib.contextmanager
def _sweep_exits(progress: Any, console: Any, kept: str) -> Iterator[None]:
    """Stop the progress display however a sweep ends; Ctrl-C/SIGTERM exits 130 saying what was kept,
    the measuring lock held by another sweep exits 1."""

    try:
        yield
    except runner.Interrupted as exc:
        progress.stop()
        console.print(f"queuebench: {exc}: stopped every process it started; {kept}; run the same command "
                      "again to resume")
        sys.exit(130)
    except RuntimeError as exc:  # the measuring lock
        progress.stop()
        console.print(f"queuebench: error: {exc}")
        sys.exit(1)
    finally:
        progress.stop()  # idempotent


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _print_measured(console: Any, out: Path, since: str) -> None:
    """The share of this sweep's wall time spent in measured windows, from the sweep.json it wrote."""
    record = store.read_sweep(out)
    if record is None or str(record.get("started_at", "")) < since:
        return  # no cell ran: the sweep.json there (if any) is an older sweep's
    console.print(f"measured {record['measured_fraction']:.0%} of the sweep's wall time: {record['window_s']:.0f} s "
                  f"of measured windows in {record['wall_s']:.0f} s, {record['cells_run']} cell(s) "
                  f"({out / store.SWEEP_JSON})")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="queuebench")
@click.option("--wait-lock", "wait_lock_s", type=click.FloatRange(0), default=None, metavar="SECONDS",
              help="When another sweep holds the machine-wide measuring lock, wait up to this long for it "
                   "(run, search, overhead, tune, plan --verify) instead of exiting 1 at once.  "
                   "[default: 0, or $QUEUEBENCH_LOCK_WAIT_S]")
def cli(wait_lock_s: float | None) -> None:
    """Measure, compare and size Python task queues (Celery, RQ, Dramatiq, Huey, arq) behind one Flask API."""
    if wait_lock_s is not None:
        os.environ[runner.LOCK_WAIT_ENV] = f"{wait_lock_s:g}"


class BackendName(click.ParamType):
    """A registered backend or a dotted path to a backend class (checked by the registry)."""

    name = "backend"

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.allowed) + "|mypkg.mod:Class]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value in self.allowed or (backends.is_dotted(value) and backends.check_backend_name(value) is None):
            return value
        self.fail(f"{value!r}: must be {backends.check_backend_name(value) or 'one of ' + ', '.join(self.allowed)}",
                  param, ctx)


def _spec_option(key: spec_mod.Key):
    """The ``serve`` option of one declared spec key: its type, range, default and help come from `key`."""
    flag = "--" + key.name.replace("_", "-")
    domain = key.domain
    help_text = key.help[0].upper() + key.help[1:] + "."
    if key.name == "backend":
        return click.option(flag, required=True, type=BackendName(backends.measurable()),
                            help="The queue library (`queuebench backends` lists them; baseline is the floor, a "
                                 "bare Redis list), or a dotted path mypkg.mod:MyBackend.")
    if domain.type is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", default=domain.default,
                            show_default=domain.default is not None, help=help_text)
    if domain.choices:
        kind: Any = click.Choice([str(c) for c in domain.choices])
    elif domain.type is int:
        kind = click.IntRange(int(domain.low) if domain.low is not None else None,
                              int(domain.high) if domain.high is not None else None)
    else:
        kind = click.FloatRange(domain.low, domain.high)
    return click.option(flag, type=kind, default=domain.default, show_default=domain.default is not None,
                        help=help_text)


def _serve_options(command):
    for name in reversed(spec_mod.SERVE_KEYS):
        command = _spec_option(spec_mod.KEYS[name])(command)
    return command


@cli.command()
@_serve_options
@click.option("--broker-url", metavar="URL",
              help="Use this existing Redis instead of a private one (never flushed; must be empty "
                   "unless --allow-dirty). With --broker rabbitmq it holds the results. A master watched by "
                   "Sentinel: redis+sentinel://host:26379[,host:port]/mymaster/db (Celery, RQ, Dramatiq); a "
                   "Redis Cluster is refused.")
@click.option("--amqp-url", metavar="URL",
              help="RabbitMQ to use. Default: amqp://guest:guest@127.0.0.1:5672/%2F when it answers, "
                   "else a private node if rabbitmq-server is installed.")
@click.option("--allow-dirty", is_flag=True, help="Accept a non-empty broker database; nothing is purged then.")
@click.option("--per-run-vhost", is_flag=True,
              help="On a RabbitMQ the harness did not start: use a virtual host of this run's own, created "
                   "through the management API (port 15672 of the AMQP host, or $QUEUEBENCH_AMQP_ADMIN_URL) "
                   "with the AMQP URL's user, and deleted at the end.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Library knob, repeatable (see `queuebench backends`), e.g. without_mingle=true.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="API port on 127.0.0.1 (0: a free one).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where ledger and logs go (default: a new temporary directory).")
def serve(broker_url: str | None, amqp_url: str | None, allow_dirty: bool, per_run_vhost: bool,
          options: tuple[str, ...], port: int, run_dir: Path | None, **keys: Any) -> None:
    """Start a broker, workers and the API for one backend; stop it all on Ctrl-C or SIGTERM.

    Prints the API URL once the API is healthy and a task has round-tripped through every queue.
    """
    config = StackConfig.of(broker_url=broker_url, amqp_url=amqp_url, allow_dirty=allow_dirty,
                            per_run_vhost=per_run_vhost, api_port=port or None, options=_parse_options(options),
                            **keys)
    backend, serializer, routing = config.backend, keys["serializer"], keys["routing"]
    try:
        validate(config)
    except UnsupportedOption as exc:
        raise click.UsageError(str(exc)) from exc

    run_dir = run_dir or Path(tempfile.mkdtemp(prefix=f"queuebench-serve-{backends.label(backend)}-"))
    stack = Stack(config, run_dir)
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        started = time.monotonic()
        stack.start()
        click.echo(f"queuebench: {backend} on {config.broker} ({serializer}, {routing}, "
                   f"{config.slots} slot(s)) ready in {time.monotonic() - started:.1f} s", err=True)
        click.echo(f"queuebench: ledger and logs in {run_dir}", err=True)
        click.echo(stack.api_url, nl=True)
        sys.stdout.flush()
        while True:
            time.sleep(0.5)
            stack.supervisor.check()
    except Interrupted as exc:
        click.echo(f"queuebench: {exc}, stopping", err=True)
    except (BackendError, RuntimeError, TimeoutError, OSError) as exc:
        click.echo(f"queuebench: error: {exc}", err=True)
        code = 1
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt the teardown
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code)


def _role(name: str) -> str:
    if name in backends.FLOORS:
        return "floor"
    if name in backends.HARNESS:
        return "harness ceiling"
    return "unit tests only" if name in backends.UNIT_TEST_ONLY else "library"


@cli.command(name="backends")
@click.argument("name", required=False, type=BackendName(tuple(backends.REGISTRY)))
def list_backends(name: str | None) -> None:
    """List every backend (brokers, broker shapes beyond one server and classic queues: Redis Sentinel,
    RabbitMQ quorum queues; serializers, concurrency, knobs), or one backend's knobs in detail.

    With NAME: each knob's allowed values, the library's own default, the values worth tuning and what it
    does (set one with `serve --option KNOB=VALUE` or in the matrix's [NAME] table).
    """


    if name is None:
        table = Table("backend", "role", "brokers", "also on", "serializers", "slots (processes x threads) map to",
                      "knobs (`queuebench backends NAME`)", "environment")
        for registered in backends.REGISTRY:
            cls = backend_class(registered)
            shapes = ", ".join(sorted(getattr(cls, "broker_shapes", ()))) or "-"
            table.add_row(registered, _role(registered), ", ".join(sorted(cls.brokers)), shapes,
                          ", ".join(sorted(cls.serializers)), cls.concurrency, ", ".join(cls.knobs) or "-",
                          "own: " + " ".join(cls.environment) if cls.environment else "harness's")
        table_console().print(table)
        return
    cls = backend_class(name)
    table = Table("knob", "values", "library default", "worth trying", "what it does",
                  title=f"{backends.label(name)} knobs ({cls.concurrency})")
    for knob_name, knob in cls.knobs.items():
        table.add_row(knob_name, knob.values_text, "-" if knob.default is None else str(knob.default),
                      ", ".join(str(c) for c in knob.candidates) or "-", knob.help)
    table_console().print(table)


@cli.command()
@click.option("--backend", "backend_names", multiple=True, type=click.Choice(backends.measurable()),
              help="Backend to check (repeatable; default: all).")
@click.option("--broker", "broker_names", multiple=True, type=click.Choice(BROKERS),
              help="Broker to check on (repeatable; default: redis and sqlite, plus rabbitmq where it can be "
                   "had), for each backend that runs on it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/smoke"),
              show_default=True, help="Where each check's ledger and logs go.")
def smoke(backend_names: tuple[str, ...], broker_names: tuple[str, ...], out: Path) -> None:
    """Round-trip every task kind through the API for each backend, on brokers the harness starts.

    Exits 1 if any check failed. Each check's ledger and process logs stay under --out.
    """


    console = Console(stderr=True)
    if not broker_names:
        rabbit = brokers.amqp_answers(brokers.DEFAULT_AMQP_URL, 0.5) or bool(shutil.which("rabbitmq-server"))
        broker_names = ("redis", "rabbitmq", "sqlite") if rabbit else ("redis", "sqlite")
    cells = [(b, k) for k in broker_names for b in (backend_names or backends.measurable())
             if k in backend_class(b).brokers]
    table = Table("backend", "broker", "ready s", *[f"{k} ms" for k, _, _ in KINDS], "verdict",
                  title="queuebench smoke: end to end (sent -> finished) per task kind, from the ledger")
    failed = 0
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, (backend, broker) in enumerate(cells, 1):
            console.print(f"[{i}/{len(cells)}] {backend} on {broker} ...")
            config = StackConfig.of(backend=backend, broker=broker, processes=2)
            try:
                result = smoke_one(config, out / f"{backend}-{broker}")
            except (BackendError, RuntimeError, TimeoutError, OSError) as exc:
                failed += 1
                table.add_row(backend, broker, "-", *["-"] * len(KINDS), f"[red]error: {exc}")
                continue
            failed += not result.ok
            verdict = "[green]ok" if result.ok else "[red]" + "; ".join(result.problems)
            table.add_row(backend, broker, f"{result.ready_s:.1f}",
                          *[f"{result.end_to_end_ms.get(k, float('nan')):.1f}" for k, _, _ in KINDS], verdict)
    except Interrupted as exc:
        console.print(f"queuebench: {exc}, stopped (every process it started has been stopped)")
        sys.exit(130)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    table_console().print(table)
    console.print(f"ledgers and logs: {out}")
    sys.exit(1 if failed else 0)


def _sweep_options(what: str):
    """--only, --force, --repeats, --amqp-url and --load-workers, as `run` and `search` both take them."""
    options = [
        click.option("--only", "only", multiple=True, metavar="KEY=VALUE",
                     help=f"Only the {what} whose spec has this value (repeatable), e.g. --only backend=rq."),
        click.option("--force", is_flag=True, help="Redo runs already done (default: resume, skipping them)."),
        click.option("--repeats", type=click.IntRange(1, 100), help="Override the matrix's repeats."),
        click.option("--amqp-url", metavar="URL", help="RabbitMQ for rabbitmq cells (default: the local one, "
                                                        "else a private node; with `run --inventory`: one every "
                                                        "host reaches, instead of the broker host's node)."),
        click.option("--load-workers", type=click.IntRange(spec_mod.KEYS["load_workers"].domain.low,
                                                           spec_mod.KEYS["load_workers"].domain.high),
                     help="Locust processes sending the load of every load-mode cell (sets the matrix key "
                          "load_workers; default: the matrix's, else 1). N > 1: a headless master on "
                          "127.0.0.1 (with --inventory: on the loadgen host's address) and N workers, each "
                          "sending 1/N of the rate."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _check_broker_url(matrix: Any, broker_url: str) -> None:
    """Refuse (exit 2, nothing started) a --broker-url some cell's backend cannot use: a malformed URL, a
    Redis Cluster, or a Sentinel URL for a library whose backend here has no Sentinel connection."""
    for cell in matrix.cells:
        if cell.skip_reason or cell.spec.get("broker") == "sqlite":
            continue
        try:
            validate(StackConfig(cell.spec, broker_url=broker_url))
        except UnsupportedOption as exc:
            raise click.UsageError(f"--broker-url: {exc} (cell {cell.run_id}; --only backend=... runs the "
                                   "others)") from exc


def _load_matrix(matrix_file: Path, repeats: int | None, only: tuple[str, ...],
                 load_workers: int | None = None) -> Any:
    """The matrix file with --repeats, --load-workers and --only applied; a bad one is a usage error (exit 2)."""

    overrides = {"load_workers": load_workers} if load_workers is not None else None
    try:
        matrix = matrix_mod.load(matrix_file, repeats=repeats, overrides=overrides)
        if only:
            matrix = matrix_mod.apply_only(matrix, list(only))
    except matrix_mod.MatrixError as exc:
        raise click.UsageError(f"{matrix_file}: {exc}") from exc
    if not matrix.cells:
        raise click.UsageError(f"{matrix_file}: no cell to run" + (" after --only" if only else ""))
    return matrix


@cli.command()
@click.argument("matrix_file", metavar="MATRIX.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/runs"),
              show_default=True, help="Where run directories (<out>/<run_id>/) and summary.csv go.")
@_sweep_options("cells")
@click.option("--broker-url", metavar="URL",
              help="A Redis you run yourself for every Redis cell (and the results of RabbitMQ cells) instead "
                   "of the sweep's private one: redis://host:port/db, or a master watched by Sentinel, "
                   "redis+sentinel://host:26379[,host:port]/mymaster/db. Never flushed; must be empty (but for "
                   "what the sweep's previous cell left after its purge); each cell purges only what it "
                   "created. A Redis Cluster is refused. With --inventory: one every host reaches, instead of "
                   "the broker host's.")
@click.option("--per-run-vhost", is_flag=True,
              help="RabbitMQ cells run in a virtual host of their own, created through the management API "
                   "(port 15672 of the AMQP host, or $QUEUEBENCH_AMQP_ADMIN_URL) and deleted after each cell.")
@click.option("--dry-run", is_flag=True, help="List the cells (and which are done or skipped); start nothing.")
@click.option("--inventory", "inventory_file", type=click.Path(dir_okay=False, path_type=Path), metavar="HOSTS.ini",
              help="Run each cell on the hosts of this Ansible inventory (roles loadgen, api, workers, broker; "
                   "needs the `hosts` extra): queuebench installs itself there, starts and stops everything "
                   "through Ansible and collects every host's ledger. Run ids end in -on-<inventory name>. The "
                   "broker host runs a private redis-server (Redis cells; the results of RabbitMQ cells) and "
                   "RabbitMQ node; with --broker-url/--amqp-url the inventory has no broker host and every host "
                   "uses your brokers instead.")
def run(matrix_file: Path, out: Path, only: tuple[str, ...], force: bool, repeats: int | None,
        amqp_url: str | None, broker_url: str | None, per_run_vhost: bool, load_workers: int | None,
        dry_run: bool, inventory_file: Path | None) -> None:
    """Measure every cell of a matrix file with Locust through the API, one cell at a time.

    Each cell's raw records and verdict go to OUT/<run_id>/ (run.json, tasks.parquet, ...) and every
    run is listed in OUT/summary.csv. Cells already done are skipped, so an interrupted sweep resumes.
    One private Redis serves every Redis cell of the sweep, emptied (FLUSHALL) before each, unless
    --broker-url names a Redis you run yourself (never emptied; a Cluster is refused). OUT/sweep.json
    says where the sweep's wall time went; the share spent in measured windows is printed at the end.
    With --inventory, each cell runs on the inventory's hosts instead (load or drain mode on Redis or
    RabbitMQ, started on the inventory's broker host, or yours with --broker-url/--amqp-url [--per-run-vhost]
    and no broker host), each host's ledger and resource samples are collected into
    OUT/<run_id>/hosts/<host>/ with its manifest, and run.json records every host's clock offset, CPU use
    and the broker's round trip from every host. Exits 1 if any cell failed or errored, 130 on Ctrl-C
    (completed cells are kept), 2 on a bad matrix or inventory.
    """


    matrix = _load_matrix(matrix_file, repeats, only, load_workers)
    if broker_url:
        _check_broker_url(matrix, broker_url)
    console = Console(stderr=True)
    if inventory_file is not None:
        if per_run_vhost and not amqp_url:
            raise click.UsageError("--per-run-vhost: a virtual host of each cell's own on a RabbitMQ you run, so "
                                   "with --inventory it needs --amqp-url (the broker host's node is each cell's own)")
        _run_on_inventory(matrix, inventory_file, out, force, dry_run, console,
                          ExternalBrokers(broker_url, amqp_url, per_run_vhost))
        return
    todo, done = runner.plan(matrix, out, force=force)
    if dry_run:
        for cell in matrix.cells:
            state = "skip: " + cell.skip_reason if cell.skip_reason else ("done" if cell in done else "to run")
            click.echo(f"{cell.run_id}\t{state}")
        est = sum(runner.cell_seconds(c) for c in todo)
        console.print(f"{len(matrix.cells)} cells, {len(todo)} to run, about {est / 60:.1f} min")
        return
    console.print(f"queuebench run {matrix.name}: {len(matrix.cells)} cell(s), {len(todo)} to run, "
                  f"results in {out}")
    since = _now()
    results = _sweep(console, out, lambda progress: runner.run_matrix(
        matrix, out, force=force, amqp_url=amqp_url, broker_url=broker_url, per_run_vhost=per_run_vhost,
        progress=progress))
    _end_run(console, results, out, since)


def _sweep(console: Any, out: Path, run_cells: Any) -> list[Any]:
    """`run_cells(progress)` under the progress display, with `run`'s exits (130 on Ctrl-C, 1 when the measuring
    lock is taken)."""
    progress = SweepProgress(console)
    with _sweep_exits(progress, console, f"completed cells are kept in {out}"):
        return run_cells(progress)


def _run_on_inventory(matrix: Any, inventory_file: Path, out: Path, force: bool, dry_run: bool, console: Any,
                      external: ExternalBrokers) -> None:
    """`run --inventory`: check the inventory and every cell before anything starts (exit 2), then run."""
    try:
        inventory = load_inventory(inventory_file, external_broker=bool(external.broker_url or external.amqp_url))
        hosts_cell.check(matrix, inventory, external)
    except (InventoryError, PlanError) as exc:
        raise click.UsageError(str(exc)) from exc
    roles = ", ".join(f"{role}: {' '.join(names) or 'yours (--broker-url/--amqp-url)'}"
                      for role, names in inventory.roles.items())
    if dry_run:
        for cell in matrix.cells:
            run_id = hosts_cell.run_id(cell, inventory)
            state = ("skip: " + cell.skip_reason if cell.skip_reason
                     else "done" if store.is_done(out / run_id) and not force else "to run")
            click.echo(f"{run_id}\t{state}")
        console.print(f"{len(matrix.cells)} cells on {len(inventory.hosts)} host(s) ({roles})")
        return
    console.print(f"queuebench run {matrix.name} on {inventory_file} ({roles}): {len(matrix.cells)} cell(s), "
                  f"results in {out}")
    since = _now()
    results = _sweep(console, out, lambda progress: hosts_cell.run_matrix(matrix, inventory, out, force=force,
                                                                          progress=progress, external=external))
    for result in results:
        record = store.read_run(result.run_dir) if result.run_dir is not None else None
        if record is not None and record.get("clocks"):
            console.print(_hosts_lines(record))
    _end_run(console, results, out, since)


def _hosts_lines(record: dict[str, Any]) -> str:
    """What an inventory run shows: per host its clock, its broker round trip, its collected ledger and its
    resource use (machine CPU, busiest component), and exactly-once across hosts."""
    lines = [f"{record['run_id']}: {record['status']}"]
    manifests = record.get("deployment", {}).get("manifests", {})
    rtts = record.get("brokers", {}).get("broker", {}).get("rtt_ms_by_host", {})
    for name, c in record["clocks"].get("hosts", {}).items():
        clock = f"offset {c['start']['offset_ns'] / 1e6:+.3f} ms +- {c['start']['uncertainty_ns'] / 1e6:.3f} ms"
        if c.get("drift_ppm") is not None:
            clock += f", drift {c['drift_ppm']:+.1f} ppm"
        if rtts.get(name) is not None:
            clock += f"; broker RTT {rtts[name]:.3f} ms"
        files = manifests.get(name)
        ledger = (f"; ledger {files['ledger_rows']} rows in {files['ledger_files']} file(s)"
                  + (f", {files['request_rows']} request rows" if files["request_logs"] else "")
                  + ", as its manifest says") if files else ""
        lines.append(f"  {name}: clock {clock}{ledger}")
        use = ((record.get("summary") or {}).get("figures", {}).get("resources_by_host") or {}).get(name)
        if use:
            lines.append(f"    {_host_use_line(use)}")
    summary = record.get("summary")
    lines += _loadgen_lines(record.get("generator") or {}, (summary or {}).get("figures", {}))
    if summary:
        figures, checks = summary["figures"], summary["checks"]
        once = all(checks[k]["ok"] for k in ("all_finished", "no_duplicates", "nothing_unsent_ran"))
        source = "enqueued by the coordinator" if record.get("spec", {}).get("mode") == "drain" else "sent through the API"
        lines.append(f"  tasks: {figures['sent']} {source}, executions by host "
                     f"{figures.get('executions_by_host')}; exactly once across hosts: {'yes' if once else 'NO'}")
    if record.get("detail"):
        lines.append(f"  {record['detail']}")
    return "\n".join(lines)


def _host_use_line(use: dict[str, Any]) -> str:
    """One host's resource use: its machine's CPU (in the measured window, else over the run) and memory, and
    its busiest component, so a user sees which host saturated."""
    machine, parts = use.get("machine") or {}, []
    window, run = machine.get("cpu_percent_window"), machine.get("cpu_percent")
    if window is not None or run is not None:
        parts.append(f"CPU {window if window is not None else run:.0f} % of {machine['n_cpus']} CPU(s) "
                     + ("in the window" if window is not None else "over the run"))
    if machine.get("mem_total_mib"):
        parts.append(f"memory peak {machine['peak_mem_used_mib']:.0f} of {machine['mem_total_mib']:.0f} MiB")
    components = use.get("components") or {}
    if components:
        busiest = max(components, key=lambda c: components[c]["cpu_s"])
        parts.append(f"busiest: {busiest} {components[busiest]['cpu_s']:.2f} CPU-s")
    return "resources: " + ("; ".join(parts) if parts else "not sampled")


def _loadgen_lines(generator: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """Each loadgen host of an inventory run: the Locust master's, its Locust workers (how many, how many
    reported the end of their load) and the requests it sent."""
    if not generator.get("hosts"):
        return []
    workers = (generator.get("workers") or {}).get("by_host", {})
    reported = (figures.get("load_workers") or {}).get("by_host", {})
    requests = figures.get("requests_by_loadgen_host", {})
    lines = []
    for host in generator["hosts"]:
        parts = ["Locust master" if host == generator.get("host") and workers else ""]
        if host in workers:
            parts.append(f"{workers[host]} Locust worker(s)" + (f", {reported[host]['reported']} reported the "
                                                                  "end of their load" if host in reported else ""))
        if host in requests:
            parts.append(f"{requests[host]} requests sent")
        lines.append(f"  loadgen {host}: " + "; ".join(p for p in parts if p))
    return lines


def _end_run(console: Any, results: list[Any], out: Path, since: str) -> None:
    """The sweep's statuses, where its results are, the measured share; exit 1 if a cell failed or errored."""
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    console.print("cells: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    console.print(f"results: {out} (summary: {out / 'summary.csv'})")
    _print_measured(console, out, since)
    bad = counts.get("failed", 0) + counts.get("error", 0)
    sys.exit(1 if bad else 0)


@cli.command()
@click.argument("matrix_file", metavar="MATRIX.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--slo", "slo_text", default="p95=1s", show_default=True, metavar="pNN=LIMIT",
              help="The end-to-end latency objective a step must keep (p50/p90/p95/p99 = a limit in ms or s).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/runs/search"),
              show_default=True, help="Where the steps' run directories, summary.csv and searches/*.json go.")
@click.option("--factor", type=click.FloatRange(1.05, 10), default=1.5, show_default=True,
              help="Each step offers this many times the last sustained rate.")
@click.option("--max-steps", type=click.IntRange(1, 50), default=8, show_default=True,
              help="Stop rising after this many steps (the knee is then at least the last rate).")
@click.option("--refine", type=click.IntRange(0, 5), default=1, show_default=True,
              help="Bisections between the last sustained rate and the first that was not.")
@_sweep_options("configurations")
def search(matrix_file: Path, slo_text: str, out: Path, factor: float, max_steps: int, refine: int,
           only: tuple[str, ...], force: bool, repeats: int | None, amqp_url: str | None,
           load_workers: int | None) -> None:
    """Find each configuration's knee: raise the offered rate until backlog grows or the SLO breaks.

    A step counts as sustained only below Little's bound (slots / mean service time), with every
    repeat finishing at least 95 % of what it was sent and its end-to-end quantile within --slo.

    Every configuration of MATRIX.toml (load mode, scenario latency or throughput; its rate is where
    the search starts) is measured at rising rates (x --factor), each step a full, self-checked run in
    OUT/<run_id>/, then bisected --refine times between the last sustained rate and the first that was
    not. Each search's steps, knee and evidence go to OUT/searches/<search_id>.json; `queuebench plan`
    and `queuebench report` read the step runs like any others; OUT/sweep.json says where the wall time
    went (the measured share is printed at the end). Exits 1 if a step failed or errored,
    130 on Ctrl-C (measured steps are kept and reused on the next run), 2 on a bad matrix or SLO.
    """


    try:
        slo = parse_slo(slo_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--slo") from exc
    matrix = _load_matrix(matrix_file, repeats, only, load_workers)
    try:
        configs = search_mod.configurations(matrix)
    except ValueError as exc:
        raise click.UsageError(f"{matrix_file}: {exc}") from exc
    if not configs:  # every cell skipped
        raise click.UsageError(f"{matrix_file}: no configuration to search")
    console = Console(stderr=True)
    console.print(f"queuebench search {matrix.name}: {len(configs)} configuration(s), SLO {slo.cli}, "
                  f"x{factor:g} per step, results in {out}")
    progress = SweepProgress(console)
    progress.start_sweep([], 0)
    since = _now()
    with _sweep_exits(progress, console, f"measured steps are kept in {out}"):
        found = search_mod.run_searches(matrix, slo, out, factor=factor, max_steps=max_steps, refine=refine,
                                        force=force, amqp_url=amqp_url, progress=progress, log=console.print)
    table = Table("search", "knee (tasks/s)", f"{slo.name} at the knee", "first unsustained", "steps",
                  "why it stopped", title=f"Highest sustained rate within {slo.label}")
    for item in found:
        record = item.record()
        knee, above = item.knee, record["first_unsustained_rate_per_s"]
        repeats = f" ({len(knee.run_ids)} repeat{'s' if len(knee.run_ids) != 1 else ''})" if knee else ""
        latency = f"{knee.e2e_ms:.0f} ms (n={knee.e2e_tasks})" if knee and knee.e2e_ms is not None else "-"
        table.add_row(item.search_id, "-" if knee is None else f"{knee.rate_per_s:g}{repeats}", latency,
                      "-" if above is None else f"{above:g}", str(len(item.steps)), item.stopped_because)
    table_console().print(table)
    console.print(f"searches: {out / 'searches'}; steps: {out} (summary: {out / 'summary.csv'})")
    _print_measured(console, out, since)
    bad = any(s.verdict in ("failed", "error") for item in found for s in item.steps)
    sys.exit(1 if bad else 0)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/runs/overhead"),
              show_default=True, help="Where the overhead runs and overhead.json go.")
@click.option("--force", is_flag=True, help="Redo the runs already done.")
def overhead(out: Path, force: bool) -> None:
    """Measure what the harness costs: the bare floor, the harness's own paths beside it, and the ledger.

    Under the measuring lock: the bare floor (benchmarks/floor_app.py, one Redis INCR per request, the
    API's gunicorn settings, plain Locust, on a private redis-server), then
    benchmarks/matrices/overhead.toml (the discard and baseline backends at rising offered rates), then
    the floor again; then a ledger micro-benchmark. Prints the floor and each path side by side with its
    ratio to the floor, and writes everything to OUT/overhead.json. See benchmarks/NOTES.md.
    """
    import json
    import tempfile

    console = Console(stderr=True)
    progress = SweepProgress(console)
    matrix = matrix_mod.load(oh.matrix_path())
    floors: list[dict[str, Any]] = []
    with (_sweep_exits(progress, console, f"completed runs are kept in {out}"), runner.measuring_lock(),
          tempfile.TemporaryDirectory(prefix="queuebench-floor-") as workdir):
        console.print(f"bare floor (before): {oh.FLOOR_WARMUP_S:g} s warm-up + {oh.FLOOR_DURATION_S:g} s ...")
        floors.append(oh.measure_floor(Path(workdir) / "before"))
        runner.run_matrix(matrix, out, force=force, progress=progress, take_lock=False)
        progress.stop()
        console.print("bare floor (after) ...")
        floors.append(oh.measure_floor(Path(workdir) / "after"))
    console.print("ledger micro-benchmark ...")
    ledger = oh.ledger_cost()
    records = [r for r in (runner.read_run(out / cell.run_id) for cell in matrix.cells) if r]
    floor = oh.floor_summary(floors)
    rows = oh.with_floor_ratios(oh.ceiling_table(records), floor["requests_per_s"])
    result = {"floor": floor, "ceiling": rows, "ratios": oh.ratios(rows), "over_offered": oh.over_offered(rows),
              "ledger": ledger, "generator": runner.generator_record(),
              "machine": records[0]["environment"] if records else None}
    (out / "overhead.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = Table("path", "offered/s", "achieved/s (median)", "min-max", "x floor", "CPU us/task", "verdicts",
                  title="The bare floor and the harness's own paths")
    table.add_row("floor (Flask + 1 INCR, plain Locust)", "closed loop", f"{floor['requests_per_s']:.0f}",
                  f"{floor['min']:.0f}-{floor['max']:.0f}", "1.00", "-", f"before {floor['before']:.0f}, after "
                  f"{floor['after']:.0f}")
    for row in rows:
        table.add_row(row["backend"], f"{row['offered_per_s']:g}", f"{row['achieved_per_s']:.0f}",
                      f"{row['achieved_min']:.0f}-{row['achieved_max']:.0f}",
                      f"{row['over_floor']:.2f}" if row["over_floor"] is not None else "-",
                      f"{row['cpu_us_per_task']:.0f}" if row["cpu_us_per_task"] else "-", ", ".join(row["verdicts"]))
    table_console().print(table)
    for ratio in result["ratios"]:
        click.echo(f"offered {ratio['offered_per_s']:g}/s: baseline/discard = {ratio['baseline_over_discard']:.2f}")
    for item in result["over_offered"]:
        click.echo(f"{item['backend']}: achieved at {item['high_per_s']:g}/s offered / at {item['low_per_s']:g}/s = "
                   f"{item['ratio']:.2f}")
    click.echo(f"ledger: {ledger['ledger_us_per_task']:.1f} us per task (3 rows; {ledger['with_ledger_us_per_task']:.1f} "
               f"with vs {ledger['without_ledger_us_per_task']:.1f} us without)")
    click.echo(f"written: {out / 'overhead.json'}")


def _register_analysis_commands() -> None:
    """`report` and `compare` live in benchmarks.analysis (they import matplotlib only when run); `plan`
    in benchmarks.plan_verify, as its --verify measures; `tune` in benchmarks.tune, which measures too."""
    from benchmarks.analysis.commands import compare, report
    from benchmarks.plan_verify import plan
    from benchmarks.tune import tune_command

    cli.add_command(report)
    cli.add_command(compare)
    cli.add_command(plan)
    cli.add_command(tune_command)


_register_analysis_commands()


def main() -> None:
    cli(prog_name="queuebench")


if __name__ == "__main__":
    main()
