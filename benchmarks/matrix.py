"""Matrix files: TOML in, a list of validated, de-duplicated run specs out. Nothing starts here.

A matrix file is a table of spec keys (declared once in `benchmarks.spec`). A key given as a list is an
axis; the matrix is the product of the axes, extended by ``[[include]]`` tables and trimmed by
``[[exclude]]`` tables. An include table is a sub-matrix: its keys replace the top level's and its lists
are its own axes, so a file can be a union of small products (a curated covering set); with scalars
only, it adds one cell. An exclude table drops every cell (of the top level or of an include) matching
one of its values for each key it names. Library knobs live in tables named after their backend
(``[celery]``, ``[rq]``, ...; each backend declares its knobs), where a list is an axis too. ``backend =
"all"`` means every library and the floor the registry knows.

Every key and value is checked before anything runs; an error names the key and the allowed values.
A key that does not apply to a cell (`rate` in drain mode, a ``[celery]`` table for a Dramatiq cell) is
dropped for it, and cells that become identical run once. A cell a backend cannot honour (RQ on
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

import backends
from backends import workload
from backends.base import UnsupportedOption
from benchmarks import spec as spec_mod
from benchmarks.spec import KEYS

MATRIX_SCHEMA_VERSION = 1
#: Keys that describe the file, not a cell.
META_KEYS = {"name", "description", "schema_version"}
#: Keys that moved into a backend's knob table: named in the error for a file that still uses them.
MOVED_KEYS = {"pool": "[celery] pool", "worker_class": "[rq] worker_class"}


class MatrixError(ValueError):
    """A matrix file that cannot run; the message names the key and what is allowed."""


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
    return (f"{backends.label(spec['backend'])}-{spec['broker']}-{spec['serializer']}-{slots}-{spec['routing']}"
            f"-{what}-{mode}-{spec_digest(spec)}-rep{repeat}")


def _values(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_value(key: str, value: Any, where: str) -> None:
    if isinstance(value, list) and not value:
        raise MatrixError(f"{where}{key}: an empty list has no values to sweep")
    for item in _values(value):
        problem = KEYS[key].problem(item)
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
            arg = known[name]
            if not isinstance(value, int) or isinstance(value, bool) or not arg.low <= value <= arg.high:
                raise MatrixError(f"{where}args.{name} = {value!r} is not allowed: must be an integer from "
                                  f"{arg.low} to {arg.high}")


def _backend_names(raw: Mapping[str, Any]) -> list[str]:
    """Every backend a file names (top level and includes), with ``all`` expanded."""
    names: list[str] = []
    for table in (raw, *raw.get("include", [])):
        if isinstance(table, Mapping) and "backend" in table:
            for name in _values(table["backend"]):
                names += backends.measurable() if name == backends.ALL else [name]
    return names


def knob_tables(raw: Mapping[str, Any]) -> dict[str, type[Any]]:
    """Knob-table name -> backend class: every registered backend, and each dotted-path backend the file
    names (its table is named after the class's `name`)."""
    tables = {name: None for name in backends.matrix_names()}
    for name in _backend_names(raw):
        if backends.is_dotted(name) and backends.check_backend_name(name) is None:
            tables[backends.label(name)] = name
    return {table: backends.backend_class(path or table) for table, path in tables.items()}


def _check_knobs(table: str, cls: type[Any], knobs: Mapping[str, Any], where: str) -> None:
    declared = cls.knobs
    for key, value in knobs.items():
        if key not in declared:
            raise MatrixError(f"{where}[{table}] {key} is not a {table} knob; allowed: "
                              f"{', '.join(sorted(declared)) or 'none'} (`queuebench backends` lists them)")
        if isinstance(value, list) and not value:
            raise MatrixError(f"{where}[{table}] {key}: an empty list has no values to sweep")
        for item in _values(value):
            problem = declared[key].problem(item)
            if problem:
                raise MatrixError(f"{where}[{table}] {key} = {item!r} is not allowed: must be {problem}")


def _check_table(raw: Mapping[str, Any], tables: Mapping[str, type[Any]], where: str, *, partial: bool) -> None:
    for key, value in raw.items():
        if key in tables:
            if not isinstance(value, dict):
                raise MatrixError(f"{where}[{key}] must be a table of {key} knobs")
            _check_knobs(key, tables[key], value, where)
        elif key in KEYS:
            _check_value(key, value, where)
        elif key == "repeats":
            if partial or isinstance(value, list):
                raise MatrixError(f"{where}repeats must be one integer at the top of the file, not an axis")
            problem = spec_mod.REPEATS.problem(value)
            if problem:
                raise MatrixError(f"{where}repeats = {value!r} is not allowed: must be {problem}")
        elif key in ("exclude", "include") and not partial:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise MatrixError(f"{where}{key} must be an array of tables ([[{key}]])")
            for i, sub in enumerate(value):
                _check_table(sub, tables, f"{where}{key}[{i}].", partial=True)
        elif key in META_KEYS and not partial:
            continue
        elif key in MOVED_KEYS:
            raise MatrixError(f"{where}{key} is a library knob now: write it as {MOVED_KEYS[key]} = {value!r}")
        else:
            allowed = [*KEYS, "repeats", *(f"[{t}]" for t in tables)] + (["exclude", "include"] if not partial else [])
            raise MatrixError(f"{where}unknown key {key!r}; allowed keys: {', '.join(allowed)}")


def _axes(raw: Mapping[str, Any], tables: Mapping[str, type[Any]]) -> dict[str, list[Any]]:
    """Flatten keys and knob tables into axes; knob keys become "celery.without_mingle" and so on."""
    axes: dict[str, list[Any]] = {}
    for key, value in raw.items():
        if key in tables:
            for knob, knob_value in value.items():
                axes[f"{key}.{knob}"] = _values(knob_value)
        elif key == "backend":
            axes[key] = [n for v in _values(value) for n in (backends.measurable() if v == backends.ALL else [v])]
        elif key in KEYS:
            axes[key] = _values(value)
    return axes


def _product(axes: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _matches(spec: Mapping[str, Any], pattern: Mapping[str, Any], tables: Mapping[str, type[Any]]) -> bool:
    """True when the resolved spec has one of the pattern's values for every key the pattern names."""
    for key, wanted in _axes(pattern, tables).items():
        if "." in key:
            table, knob = key.split(".", 1)
            value = spec["options"].get(knob) if backends.label(spec["backend"]) == table else None
        else:
            value = spec.get(key)
        if value not in wanted:
            return False
    return True


def _normalise(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve defaults, drop what does not apply to this mode or scenario, fold the backend's knobs into
    `options`."""
    mode = {"mode": flat.get("mode", KEYS["mode"].default), "scenario": flat.get("scenario",
                                                                               KEYS["scenario"].default),
            "fault": flat.get("fault", KEYS["fault"].default),
            "queue_type": flat.get("queue_type", KEYS["queue_type"].default),
            "load_workers": flat.get("load_workers", KEYS["load_workers"].default)}
    spec = {key: flat.get(key, declared.default) for key, declared in KEYS.items()
            if spec_mod.applies(key, mode)}
    if "args" in spec:
        spec["args"] = dict(spec["args"])
    table = backends.label(spec["backend"])
    spec["options"] = {k.split(".", 1)[1]: v for k, v in sorted(flat.items()) if k.startswith(f"{table}.")}
    return spec


def _skip_reason(spec: Mapping[str, Any]) -> str | None:
    """Why a backend cannot run this cell (checked without starting anything), or None."""
    if spec.get("scenario") == "poll" and not spec.get("results", True):
        return "the poll scenario reads GET /tasks/<id>, which needs results = true"
    try:
        spec_mod.validate(spec)
    except UnsupportedOption as exc:
        return str(exc)
    return None


def parse(text: str, *, name: str = "matrix", repeats: int | None = None,
          overrides: Mapping[str, Any] | None = None) -> Matrix:
    """Validate and expand a matrix document. Raises `MatrixError` before anything could start."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"not valid TOML: {exc}") from exc
    return from_tables(raw, name=name, repeats=repeats, source=text, overrides=overrides)


def from_tables(raw: Mapping[str, Any], *, name: str = "matrix", repeats: int | None = None,
                source: str = "", overrides: Mapping[str, Any] | None = None) -> Matrix:
    """Validate and expand a matrix given as the tables a TOML file would hold (a command that builds its
    matrix in code, such as ``queuebench tune``, passes them here): the same checks, the same cells.

    `overrides` (spec key -> one value, from a command's flags such as ``--load-workers``) replace the
    file's value of that key in every cell, includes too; checked like the file's own values."""
    tables = knob_tables(raw)
    _check_table(raw, tables, "", partial=False)
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if key not in KEYS or isinstance(value, list):
            raise MatrixError(f"override {key}: must be one value of a spec key ({', '.join(KEYS)})")
        _check_value(key, value, "")
    if raw.get("schema_version", MATRIX_SCHEMA_VERSION) != MATRIX_SCHEMA_VERSION:
        raise MatrixError(f"schema_version = {raw['schema_version']!r} is not allowed: must be "
                          f"{MATRIX_SCHEMA_VERSION}")
    axes = _axes(raw, tables)
    _check_args(axes.get("task", [KEYS["task"].default]), axes.get("args", [{}]), "")
    flat_cells = _product(axes)
    for i, extra in enumerate(raw.get("include", [])):
        # An include table is a sub-matrix: its keys replace the top level's, its lists are its axes.
        sub = axes | _axes(extra, tables)
        _check_args(sub.get("task", [KEYS["task"].default]), sub.get("args", [{}]), f"include[{i}].")
        flat_cells += _product(sub)
    flat_cells = [c | overrides for c in flat_cells]
    flat_cells = [c for c in flat_cells
                  if not any(_matches(_normalise(c), pattern, tables) for pattern in raw.get("exclude", []))]

    matrix = Matrix(name=str(raw.get("name", name)), description=str(raw.get("description", "")), source=source)
    count = repeats or int(raw.get("repeats", spec_mod.REPEATS.default))
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
        for repeat in range(count):
            matrix.cells.append(Cell(spec=spec, repeat=repeat, skip_reason=reason))
    # Repeat-major order: every cell once, then every cell again, so slow drift of a shared machine is
    # spread over all cells instead of landing on one cell's repeats.
    matrix.cells.sort(key=lambda cell: cell.repeat)
    return matrix


def load(path: str | Path, *, repeats: int | None = None, overrides: Mapping[str, Any] | None = None) -> Matrix:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MatrixError(f"cannot read matrix file {path}: {exc.strerror}") from exc
    return parse(text, name=path.stem, repeats=repeats, overrides=overrides)


def apply_only(matrix: Matrix, only: list[str]) -> Matrix:
    """Keep the cells whose spec matches every `key=value` (values parsed as TOML scalars)."""
    filters: list[tuple[str, Any]] = []
    tables = set(backends.matrix_names()) | {backends.label(c.spec["backend"]) for c in matrix.cells}
    for item in only:
        key, sep, value = item.partition("=")
        if not sep:
            raise MatrixError(f"--only {item!r}: expected key=value")
        if key not in KEYS and key.split(".", 1)[0] not in tables:
            raise MatrixError(f"--only {key}: unknown key; allowed keys: {', '.join(KEYS)}, or "
                              "<backend>.<knob> such as celery.pool")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        filters.append((key, parsed))

    def keep(cell: Cell) -> bool:
        for key, value in filters:
            if "." in key and key not in KEYS:
                table, knob = key.split(".", 1)
                if backends.label(cell.spec["backend"]) != table or cell.spec["options"].get(knob) != value:
                    return False
            elif cell.spec.get(key, KEYS[key].default if key in spec_mod.ABSENT_AT_DEFAULT else None) != value:
                return False
        return True

    matrix.cells = [c for c in matrix.cells if keep(c)]
    return matrix
