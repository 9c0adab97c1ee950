#!/usr/bin/env bash
# The test command: creates .venv if needed, installs queuebench with its test extras, lints, runs
# every test. Tests that need Redis or RabbitMQ skip on a laptop without them and fail when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
