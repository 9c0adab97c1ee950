"""One declaration of the spec and of each backend's knobs, and everything that reads it agrees.

The README's key table, the `serve` options and the matrix validator all come from `benchmarks.spec`;
each backend describes itself (knobs, packages, concurrency, delivery contract) and everything that
lists backends asks the registry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import backends
from backends.base import WorkerSpec
from benchmarks import spec
from benchmarks.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_readme_key_table_is_the_one_generated_from_the_declaration():
    assert spec.markdown_table() in README, (
        "README's matrix key table differs from benchmarks/spec.py; regenerate it with "
        "`python -c \"from benchmarks import spec; print(spec.markdown_table())\"`")


def test_the_readme_backend_table_has_a_row_for_every_measured_backend():
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    for name in backends.measurable():
        assert any(row.startswith(f"| `{name}` |") for row in rows), f"README has no backend row for {name}"


def test_serve_takes_an_option_for_every_key_declared_for_it():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for name in spec.SERVE_KEYS:
        assert f"--{name.replace('_', '-')}" in result.output, name


def test_serve_refuses_a_value_outside_the_declared_range_before_starting_anything():
    result = CliRunner().invoke(cli, ["serve", "--backend", "rq", "--processes", "257"])
    assert result.exit_code == 2 and "processes" in result.output


@pytest.mark.parametrize("name", list(backends.REGISTRY))
def test_every_registered_backend_describes_itself(name):
    cls = backends.backend_class(name)
    assert cls.name == name
    assert cls.brokers and cls.serializers and cls.concurrency
    if name in backends.measurable():
        assert cls.packages, "a measured backend names the packages whose versions each run records"
    for knob_name, knob in cls.knobs.items():
        assert knob.help, knob_name
        if knob.default is not None:
            assert knob.problem(knob.default) is None, (knob_name, knob.default)
        for candidate in knob.candidates:
            assert knob.problem(candidate) is None, (knob_name, candidate)
    assert cls.slots(WorkerSpec(processes=3, threads=2)) == 6


@pytest.mark.parametrize("name", backends.measurable())
def test_every_measured_backend_declares_a_delivery_contract_with_its_source(name):
    cls = backends.backend_class(name)
    broker = sorted(cls.brokers)[0]
    settings = spec.settings_for(spec.defaults("system") | {"backend": name, "broker": broker,
                                                           "serializer": sorted(cls.serializers)[0]},
                                 {"redis": "redis://127.0.0.1:1/0", "rabbitmq": "amqp://127.0.0.1:1//",
                                  "sqlite": "sqlite:////tmp/qb-contract-check.sqlite3"}[broker],
                                 "redis://127.0.0.1:1/0" if broker == "rabbitmq" else None)
    backend = cls(settings)
    try:
        contract = backend.delivery_contract(WorkerSpec())
    finally:
        backend.close()
    assert contract.guarantee in ("at-most-once", "at-least-once")
    assert contract.in_flight and contract.recovery and contract.source


def test_an_unknown_knob_is_refused_naming_the_known_ones():
    result = CliRunner().invoke(cli, ["serve", "--backend", "celery", "--option", "no_such_knob=1"])
    assert result.exit_code == 2
    assert "no_such_knob" in result.output and "without_mingle" in result.output


def test_system_and_workload_keys_partition_the_declaration():
    assert set(spec.SYSTEM_KEYS) - {"options"} | set(spec.WORKLOAD_KEYS) == set(spec.KEYS)
    assert not set(spec.SYSTEM_KEYS) & set(spec.WORKLOAD_KEYS)
