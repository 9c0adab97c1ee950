"""What the outputs may conclude from the numbers: every figure with its sample size, a percentile only
when its tasks bound it, and a winner only when the winner rule names one.

Result sets are synthetic stored runs (tests/synthetic_runs.py: raw rows drawn with a chosen effect,
run.json computed from them by the runner's own code) and the golden fixtures. No test asserts a number
drawn or measured: only what the report, compare and plan must say about it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic_runs import write_configuration, write_run

from benchmarks import verdicts
from benchmarks.analysis import compare, report
from benchmarks.analysis.commands import compare as compare_command
from benchmarks.analysis.load import load_results
from benchmarks.analysis.uncertainty import num

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "fixtures" / "results" / "sample"

#: The result sets, by name: each a list of configurations (backend, repeats, median end to end in ms,
#: tasks in each run's window).
SETS = {
    "three_times": [("rq", 3, 40.0, 150), ("dramatiq", 3, 120.0, 150)],
    "few_percent": [("rq", 3, 40.0, 150), ("dramatiq", 3, 41.2, 150)],
    "single_runs": [("rq", 1, 40.0, 150), ("dramatiq", 1, 120.0, 150)],
    "few_tasks": [("rq", 1, 40.0, 30), ("dramatiq", 1, 120.0, 30)],
}


def write_set(root: Path, name: str) -> Path:
    for backend, repeats, median_ms, tasks in SETS[name]:
        write_configuration(root / name, repeats, backend=backend, median_e2e_ms=median_ms, tasks=tasks)
    return root / name


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, report.Report]:
    """Each synthetic set's report, and the golden fixtures' (written once: drawing is the slow part)."""
    root = tmp_path_factory.mktemp("sets")
    made = {name: report.write_report(load_results(write_set(root, name)), root / "reports" / name)
            for name in SETS}
    made["sample"] = report.write_report(load_results(SAMPLE), root / "reports" / "sample")
    return made


def headline(made: report.Report) -> list[dict[str, str]]:
    """The headline table of a written report.md, one dict per row keyed by column header."""
    section = made.markdown.read_text().split("## Headline", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    header, rows = cells[0], cells[1:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def latency_row(made: report.Report) -> dict[str, str]:
    (row,) = [r for r in headline(made) if r["Question"] == "Latency"]
    return row


# --- the headline -------------------------------------------------------------------------------------


def test_a_configuration_three_times_faster_over_three_repeats_is_named_best_with_its_interval(written):
    row = latency_row(written["three_times"])
    assert row["Best configuration"].startswith("rq: beats every other configuration; runner-up dramatiq at x")
    low, high = (float(v) for v in re.search(r"95 % CI ([\d.]+) to ([\d.]+)", row["Best configuration"]).groups())
    assert 1 + verdicts.NOISE_FLOOR < low < high  # the runner-up is clearly slower
    assert "clearly worse" in row["Runner-up against the leader"]
    assert row["Within noise of the leader"] == "-"
    assert "n=150 tasks each" in row["Best (or leading) configuration's figure"]


def test_two_configurations_a_few_percent_apart_get_no_clear_winner_listing_both(written):
    row = latency_row(written["few_percent"])
    assert row["Best configuration"] == "no clear winner"
    within = row["Within noise of the leader"]
    assert "(leader)" in within and "rq" in within and "dramatiq" in within
    assert re.search(r"x[\d.]+ \(95 % CI [\d.]+ to [\d.]+\)", within)
    assert "within noise" in row["Runner-up against the leader"]


def test_single_runs_name_no_winner_and_say_how_to_measure_one(written):
    row = latency_row(written["single_runs"])
    assert row["Best configuration"] == f"no clear winner ({verdicts.SINGLE_RUNS})"
    assert "interval not measured" in row["Within noise of the leader"]
    # A single run's percentile still carries its own distribution-free interval from the raw rows.
    assert re.search(r"ms \(95 % CI [\d.]+ to [\d.]+, n=150\) · 1 run", row["Best (or leading) configuration's figure"])


def test_a_percentile_from_too_few_samples_reads_so_and_never_as_a_number(written):
    made = written["few_tasks"]
    text, page = made.markdown.read_text(), made.html.read_text()
    row = latency_row(made)
    assert "no clear winner" in row["Best configuration"] and "needs n ≥ 72" in row["Best configuration"]
    assert "too few samples (n=30)" in row["Notes"] and "too few samples (n=30)" in page
    for run_json in (made.out_dir.parent.parent / "few_tasks").glob("*/run.json"):
        stored = json.loads(run_json.read_text())["summary"]["figures"]["latency"]["e2e_ms"]
        assert stored["count"] == 30 < verdicts.min_samples(0.95)
        for name in ("p95", "p99"):  # stored in run.json, never printed
            assert num(stored[name], "ms") not in text and num(stored[name], "ms") not in page


# --- every percentile states its n --------------------------------------------------------------------

#: A latency figure as the report prints it.
FIGURE_MS = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?) ?ms\b")
#: Words that make the figure after them a limit or a requirement, not a measurement.
LIMIT_BEFORE = re.compile(r"(≤|<=|<|>|under|limit|exceeded|needs|needed)\s*$")
#: A percentile named right before a bare number (``p95 39.6``, ``p95 is 39.6``): a figure without a unit.
BARE_PERCENTILE = re.compile(r"\bp(?:50|90|95|99)\b:?\s+(?:is\s+|of\s+|reaches\s+)?(\d[\d,]*(?:\.\d+)?)(?![\d.]*\s*(?:x|ms|%))")


def _parenthesis(text: str, pos: int) -> str:
    """The innermost parenthesised group of `text` around `pos` (within one table cell or line)."""
    depth = 0
    for i in range(pos - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            if depth == 0:
                j, level = i + 1, 1
                while j < len(text) and level:
                    level += {"(": 1, ")": -1}.get(text[j], 0)
                    j += 1
                return text[i:j]
            depth -= 1
        elif text[i] in "|\n":
            return ""
    return ""


def figures_without_n(text: str) -> list[str]:
    """Every latency figure of `text` whose sample size is not next to it: in the parenthesis right
    after it or around it. Limits (``≤ 200 ms``, ``limit 100 ms``) are not figures."""
    missing = []
    for match in FIGURE_MS.finditer(text):
        if LIMIT_BEFORE.search(text[max(0, match.start() - 30):match.start()]):
            continue
        after = _parenthesis(text, match.end() + 2) if text[match.end():].startswith(" (") else ""
        if "n=" not in after and "n=" not in _parenthesis(text, match.start()):
            missing.append(text[max(0, match.start() - 60):match.end() + 30])
    missing += [text[max(0, m.start() - 30):m.end() + 30] for m in BARE_PERCENTILE.finditer(text)]
    return missing


def test_the_scan_finds_a_percentile_printed_without_its_n():
    assert figures_without_n("p95 is 39.6 ms at 10/s") and figures_without_n("| p95 39.6 |")
    assert figures_without_n("39.6 ms (mean of 2 repeats, 39.5 to 39.7)")
    assert not figures_without_n("p95 is 39.6 ms (n=90); limit 100 ms; too few samples (n=27)")
    assert not figures_without_n("39.6 ms (mean of 2 repeats, 39.5 to 39.7; n=90 tasks each)")


@pytest.mark.parametrize("name", [*SETS, "sample"])
def test_every_percentile_in_the_report_states_its_n(written, name):
    text = written[name].markdown.read_text()
    assert figures_without_n(text) == []
    for row in headline(written[name]):
        if re.search(r"\bp\d\d\b", row["Figure"]):
            for column in ("Best (or leading) configuration's figure", "Runner-up against the leader",
                           "Floor (baseline)"):
                assert row[column] == "-" or "n=" in row[column], (column, row[column])


def test_the_rules_and_the_smallest_samples_are_stated_once_in_the_readme_and_the_methodology(written):
    smallest = {name: verdicts.min_samples(q) for name, q in verdicts.SLO_QUANTILES.items()}
    assert smallest == {"p50": 6, "p90": 36, "p95": 72, "p99": 368}  # what the README and the code say
    stated = ", ".join(f"{n} for {name}" for name, n in smallest.items())
    readme = " ".join((ROOT / "README.md").read_text().split())
    methodology = " ".join(written["sample"].markdown.read_text().split("## Methodology", 1)[1].split())
    for text in (readme, methodology):
        assert stated in text
        assert "Welch" in text and "geometric means" in text
        assert re.search(rf"more than {verdicts.NOISE_FLOOR * 100:g} ?%", text)


# --- compare ------------------------------------------------------------------------------------------


def write_pair(root: Path, name: str) -> tuple[Path, Path]:
    """Set `name`'s two configurations as two result sets, A (the first) and B (the second)."""
    sides = []
    for side, (backend, repeats, median_ms, tasks) in zip("ab", SETS[name], strict=True):
        write_configuration(root / name / side, repeats, backend=backend, median_e2e_ms=median_ms, tasks=tasks)
        sides.append(root / name / side)
    return sides[0], sides[1]


