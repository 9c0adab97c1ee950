"""What the end-to-end fault and retry tests share: run one matrix cell for real and read its run.json, and
read the raw ledger rows (probes left out) straight from the files, sharing no code with the verdicts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import matrix, runner


def run_one(tmp_path: Path, cell_toml: str, *, name: str = "fault") -> tuple[Path, dict[str, Any]]:
    """Run the one cell `cell_toml` describes into ``tmp_path/runs``; its run directory and run.json."""
    grid = matrix.parse(cell_toml, name=name)
    (result,) = runner.run_matrix(grid, tmp_path / "runs", log=lambda _: None)
    return result.run_dir, json.loads((result.run_dir / "run.json").read_text())


def ledger_rows(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Every whole row of the run's ledger files, probes left out (a line cut short is skipped)."""
    for path in sorted((run_dir / "ledger").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not row.get("probe"):
                yield row
