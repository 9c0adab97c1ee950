"""The reporting half: loading results, charts, the report and compare, driven by golden fixtures.

The fixtures (tests/fixtures/results/sample, see its README) are copies of real runs: latency cells of
rq, dramatiq and the baseline at 1 and 2 processes (two repeats for the libraries), a rate sweep, routing
shared vs dedicated, payloads with json and msgpack, drain cells, one failed and one generator-limited
run. No test asserts a timing: they assert structure and relations between stored numbers. What the
outputs may conclude (sample sizes, the quantile rule, the winner rule) is tested in test_uncertainty.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from benchmarks import verdicts
from benchmarks.analysis import charts, compare, report
from benchmarks.analysis.commands import compare as compare_command
from benchmarks.analysis.commands import report as report_command
from benchmarks.analysis.load import (
    MixedSchemaError,
    ResultsError,
    labels,
    load_executions,
    load_results,
    load_runs,
    over_repeats,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"
SAMPLE = FIXTURES / "sample"
#: Headless Chromium for the browser test; QUEUEBENCH_CHROMIUM points at another build (e.g. an unpacked .deb).
CHROMIUM = Path(os.environ.get("QUEUEBENCH_CHROMIUM", "/usr/bin/chromium"))


def copy_runs(dest: Path, keep, source: Path = SAMPLE) -> Path:
    """Copy the fixture runs whose run.json satisfies `keep(record)` into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for run_json in sorted(source.glob("*/run.json")):
        record = json.loads(run_json.read_text())
        if keep(record):
            shutil.copytree(run_json.parent, dest / run_json.parent.name)
    return dest


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def results():
    return load_results(SAMPLE)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The sample set's report, written once for every report test."""
    before = tree_state(SAMPLE)
    out = tmp_path_factory.mktemp("report") / "sample"
    made = report.write_report(load_results(SAMPLE), out)
    assert tree_state(SAMPLE) == before, "the report wrote into the results directory"
    return made


# --- load ---------------------------------------------------------------------------------------------


def test_a_results_directory_loads_as_one_row_per_run_with_spec_figures_and_checks(results):
    runs = results.runs
    assert len(runs) == len(list(SAMPLE.glob("*/run.json")))
    assert runs["run_id"].is_unique
    for column in ("backend", "processes", "threads", "slots", "mode", "scenario", "serializer", "routing",
                   "throughput_per_s", "e2e_ms_p95", "http_enqueue_ms_p50", "littles_bound_per_s",
                   "workers_cpu_s", "check.all_finished", "cpu_model", "pkg.rq", "broker_version", "usable"):
        assert column in runs.columns, column
    usable = results.usable
    assert (usable["slots"] == usable["processes"] * usable["threads"]).all()
    for low, high in (("e2e_ms_p50", "e2e_ms_p95"), ("e2e_ms_p95", "e2e_ms_p99")):
        both = usable.dropna(subset=[low, high])  # a percentile its tasks cannot bound is blank
        assert len(both) and (both[low] <= both[high]).all()


def test_a_percentile_its_tasks_cannot_bound_is_blank_when_loaded_and_kept_raw_in_run_json(results):
    for run_json in SAMPLE.glob("*/run.json"):
        record = json.loads(run_json.read_text())
        if record["run_id"] not in set(results.usable["run_id"]):
            continue
        stored = record["summary"]["figures"]["latency"]["e2e_ms"]
        row = results.usable.set_index("run_id").loc[record["run_id"]]
        assert row["e2e_ms_count"] == stored["count"]
        for name, quantile in verdicts.SLO_QUANTILES.items():
            if stored["count"] >= verdicts.min_samples(quantile):
                assert row[f"e2e_ms_{name}"] == stored[name]
            else:
                assert stored[name] is not None and np.isnan(row[f"e2e_ms_{name}"])


def test_only_ok_and_generator_limited_runs_are_used_and_the_others_become_warnings(results):
    runs = results.runs
    assert set(results.usable["status"]) <= {"ok", "generator-limited"}
    left_out = runs[~runs["status"].isin(["ok", "generator-limited"])]
    assert len(left_out) >= 1, "the fixture should hold a failed run"
    for run_id in left_out["run_id"]:
        assert any(run_id in warning for warning in results.warnings)
    assert not set(left_out["run_id"]) & set(results.executions()["run_id"])


