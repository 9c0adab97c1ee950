"""Matrix files: expansion, trimming, de-duplication, and errors that name the key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import backends
from benchmarks import matrix
from benchmarks.cli import cli

MATRICES = Path(__file__).resolve().parent.parent / "benchmarks" / "matrices"


def parse(text: str) -> matrix.Matrix:
    return matrix.parse(text)


def test_a_list_is_an_axis_and_the_matrix_is_their_product():
    m = parse('backend = ["rq", "baseline"]\nprocesses = [1, 2, 4]\n')
    assert len(m.cells) == 6
    assert {(c.spec["backend"], c.spec["processes"]) for c in m.cells} == {
        (b, p) for b in ("rq", "baseline") for p in (1, 2, 4)}


def test_exclude_drops_matching_cells_and_include_adds_one():
    m = parse('backend = ["rq", "baseline"]\nprocesses = [1, 2]\n'
              '[[exclude]]\nbackend = "baseline"\nprocesses = 2\n'
              '[[include]]\nbackend = "rq"\nprocesses = 8\n')
    assert sorted((c.spec["backend"], c.spec["processes"]) for c in m.cells) == [
        ("baseline", 1), ("rq", 1), ("rq", 2), ("rq", 8)]


def test_an_include_with_lists_is_a_sub_matrix_over_the_top_level_keys():
    m = parse('backend = "rq"\nprocesses = [1, 2]\n'
              '[[include]]\nbackend = ["baseline", "celery"]\nprocesses = 4\nserializer = ["json", "pickle"]\n')
    cells = {(c.spec["backend"], c.spec["processes"], c.spec["serializer"]) for c in m.cells}
    assert cells == {("rq", 1, "json"), ("rq", 2, "json"), ("baseline", 4, "json"), ("baseline", 4, "pickle"),
                     ("celery", 4, "json"), ("celery", 4, "pickle")}


def test_a_knob_table_applies_to_its_own_backend_only_and_identical_cells_run_once():
    m = parse('backend = ["rq", "celery"]\n[celery]\npool = ["prefork", "solo"]\n')
    rq_cells = [c for c in m.cells if c.spec["backend"] == "rq"]
    assert len(rq_cells) == 1 and rq_cells[0].spec["options"] == {}
    assert sorted(c.spec["options"]["pool"] for c in m.cells if c.spec["backend"] == "celery") == ["prefork", "solo"]


def test_a_key_that_became_a_knob_is_refused_with_where_it_lives_now():
    with pytest.raises(matrix.MatrixError, match=r"pool is a library knob now: write it as \[celery\] pool"):
        parse('backend = "celery"\npool = "solo"\n')


def test_a_knob_value_is_checked_against_the_backends_declaration_before_anything_runs():
    with pytest.raises(matrix.MatrixError, match=r"\[celery\] pool = 'forked' is not allowed: must be one of prefork"):
        parse('backend = "celery"\n[celery]\npool = "forked"\n')


def test_backend_all_means_every_library_and_the_floor_in_the_registry():
    m = parse('backend = "all"\n')
    assert [c.spec["backend"] for c in m.cells] == list(backends.measurable())


def test_a_backend_named_by_dotted_path_runs_in_a_matrix_with_its_own_knob_table():
    m = parse('backend = "backends.baseline_backend:BaselineBackend"\n[baseline]\nresult_ttl_s = 60\n')
    (cell,) = m.cells
    assert cell.spec["options"] == {"result_ttl_s": 60} and cell.run_id.startswith("baseline-redis-")


def test_a_dotted_path_that_does_not_import_is_refused_naming_the_import_error():
    with pytest.raises(matrix.MatrixError, match=r"backend = 'nosuchpkg.mod:X' is not allowed: .*ModuleNotFoundError"):
        parse('backend = "nosuchpkg.mod:X"\n')


def test_repeats_give_each_cell_distinct_deterministic_run_ids():
    text = 'backend = "rq"\nrepeats = 3\n'
    first, second = parse(text), parse(text)
    ids = [c.run_id for c in first.cells]
    assert len(set(ids)) == 3
    assert ids == [c.run_id for c in second.cells]


def test_a_changed_spec_changes_the_run_id():
    a = parse('backend = "rq"\nrate = 10\n').cells[0].run_id
    b = parse('backend = "rq"\nrate = 20\n').cells[0].run_id
    assert a != b


@pytest.mark.parametrize(("text", "named"), [
    ('backnd = "rq"\n', ["backnd", "allowed keys", "backend"]),
    ('backend = "kafka"\n', ["backend", "kafka", "celery", "rq", "dramatiq"]),
    ('backend = "rq"\nprocesses = 0\n', ["processes", "from 1 to 256"]),
    ('backend = "rq"\nserializer = ["json", "yaml"]\n', ["serializer", "yaml", "msgpack"]),
    ('backend = "rq"\ntask = "sleep_ms"\nargs = {ms = -5}\n', ["args.ms", "from 0 to 60000"]),
    ('backend = "rq"\ntask = "noop"\nargs = {size = 5}\n', ["args.size", "noop"]),
    ('backend = "rq"\n[rq]\nturbo = true\n', ["[rq] turbo", "job_timeout_s"]),
    ('backend = "rq"\nrate = []\n', ["rate", "empty list"]),
    ('backend = "rq"\nmode = "burst"\n', ["mode", "load", "drain"]),
    ('backend = "rq"\nrepeats = [1, 2]\n', ["repeats"]),
    ('backend = "rq"\n[[exclude]]\nbogus = 1\n', ["exclude[0]", "bogus"]),
    ("backend = \n", ["TOML"]),
])
def test_a_bad_matrix_is_refused_with_the_key_and_what_is_allowed(text, named):
    with pytest.raises(matrix.MatrixError) as info:
        parse(text)
    for word in named:
        assert word in str(info.value)


def test_a_cell_a_backend_cannot_honour_is_kept_as_skipped_with_its_reason():
    m = parse('backend = "rq"\nbroker = "rabbitmq"\n')
    assert len(m.cells) == 1 and "redis" in (m.cells[0].skip_reason or "")


def test_library_knob_tables_are_swept_like_any_other_axis():
    m = parse('backend = "rq"\n[rq]\nlogging_level = ["INFO", "WARNING"]\n')
    assert sorted(c.spec["options"]["logging_level"] for c in m.cells) == ["INFO", "WARNING"]


def test_a_knob_table_for_another_backend_is_dropped_for_this_one():
    m = parse('backend = ["rq", "baseline"]\n[rq]\nlogging_level = ["INFO", "WARNING"]\n')
    baseline = [c for c in m.cells if c.spec["backend"] == "baseline"]
    assert len(baseline) == 1 and baseline[0].spec["options"] == {}


def test_only_keeps_the_cells_with_the_given_values():
    m = matrix.apply_only(parse('backend = ["rq", "baseline"]\nprocesses = [1, 2]\n'), ["processes=2"])
    assert {c.spec["processes"] for c in m.cells} == {2} and len(m.cells) == 2


def test_drain_cells_drop_load_only_keys():
    m = parse('backend = "rq"\nmode = "drain"\nrate = [10, 20]\ntasks = 500\n')
    assert len(m.cells) == 1 and "rate" not in m.cells[0].spec and m.cells[0].spec["tasks"] == 500


@pytest.mark.parametrize("path", sorted(MATRICES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_matrix_parses(path):
    assert matrix.load(path).cells


def test_queuebench_run_exits_2_naming_the_bad_key_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "rq"\nworkers = 4\n')
    result = CliRunner().invoke(cli, ["run", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "workers" in result.output and "processes" in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_cells_and_starts_nothing(tmp_path):
    good = tmp_path / "m.toml"
    good.write_text('backend = ["rq", "baseline"]\n')
    result = CliRunner().invoke(cli, ["run", str(good), "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("\tto run") == 2
    assert not (tmp_path / "out").exists()


def test_the_readme_example_matrix_is_valid_as_written():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("A complete example:", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    m = matrix.parse(example)
    assert {c.spec["backend"] for c in m.cells} == {"celery", "dramatiq"}
    assert all(c.skip_reason is None for c in m.cells)
