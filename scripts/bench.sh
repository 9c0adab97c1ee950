#!/usr/bin/env bash
# The main job: creates .venv if needed, installs queuebench, runs the default benchmark matrix end to
# end on brokers the harness starts itself, then writes the report. Extra arguments go to `queuebench run`
# (e.g. --only backend=rq). Re-running resumes: cells already measured are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
OUT=results/runs/default
status=0
.venv/bin/queuebench run benchmarks/matrices/default.toml --out "$OUT" "$@" || status=$?
if [ "$status" -eq 130 ]; then exit 130; fi
.venv/bin/queuebench report "$OUT" --out results/sets/default
echo "report: $(pwd)/results/sets/default/report.html"
exit "$status"
