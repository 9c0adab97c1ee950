"""From stored results to tables, charts, a report, comparisons and capacity plans. Reads run directories
through `benchmarks.store`; never writes them, and never imports the runner, the matrix parser or the
stack (tests/test_layering.py holds that).

- `load`: a results directory as tidy pandas frames (one row per run, one row per execution, one row per
  search); also the one place analysis lists matrix keys and backends.
- `charts`: one matplotlib function per question (worker count, serializers, routing, latency against
  offered rate, latency decomposition, resource cost), each saving PNG and SVG.
- `report`: ``report.md`` and a self-contained ``report.html`` (``queuebench report``).
- `compare`: B against A per matching cell, by the winner rule where both sides have the repeats, else
  over raw rows, labelled so (``queuebench compare``).
- `uncertainty`: every figure as the outputs print it, with its sample size (``too few samples (n=27)``
  for a percentile its tasks cannot bound), and the winner rule's answers in words.
- `queueing`: the M/M/c model (Erlang B and C, response-time quantiles, the fewest servers).
- `planner`: the fewest slots per backend for a rate within an SLO, from measured runs (``queuebench plan``).
- `cover`: the matrix that would measure what a plan could not answer.
- `notes`: the report's capacity notes.
- `commands`, `plan_cmd`: the Click commands (``report``, ``compare``, ``plan``).
"""
