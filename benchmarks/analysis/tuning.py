"""Which knobs matter: one knob at a time from a library's defaults, read from stored runs only.

``queuebench tune`` (`benchmarks.tune`) measures; this module judges what is stored, so ``tune``,
``report`` and a copied results directory all say the same thing.

- A *tuning group* is one backend, one workload, one slot count (and broker, serializer, results): its runs
  differ only in their knob settings. Two workloads are recognised (`WORKLOADS`): a drain of no-op tasks
  (figure: throughput, higher is better) and the routing mix on one shared queue (figure: the short tasks'
  end-to-end p95, lower is better, recomputed from the raw rows like the report's routing chart).
- A run's *settings* are what it sets away from the library's defaults: its ``[backend]`` options, the
  spec keys `prefetch` and `acks_late` when set, and `threads` when a process runs more than one (threads
  per process at equal slots). The runs with no setting are the *defaults*.
- Every configuration with exactly one setting is a knob value, judged against the defaults by the winner
  rule (`verdicts.difference`: at least `MIN_REPEATS` repeats a side, Welch's t on logs, beyond the
  `NOISE_FLOOR`). Knobs rank by the size of their largest effect, significant ones first (`rank_knobs`).
- The *tuned* configuration of a group sets every knob to its best significant value (`tuned_settings`). It is
  judged against the defaults from the runs of the second round (`TUNED_SUFFIX` in their matrix name: both
  measured in one sweep, repeats interleaved) when there are any, else from every run of the two.
- A knob whose best value for one workload's figure makes the other's clearly worse is flagged
  (`cross_flags`): throughput up, short-task p95 up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import backends
from benchmarks import verdicts
from benchmarks.analysis.load import Results, is_missing

#: The second round of a tune (tuned against default, interleaved) runs under a matrix named with this.
TUNED_SUFFIX = "-tuned"
#: Spec keys compared as knobs (besides `threads`, which counts when it is not 1).
SPEC_SETTING_KEYS = ("prefetch", "acks_late")


@dataclass(frozen=True)
class Workload:
    """A workload a tune measures: its name, the figure judged, and how to say it."""

    name: str
    figure: str
    title: str
    unit: str


WORKLOADS: dict[str, Workload] = {
    "drain": Workload("drain", "throughput_per_s", "drain of no-op tasks: throughput", "/s"),
    "routing": Workload("routing", "short_e2e_ms_p95", "routing mix on one shared queue: short-task p95", " ms"),
}


def workload_of(row: Mapping[str, Any]) -> str | None:
    """`drain` for a drain of no-op tasks, `routing` for the routing mix on a shared queue, else None."""
    if row.get("mode") == "drain" and row.get("task") == "noop":
        return "drain"
    if row.get("mode") == "load" and row.get("scenario") == "routing_mix" and row.get("routing") == "shared":
        return "routing"
    return None


def settings_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a run sets away from the library's defaults: its options, `prefetch`/`acks_late` when set,
    `threads` when not 1 (threads per process at equal slots)."""
    found = dict(json.loads(row["options"]) if isinstance(row.get("options"), str) else (row.get("options") or {}))
    for key in SPEC_SETTING_KEYS:
        value = row.get(key)
        if not is_missing(value):
            found[key] = bool(value) if key == "acks_late" else int(value)
    threads = row.get("threads")
    if not is_missing(threads) and int(threads) != 1:
        found["threads"] = int(threads)
    return found


def settings_text(settings: Mapping[str, Any]) -> str:
    """``queue_prefetch=64, threads=2``; ``defaults`` for none."""
    return ", ".join(f"{k}={_value_text(v)}" for k, v in sorted(settings.items())) or "defaults"


def _value_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def value_order(value: Any) -> tuple[Any, ...]:
    """Sort key of knob values: numbers (and booleans) by value before strings."""
    if isinstance(value, bool | int | float):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _key(settings: Mapping[str, Any]) -> str:
    return json.dumps(dict(settings), sort_keys=True, default=str)


def library_default(backend: str, knob: str) -> Any:
    """The library's own default of a knob or tuned spec key (None when the library derives it)."""
    try:
        cls = backends.backend_class(backend)
    except (KeyError, ImportError):
        return None
    declared = {**dict(getattr(cls, "knobs", {}) or {}), **dict(getattr(cls, "spec_knobs", {}) or {})}
    return declared[knob].default if knob in declared else (1 if knob == "threads" else None)


# --- the runs of tuning groups ----------------------------------------------------------------------------


