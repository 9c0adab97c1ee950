#!/usr/bin/env bash
# The test command: creates .venv if needed, installs queuebench with its test extras, lints, runs
# every test. Tests that need Redis, RabbitMQ or Chromium skip on a laptop without them and fail when CI
# is set. As root on Debian/Ubuntu it installs Debian's chromium (for the report's browser test) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
        || echo "test.sh: could not install chromium; the browser test will skip (or fail under CI)" >&2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
