"""The serializer chart's sentences name a best serializer only by the winner rule."""

from __future__ import annotations

import pandas as pd

from benchmarks.analysis import charts


def _runs(rows: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """Drain runs of one backend: serializer -> figure -> one value per repeat."""
    records = []
    for serializer, figures in rows.items():
        repeats = len(next(iter(figures.values())))
        for i in range(repeats):
            records.append({"serializer": serializer, **{figure: values[i] for figure, values in figures.items()}})
    return pd.DataFrame(records)


def test_a_serializer_that_stores_far_fewer_bytes_in_every_repeat_is_named_best():
    runs = _runs({"json": {"broker_bytes_per_message": [17100, 17130, 17160]},
                  "msgpack": {"broker_bytes_per_message": [10100, 10120, 10090]}})
    sentence = charts._serializer_sentence("celery on redis", 10_000, runs, ["json", "msgpack"])
    assert "bytes per message on the broker: msgpack is best" in sentence
    assert "95 % CI" in sentence


def test_serializers_a_few_percent_apart_are_within_noise_not_ranked():
    runs = _runs({"json": {"throughput_per_s": [800, 830, 790]}, "pickle": {"throughput_per_s": [810, 795, 820]}})
    sentence = charts._serializer_sentence("celery on redis", 10_000, runs, ["json", "pickle"])
    assert "drain throughput: no clear winner" in sentence


def test_single_runs_are_not_judged():
    runs = _runs({"json": {"codec_us_per_message": [150.0]}, "msgpack": {"codec_us_per_message": [100.0]}})
    sentence = charts._serializer_sentence("rq on redis", 100, runs, ["json", "msgpack"])
    assert "not judged" in sentence and "is best" not in sentence


def test_the_chart_draws_every_backend_and_serializer_and_says_which_differences_are_beyond_noise(
        tmp_path, monkeypatch):
    rows = []
    for serializer, size_b, codec_us in (("json", 17100, 180.0), ("msgpack", 10100, 150.0), ("pickle", 10150, 150.0)):
        for repeat in range(3):
            rows.append({"run_id": f"celery-{serializer}-{repeat}", "backend": "celery", "broker": "redis",
                         "mode": "drain", "payload_bytes": 10_000.0, "serializer": serializer,
                         "broker_bytes_per_message": size_b + 10 * repeat, "codec_us_per_message": codec_us + repeat,
                         "throughput_per_s": 800.0 + 5 * repeat})
    frame = pd.DataFrame(rows)
    monkeypatch.setattr(charts, "caption", lambda results, run_ids: "caption")
    results = type("Results", (), {"usable": frame, "runs": frame})()
    chart = charts.serializer_costs(results, tmp_path)
    assert chart.drawn and {p.suffix for p in chart.files} == {".png", ".svg"}
    (sentence,) = chart.sentences
    assert sentence.startswith("celery on redis, 10,000 B payload:")
    assert "drain throughput: no clear winner" in sentence
