"""``queuebench plan --verify``: run what a capacity plan answered, as the plan's own acceptance test.

The plan (`benchmarks.analysis.planner`) reads stored runs only; this module measures. For each backend
it runs the configuration the answer names (the recommendation, else the marginal candidate, else the
labelled extrapolation) and the one with one slot fewer, at the requested rate (latency scenario,
Poisson arrivals), `analysis.cover.COVER_REPEATS` repeats interleaved (the matrix runs every configuration
once, then again), each window long enough to bound the SLO's quantile with a margin
(`analysis.cover.verify_duration_s`). The matrix is written beside the runs (``verify.toml``) and run
by `benchmarks.runner` like any other, so the runs are stored like any run (a second ``--verify`` with the
same request resumes: cells already done are not measured again). `analysis.planner.acceptance` then
says, per configuration, whether the SLO held in every repeat, with each repeat's interval.

Lives outside `benchmarks.analysis` (which never runs anything: tests/test_layering.py); the ``plan``
command (`benchmarks.plan_verify`) composes the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import matrix as matrix_mod
from benchmarks import runner
from benchmarks.analysis.cover import VerifyTarget, verification_matrix_text, verify_targets
from benchmarks.analysis.planner import Acceptance, Plan, acceptance

#: Where ``plan --verify`` stores its runs unless told: ``<this>/<plan id>``.
VERIFY_ROOT = Path("results/runs/verify")
#: The verification matrix's file name, beside the runs it made.
MATRIX_FILE = "verify.toml"


@dataclass
class Verification:
    """What ``plan --verify`` ran and what it found."""

    out_dir: Path
    matrix_path: Path
    targets: list[VerifyTarget]
    cells: list[runner.CellResult] = field(default_factory=list)
    accepted: list[Acceptance] = field(default_factory=list)

    @property
    def measured_ok(self) -> bool:
        """Whether no cell failed or errored."""
        return not any(c.status in ("failed", "error") for c in self.cells)

    @property
    def held(self) -> bool:
        """Whether the SLO held in every repeat of every configuration a plan answered with (the
        configurations with one slot fewer are for comparison, not part of the test)."""
        answered = [a for a in self.accepted if not a.role.startswith("one ")]
        return bool(answered) and all(a.held for a in answered)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``plan --verify --json``)."""
        return {"out_dir": str(self.out_dir), "matrix": str(self.matrix_path), "held": self.held,
                "cells": [{"run_id": c.run_id, "status": c.status, "detail": c.detail} for c in self.cells],
                "configurations": [a.to_dict() for a in self.accepted]}


def default_out(plan: Plan) -> Path:
    """``results/runs/verify/<plan id>``."""
    return VERIFY_ROOT / plan.plan_id


def _is_target(cell: matrix_mod.Cell, target: VerifyTarget) -> bool:
    spec = cell.spec
    if (spec["processes"], spec["threads"]) != (target.processes, target.threads):
        return False
    wanted = dict(target.spec)
    options = wanted.pop("options", {}) or {}
    return all(spec.get(k) == v for k, v in wanted.items()) and dict(spec.get("options") or {}) == options


def verify(plan: Plan, out_dir: Path, *, duration_s: float | None = None, amqp_url: str | None = None,
           progress: Any = None, log: Callable[[str], None] = print) -> Verification:
    """Run the plan's verification matrix into `out_dir` and judge it (`analysis.planner.acceptance`).

    Raises ValueError when the plan names nothing to verify, RuntimeError when another sweep holds the
    measuring lock, `runner.Interrupted` on Ctrl-C (completed runs are kept).
    """
    text = verification_matrix_text(plan, duration_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MATRIX_FILE
    path.write_text(text)
    matrix = matrix_mod.parse(text, name=f"verify-{plan.plan_id}")
    targets = verify_targets(plan)
    found = Verification(out_dir, path, targets)
    found.cells = runner.run_matrix(matrix, out_dir, amqp_url=amqp_url, progress=progress, log=log)
    runs = [(t.variant, t.shape, t.slots, t.role, [c.run_id for c in matrix.cells if _is_target(c, t)])
            for t in targets]
    found.accepted = acceptance(out_dir, plan.kind, plan.slo, runs)
    return found
