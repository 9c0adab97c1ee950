"""From stored results to tables, charts, a report and comparisons. Reads run directories; never writes them.

- `load`: a results directory as tidy pandas frames (one row per run, one row per execution).
- `charts`: one matplotlib function per question (worker count, serializers, routing, latency against
  offered rate, latency decomposition, resource cost), each saving PNG and SVG.
- `report`: ``report.md`` and a self-contained ``report.html`` (``queuebench report``).
- `compare`: B against A per matching cell, with bootstrap confidence intervals (``queuebench compare``).
- `commands`: the two Click commands.
"""