def tuning_runs(results: Results) -> pd.DataFrame:
    """Usable runs of the tune workloads: run_id, backend, workload, group, settings (JSON), phase, value
    (the workload's figure) and matrix."""
    from benchmarks.analysis.charts import routing_figures, workload_title

    runs = results.usable
    if runs.empty:
        return pd.DataFrame()
    runs = runs.copy()
    runs["workload"] = [workload_of(r) for r in runs.to_dict("records")]
    runs = runs[runs["workload"].notna()]
    if runs.empty:
        return pd.DataFrame()
    routing = routing_figures(results, runs[runs["workload"] == "routing"])
    short = dict(zip(routing["run_id"], routing["short_e2e_ms_p95"], strict=True)) if not routing.empty else {}
    rows = []
    for row in runs.to_dict("records"):
        workload = WORKLOADS[row["workload"]]
        value = row.get(workload.figure) if workload.name == "drain" else short.get(row["run_id"])
        group = {"backend": row["backend"], "workload": workload.name, "slots": int(row["slots"]),
                 "broker": row["broker"], "serializer": row["serializer"], "results": bool(row["results"]),
                 "load": workload_title(row)}
        rows.append({"run_id": row["run_id"], "backend": row["backend"], "workload": workload.name,
                     "group": json.dumps(group, sort_keys=True), "settings": _key(settings_of(row)),
                     "phase": "tuned" if str(row.get("matrix") or "").endswith(TUNED_SUFFIX) else "knobs",
                     "value": float(value) if value is not None and not is_missing(value) else math.nan,
                     "matrix": row.get("matrix")})
    return pd.DataFrame(rows)


@dataclass
class KnobValue:
    """One knob value of a tuning group against the defaults."""

    group: dict[str, Any]
    knob: str
    value: Any
    default_value: Any
    diff: verdicts.Difference
    run_ids: list[str]
    figure_mean: float
    default_mean: float

    @property
    def significant(self) -> bool:
        return self.diff.clear

    @property
    def better(self) -> bool:
        return self.diff.outcome == "better"

    @property
    def effect(self) -> float:
        """|log ratio|: the size of the effect whichever way it goes (0 when unknown)."""
        ratio = self.diff.ratio
        return abs(math.log(ratio)) if math.isfinite(ratio) and ratio > 0 else 0.0

    def record(self) -> dict[str, Any]:
        """A tune.json record."""
        d = self.diff
        return {"backend": self.group["backend"], "workload": self.group["workload"], "slots": self.group["slots"],
                "load": self.group["load"], "knob": self.knob, "figure": d.figure, "value": self.value,
                "default_value": self.default_value, "ratio_to_default": _num(d.ratio), "ci_low": _num(d.ci_low),
                "ci_high": _num(d.ci_high), "n": d.b_repeats, "n_default": d.a_repeats,
                "significant": self.significant, "outcome": d.outcome, "p_value": _num(d.p_value),
                "figure_value": _num(self.figure_mean), "figure_default": _num(self.default_mean),
                "higher_is_better": d.higher_is_better, "run_ids": self.run_ids}


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass
class Group:
    """One tuning group: its runs judged knob by knob, and the tuned configuration against the defaults."""

    key: dict[str, Any]
    values: list[KnobValue]
    default_runs: list[str]
    tuned: dict[str, Any]
    tuned_diff: verdicts.Difference | None
    tuned_run_ids: list[str]
    tuned_phase: str
    best_single: KnobValue | None
    combination_worse: bool
    combination_worse_clearly: bool
    #: Geometric means of the tuned configuration and of the defaults it was judged against.
    tuned_mean: float = math.nan
    tuned_default_mean: float = math.nan

    @property
    def workload(self) -> Workload:
        return WORKLOADS[self.key["workload"]]

    @property
    def label(self) -> str:
        return f"{self.key['backend']} · {self.key['load']} · {self.key['slots']} slots"

    def ranking(self) -> list[str]:
        return rank_knobs(self.values)

    def record(self) -> dict[str, Any]:
        d = self.tuned_diff
        return {"backend": self.key["backend"], "workload": self.key["workload"], "slots": self.key["slots"],
                "load": self.key["load"], "figure": self.workload.figure, "ranking": self.ranking(),
                "tuned": self.tuned, "tuned_text": settings_text(self.tuned),
                "figure_value": _num(self.tuned_mean), "figure_default": _num(self.tuned_default_mean),
                "ratio_to_default": _num(d.ratio) if d else None, "ci_low": _num(d.ci_low) if d else None,
                "ci_high": _num(d.ci_high) if d else None, "n": d.b_repeats if d else 0,
                "n_default": d.a_repeats if d else 0, "significant": bool(d and d.clear),
                "outcome": d.outcome if d else "not measured", "measured_in": self.tuned_phase,
                "run_ids": self.tuned_run_ids,
                "best_single": (None if self.best_single is None else
                                {"knob": self.best_single.knob, "value": self.best_single.value,
                                 "ratio_to_default": _num(self.best_single.diff.ratio)}),
                "combination_worse_than_best_single": self.combination_worse,
                "combination_clearly_worse_than_best_single": self.combination_worse_clearly}