def stored_figures(root: Path, column: str) -> list[float]:
    records = [json.loads(p.read_text())["summary"]["figures"] for p in sorted(root.glob("*/run.json"))]
    return [r[column] if column in r else r["latency"]["e2e_ms"]["p95"] for r in records]


@pytest.mark.parametrize("name", ["three_times", "few_percent"])
def test_compare_marks_a_change_exactly_where_the_winner_rule_does(tmp_path, name):
    a, b = write_pair(tmp_path, name)
    result = compare.compare(a, b)
    assert result.treatment == {"backend": ("rq", "dramatiq")}
    for row in result.rows.itertuples():
        rule = verdicts.difference(stored_figures(a, row.metric), stored_figures(b, row.metric), row.metric)
        assert row.method == "repeats"
        assert row.significant == rule.clear
        assert (row.ratio, row.ci_low, row.ci_high) == pytest.approx((rule.ratio, rule.ci_low, rule.ci_high))
    p95 = result.rows.set_index("metric").loc["e2e_ms_p95"]
    assert p95["significant"] == (name == "three_times")
    assert p95["a_tasks"] == p95["b_tasks"] == "150"


def _scaled_throughput(source: Path, dest: Path, factor: float) -> Path:
    """A copy of `source` whose stored throughput figures are `factor` times the original."""
    shutil.copytree(source, dest)
    for run_json in dest.glob("*/run.json"):
        record = json.loads(run_json.read_text())
        record["summary"]["figures"]["throughput_per_s"] *= factor
        run_json.write_text(json.dumps(record))
    return dest


