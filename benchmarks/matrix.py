"""Matrix files: TOML in, a list of validated, de-duplicated run specs out. Nothing starts here.

A matrix file is a table of keys (`KEYS`). A key given as a list is an axis; the matrix is the product
of the axes, extended by ``[[include]]`` tables and trimmed by ``[[exclude]]`` tables. An include table is a
sub-matrix: its keys replace the top level's and its lists are its own axes, so a file can be a union
of small products (a curated covering set); with scalars only, it adds one cell. An exclude table drops
every cell (of the top level or of an include) matching one of its values for each key it names.
Library knobs live in ``[celery]``, ``[rq]`` and ``[dramatiq]`` tables, where a list is an axis too.

Every key and value is checked before anything runs; an error names the key and the allowed values.
A key that does not apply to a backend (`pool` for RQ, the ``[celery]`` table for Dramatiq) is dropped
for that backend, and cells that become identical run once. A cell a backend cannot honour (RQ on
RabbitMQ) is kept as *skipped* with its reason, so the sweep records it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends import HARNESS, MEASURABLE, backend_class, workload
from backends.base import BROKERS, ROUTINGS, SERIALIZERS

MATRIX_SCHEMA_VERSION = 1
#: `step` (scenarios/step.py) is driven by the capacity search, not by matrix cells.
SCENARIOS = ("throughput", "latency", "routing_mix", "payload", "poll")
MODES = ("load", "drain")
POOLS = ("prefork", "threads", "gevent", "solo")
ARRIVALS = ("constant", "poisson")
KNOB_TABLES = {"celery": "celery", "rq": "rq", "dramatiq": "dramatiq"}


class MatrixError(ValueError):
    """A matrix file that cannot run; the message names the key and what is allowed."""


def _choice(*allowed: str):
    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {', '.join(allowed)}"
    return check


def _int(low: int, high: int | None = None):
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
        return None if ok else f"an integer {'>= ' + str(low) if high is None else f'from {low} to {high}'}"
    return check


def _number(low: float, *, strict: bool = False):
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            value > low if strict else value >= low)
        return None if ok else f"a number {'>' if strict else '>='} {low:g}"
    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _str(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty string"


def _table(value: Any) -> str | None:
    return None if isinstance(value, dict) else "an inline table such as {ms = 50}"


#: Every key a matrix file may hold, its check, its default, and the backends it applies to (None: all).
KEYS: dict[str, tuple[Any, Any, frozenset[str] | None]] = {
    "backend": (_choice(*MEASURABLE, *HARNESS), "celery", None),
    "broker": (_choice(*BROKERS), "redis", None),
    "serializer": (_choice(*SERIALIZERS), "json", None),
    "processes": (_int(1, 256), 1, None),
    "threads": (_int(1, 256), 1, None),
    "pool": (_choice(*POOLS), None, frozenset({"celery"})),
    "worker_class": (_str, None, frozenset({"rq"})),
    "prefetch": (_int(1), None, None),
    "acks_late": (_bool, None, None),
    "routing": (_choice(*ROUTINGS), "shared", None),
    "long_threshold_ms": (_int(0, 60_000), 100, None),
    "results": (_bool, True, None),
    "scenario": (_choice(*SCENARIOS), "throughput", None),
    "mode": (_choice(*MODES), "load", None),
    "task": (_choice(*workload.CATALOGUE), "noop", None),
    "args": (_table, {}, None),
    "rate": (_number(0, strict=True), 50, None),
    "arrival": (_choice(*ARRIVALS), "constant", None),
    "tasks": (_int(1, 10_000_000), 1000, None),
    "warmup_s": (_number(0), 2, None),
    "duration_s": (_number(0, strict=True), 10, None),
    "drain_timeout_s": (_number(0, strict=True), 60, None),
    "repeats": (_int(1, 100), 1, None),
    "api_workers": (_int(1, 64), 2, None),
    "api_threads": (_int(1, 256), 4, None),
}
#: Keys that describe the file, not a cell.
META_KEYS = {"name", "description", "schema_version"}
#: Keys that only matter in one mode (dropped in the other so identical cells merge).
LOAD_ONLY = {"scenario", "rate", "arrival", "warmup_s", "duration_s", "api_workers", "api_threads"}
DRAIN_ONLY = {"tasks"}
#: Scenarios that send their own mix of tasks: `task` and `args` do not apply to them.
MIXED_SCENARIOS = ("routing_mix", "payload")


@dataclass(frozen=True)
class Cell:
    """One run point: the spec (every key resolved), its repeat index, and why it is skipped, if it is."""

    spec: Mapping[str, Any]
    repeat: int = 0
    skip_reason: str | None = None

    @property
    def run_id(self) -> str:
        return run_id(self.spec, self.repeat)


@dataclass
class Matrix:
    name: str
    description: str
    cells: list[Cell] = field(default_factory=list)
    source: str = ""


def spec_digest(spec: Mapping[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(blob, digest_size=5).hexdigest()


def run_id(spec: Mapping[str, Any], repeat: int) -> str:
    """Readable and deterministic: the same spec and repeat always give the same id (so sweeps resume)."""
    slots = f"p{spec['processes']}t{spec['threads']}"
    if "task" in spec:
        what = f"{spec['task']}" + ("".join(f"-{k}{v}" for k, v in sorted(spec.get("args", {}).items())))
    else:
        what = spec["scenario"]
    mode = f"r{spec['rate']:g}" if spec["mode"] == "load" else f"n{spec['tasks']}"
    return (f"{spec['backend']}-{spec['broker']}-{spec['serializer']}-{slots}-{spec['routing']}-{what}-{mode}"
            f"-{spec_digest(spec)}-rep{repeat}")


def _check_value(key: str, value: Any, where: str) -> None:
    check = KEYS[key][0]
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise MatrixError(f"{where}{key}: an empty list has no values to sweep")
    for item in values:
        problem = check(item)
        if problem:
            raise MatrixError(f"{where}{key} = {item!r} is not allowed: must be {problem}")


def _check_args(task_values: list[str], args_values: list[dict[str, Any]], where: str) -> None:
    for args in args_values:
        for name, value in args.items():
            known = {a.name: a for t in task_values for a in workload.CATALOGUE.get(t, ())}
            if name not in known:
                allowed = ", ".join(sorted(known)) or "none"
                raise MatrixError(f"{where}args.{name} is not an argument of {', '.join(task_values)}; "
                                  f"allowed: {allowed}")
            spec = known[name]
            if not isinstance(value, int) or isinstance(value, bool) or not spec.low <= value <= spec.high:
                raise MatrixError(f"{where}args.{name} = {value!r} is not allowed: must be an integer from "
                                  f"{spec.low} to {spec.high}")


def _check_knobs(table: str, knobs: Mapping[str, Any], where: str) -> None:
    known = getattr(backend_class(table), "knobs", {}) or {}
    for key, value in knobs.items():
        if key not in known:
            raise MatrixError(f"{where}[{table}] {key} is not a {table} knob; allowed: "
                              f"{', '.join(sorted(known)) or 'none'}")
        if isinstance(value, list) and not value:
            raise MatrixError(f"{where}[{table}] {key}: an empty list has no values to sweep")


def _check_table(raw: Mapping[str, Any], where: str, *, partial: bool) -> None:
    for key, value in raw.items():
        if key in KNOB_TABLES:
            if not isinstance(value, dict):
                raise MatrixError(f"{where}[{key}] must be a table of {key} knobs")
            _check_knobs(key, value, where)
        elif key in KEYS:
            if key == "repeats" and (partial or isinstance(value, list)):
                raise MatrixError(f"{where}repeats must be one integer at the top of the file, not an axis")
            _check_value(key, value, where)
        elif key in ("exclude", "include") and not partial:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise MatrixError(f"{where}{key} must be an array of tables ([[{key}]])")
            for i, sub in enumerate(value):
                _check_table(sub, f"{where}{key}[{i}].", partial=True)
        elif key in META_KEYS and not partial:
            continue
        else:
            allowed = sorted(KEYS) + sorted(KNOB_TABLES) + (["exclude", "include"] if not partial else [])
            raise MatrixError(f"{where}unknown key {key!r}; allowed keys: {', '.join(allowed)}")


def _axes(raw: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Flatten keys and knob tables into axes; knob keys become "celery.without_mingle" and so on."""
    axes: dict[str, list[Any]] = {}
    for key, value in raw.items():
        if key in KNOB_TABLES:
            for knob, knob_value in value.items():
                axes[f"{key}.{knob}"] = knob_value if isinstance(knob_value, list) else [knob_value]
        elif key in KEYS and key != "repeats":  # repeats is how often, not an axis
            axes[key] = value if isinstance(value, list) else [value]
    return axes


