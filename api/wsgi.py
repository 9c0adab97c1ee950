"""The gunicorn entry point ``api.wsgi:app``, built from the environment, and the command line to serve it.

Environment:

- ``QUEUEBENCH_BACKEND`` (required): a backend's short name (`backends.REGISTRY`; inline for
  tests) or a dotted path. There is no default: a server that silently ran tasks in-process would
  measure nothing.
- ``QUEUEBENCH_SETTINGS``: the configuration as JSON (`BackendSettings.to_env`); absent means defaults.

The app is built on first access to ``app``, not on import, so ``from api.wsgi import gunicorn_argv``
works anywhere and a missing variable is reported only when a server loads the app. Without
``--preload`` each gunicorn worker builds its own backend after the fork, so no broker connection is
shared between processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

import backends
from api.app import create_app
from backends import get_backend
from backends.base import SETTINGS_ENV, BackendSettings

BACKEND_ENV = "QUEUEBENCH_BACKEND"
ENTRY_POINT = "api.wsgi:app"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Server defaults (FAIRNESS.md: gthread keeps connections alive and served about 40 % more requests
#: than sync workers on 2 cores). Durations in seconds.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4
DEFAULT_GRACEFUL_TIMEOUT_S = 10
#: Longer than any pooled client connection sits idle in a run: a server that closes an idle keep-alive
#: connection just as the client reuses it makes that request fail with no answer (Locust "HTTP 0"; seen
#: once in 24 runs with gunicorn's default of 5 s).
DEFAULT_KEEPALIVE_S = 75


class ConfigurationError(RuntimeError):
    """The environment does not say which backend to serve, or describes one that cannot be built."""


def build_app(environ: Mapping[str, str] | None = None) -> Flask:
    """The API for the backend named by ``QUEUEBENCH_BACKEND`` with settings from ``QUEUEBENCH_SETTINGS``."""
    environ = os.environ if environ is None else environ
    name = environ.get(BACKEND_ENV, "").strip()
    if not name:
        raise ConfigurationError(
            f"{BACKEND_ENV} is not set: name the backend this API serves, e.g. {BACKEND_ENV}=rq "
            f"(one of {', '.join(backends.measurable())}, or a dotted path), with its settings as JSON in "
            f"{SETTINGS_ENV}. `queuebench serve` sets both.")
    try:
        settings = BackendSettings.from_env(environ)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{SETTINGS_ENV} does not hold valid backend settings: {exc}") from exc
    try:
        backend = get_backend(name, settings)
    except Exception as exc:  # unknown name, missing library, UnsupportedOption: say which and why
        raise ConfigurationError(f"cannot build the {name!r} backend for the API: "
                                 f"{type(exc).__name__}: {exc}") from exc
    return create_app(backend)


_app: Flask | None = None


def __getattr__(name: str) -> Any:
    """Build ``app`` on first access (module-level ``__getattr__``, PEP 562), once per process."""
    if name == "app":
        global _app
        if _app is None:
            _app = build_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gunicorn_argv(port: int, workers: int = DEFAULT_WORKERS, threads: int = DEFAULT_THREADS, *,
                  graceful_timeout_s: int = DEFAULT_GRACEFUL_TIMEOUT_S,
                  keepalive_s: int = DEFAULT_KEEPALIVE_S, extra: tuple[str, ...] = (),
                  address: str = "127.0.0.1") -> list[str]:
    """The gunicorn command line serving ``api.wsgi:app`` on `address`:`port` (127.0.0.1 unless a deployment
    names its API host's address: `benchmarks.deploy`).

    gthread workers with `threads` threads each; `--chdir` to the project so the entry point imports
    from any working directory. gunicorn 25.1+ would also open a control socket at one fixed path per
    user (``~/.gunicorn/gunicorn.ctl``), which concurrent servers would fight over: it is turned off.
    The caller passes ``QUEUEBENCH_BACKEND`` and ``QUEUEBENCH_SETTINGS`` in the environment.
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be at least 1 (got {workers} and {threads})")
    import gunicorn

    no_control_socket = ["--no-control-socket"] if tuple(gunicorn.version_info) >= (25, 1) else []
    return [
        sys.executable, "-m", "gunicorn",
        "-k", "gthread",
        "-w", str(workers),
        "--threads", str(threads),
        "-b", f"{address}:{port}",
        "--graceful-timeout", str(graceful_timeout_s),
        "--keep-alive", str(keepalive_s),
        "--chdir", str(PROJECT_ROOT),
        *no_control_socket,
        *extra,
        ENTRY_POINT,
    ]
