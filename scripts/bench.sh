#!/usr/bin/env bash
# The main job: creates .venv if needed, installs queuebench, and runs the default benchmark matrix end
# to end on brokers the harness starts itself. Extra arguments go to `queuebench run`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/queuebench run benchmarks/matrices/default.toml "$@"
