"""Private virtual environments for backends whose library cannot share the harness's environment.

A backend declares the pip requirements of its own environment in ``environment`` (empty: it runs with
the harness's interpreter). arq 0.28 is the first such backend: it requires redis-py < 6, while Celery
5.7's kombu refuses redis-py < 6.1, so one environment cannot hold both. Its API (gunicorn + the Flask
app) and its workers run with the interpreter `python_for` returns; the harness process never imports
the library (it enqueues through ``python -m backends.submit`` in that interpreter).

Where: ``${QUEUEBENCH_ENV_DIR:-~/.cache/queuebench/envs}/<backend>-<digest>``, the digest covering the
Python version and the requirements, so a change of either builds a new environment beside the old one.
The project's own code is not installed there: children get the project on ``PYTHONPATH``, as every
other process the harness starts.

Built on first use with ``python -m venv`` and ``pip install <requirements>`` (this needs the package
index once), then reused. Concurrent callers (two sweeps, pytest and a sweep) are serialised with an
``fcntl`` lock per environment; an environment is usable only once its ready marker exists, written last,
so a half-built one (pip failed, or the builder was killed) is removed and rebuilt by the next caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any

ENV_DIR_ENV = "QUEUEBENCH_ENV_DIR"
DEFAULT_ENV_DIR = Path("~/.cache/queuebench/envs")
#: Written last by a successful build: its presence is what makes an environment usable.
READY_MARKER = "queuebench-env.json"
#: Package versions read once from the environment's own interpreter (see `packages_in`).
PACKAGES_CACHE = "queuebench-packages.json"
PIP_LOG = "pip-install.log"
#: Seconds one ``pip install`` may take (a cold cache on a slow index; usually well under a minute).
PIP_TIMEOUT_S = 900
#: Lines of pip's output quoted when it fails.
TAIL_LINES = 25


class EnvironmentBuildError(RuntimeError):
    """A backend's private environment could not be built; the message names the requirement and quotes pip."""


def env_root() -> Path:
    return Path(os.environ.get(ENV_DIR_ENV) or DEFAULT_ENV_DIR).expanduser().resolve()


def requirements_of(backend_cls: type[Any]) -> tuple[str, ...]:
    return tuple(getattr(backend_cls, "environment", ()) or ())


def digest(requirements: tuple[str, ...]) -> str:
    """12 hex digits over the interpreter (implementation and full version) and the requirements."""
    blob = json.dumps([platform.python_implementation(), sys.version, sorted(requirements)])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def env_path(backend_cls: type[Any]) -> Path | None:
    """Where the backend's environment lives (built or not); None when it uses the harness's own."""
    requirements = requirements_of(backend_cls)
    if not requirements:
        return None
    return env_root() / f"{backend_cls.name}-{digest(requirements)}"


def _python(path: Path) -> Path:
    return path / "bin" / "python"


def is_ready(path: Path) -> bool:
    return (path / READY_MARKER).is_file() and _python(path).exists()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<env>.lock`` beside the environment (the lock file itself is never removed:
    removing it would let a waiter and a newcomer hold two different locks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def python_for(backend_cls: type[Any]) -> str:
    """The interpreter that runs `backend_cls`'s API and workers: ``sys.executable`` when it declares no
    environment, else its private environment's python, built on first use."""
    path = env_path(backend_cls)
    if path is None:
        return sys.executable
    if not is_ready(path):
        with _locked(path):
            if not is_ready(path):  # another caller may have built it while this one waited
                _build(path, requirements_of(backend_cls))
    return str(_python(path))


def _build(path: Path, requirements: tuple[str, ...]) -> None:
    if path.exists():  # half-built: a failed or killed build left it without its ready marker
        shutil.rmtree(path)
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, text=True,
                       timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(path, ignore_errors=True)
        output = getattr(exc, "stderr", None) or getattr(exc, "stdout", None) or ""
        raise EnvironmentBuildError(f"`{sys.executable} -m venv {path}` failed: {exc}\n{_tail(output)}") from exc
    argv = [str(_python(path)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            *requirements]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"{exc.stdout or ''}{exc.stderr or ''}\npip timed out after {PIP_TIMEOUT_S} s", -1
    if code != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise EnvironmentBuildError(
            f"building the environment {path.name} failed: pip install could not install "
            f"{_failed_requirement(output, requirements)} (exit {code}); the half-built environment was "
            f"removed.\nlast lines of pip's output:\n{_tail(output)}")
    (path / PIP_LOG).write_text(output)
    record = {"requirements": list(requirements), "python": sys.version, "built_from": sys.executable,
              "build_s": round(time.monotonic() - started, 1),
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path / (READY_MARKER + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path / READY_MARKER)


_PIP_FAILED = (
    re.compile(r"No matching distribution found for ([^\s]+)"),
    re.compile(r"Could not find a version that satisfies the requirement ([^\s]+)"),
    re.compile(r"Invalid requirement: '?([^'\s]+)"),
    re.compile(r"Failed to build ([^\s]+)"),
    re.compile(r"Cannot install ([^\n]+?) because these package versions have conflicting dependencies"),
)


def _failed_requirement(output: str, requirements: tuple[str, ...]) -> str:
    """The requirement pip names as the one that failed; all of them when its output names none."""
    for pattern in _PIP_FAILED:
        match = pattern.search(output)
        if match:
            return repr(match.group(1).strip())
    return "one of " + ", ".join(repr(r) for r in requirements)


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-TAIL_LINES:])


def build_info(backend_cls: type[Any]) -> dict[str, Any] | None:
    """What the ready marker says about the backend's environment (None: the harness's own environment)."""
    path = env_path(backend_cls)
    if path is None or not is_ready(path):
        return None
    return json.loads((path / READY_MARKER).read_text()) | {"path": str(path)}


_VERSIONS_SCRIPT = """
import json, sys
from importlib.metadata import PackageNotFoundError, version
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = version(name)
    except PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def packages_in(backend_cls: type[Any]) -> dict[str, str | None]:
    """Versions of the backend's `packages` where it runs (None: not installed there)."""
    return versions_in(backend_cls, tuple(getattr(backend_cls, "packages", ()) or ()))


def versions_in(backend_cls: type[Any], names: tuple[str, ...]) -> dict[str, str | None]:
    """Versions of the distributions `names` in the environment the backend runs in.

    `importlib.metadata` sees only this process's environment, so a private environment's own interpreter
    is asked, once per name, and the answers are cached in a file inside the environment (an environment
    never changes once built: a new requirement list is a new environment).
    """
    path = env_path(backend_cls)
    if path is None:
        return {name: _local_version(name) for name in names}
    python = python_for(backend_cls)
    cache = path / PACKAGES_CACHE
    known: dict[str, str | None] = {}
    with contextlib.suppress(OSError, ValueError):
        known = dict(json.loads(cache.read_text()))
    missing = [name for name in names if name not in known]
    if missing:
        done = subprocess.run([python, "-c", _VERSIONS_SCRIPT, *missing], capture_output=True, text=True,
                              timeout=60, check=True)
        known |= json.loads(done.stdout)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        tmp.replace(cache)
    return {name: known[name] for name in names}


def argv_for(argv: list[str], python: str) -> list[str]:
    """`argv` to run with `python`: a command whose ``argv[0]`` is the harness's interpreter (``python -m
    <module> ...``, as backends and `api.wsgi.gunicorn_argv` build them) runs with `python` instead."""
    if argv and argv[0] == sys.executable:
        return [python, *argv[1:]]
    return list(argv)


def _local_version(name: str) -> str | None:
    try:
        return _dist_version(name)
    except PackageNotFoundError:
        return None