def _product(axes: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _matches(spec: Mapping[str, Any], pattern: Mapping[str, Any]) -> bool:
    """True when the resolved spec has one of the pattern's values for every key the pattern names."""
    for key, wanted in _axes(pattern).items():
        if "." in key:
            table, knob = key.split(".", 1)
            value = spec["options"].get(knob) if spec.get("backend") == table else None
        else:
            value = spec.get(key)
        if value not in wanted:
            return False
    return True


def _normalise(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve defaults, drop what does not apply to this backend or mode, fold knobs into `options`."""
    backend = flat.get("backend", KEYS["backend"][1])
    spec: dict[str, Any] = {}
    for key, (_, default, applies) in KEYS.items():
        if applies is not None and backend not in applies:
            continue
        spec[key] = flat.get(key, default)
    drop = set(DRAIN_ONLY if spec["mode"] == "load" else LOAD_ONLY)
    if spec["mode"] == "load" and spec["scenario"] in MIXED_SCENARIOS:
        drop |= {"task", "args"}  # these scenarios choose their own tasks (see benchmarks.runner)
    for key in drop:
        spec.pop(key, None)
    spec.pop("repeats")
    if "args" in spec:
        spec["args"] = dict(spec["args"])
    spec["options"] = {k.split(".", 1)[1]: v for k, v in sorted(flat.items())
                       if k.startswith(f"{backend}.")}
    return spec


def _skip_reason(spec: Mapping[str, Any]) -> str | None:
    """Why a backend cannot run this cell (checked without starting anything), or None."""
    from backends.base import UnsupportedOption
    from benchmarks.stack import validate

    if spec.get("scenario") == "poll" and not spec.get("results", True):
        return "the poll scenario reads GET /tasks/<id>, which needs results = true"
    try:
        validate(stack_config(spec))
    except UnsupportedOption as exc:
        return str(exc)
    return None


def stack_config(spec: Mapping[str, Any], **overrides: Any):
    """The `StackConfig` a spec describes (brokers chosen by the runner are passed as overrides)."""
    from benchmarks.stack import StackConfig

    fields = {k: spec[k] for k in ("backend", "broker", "serializer", "results", "routing", "long_threshold_ms",
                                    "processes", "threads", "prefetch", "acks_late") if k in spec}
    fields["pool"] = spec.get("pool")
    fields["worker_class"] = spec.get("worker_class")
    fields["options"] = dict(spec.get("options", {}))
    if spec.get("mode", "load") == "load":
        fields["api_workers"] = spec.get("api_workers", 2)
        fields["api_threads"] = spec.get("api_threads", 4)
    return StackConfig(**(fields | overrides))


def parse(text: str, *, name: str = "matrix", repeats: int | None = None) -> Matrix:
    """Validate and expand a matrix document. Raises `MatrixError` before anything could start."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"not valid TOML: {exc}") from exc
    _check_table(raw, "", partial=False)
    if raw.get("schema_version", MATRIX_SCHEMA_VERSION) != MATRIX_SCHEMA_VERSION:
        raise MatrixError(f"schema_version = {raw['schema_version']!r} is not allowed: must be "
                          f"{MATRIX_SCHEMA_VERSION}")
    axes = _axes(raw)
    task_values = axes.get("task", [KEYS["task"][1]])
    _check_args(task_values, axes.get("args", [{}]), "")
    flat_cells = _product(axes)
    for i, extra in enumerate(raw.get("include", [])):
        # An include table is a sub-matrix: its keys replace the top level's, its lists are its axes.
        sub = axes | _axes(extra)
        _check_args(sub.get("task", [KEYS["task"][1]]), sub.get("args", [{}]), f"include[{i}].")
        flat_cells += _product(sub)
    flat_cells = [c for c in flat_cells
                  if not any(_matches(_normalise(c), pattern) for pattern in raw.get("exclude", []))]

    matrix = Matrix(name=str(raw.get("name", name)), description=str(raw.get("description", "")), source=text)
    seen: set[str] = set()
    for flat in flat_cells:
        spec = _normalise(flat)
        if "task" in spec:
            _check_args([spec["task"]], [spec["args"]], "")
        key = json.dumps(spec, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        reason = _skip_reason(spec)
        count = repeats or int(raw.get("repeats", 1))
        for repeat in range(count):
            matrix.cells.append(Cell(spec=spec, repeat=repeat, skip_reason=reason))
    # Repeat-major order: every cell once, then every cell again, so slow drift of a shared machine is
    # spread over all cells instead of landing on one cell's repeats.
    matrix.cells.sort(key=lambda cell: cell.repeat)
    return matrix


def load(path: str | Path, *, repeats: int | None = None) -> Matrix:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MatrixError(f"cannot read matrix file {path}: {exc.strerror}") from exc
    return parse(text, name=path.stem, repeats=repeats)


def apply_only(matrix: Matrix, only: list[str]) -> Matrix:
    """Keep the cells whose spec matches every `key=value` (values parsed as TOML scalars)."""
    filters: list[tuple[str, Any]] = []
    for item in only:
        key, sep, value = item.partition("=")
        if not sep:
            raise MatrixError(f"--only {item!r}: expected key=value")
        if key not in KEYS and not key.startswith(tuple(f"{t}." for t in KNOB_TABLES)):
            raise MatrixError(f"--only {key}: unknown key; allowed keys: {', '.join(sorted(KEYS))}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        filters.append((key, parsed))

    def keep(cell: Cell) -> bool:
        for key, value in filters:
            if "." in key:
                table, knob = key.split(".", 1)
                if cell.spec.get("backend") != table or cell.spec["options"].get(knob) != value:
                    return False
            elif cell.spec.get(key) != value:
                return False
        return True

    matrix.cells = [c for c in matrix.cells if keep(c)]
    return matrix
