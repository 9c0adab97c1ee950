"""Queue backends behind one protocol (`backends.base.QueueBackend`) and the registry of their names.

Nothing outside this package imports a queue library: each library lives in its own
``*_backend.py`` module, imported only when that backend is asked for.

The registry is the one list of backends. Everything that lists them (CLI choices, test
parametrisation, the smoke matrix's ``backend = "all"``, chart colours, captions, recorded package
versions) asks it, so adding a library is one module and one line here. A backend outside this
package is named by dotted path (``mypkg.mod:MyBackend``) wherever a short name is accepted.
"""

from __future__ import annotations

import importlib
from typing import Any

from backends.base import BackendSettings, QueueBackend

#: Short name -> "module:Class", in the order reports and tables list them.
REGISTRY: dict[str, str] = {
    "celery": "backends.celery_backend:CeleryBackend",
    "rq": "backends.rq_backend:RQBackend",
    "dramatiq": "backends.dramatiq_backend:DramatiqBackend",
    "huey": "backends.huey_backend:HueyBackend",
    "arq": "backends.arq_backend:ArqBackend",
    "baseline": "backends.baseline_backend:BaselineBackend",
    "discard": "backends.discard_backend:DiscardBackend",
    "inline": "backends.inline_backend:InlineBackend",
}

#: The floor each library is compared with: a bare queue on the broker, no library.
FLOORS: tuple[str, ...] = ("baseline",)
#: Measures the harness itself (`discard`: the API + Locust ceiling, no queue at all).
HARNESS: tuple[str, ...] = ("discard",)
#: For unit tests only: never measured, never in a report.
UNIT_TEST_ONLY: tuple[str, ...] = ("inline",)
#: What a matrix's ``backend = "all"`` means: every library and the floor.
ALL = "all"


def libraries() -> tuple[str, ...]:
    """The queue libraries (every registered backend that is not a floor, harness or test double)."""
    return tuple(n for n in REGISTRY if n not in (*FLOORS, *HARNESS, *UNIT_TEST_ONLY))


def measurable() -> tuple[str, ...]:
    """Backends a benchmark measures and a user may serve: the libraries and the floor."""
    return (*libraries(), *FLOORS)


def matrix_names() -> tuple[str, ...]:
    """Short names a matrix file may use (the harness ceiling included)."""
    return (*measurable(), *HARNESS)


def is_dotted(name: str) -> bool:
    """True for a backend named by path (``package.module:Class`` or ``package.module.Class``)."""
    return name not in REGISTRY and ("." in name or ":" in name)


def backend_class(name: str) -> type[Any]:
    """Resolve a short name or a dotted path (``package.module:Class`` or ``package.module.Class``).

    Raises KeyError for an unknown short name, ImportError/AttributeError for a path that does not resolve.
    """
    target = REGISTRY.get(name, name)
    if ":" in target:
        module_name, _, attr = target.partition(":")
    elif "." in target:
        module_name, _, attr = target.rpartition(".")
    else:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(REGISTRY)} (or a dotted path)")
    return getattr(importlib.import_module(module_name), attr)


def check_backend_name(name: str) -> str | None:
    """Why `name` cannot be used as a backend (a phrase after "must be"), or None when it can."""
    if not isinstance(name, str) or not name:
        return "a backend name"
    if name in REGISTRY and name not in UNIT_TEST_ONLY:
        return None
    allowed = f"one of {', '.join(matrix_names())}, or a dotted path such as mypkg.mod:MyBackend"
    if not is_dotted(name):
        return allowed
    try:
        cls = backend_class(name)
    except (ImportError, AttributeError, ValueError) as exc:
        return f"{allowed} (importing {name!r} failed: {type(exc).__name__}: {exc})"
    missing = [a for a in ("name", "brokers", "serializers", "enqueue", "worker_commands") if not hasattr(cls, a)]
    if missing:
        return f"a QueueBackend class ({name!r} has no {', '.join(missing)})"
    return None


def label(name: str) -> str:
    """The name a backend goes by in run ids, tables and knob tables: its class's `name` for a dotted path."""
    return backend_class(name).name if is_dotted(name) else name


def get_backend(name: str, settings: BackendSettings | None = None) -> QueueBackend:
    """Build a backend by short name or dotted path; raises `UnsupportedOption` for settings it cannot honour."""
    return backend_class(name)(settings or BackendSettings())
