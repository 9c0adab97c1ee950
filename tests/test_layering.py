"""The arrows between the harness's layers point one way, read from every import in the source tree.

The results store (`benchmarks.store`) and the verdict rules (`benchmarks.verdicts`) sit below both the
runner and analysis: the runner writes through the store, analysis reads through it, and neither imports
the other. Imports are read with `ast` at every depth (inside functions, methods and ``if TYPE_CHECKING:``
blocks too), relative imports are resolved, and ``importlib.import_module("...")`` with a literal name
counts as an import, so no import can hide from the rules by where or how it is written.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Top-level packages of this project (anything else is a third-party or standard library import).
PROJECT = ("api", "backends", "benchmarks", "scenarios")
#: The modules that bring a configuration up and measure it: analysis must not see any of them.
MEASURING = ("benchmarks.runner", "benchmarks.matrix", "benchmarks.stack", "benchmarks.search", "benchmarks.procs",
             "benchmarks.brokers", "benchmarks.sampler", "benchmarks.verify", "benchmarks.plan_verify",
             "benchmarks.tune", "benchmarks.deploy", "benchmarks.proctree")


@dataclass(frozen=True)
class Rule:
    """Modules named `where` (and every module under it) must not import any of `forbidden` (or under them)."""

    where: str
    forbidden: tuple[str, ...]
    why: str


RULES = (
    Rule("benchmarks.analysis", MEASURING,
         "analysis reads stored results through benchmarks.store and never runs anything"),
    Rule("benchmarks.store", ("benchmarks.runner", "benchmarks.analysis"),
         "the store sits below the runner and analysis, which both use it"),
    Rule("benchmarks.verdicts", ("benchmarks.runner", "benchmarks.analysis"),
         "the verdict rules sit below everything that judges"),
    Rule("benchmarks.runner", ("benchmarks.analysis",), "the runner measures; it knows nothing of analysis"),
)
#: What each leaf may import from the project; anything else of the project is an arrow pointing up.
LEAVES = {
    "benchmarks.verdicts": ("benchmarks.measure",),
    "benchmarks.store": ("benchmarks.measure",),
    # What runs on every deployed host (the clock responder, the host-side helpers) stays small.
    "benchmarks.clocks": (),
    "benchmarks.deploy.manifest": (),
    "benchmarks.proctree": (),
    "benchmarks.deploy.host": ("backends.ledger", "backends.redis_url", "benchmarks.deploy.manifest",
                               "benchmarks.proctree"),
}
#: Everything analysis may import from `benchmarks` (its CLI commands included). `benchmarks.spec` (every
#: matrix key declared once) is meant to be imported by analysis when it exists.
ANALYSIS_MAY_IMPORT = ("benchmarks.store", "benchmarks.verdicts", "benchmarks.measure", "benchmarks.progress",
                       "benchmarks.spec", "benchmarks.analysis")


@dataclass(frozen=True)
class Import:
    name: str  # the module imported, absolute
    line: int


def module_name(path: Path) -> str:
    """``benchmarks/analysis/report.py`` -> ``benchmarks.analysis.report`` (a package is its __init__)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(module: str) -> bool:
    return (ROOT / Path(*module.split(".")) / "__init__.py").exists()


def is_module(module: str) -> bool:
    path = ROOT / Path(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(source: str, module: str) -> list[Import]:
    """Every module `source` (the text of `module`) imports, at any depth, as absolute names.

    ``from pkg import name`` imports ``pkg.name`` when that is a module of this project, else ``pkg``.
    """
    package = module if is_package(module) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append(Import(name if is_module(name) else base, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                found.append(Import(node.args[0].value, node.lineno))
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, source: str) -> list[str]:
    """Each import of `module` that breaks a rule, as ``module:line imports name (why)``."""
    out = []
    for imported in imports_of(source, module):
        name, where = imported.name, f"{module}:{imported.line} imports {imported.name}"
        for rule in RULES:
            if _under(module, rule.where) and any(_under(name, f) for f in rule.forbidden):
                out.append(f"{where} ({rule.why})")
        project = name.split(".")[0] in PROJECT
        if module in LEAVES and project and not any(_under(name, ok) for ok in LEAVES[module]):
            out.append(f"{where} ({module} is a leaf: it may import only {', '.join(LEAVES[module])})")
        if (_under(module, "benchmarks.analysis") and _under(name, "benchmarks") and name != "benchmarks"
                and not any(_under(name, ok) for ok in ANALYSIS_MAY_IMPORT)):
            out.append(f"{where} (analysis may import only {', '.join(ANALYSIS_MAY_IMPORT)} from benchmarks)")
    return out


def harness_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / "benchmarks").rglob("*.py"))}