def test_executions_carry_run_id_spec_and_what_each_digest_stands_for(results):
    rows = load_executions(SAMPLE)
    assert {"id", "digest", "run_id", "backend", "slots", "kind", "kind_task", "payload_bytes"} <= set(rows.columns)
    assert set(rows["run_id"]) <= set(results.usable["run_id"])
    assert (rows["kind"] != "unknown").all()
    payload = rows[rows["scenario"] == "payload"]
    assert payload["payload_bytes"].nunique() >= 2
    assert (payload["kind_task"] == "echo").all()


def test_routing_mix_short_and_long_tasks_are_told_apart_by_digest(results):
    run_id = results.usable.loc[results.usable["scenario"] == "routing_mix", "run_id"].iloc[0]
    kinds = results.kind_figures(run_id).set_index("work_ms")
    assert len(kinds) == 2
    short, long_ = kinds.loc[kinds.index.min()], kinds.loc[kinds.index.max()]
    assert short["service_ms_mean"] < long_["service_ms_mean"]  # a handful of long tasks: no bounded p50
    assert short["window_tasks"] > long_["window_tasks"]  # the mix sends mostly short tasks
    assert short["e2e_ms_count"] <= short["window_tasks"] and long_["e2e_ms_count"] <= long_["window_tasks"]


def test_per_kind_figures_of_a_single_kind_run_equal_its_stored_figures(results):
    run = results.usable[(results.usable["scenario"] == "latency")].iloc[0]
    kinds = results.kind_figures(run["run_id"])
    assert len(kinds) == 1
    for column in ("e2e_ms_p95", "queue_wait_ms_p50", "service_ms_p99", "http_enqueue_ms_p95", "throughput_per_s",
                   "e2e_ms_count", "service_ms_count"):
        assert kinds[column].iloc[0] == pytest.approx(run[column], rel=1e-9, nan_ok=True), column


def test_repeats_are_summarised_with_mean_min_max_and_coefficient_of_variation(results):
    cells = over_repeats(results.usable, ["throughput_per_s"])
    repeated = cells[cells["repeats"] > 1]
    assert len(repeated)
    assert (repeated["throughput_per_s_min"] <= repeated["throughput_per_s"]).all()
    assert (repeated["throughput_per_s"] <= repeated["throughput_per_s_max"]).all()
    assert repeated["throughput_per_s_cv"].notna().all()


def test_labels_show_only_what_differs_between_configurations(results):
    latency = results.usable[(results.usable["scenario"] == "latency") & (results.usable["rate"] == 30)]
    shown = labels(latency)
    assert shown.str.contains("p1t1").any() and shown.str.contains("p2t1").any()
    assert not shown.str.contains("latency").any()  # the same for all: not shown


def test_a_directory_mixing_schema_versions_is_refused(tmp_path):
    mixed = copy_runs(tmp_path / "mixed", lambda r: r["spec"]["mode"] == "drain")
    run_json = next(mixed.glob("*/run.json"))
    record = json.loads(run_json.read_text())
    run_json.write_text(json.dumps(record | {"schema_version": record["schema_version"] + 1}))
    with pytest.raises(MixedSchemaError, match="schema versions"):
        load_runs(mixed)


def test_a_directory_without_runs_is_refused(tmp_path):
    with pytest.raises(ResultsError, match="no run directories"):
        load_results(tmp_path)


# --- charts -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drawn(written) -> dict[str, charts.Chart]:
    """The charts the report drew, by name (drawing is the slow part: done once)."""
    return {chart.name: chart for chart in written.charts}


#: Chart families the fixture set (copies of real runs from before they existed) has no runs for; each is
#: tested on its own data (tests/test_serializer_costs.py).
NOT_IN_FIXTURES = ("serializer_costs",)


