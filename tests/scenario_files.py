"""Load a file of scenarios/ as a module: it is Locust's folder (Locust puts it on sys.path), not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def load(name: str) -> ModuleType:
    """scenarios/<name>.py as a module; only for files that import no Locust."""
    spec = importlib.util.spec_from_file_location(name, SCENARIOS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
