"""Fault keys are matrix keys like any other, and a matrix that names no fault is what it was before."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import libraries
from benchmarks import matrix, spec

FAULTS_TOML = Path(__file__).resolve().parent.parent / "benchmarks" / "matrices" / "faults.toml"


def _cells(text: str) -> list[matrix.Cell]:
    return matrix.parse(text).cells


def test_a_matrix_without_a_fault_keeps_no_fault_key_in_its_specs():
    (cell,) = _cells('backend = "rq"\nmode = "drain"\ntasks = 10\n')
    assert not set(spec.FAULT_PARAMS) & set(cell.spec) and "fault" not in cell.spec


def test_fault_none_is_the_same_cell_and_run_id_as_no_fault_key():
    (plain,) = _cells('backend = "rq"\nmode = "drain"\ntasks = 10\n')
    (none,) = _cells('backend = "rq"\nmode = "drain"\ntasks = 10\nfault = "none"\nhang_s = 5\n')
    assert plain.run_id == none.run_id


def test_a_fault_cell_carries_its_own_keys_and_only_them():
    (cell,) = _cells('backend = "celery"\nmode = "drain"\ntasks = 10\nfault = "kill_worker"\nhang_s = 5\n')
    assert cell.spec["fault"] == "kill_worker"
    assert {"fault_at_s", "observe_s", "restart_after_s", "victim"} <= set(cell.spec)
    assert "hang_s" not in cell.spec and "persistence" not in cell.spec and "grace_s" not in cell.spec


def test_each_fault_is_an_axis_with_a_different_run_id():
    cells = _cells('backend = "celery"\nmode = "drain"\ntasks = 10\nfault = ["kill_child", "hang_worker"]\n')
    assert len({c.run_id for c in cells}) == 2


@pytest.mark.parametrize(("text", "named"), [
    ('fault = "explode"', "fault"),
    ('fault = "kill_worker"\nvictim = "child"', "victim"),
    ('fault = "restart_broker"\npersistence = "rdb"', "persistence"),
    ('fault = "hang_worker"\nhang_s = -1', "hang_s"),
])
def test_a_bad_fault_value_is_refused_naming_the_key(text, named):
    with pytest.raises(matrix.MatrixError, match=named):
        _cells('backend = "celery"\n' + text + "\n")


def test_restarting_a_broker_that_is_not_the_harnesss_redis_is_skipped_with_the_reason():
    (cell,) = _cells('backend = "huey"\nbroker = "sqlite"\nmode = "drain"\ntasks = 10\nfault = "restart_broker"\n')
    assert cell.skip_reason and "restart_broker" in cell.skip_reason


def test_restarting_rabbitmq_needs_a_private_node_and_says_so_when_rabbitmq_server_is_missing(monkeypatch):
    text = 'backend = "dramatiq"\nbroker = "rabbitmq"\nmode = "drain"\ntasks = 10\nfault = "restart_broker"\n'
    monkeypatch.setattr(spec.shutil, "which", lambda name: None)
    (cell,) = _cells(text)
    assert "rabbitmq-server is not installed" in cell.skip_reason and "never restarted" in cell.skip_reason
    monkeypatch.setattr(spec.shutil, "which", lambda name: f"/usr/sbin/{name}")
    (cell,) = _cells(text)
    assert not cell.skip_reason


def test_a_failover_needs_redis_and_a_library_that_follows_sentinel_and_says_so_otherwise():
    (rabbit,) = _cells('backend = "dramatiq"\nbroker = "rabbitmq"\nmode = "drain"\ntasks = 10\n'
                       'fault = "failover_broker"\n')
    assert "failover_broker" in rabbit.skip_reason and "broker must be redis" in rabbit.skip_reason
    (huey,) = _cells('backend = "huey"\nmode = "drain"\ntasks = 10\nfault = "failover_broker"\n')
    assert "sentinel" in huey.skip_reason.lower()
    for backend in ("celery", "rq", "dramatiq"):
        (cell,) = _cells(f'backend = "{backend}"\nmode = "drain"\ntasks = 10\nfault = "failover_broker"\n')
        assert not cell.skip_reason, cell.skip_reason


def test_an_append_only_file_on_rabbitmq_is_refused_as_a_redis_setting(monkeypatch):
    monkeypatch.setattr(spec.shutil, "which", lambda name: f"/usr/sbin/{name}")
    (cell,) = _cells('backend = "celery"\nbroker = "rabbitmq"\nmode = "drain"\ntasks = 10\n'
                     'fault = "restart_broker"\npersistence = "aof"\n')
    assert "append-only file" in cell.skip_reason


def test_the_shipped_fault_matrix_kills_a_worker_and_restarts_redis_under_every_library():
    cells = [c for c in matrix.load(FAULTS_TOML).cells if c.skip_reason is None]
    for library in libraries():
        faults = {(c.spec.get("fault"), c.spec.get("persistence")) for c in cells
                  if c.spec["backend"] == library and c.spec["broker"] == "redis"}
        assert {("kill_worker", None), ("restart_broker", "off")} <= faults, library


def test_the_shipped_fault_matrix_restarts_rabbitmq_under_celery_and_dramatiq_without_and_with_confirms():
    knob = {"celery": "confirm_publish", "dramatiq": "confirm_delivery"}
    restarts = [c for c in matrix.load(FAULTS_TOML).cells
                if c.spec["broker"] == "rabbitmq" and c.spec.get("fault") == "restart_broker"]
    for library, name in knob.items():
        assert {c.spec["options"][name] for c in restarts if c.spec["backend"] == library} == {False, True}