def rank_knobs(values: Sequence[KnobValue]) -> list[str]:
    """Knobs by importance: those with a significant value first, then by their largest effect (the largest
    |log ratio to default| over their values), ties by name."""
    best: dict[str, tuple[bool, float]] = {}
    for v in values:
        significant, effect = best.get(v.knob, (False, 0.0))
        best[v.knob] = (significant or v.significant, max(effect, v.effect))
    return sorted(best, key=lambda k: (not best[k][0], -best[k][1], k))


def best_values(values: Sequence[KnobValue]) -> dict[str, KnobValue]:
    """Per knob, its value that is clearly better than the defaults by the largest effect (knobs with none
    are left out)."""
    found: dict[str, KnobValue] = {}
    for v in values:
        if v.better and (v.knob not in found or v.effect > found[v.knob].effect):
            found[v.knob] = v
    return found


def tuned_settings(values: Sequence[KnobValue]) -> dict[str, Any]:
    """Every knob at its best significant value: what the second round of a tune measures."""
    return {knob: v.value for knob, v in sorted(best_values(values).items())}


def groups(results: Results, backend: str | None = None) -> list[Group]:
    """Every tuning group of the results (of one backend, if given) that has default runs."""
    runs = tuning_runs(results)
    if runs.empty:
        return []
    if backend is not None:
        runs = runs[runs["backend"] == backend]
    found = []
    for group_text, in_group in runs.groupby("group", sort=True):
        key = json.loads(group_text)
        figure = WORKLOADS[key["workload"]].figure
        knob_runs = in_group[in_group["phase"] == "knobs"]
        default = knob_runs[knob_runs["settings"] == "{}"]
        if default.empty:
            continue
        values = []
        for settings_key, config in knob_runs.groupby("settings", sort=True):
            settings = json.loads(settings_key)
            if len(settings) != 1:
                continue
            (knob, value), = settings.items()
            diff = verdicts.difference(default["value"], config["value"], figure)
            values.append(KnobValue(key, knob, value, library_default(key["backend"], knob), diff,
                                    list(config["run_id"]), verdicts.geometric_mean(config["value"]),
                                    verdicts.geometric_mean(default["value"])))
        tuned = tuned_settings(values)
        tuned_diff, tuned_ids, phase = None, [], "not measured"
        tuned_mean = tuned_default_mean = math.nan
        best = best_values(values)
        best_single = max(best.values(), key=lambda v: v.effect) if best else None
        worse = clearly = False
        if tuned:
            second = in_group[in_group["phase"] == "tuned"]
            both = second[second["settings"].isin([_key(tuned), "{}"])]
            source, phase = ((both, "tuned round (one sweep, interleaved)")
                             if set(both["settings"]) == {_key(tuned), "{}"} else (knob_runs, "knob round"))
            t_runs = source[source["settings"] == _key(tuned)]
            d_runs = source[source["settings"] == "{}"]
            if not t_runs.empty:
                tuned_diff = verdicts.difference(d_runs["value"], t_runs["value"], figure)
                tuned_ids = list(t_runs["run_id"])
                tuned_mean = verdicts.geometric_mean(t_runs["value"])
                tuned_default_mean = verdicts.geometric_mean(d_runs["value"])
                if best_single is not None and len(tuned) > 1:
                    higher = tuned_diff.higher_is_better
                    t_ratio, s_ratio = tuned_diff.ratio, best_single.diff.ratio
                    worse = bool(math.isfinite(t_ratio) and (t_ratio < s_ratio if higher else t_ratio > s_ratio))
                    single_runs = knob_runs[knob_runs["run_id"].isin(best_single.run_ids)]
                    clearly = verdicts.difference(single_runs["value"], t_runs["value"], figure).outcome == "worse"
        found.append(Group(key, values, list(default["run_id"]), tuned, tuned_diff, tuned_ids, phase, best_single,
                           worse, clearly, tuned_mean, tuned_default_mean))
    return found


