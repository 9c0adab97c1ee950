"""Queue backends behind one protocol (`backends.base.QueueBackend`) and the registry of their names.

Nothing outside this package imports celery, rq or dramatiq: each library lives in its own
``*_backend.py`` module, imported only when that backend is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from backends.base import BackendSettings, QueueBackend

#: Short name -> "module:Class". `inline` is for unit tests only and never appears in a report;
#: `discard` measures the harness's own ceiling (benchmarks/NOTES.md).
REGISTRY: dict[str, str] = {
    "celery": "backends.celery_backend:CeleryBackend",
    "rq": "backends.rq_backend:RQBackend",
    "dramatiq": "backends.dramatiq_backend:DramatiqBackend",
    "baseline": "backends.baseline_backend:BaselineBackend",
    "inline": "backends.inline_backend:InlineBackend",
    "discard": "backends.discard_backend:DiscardBackend",
}

#: The backends a benchmark may measure (everything but the unit-test double).
MEASURABLE: tuple[str, ...] = ("celery", "rq", "dramatiq", "baseline")
#: Backends a matrix may name to measure the harness itself (`discard`: the API + Locust ceiling).
HARNESS: tuple[str, ...] = ("discard",)


def backend_class(name: str) -> type[Any]:
    """Resolve a short name or a dotted path (``package.module:Class`` or ``package.module.Class``)."""
    target = REGISTRY.get(name, name)
    if ":" in target:
        module_name, _, attr = target.partition(":")
    elif "." in target:
        module_name, _, attr = target.rpartition(".")
    else:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(REGISTRY)} (or a dotted path)")
    return getattr(importlib.import_module(module_name), attr)


def get_backend(name: str, settings: BackendSettings | None = None) -> QueueBackend:
    """Build a backend by short name or dotted path; raises `UnsupportedOption` for settings it cannot honour."""
    return backend_class(name)(settings or BackendSettings())