@pytest.mark.parametrize(("factor", "significant"), [(1.05, False), (1.5, True)])
def test_only_a_change_beyond_the_noise_floor_is_marked_significant(tmp_path, factor, significant):
    write_configuration(tmp_path / "a", 3, backend="rq", median_e2e_ms=40.0)
    # Three repeats of a synthetic run finish nearly the same number of tasks: vary them as real runs do.
    for i, run_json in enumerate(sorted((tmp_path / "a").glob("*/run.json"))):
        record = json.loads(run_json.read_text())
        record["summary"]["figures"]["throughput_per_s"] *= 1 + 0.01 * i
        run_json.write_text(json.dumps(record))
    result = compare.compare(tmp_path / "a", _scaled_throughput(tmp_path / "a", tmp_path / "b", factor))
    row = result.rows.set_index("metric").loc["throughput_per_s"]
    assert row["method"] == "repeats" and row["ratio"] == pytest.approx(factor)
    assert row["p_value"] < verdicts.ALPHA  # the same spread, shifted: the test alone would call both
    assert row["significant"] == significant
    assert row["verdict"] == ("better" if significant else "within noise")


def test_compare_labels_its_raw_row_fallback_for_single_runs_and_keeps_too_few_samples_out(tmp_path):
    a, b = write_pair(tmp_path, "single_runs")
    result = compare.compare(a, b)
    assert set(result.rows["method"]) == {"raw rows"}
    outcome = CliRunner().invoke(compare_command, [str(a), str(b)], terminal_width=250)
    assert outcome.exit_code == 0, outcome.output
    assert "run-to-run noise not measured" in outcome.output and "n=150 tasks" in outcome.output
    few_a, few_b = write_pair(tmp_path, "few_tasks")
    p95 = compare.compare(few_a, few_b).rows.set_index("metric").loc["e2e_ms_p95"]
    assert p95["verdict"] == "too few samples (n=30)" and not p95["significant"]