def cross_flags(found: Sequence[Group]) -> list[dict[str, Any]]:
    """Knobs whose best value for one workload's figure makes another workload's figure clearly worse."""
    by_key: dict[tuple[Any, ...], dict[str, Group]] = {}
    for g in found:
        by_key.setdefault((g.key["backend"], g.key["slots"], g.key["broker"], g.key["serializer"]), {})[
            g.key["workload"]] = g
    flags = []
    for (backend, slots, _, _), workloads in sorted(by_key.items(), key=lambda item: str(item[0])):
        for name, g in sorted(workloads.items()):
            for knob, best in sorted(best_values(g.values).items()):
                for other_name, other in sorted(workloads.items()):
                    if other_name == name:
                        continue
                    match = next((v for v in other.values if v.knob == knob and v.value == best.value), None)
                    if match is not None and match.diff.outcome == "worse":
                        flags.append({
                            "backend": backend, "slots": slots, "knob": knob, "value": best.value,
                            "improves": name, "improves_ratio": _num(best.diff.ratio), "worsens": other_name,
                            "worsens_ratio": _num(match.diff.ratio),
                            "text": (f"{backend} {knob}={_value_text(best.value)}: best for "
                                     f"{WORKLOADS[name].title} ({best.diff.interval_text}) but clearly worse for "
                                     f"{WORKLOADS[other_name].title} ({match.diff.interval_text})")})
    return flags


def summary(results: Results, backend: str | None = None) -> dict[str, Any]:
    """What ``OUT/tune.json`` holds: every knob value's record, each group's tuned configuration and
    ranking, and the cross-workload flags."""
    found = groups(results, backend)
    return {"rule": winner_rule_sentence(),
            "knobs": [v.record() for g in found for v in sorted(g.values, key=lambda v: (v.knob, value_order(v.value)))],
            "tuned": [g.record() for g in found], "flags": cross_flags(found)}


def winner_rule_sentence() -> str:
    return (f"a value is significant when both it and the defaults have at least {verdicts.MIN_REPEATS} repeats, "
            f"Welch's t-test on the logs of the per-repeat figures gives p < {verdicts.ALPHA:g}, and the ratio of "
            f"geometric means differs from 1 by more than {verdicts.NOISE_FLOOR:.0%}; intervals are "
            f"{verdicts.CONFIDENCE_TEXT} t intervals of that ratio")


# --- the tornado chart -----------------------------------------------------------------------------------


def tornado(group: Group, out_dir: Path, caption_text: str = "") -> list[Path]:
    """One horizontal row per knob (most important on top): each value's ratio to the defaults with its
    interval, on a log axis, the noise floor shaded. Returns the PNG and SVG written."""
    ranking = group.ranking()
    if not ranking:
        return []
    from matplotlib.ticker import FuncFormatter

    from benchmarks.analysis.charts import plt  # matplotlib loads when a chart is drawn (Agg, set there)

    height = max(2.2, 1.2 + 0.55 * len(ranking))
    fig, ax = plt.subplots(figsize=(7.5, height))
    floor = 1 + verdicts.NOISE_FLOOR
    ax.axvspan(1 / floor, floor, color="#dddddd", alpha=0.6, lw=0, label=f"noise floor (±{verdicts.NOISE_FLOOR:.0%})")
    ax.axvline(1.0, color="#444444", lw=0.8)
    ratios: list[float] = []
    for row, knob in enumerate(ranking):
        y = len(ranking) - 1 - row
        values = [v for v in group.values if v.knob == knob and math.isfinite(v.diff.ratio)]
        if not values:
            continue
        span = [min(v.diff.ratio for v in values), max(v.diff.ratio for v in values)]
        ax.plot([min(span[0], 1.0), max(span[1], 1.0)], [y, y], color="#9ecae1", lw=8, solid_capstyle="butt", zorder=1)
        for v in values:
            colour = "#08519c" if v.better else ("#a50f15" if v.diff.outcome == "worse" else "#7f7f7f")
            low, high = v.diff.ci_low, v.diff.ci_high
            if math.isfinite(low) and math.isfinite(high):
                ax.errorbar(v.diff.ratio, y, xerr=[[v.diff.ratio - low], [high - v.diff.ratio]], fmt="o",
                            color=colour, ms=4, capsize=3, lw=1, zorder=3)
                ratios += [low, high]
            else:
                ax.plot(v.diff.ratio, y, "o", mfc="white", color=colour, ms=4, zorder=3)
            ratios.append(v.diff.ratio)
            ax.annotate(_value_text(v.value), (v.diff.ratio, y), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=7, color=colour)
    ax.set_yticks(range(len(ranking)), list(reversed(ranking)))
    ax.set_xscale("log")
    lo, hi = min([*ratios, 1 / floor]), max([*ratios, floor])
    ax.set_xlim(lo / 1.3, hi * 1.3)
    ticks = FuncFormatter(lambda x, _pos: f"x{x:.3g}")
    ax.xaxis.set_major_formatter(ticks)
    ax.xaxis.set_minor_formatter(ticks)
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.set_ylim(-0.7, len(ranking) - 0.3)
    direction = verdicts.direction_text(group.workload.figure)
    ax.set_xlabel(f"{group.workload.figure}: ratio to the library's defaults ({direction})\n"
                  "blue: clearly better, red: clearly worse, grey: within noise or too few repeats (open: no "
                  "interval)", fontsize=8)
    ax.set_title(f"Which knobs matter: {group.label}")
    ax.legend(loc="lower right", fontsize=7)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "tornado-" + "-".join(str(group.key[k]) for k in ("backend", "workload", "slots"))
    if caption_text:
        fig.text(0.0, -0.6 / height, caption_text, fontsize=7, color="#444444", ha="left", va="top", wrap=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return paths


# --- sentences ---------------------------------------------------------------------------------------------


def figure_text(value: float, workload: Workload) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:,.0f}{workload.unit}" if value >= 100 else f"{value:,.1f}{workload.unit}"


