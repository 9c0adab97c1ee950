"""Every third-party package the code imports is declared, so a fresh install has what it runs.

Imports are read from the source (`ast`, at any depth, so lazy imports count too) and mapped to their
distributions; each must be a dependency in pyproject.toml, a requirement of the private environment
of the backend module that imports it (`QueueBackend.environment`), or, for a package of an optional
feature (`OPTIONAL_EXTRAS`), a requirement of that feature's extra.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import backends

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"api", "backends", "benchmarks", "scenarios", "openloop", "mix", "inflight", "share", "tests",
               # modules benchmarks/crosscheck_drain.py writes next to itself at run time
               "x_celery", "x_rq", "x_dramatiq"}
SOURCE_DIRS = ("api", "backends", "benchmarks", "scenarios")
#: Packages of an optional feature, and the extra that installs what they import (`pip install '.[hosts]'`).
OPTIONAL_EXTRAS = {"benchmarks.deploy": "hosts"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_modules(path: Path) -> set[str]:
    """Top-level module names `path` imports (absolute imports only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}


def extra(name: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["optional-dependencies"][name]}


def test_every_third_party_import_is_a_declared_dependency():
    distributions = packages_distributions()
    environments = {backends.backend_class(n).__module__: {_name(r) for r in backends.backend_class(n).environment}
                    for n in backends.REGISTRY}
    deps = declared()
    missing = []
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            # A library's worker entry (backends/<lib>_worker.py) lives in its backend's environment.
            sibling = module.rsplit("_", 1)[0] + "_backend"
            allowed = deps | environments.get(module, set()) | environments.get(sibling, set())
            for package, extra_name in OPTIONAL_EXTRAS.items():
                if module == package or module.startswith(package + "."):
                    allowed |= extra(extra_name)
            for name in sorted(imported_modules(path) - FIRST_PARTY - set(sys.stdlib_module_names)):
                dists = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
                if not dists & allowed:
                    missing.append(f"{path.relative_to(ROOT)} imports {name} ({', '.join(sorted(dists))})")
    assert not missing, "undeclared imports:\n" + "\n".join(missing)


def test_the_checker_sees_an_import_hidden_inside_a_function(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    import yaml\n    from toml import loads\n")
    assert imported_modules(source) == {"yaml", "toml"}
