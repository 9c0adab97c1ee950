#!/usr/bin/env bash
# The main job: creates .venv if needed, installs queuebench, and runs it end to end on brokers the
# harness starts itself. Until the matrix runner lands this is `queuebench smoke`: every backend, every
# task kind, through the API under gunicorn, checked against the ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/queuebench smoke "$@"