@pytest.mark.parametrize("name", [chart.__name__ for chart in charts.CHARTS if chart.__name__ not in NOT_IN_FIXTURES])
def test_every_chart_family_is_drawn_from_the_fixtures_as_png_and_svg(name, drawn, results):
    chart = drawn[name]
    assert chart.drawn, chart.note
    assert {p.suffix for p in chart.files} == {".png", ".svg"}
    for path in chart.files:
        assert path.exists() and path.stat().st_size > 1000
    assert len(chart.sentences) == 2 and all(s.endswith(".") for s in chart.sentences)
    assert chart.run_ids and set(chart.run_ids) <= set(results.usable["run_id"])


def test_captions_name_versions_broker_machine_and_repeats(results):
    text = charts.caption(results, list(results.usable["run_id"]))
    runs = results.usable
    assert f"rq {runs['pkg.rq'].iloc[0]}" in text
    assert f"broker redis {runs['broker_version'].iloc[0]}" in text
    assert runs["cpu_model"].iloc[0] in text and "logical cores" in text
    assert "repeat" in text


def test_a_chart_whose_data_is_absent_is_skipped_with_a_note_not_drawn_empty(tmp_path):
    drain_only = load_results(copy_runs(tmp_path / "drain", lambda r: r["spec"]["mode"] == "drain"))
    for chart in (charts.serializers, charts.routing, charts.latency_vs_rate, charts.latency_decomposition):
        skipped = chart(drain_only, tmp_path / "figures")
        assert not skipped.drawn and skipped.note, chart.__name__
        assert not list((tmp_path / "figures").glob(f"{skipped.name}.*"))


def test_worker_count_draws_the_littles_law_bound_and_throughput_stays_under_it(drawn):
    chart = drawn["worker_count"]
    data = chart.data
    assert data.groupby("line_label")["slots"].nunique().max() >= 2
    bounded = data.dropna(subset=["littles_bound_per_s"])
    assert (bounded["throughput_per_s"] <= bounded["littles_bound_per_s"] * 1.02).all()
    assert "Little's-law bound" in chart.sentences[0]


def test_the_knee_is_the_first_rate_where_p95_climbs_or_the_backlog_grows():
    rates = [10, 20, 40, 80]
    assert charts.knee(rates, [5, 6, 7, 8], [10, 20, 40, 80]) is None
    assert charts.knee(rates, [5, 6, 30, 90], [10, 20, 40, 80]) == 40
    assert charts.knee(rates, [5, 30, 6, 7], [10, 20, 40, 80]) is None  # one noisy cell is not a knee
    assert charts.knee(rates, [5, 6, 7, 8], [10, 20, 30, 31]) == 40  # completes less than was sent


def test_an_overloaded_single_worker_shows_a_knee_on_the_latency_curve(drawn):
    curves = drawn["latency_vs_rate"].data.groupby("curve_label")
    knees = {label: group["knee_rate_per_s"].iloc[0] for label, group in curves}
    assert any(pd.notna(k) for k in knees.values())
    for label, group in curves:
        knee = knees[label]
        if pd.isna(knee):
            continue
        at = group[group["rate"] == knee].iloc[0]
        lowest = group.sort_values("rate").iloc[0]
        assert at["e2e_ms_p95"] > verdicts.KNEE_LATENCY_GROWTH * lowest["e2e_ms_p95"] or \
            at["throughput_per_s"] < verdicts.SUSTAINED_RATIO * at["achieved_rate_per_s"]


def test_routing_compares_short_task_latency_shared_and_dedicated_per_backend(drawn):
    chart = drawn["routing"]
    assert {"shared", "dedicated"} <= set(chart.data["routing"])
    assert set(chart.data["backend"]) >= {"rq", "dramatiq"}
    assert "dedicated" in chart.sentences[0] and "shared" in chart.sentences[0]


# --- report -------------------------------------------------------------------------------------------


def test_the_report_writes_markdown_html_figures_and_a_summary(written):
    for path in (written.markdown, written.html, written.summary_csv):
        assert path.exists() and path.stat().st_size > 0
    assert len(pd.read_csv(written.summary_csv)) == len(list(SAMPLE.glob("*/run.json")))
    figures = list((written.out_dir / "figures").glob("*.png"))
    assert len(figures) == sum(chart.drawn for chart in written.charts) > 0


