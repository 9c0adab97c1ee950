"""`python -m benchmarks ...` is the same as `queuebench ...`."""

from benchmarks.cli import main

main()