def test_no_module_of_the_harness_imports_against_the_arrows():
    found = [v for module, path in harness_modules().items() for v in violations(module, path.read_text())]
    assert found == [], "\n".join(found)


def test_the_rules_are_checked_against_the_modules_they_guard():
    modules = harness_modules()
    for expected in ("benchmarks.runner", "benchmarks.store", "benchmarks.verdicts", "benchmarks.search",
                     "benchmarks.analysis", "benchmarks.analysis.planner", "benchmarks.analysis.cover",
                     "benchmarks.analysis.report", "benchmarks.analysis.commands", "benchmarks.analysis.plan_cmd"):
        assert expected in modules, expected
    # The reader sees the imports that are there, at module level and inside functions alike.
    runner = {i.name for i in imports_of(modules["benchmarks.runner"].read_text(), "benchmarks.runner")}
    assert {"benchmarks.store", "benchmarks.stack", "benchmarks.matrix"} <= runner
    plan_cmd = {i.name for i in imports_of(modules["benchmarks.analysis.plan_cmd"].read_text(),
                                           "benchmarks.analysis.plan_cmd")}
    assert {"benchmarks.analysis.planner", "benchmarks.verdicts"} <= plan_cmd  # both inside the command
    # plan --verify measures: the command composing it lives outside analysis, and imports both layers.
    verify = {i.name for i in imports_of(modules["benchmarks.verify"].read_text(), "benchmarks.verify")}
    assert {"benchmarks.runner", "benchmarks.analysis.planner"} <= verify


@pytest.mark.parametrize(("module", "source", "names"), [
    ("benchmarks.analysis.cover", "from benchmarks import runner\n", "benchmarks.runner"),
    ("benchmarks.analysis.notes", "def f():\n    import benchmarks.matrix as m\n", "benchmarks.matrix"),
    ("benchmarks.analysis.report", "from ..search import judge_step\n", "benchmarks.search"),
    ("benchmarks.analysis.plan_cmd", "if TYPE_CHECKING:\n    from benchmarks.stack import Stack\n",
     "benchmarks.stack"),
    ("benchmarks.analysis", "from .. import procs\n", "benchmarks.procs"),
    ("benchmarks.analysis.load", "import importlib\nimportlib.import_module('benchmarks.sampler')\n",
     "benchmarks.sampler"),
    ("benchmarks.analysis.charts", "class C:\n    def m(self):\n        from benchmarks.brokers import redact\n",
     "benchmarks.brokers"),
    ("benchmarks.analysis.compare", "from benchmarks import cli\n", "benchmarks.cli"),
    ("benchmarks.analysis.plan_cmd", "def f():\n    from benchmarks.verify import verify\n", "benchmarks.verify"),
    ("benchmarks.store", "from benchmarks.analysis.load import Results\n", "benchmarks.analysis.load"),
    ("benchmarks.store", "from benchmarks import runner\n", "benchmarks.runner"),
    ("benchmarks.verdicts", "from benchmarks import store\n", "benchmarks.store"),
    ("benchmarks.verdicts", "from backends import workload\n", "backends.workload"),
    ("benchmarks.runner", "def run():\n    from benchmarks.analysis import report\n", "benchmarks.analysis.report"),
])
def test_the_checker_reports_an_import_against_the_arrows_wherever_it_is_written(module, source, names):
    found = violations(module, source)
    assert found and all(f" imports {names} (" in v for v in found), found


def test_the_checker_lets_each_layer_import_what_is_below_it():
    assert violations("benchmarks.analysis.cover", "import numpy\nimport tomli_w\nfrom benchmarks import store, "
                      "verdicts, measure\nfrom benchmarks.analysis.planner import Plan\nfrom .load import labels\n"
                      "from backends import workload\n") == []
    assert violations("benchmarks.runner", "from benchmarks import store\nfrom benchmarks.matrix import Cell\n") == []
    assert violations("benchmarks.verdicts", "import math\nfrom benchmarks.measure import ACHIEVED_MIN_RATIO\n") == []


def test_importing_every_analysis_module_loads_no_part_of_the_measuring_harness():
    # The arrows above are direct imports; this catches one through a module in between (the analysis
    # commands print through benchmarks.progress, so it is imported too).
    analysis = sorted(m for m in harness_modules() if _under(m, "benchmarks.analysis"))
    script = ("import importlib, json, sys\n"
              f"for name in {[*analysis, 'benchmarks.store', 'benchmarks.verdicts', 'benchmarks.progress']!r}:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert set(analysis) <= loaded
    assert sorted(m for m in loaded if any(_under(m, h) for h in MEASURING)) == []