def test_every_image_of_the_html_report_loads_when_opened_from_disk(written):
    page = written.html.read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(sources) == sum(chart.drawn for chart in written.charts)
    for src in sources:
        assert src.startswith("data:image/png;base64,") or (written.html.parent / src).is_file(), src[:80]
    for href in re.findall(r'<a href="([^"]+)"', page):
        assert (written.html.parent / href).is_file(), href
    for target in re.findall(r"\]\(([^)]+)\)", written.markdown.read_text()):
        assert (written.markdown.parent / target).is_file(), target


def test_text_in_the_html_report_is_escaped_so_a_label_cannot_break_the_page(tmp_path):
    blocks = [report.Block("h2", "A <b> & B"), report.Block("p", "<script>alert('x')</script>"),
              report.Block("table", header=["<th>"], rows=[["a & b"]])]
    page = report.render_html(blocks, tmp_path, "<title>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<title>&lt;title&gt;</title>" in page
    assert '<h2 id="a--b----b">A &lt;b&gt; &amp; B</h2>' in page
    assert "<th>&lt;th&gt;</th>" in page and "<td>a &amp; b</td>" in page


def test_the_report_opens_with_a_headline_table_of_the_best_configurations(written):
    text = written.markdown.read_text()
    headline = text.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert "| Question | Workload | Best configuration |" in headline
    rows = [line for line in headline.splitlines() if line.startswith("| ") and "---" not in line][1:]
    questions = {row.split("|")[1].strip() for row in rows}
    assert {"Throughput", "Latency", "Serializer", "Routing"} <= questions
    assert "<table>" in written.html.read_text()


def test_each_chart_section_says_what_it_shows_in_two_sentences_from_the_data(written):
    text = written.markdown.read_text()
    for chart in written.charts:
        section = text.split(f"## {chart.title}", 1)[1].split("\n## ", 1)[0]
        if chart.drawn:
            assert " ".join(chart.sentences) in section
        else:
            assert f"Not drawn: {chart.note}" in section


def test_warnings_name_failed_and_generator_limited_runs_and_unstable_cells(written, results):
    text = written.markdown.read_text()
    warnings = text.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    for status in ("failed", "generator-limited"):
        run_ids = results.runs.loc[results.runs["status"] == status, "run_id"]
        assert len(run_ids), f"the fixture should hold a {status} run"
        assert all(run_id in warnings for run_id in run_ids)
    assert "unstable" in warnings and "CV" in warnings
    # ...and beside the numbers they affect: in the headline notes or under the chart that draws the run.
    limited = results.runs.loc[results.runs["status"] == "generator-limited", "run_id"].iloc[0]
    assert text.count(limited) >= 2


def test_methodology_is_filled_from_the_runs_own_metadata(written, results):
    text = written.markdown.read_text()
    section = text.split("## Methodology and caveats", 1)[1]
    runs = results.runs
    assert runs["cpu_model"].iloc[0] in section
    assert f"| rq | {runs['pkg.rq'].iloc[0]} |" in section
    assert "prefetch" in section and "retr" in section and "Slots" in section
    assert "warm-up" in section and "measured window" in section


def test_the_capacity_notes_section_states_what_the_fixture_runs_measured(written):
    # Expected figures read straight from the fixture's run.json files, not from the code under test.
    records = [json.loads(p.read_text()) for p in SAMPLE.glob("*/run.json")]
    sleep = [r for r in records if r["status"] == "ok" and r["spec"]["mode"] == "load"
             and r["spec"]["scenario"] in ("latency", "throughput") and r["spec"]["task"] == "sleep_ms"]
    cells = {(r["spec"]["backend"], r["spec"]["processes"], r["spec"]["rate"]) for r in sleep}
    rates = ", ".join(f"{rate:g}" for rate in sorted({rate for _, _, rate in cells}))
    slots = ", ".join(str(n) for n in sorted({r["slots"] for r in sleep}))
    # rq on one slot: which rates kept up (every repeat finished >= 95 % of what was sent)?
    rq_one: dict[float, list[tuple[float, float]]] = {}
    for r in sleep:
        if r["spec"]["backend"] == "rq" and r["slots"] == 1:
            figures = r["summary"]["figures"]
            rq_one.setdefault(r["spec"]["rate"], []).append((figures["throughput_per_s"],
                                                             figures["achieved_rate_per_s"]))
    kept = {rate: all(done >= 0.95 * sent for done, sent in pairs) for rate, pairs in rq_one.items()}
    highest_kept = max(rate for rate, ok in kept.items() if ok)
    knee = min(rate for rate, ok in kept.items() if not ok)
    assert all(not kept[rate] for rate in kept if rate >= knee)  # bent from there up: a knee, not noise
    at_knee = rq_one[knee]
    done_at_knee = sum(done for done, _ in at_knee) / len(at_knee)
    sent_at_knee = sum(sent for _, sent in at_knee) / len(at_knee)

    text = " ".join(written.markdown.read_text().split("## Capacity notes", 1)[1].split("\n## ", 1)[0].split())
    assert (f"sleep_ms(ms=20): {len(sleep)} load runs over {len(cells)} cells, offered {rates} tasks/s, "
            f"{slots} slots.") in text
    assert f"rq: 1 slot (p1t1): sustained up to {highest_kept:g}/s" in text
    assert f"knee at {knee:g}/s: {done_at_knee:.1f}/s done of {sent_at_knee:.1f}/s sent" in text
    top = max(rate for _, _, rate in cells)
    assert f"To serve {top:g} tasks/s of sleep_ms 20 with p95 under" in text
    html_text = written.html.read_text()
    assert f"knee at {knee:g}/s" in html_text


def test_the_report_refuses_to_write_into_a_run_directory(results, tmp_path):
    run_dir = results.run_dir(results.runs["run_id"].iloc[0])
    with pytest.raises(ResultsError, match="never write into runs"):
        report.check_out_dir(results, run_dir / "report")
    with pytest.raises(ResultsError, match="results directory itself"):
        report.check_out_dir(results, SAMPLE)


def cli_group() -> click.Group:
    @click.group()
    def cli() -> None:
        """The two commands as the lead registers them."""

    cli.add_command(report_command)
    cli.add_command(compare_command)
    return cli


def test_the_report_command_writes_under_results_sets_by_default(tmp_path, monkeypatch):
    source = copy_runs(tmp_path / "runs" / "mini", lambda r: r["spec"]["mode"] == "drain")
    monkeypatch.chdir(tmp_path)
    outcome = CliRunner().invoke(cli_group(), ["report", str(source)])
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "results" / "sets" / "mini" / "report.html").exists()
    assert (tmp_path / "results" / "sets" / "mini" / "report.md").exists()


