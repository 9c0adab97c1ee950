"""What every run records about where it ran: machine, Python, library versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

import backends

#: The harness's own packages; each backend adds the ones it declares (`QueueBackend.packages`).
PACKAGES = ("flask", "gunicorn", "locust", "pandas", "numpy", "psutil")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def packages(backend: str | None = None) -> dict[str, str | None]:
    """Versions of the harness's packages and, for `backend`, the packages that backend declares (when the
    backend runs in a private environment, its packages' versions are that environment's: run.json
    records them under ``backend_environment``)."""
    names = list(PACKAGES)
    cls = backends.backend_class(backend) if backend is not None else None
    if cls is not None and not cls.environment:
        names = [*cls.packages, *names]
    return {name: _version(name) for name in dict.fromkeys(names)}


def describe(backend: str | None = None) -> dict[str, Any]:
    """Where a run ran: machine, Python, package versions (the backend's among them), git commit."""
    load = os.getloadavg()
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count_logical": psutil.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total_bytes": psutil.virtual_memory().total,
        "loadavg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": packages(backend),
        "git": git_commit(),
    }