def value_row(v: KnobValue, workload: Workload) -> list[str]:
    """A table row: knob, value (default), figure, ratio to default with interval, n, verdict."""
    d = v.diff
    verdict = {"better": "clearly better", "worse": "clearly worse", "within noise": "within noise"}.get(
        d.outcome, verdicts.repeats_notice(d.a_repeats, d.b_repeats))
    default = "derived by the library" if v.default_value is None else _value_text(v.default_value)
    return [v.knob, f"{_value_text(v.value)} (default {default})",
            f"{figure_text(v.figure_mean, workload)} vs {figure_text(v.default_mean, workload)}",
            d.interval_text, f"{d.b_repeats} vs {d.a_repeats}", verdict]


def tuned_sentence(g: Group) -> str:
    """What the tuned configuration did against the defaults, and whether it beat the best single knob."""
    if not g.tuned:
        return (f"{g.label}: no knob value is clearly better than the defaults, so tuned = defaults "
                f"({g.workload.figure}).")
    if g.tuned_diff is None:
        return (f"{g.label}: tuned ({settings_text(g.tuned)}) not measured yet; `queuebench tune` measures it "
                "against the defaults in one sweep.")
    d = g.tuned_diff
    meaning = {"better": "clearly better", "worse": "clearly worse"}.get(d.outcome, d.outcome)
    text = (f"{g.label}: tuned ({settings_text(g.tuned)}) against the defaults, {g.workload.figure} "
            f"{d.interval_text}, {d.b_repeats} vs {d.a_repeats} repeats ({g.tuned_phase}): {meaning}.")
    if g.combination_worse and g.best_single is not None:
        text += (f" The combination does worse than the best single knob ({g.best_single.knob}="
                 f"{_value_text(g.best_single.value)}, {g.best_single.diff.interval_text})"
                 + (", clearly (winner rule)." if g.combination_worse_clearly else ", though within noise."))
    return text


def library_table(found: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Per workload and slot count, each library at its defaults and tuned, side by side."""
    header = ["workload", "slots", "backend", "defaults (geometric mean, n)", "tuned", "tuned (geometric mean, n)",
              "tuned / defaults"]
    rows = []
    for g in sorted(found, key=lambda g: (g.key["workload"], g.key["slots"], g.key["load"], g.key["backend"])):
        d = g.tuned_diff
        default = g.values[0].default_mean if g.values else math.nan
        n_default = g.values[0].diff.a_repeats if g.values else len(g.default_runs)
        if d is not None:
            default, n_default = g.tuned_default_mean, d.a_repeats
        tuned_mean = g.tuned_mean
        rows.append([f"{g.workload.title} ({g.key['load']})", str(g.key["slots"]), g.key["backend"],
                     f"{figure_text(default, g.workload)} (n={n_default})", settings_text(g.tuned),
                     "same as defaults" if not g.tuned else
                     (f"{figure_text(tuned_mean, g.workload)} (n={d.b_repeats})" if d is not None else "not measured"),
                     "x1.00" if not g.tuned else (d.interval_text if d is not None else "-")])
    return header, rows


def spread_text(values: Sequence[float]) -> str:
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype="float64")
    return "-" if not array.size else f"{array.min():,.1f}-{array.max():,.1f}"