def test_the_report_command_exits_2_on_mixed_schema_versions(tmp_path):
    mixed = copy_runs(tmp_path / "mixed", lambda r: r["spec"]["mode"] == "drain")
    run_json = next(mixed.glob("*/run.json"))
    run_json.write_text(json.dumps(json.loads(run_json.read_text()) | {"schema_version": 99}))
    outcome = CliRunner().invoke(cli_group(), ["report", str(mixed), "--out", str(tmp_path / "out")])
    assert outcome.exit_code == 2
    assert "schema versions" in outcome.output


def test_the_html_report_opens_in_headless_chromium_with_every_image_loaded(written, tmp_path):
    if not CHROMIUM.exists():
        message = (f"{CHROMIUM} not installed (scripts/test.sh installs Debian's chromium as root): the HTML "
                   "report is not opened in a browser (every <img> is still checked on disk)")
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)
    # A copy of the page that writes, once loaded, how many images loaded and which errors were seen.
    probe = tmp_path / "probe.html"
    script = """<script>
      window.__errors = [];
      window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src)), true);
      window.addEventListener('load', () => {
        const imgs = Array.from(document.images);
        const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
        const out = document.createElement('pre');
        out.id = 'probe';
        out.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__errors});
        document.body.appendChild(out);
      });
    </script>"""
    probe.write_text(written.html.read_text().replace("<head>", "<head>" + script, 1))
    shutil.copytree(written.out_dir / "figures", tmp_path / "figures")
    done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom",
                           probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, done.stderr[-2000:]
    state = json.loads(found.group(1).replace("&quot;", '"'))
    assert state["images"] == sum(chart.drawn for chart in written.charts)
    assert state["broken"] == 0 and state["errors"] == []
    console = [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[(:]", line)]
    assert console == [], console


# --- compare ------------------------------------------------------------------------------------------


def test_a_set_compared_with_itself_shows_no_significant_change():
    result = compare.compare(SAMPLE, SAMPLE)
    assert result.treatment == {}
    assert len(result.rows) == 2 * load_results(SAMPLE).usable["cell"].nunique()
    assert not result.rows["significant"].any()
    assert np.allclose(result.rows["ratio"].dropna(), 1.0)
    # No fixture cell has the 3 repeats the winner rule needs: every row says it fell back to raw rows.
    assert set(result.rows["method"]) == {"raw rows"}


def test_when_only_the_worker_count_differs_the_change_is_reported(tmp_path):
    one = copy_runs(tmp_path / "p1", lambda r: r["spec"]["processes"] == 1 and r["spec"].get("rate") == 30)
    two = copy_runs(tmp_path / "p2", lambda r: r["spec"]["processes"] == 2 and r["spec"].get("rate") == 30)
    result = compare.compare(one, two)
    assert result.treatment == {"processes": ("1", "2")}
    assert result.rows["significant"].any()
    for row in result.rows.itertuples():
        if np.isfinite(row.ci_low):
            assert row.ci_low <= row.ratio <= row.ci_high or row.method == "repeats"
    significant = result.significant
    assert ((significant["ci_low"] > 1) | (significant["ci_high"] < 1)).all()
    outcome = CliRunner().invoke(cli_group(), ["compare", str(one), str(two), "--out", str(tmp_path / "c.csv")])
    assert outcome.exit_code == 0, outcome.output
    assert "processes 1 -> 2" in outcome.output and "significant" in outcome.output
    assert len(pd.read_csv(tmp_path / "c.csv")) == len(result.rows)


def test_a_cell_with_one_run_per_side_is_compared_over_raw_rows(tmp_path):
    def baseline_latency(processes: int):
        return lambda r: (r["spec"]["backend"] == "baseline" and r["spec"].get("scenario") == "latency"
                          and r["spec"]["processes"] == processes)

    one = copy_runs(tmp_path / "a", baseline_latency(1))
    two = copy_runs(tmp_path / "b", baseline_latency(2))
    result = compare.compare(one, two)
    assert set(result.rows["method"]) == {"raw rows"}
    stored = {r["spec"]["processes"]: r["summary"]["figures"] for r in
              (json.loads(p.read_text()) for p in [*one.glob("*/run.json"), *two.glob("*/run.json")])}
    p95 = result.rows.set_index("metric").loc["e2e_ms_p95"]
    assert p95["a"] == pytest.approx(stored[1]["latency"]["e2e_ms"]["p95"])
    assert p95["b"] == pytest.approx(stored[2]["latency"]["e2e_ms"]["p95"])


def test_compare_refuses_different_schema_versions_with_exit_code_2(tmp_path):
    other = copy_runs(tmp_path / "other", lambda r: True)
    for run_json in other.glob("*/run.json"):
        run_json.write_text(json.dumps(json.loads(run_json.read_text()) | {"schema_version": 99}))
    with pytest.raises(compare.IncomparableError, match="schema versions differ"):
        compare.compare(SAMPLE, other)
    outcome = CliRunner().invoke(cli_group(), ["compare", str(SAMPLE), str(other)])
    assert outcome.exit_code == 2 and "schema versions differ" in outcome.output


def test_compare_refuses_sets_without_a_cell_in_common_with_exit_code_2(tmp_path):
    drain = copy_runs(tmp_path / "drain", lambda r: r["spec"]["mode"] == "drain")
    routing = copy_runs(tmp_path / "routing", lambda r: r["spec"].get("scenario") == "routing_mix")
    outcome = CliRunner().invoke(cli_group(), ["compare", str(drain), str(routing)])
    assert outcome.exit_code == 2
    assert "no cell in common" in outcome.output
