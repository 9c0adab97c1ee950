"""The serializer comparison as one tidy table: backend x broker x serializer x payload size x figure.

A pure function of the loaded runs frame (`benchmarks.analysis.load.Results.runs`, whose serializer columns
come from each drain run's ``serialization`` record, see `load.serialization_row`): nothing is read or
measured here, so the report and the charts can build on it.

Figures, each summarised over the repeats of one configuration (n, median, min, max, spread = max - min):

- ``broker_bytes_per_message``: what one message costs on the broker, read from the broker (Redis
  used_memory delta, RabbitMQ message_bytes, SQLite file growth, per preloaded message);
- ``broker_key_bytes_per_message``: Redis only, the MEMORY USAGE of the keys per message;
- ``encoded_bytes``: the bytes the library's codec hands its broker client for one message;
- ``codec_us_per_message``, ``codec_encode_us``, ``codec_decode_us``: the library's own encode + decode,
  microseconds per message (each run's own value is already the median over its batches);
- ``throughput_per_s`` and ``throughput_from_worker_start_per_s``: the drain, with serialization on the
  critical path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

#: The figures `serializer_table` summarises, in the order it lists them.
FIGURES: tuple[str, ...] = (
    "broker_bytes_per_message", "broker_key_bytes_per_message", "encoded_bytes",
    "codec_us_per_message", "codec_encode_us", "codec_decode_us",
    "throughput_per_s", "throughput_from_worker_start_per_s",
)
#: What tells one row of the table from another.
KEYS: tuple[str, ...] = ("backend", "broker", "serializer", "payload_bytes")
#: Keys that also keep configurations apart when they vary (two worker counts are two rows, not repeats).
CONFIGURATION_KEYS: tuple[str, ...] = ("processes", "threads", "options", "results")
COLUMNS: tuple[str, ...] = (*KEYS, "figure", "n", "median", "min", "max", "spread")


def serializer_table(runs: pd.DataFrame, figures: Sequence[str] = FIGURES,
                     configuration_keys: Iterable[str] = CONFIGURATION_KEYS) -> pd.DataFrame:
    """One row per (backend, broker, serializer, payload size, figure) -- plus whichever of
    `configuration_keys` vary among the runs -- with the number of repeats that have the figure and its
    median, min, max and spread (max - min) over them.

    Only usable drain runs count (``usable`` true, ``mode`` drain). A figure a run did not record (a part
    "not measured", a task without payload) is left out of n; a group with no value at all for a figure is
    not listed. Sorted by the keys, then the figures in `figures` order.
    """
    frame = runs
    if "usable" in frame.columns:
        frame = frame[frame["usable"].fillna(False).astype(bool)]
    if "mode" in frame.columns:
        frame = frame[frame["mode"] == "drain"]
    present = [f for f in figures if f in frame.columns]
    extra = [k for k in configuration_keys if k in frame.columns
             and frame[k].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
             .nunique() > 1]
    keys = [*KEYS, *extra]
    if frame.empty or not present:
        return pd.DataFrame(columns=[*keys[:len(KEYS)], *extra, *COLUMNS[len(KEYS):]])
    frame = frame.copy()
    for key in keys:
        if key not in frame.columns:
            frame[key] = None
    long = frame.melt(id_vars=keys, value_vars=present, var_name="figure", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    grouped = long.groupby([*keys, "figure"], dropna=False, sort=False)["value"]
    table = grouped.agg(n="count", median="median", min="min", max="max").reset_index()
    table["spread"] = table["max"] - table["min"]
    order = {name: i for i, name in enumerate(figures)}
    table["_figure_order"] = table["figure"].map(order)
    table = table.sort_values([*keys, "_figure_order"], na_position="last", kind="stable")
    return table.drop(columns="_figure_order").reset_index(drop=True)[[*keys, *COLUMNS[len(KEYS):]]]