def test_a_raw_row_p95_ratio_interval_of_two_identical_samples_contains_one():
    values = [float(v) for v in range(1, 401)]
    low, high = compare.quantile_ratio_interval(values, list(values), 0.95)
    assert low < 1 < high
    assert compare.quantile_ratio_interval(values[:30], values[:30], 0.95) == pytest.approx(
        (float("nan"), float("nan")), nan_ok=True)


# --- chart sentences ----------------------------------------------------------------------------------


def test_chart_sentences_call_a_fastest_configuration_only_by_the_winner_rule(written):
    def sentence(name: str) -> str:
        (chart,) = [c for c in written[name].charts if c.name == "latency_decomposition"]
        return " ".join(chart.sentences)

    assert "clearly ahead of every other configuration" in sentence("three_times")
    assert "no clear winner: within noise of" in sentence("few_percent")
    assert verdicts.SINGLE_RUNS in sentence("single_runs")


def test_a_synthetic_run_is_shaped_like_a_real_one(tmp_path):
    run_id = write_run(tmp_path, tasks=90)
    record = json.loads((tmp_path / run_id / "run.json").read_text())
    assert record["status"] == "ok" and record["summary"]["figures"]["latency"]["e2e_ms"]["count"] == 90
    assert load_results(tmp_path).usable["run_id"].tolist() == [run_id]


# --- plan ---------------------------------------------------------------------------------------------


def test_plan_shows_each_cells_percentile_with_its_n_and_never_decides_on_one_its_tasks_cannot_bound(tmp_path):
    from benchmarks.plan_verify import plan as plan_command

    write_configuration(tmp_path, 3, backend="rq", median_e2e_ms=40.0, tasks=150)
    args = ["--rate", "30", "--task", "sleep_ms:20", "--no-write-matrix", str(tmp_path)]
    # 150 tasks a run bound p95 (72 needed) but not p99 (368 needed).
    bounded = CliRunner().invoke(plan_command, [*args, "--slo", "p95=1s"], terminal_width=250)
    assert bounded.exit_code == 0, bounded.output
    assert re.search(r"\d ms \(n=150\)", bounded.output) and "Covered" in bounded.output
    unbounded = CliRunner().invoke(plan_command, [*args, "--slo", "p99=1s", "--json"])
    answer = json.loads(unbounded.output)
    (backend,) = answer["backends"]
    assert not answer["covered"] and backend["verdict"] == "not covered"
    assert "too few samples (n=150)" in backend["reason"] and "n ≥ 368" in backend["reason"]
    (point,) = backend["points"]
    assert point["e2e_p99_ms"] is None and point["e2e_tasks"] == 150 and point["repeats"] == 3
    assert answer["request"]["slo"]["min_tasks_per_run"] == 368
    table = CliRunner().invoke(plan_command, [*args, "--slo", "p99=1s"], terminal_width=250)
    assert "too few samples (n=150)" in table.output
