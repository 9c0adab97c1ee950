"""Each host's ledger ships with a manifest, so a file cut short or lost on the way fails the run.

Written on the host once its processes have stopped (``python -m benchmarks.deploy.host manifest``), fetched
beside the files, and checked on the coordinator (`verify`). For every ledger file (``ledger/*.jsonl``),
raw request log (``requests/*.csv``) and resource sample file (``resources.csv``, ``machine.csv``: the
host's sampler, stopped before the manifest is written): ``rows`` (complete lines; a CSV's header not
counted), ``bytes``, ``sha256``, and ``first_ns``/``last_ns``, the smallest and largest timestamp among its
rows (a ledger row's ``t_ns`` or ``sent_ns``, a request row's ``sent_ns``, a sample's ``t_ns``; on the host's
own clock). A file listed but absent, of
another size or digest, or a ledger file present but not listed, is a problem `verify` names.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_JSON = "manifest.json"
#: Version of manifest.json. Changes: 1 - first version (files: rows, bytes, sha256, first_ns, last_ns).
#: 2 - the resource samples (resources.csv, machine.csv) are listed too.
MANIFEST_SCHEMA_VERSION = 2
#: What a manifest covers, relative to a host's run directory.
PATTERNS = ("ledger/*.jsonl", "requests/*.csv", "resources.csv", "machine.csv")


class ManifestError(RuntimeError):
    """A collected file does not match its host's manifest; the message names each file and what differs."""


def _ledger_stamps(path: Path) -> tuple[int, list[int]]:
    rows, stamps = 0, []
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                continue  # a line cut short by a killed writer is not a row (backends/ledger.py skips it too)
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows += 1
            stamp = row.get("t_ns") or row.get("sent_ns")
            if isinstance(stamp, int):
                stamps.append(stamp)
    return rows, stamps


def _csv_stamps(path: Path) -> tuple[int, list[int]]:
    rows, stamps = 0, []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows += 1
            try:
                stamps.append(int(row.get("sent_ns") or row.get("t_ns") or ""))
            except ValueError:
                continue
    return rows, stamps


def describe(path: Path) -> dict[str, Any]:
    """One file's manifest entry."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    rows, stamps = (_ledger_stamps if path.suffix == ".jsonl" else _csv_stamps)(path)
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": digest.hexdigest(),
            "first_ns": min(stamps) if stamps else None, "last_ns": max(stamps) if stamps else None}


def build(run_dir: Path) -> dict[str, Any]:
    """The manifest of a host's run directory."""
    files = {}
    for pattern in PATTERNS:
        for path in sorted(Path(run_dir).glob(pattern)):
            files[path.relative_to(run_dir).as_posix()] = describe(path)
    return {"schema_version": MANIFEST_SCHEMA_VERSION, "files": files}


def totals(record: dict[str, Any]) -> dict[str, int]:
    """Files and rows a manifest lists: ledger files and rows, request logs and their rows, resource sample
    files and their rows."""
    out = {"ledger_files": 0, "ledger_rows": 0, "request_logs": 0, "request_rows": 0, "resource_files": 0,
           "resource_rows": 0}
    for name, entry in record.get("files", {}).items():
        kind = (("ledger_files", "ledger_rows") if name.startswith("ledger/") else
                ("request_logs", "request_rows") if name.startswith("requests/") else
                ("resource_files", "resource_rows"))
        out[kind[0]] += 1
        out[kind[1]] += int(entry["rows"])
    return out


def write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def verify(collected: Path, host: str = "") -> dict[str, Any]:
    """Check a host's collected files against its manifest; return the manifest, or raise `ManifestError`
    naming every file that is missing, cut short, changed or unlisted."""
    label = f"host {host}: " if host else ""
    path = Path(collected) / MANIFEST_JSON
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{label}no readable manifest at {path}: {exc}") from exc
    problems = []
    for name, expected in sorted(record.get("files", {}).items()):
        file = Path(collected) / name
        if not file.exists():
            problems.append(f"{name} is missing (manifest: {expected['rows']} rows)")
            continue
        found = describe(file)
        if found["bytes"] != expected["bytes"] or found["rows"] != expected["rows"]:
            problems.append(f"{name} has {found['rows']} rows in {found['bytes']} bytes; the manifest says "
                            f"{expected['rows']} rows in {expected['bytes']} bytes (truncated or changed)")
        elif found["sha256"] != expected["sha256"]:
            problems.append(f"{name}: sha256 {found['sha256'][:12]}... differs from the manifest's "
                            f"{expected['sha256'][:12]}...")
    listed = set(record.get("files", {}))
    for pattern in PATTERNS:
        for file in sorted(Path(collected).glob(pattern)):
            name = file.relative_to(collected).as_posix()
            if name not in listed:
                problems.append(f"{name} is not in the manifest")
    if problems:
        raise ManifestError(f"{label}" + "; ".join(problems))
    return record
