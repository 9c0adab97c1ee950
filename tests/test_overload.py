"""Overload: every request accounted for at the end of the load, and an over-offered run that says so.

The synthetic case drives the generator's own bookkeeping (`scenarios/inflight.py`, loaded as the file
Locust runs) through a request whose answer arrives after the load stopped, and checks the run's
accounting against a ledger written as the API writes it. The real case offers far more than any
Locust process can send, through the runner, on a private redis-server, gunicorn and Locust.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import scenario_files

from backends import ledger
from benchmarks import measure, store

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def _inflight_module():
    return scenario_files.load("inflight")


def _api_rows(task_id: str, request_id: str, at_ns: int) -> list[dict]:
    """What the API and a worker write for one accepted task: sent, started, finished."""
    return [{"ev": "sent", "id": task_id, "task": "noop", "queue": "default", "scheduled_ns": at_ns,
             "sent_ns": at_ns + MS, "enqueued_ns": at_ns + 2 * MS, "request_id": request_id, "pid": 1, "host": "h"},
            {"ev": "started", "id": task_id, "task": "noop", "attempt": 1, "t_ns": at_ns + 3 * MS, "pid": 2, "host": "h"},
            {"ev": "finished", "id": task_id, "task": "noop", "attempt": 1, "t_ns": at_ns + 4 * MS, "outcome": "ok",
             "pid": 2, "host": "h"}]


def _write_ledger(directory: Path, rows: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "h-1.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _generator_run(n: int, late: int) -> tuple[list[tuple], object]:
    """`n` requests sent 10 ms apart; all but the last `late` are answered before the load stops, those
    are written off at stop, and their answers arrive afterwards."""
    inflight = _inflight_module()
    rows: list[tuple] = []
    book = inflight.InFlight(rows.append)
    next_id = inflight.request_ids("7f")
    ids = []
    for i in range(n):
        request_id = next_id()
        ids.append(request_id)
        book.sent(request_id, T0 + i * 10 * MS, T0 + i * 10 * MS + MS, "noop")
    for i, request_id in enumerate(ids[: n - late]):
        assert book.answered(request_id, T0 + i * 10 * MS + 5 * MS, 202, f"task{i:04d}")
    assert book.give_up(T0 + n * 10 * MS) == late  # the load phase ended; its wait ran out
    for i, request_id in enumerate(ids[n - late:], n - late):
        assert not book.answered(request_id, T0 + (n + 1) * 10 * MS, 202, f"task{i:04d}")  # the late answer
    assert book.late_answers == late and len(book) == 0
    return rows, inflight


def _requests_frame(rows: list[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(columns))
    frame["request_id"] = frame["request_id"].astype("string")
    frame["task_id"] = frame["task_id"].astype("string")
    return frame


def test_an_answer_arriving_after_stop_is_written_once_as_unanswered_and_found_in_the_ledger_by_its_request_id(
        tmp_path):
    n, late = 200, 3
    rows, inflight = _generator_run(n, late)
    assert len(rows) == n  # one row per request, the late ones only once
    requests = _requests_frame(rows, inflight.RAW_COLUMNS)
    assert (requests["status"] == measure.UNANSWERED_STATUS).sum() == late
    # The API accepted every request, the late ones included: their sent rows carry their request ids.
    _write_ledger(tmp_path, [r for i, row in enumerate(rows) if row[3] != inflight.UNANSWERED
                             for r in _api_rows(row[5], row[6], row[0])]
                  + [r for i, row in enumerate(rows) if row[3] == inflight.UNANSWERED
                     for r in _api_rows(f"late{i}", row[6], row[0])])
    tasks = ledger.executions(tmp_path)
    window = measure.load_window(tasks, requests, warmup_s=0.2, duration_s=1.0)
    # Locust counted only the answers it saw (the written-off ones raise inside its response block).
    summary = measure.summarise(tasks, requests, window, slots=2, offered_rate_per_s=100.0,
                                locust_post_counts=(n - late, 0), queue_leftovers={"default": 0})
    assert summary["verdict"] == "ok", summary["checks"]
    assert summary["figures"]["unanswered_at_stop"] == late
    assert summary["figures"]["unanswered_accepted"] == late
    assert f"{late} unanswered at stop" in summary["checks"]["requests_match_ledger"]["detail"]


def test_a_sent_row_that_matches_no_request_fails_the_run_as_unexplained(tmp_path):
    rows, inflight = _generator_run(50, 0)
    requests = _requests_frame(rows, inflight.RAW_COLUMNS)
    stranger = _api_rows("stranger", "9e-1", T0 + 5 * MS)
    _write_ledger(tmp_path, [r for row in rows for r in _api_rows(row[5], row[6], row[0])] + stranger)
    tasks = ledger.executions(tmp_path)
    window = measure.load_window(tasks, requests, warmup_s=0.1, duration_s=0.3)
    summary = measure.summarise(tasks, requests, window, slots=2, offered_rate_per_s=100.0,
                                locust_post_counts=(50, 0), queue_leftovers={"default": 0})
    assert summary["verdict"] == "failed" and "requests_match_ledger" in summary["failed_checks"]
    assert "stranger" in summary["checks"]["requests_match_ledger"]["detail"]


def test_an_unanswered_request_the_api_never_accepted_is_counted_but_is_not_a_lost_task(tmp_path):
    rows, inflight = _generator_run(50, 2)
    requests = _requests_frame(rows, inflight.RAW_COLUMNS)
    _write_ledger(tmp_path, [r for row in rows if row[3] == 202 for r in _api_rows(row[5], row[6], row[0])])
    tasks = ledger.executions(tmp_path)
    window = measure.load_window(tasks, requests, warmup_s=0.1, duration_s=0.3)
    summary = measure.summarise(tasks, requests, window, slots=2, offered_rate_per_s=100.0,
                                locust_post_counts=(48, 0), queue_leftovers={"default": 0})
    assert summary["verdict"] == "ok", summary["checks"]
    assert summary["figures"]["unanswered_at_stop"] == 2 and summary["figures"]["unanswered_accepted"] == 0


@pytest.mark.service
def test_an_over_offered_run_sends_at_its_ceiling_ends_generator_limited_and_accounts_for_every_request(
        need_redis, tmp_path):
    # No Locust process sends 50,000 requests a second: the run is over-offered on any machine.
    matrix = tmp_path / "over.toml"
    matrix.write_text('name = "over"\nbackend = "discard"\nscenario = "throughput"\ntask = "noop"\n'
                      "rate = 50000\nwarmup_s = 0.5\nduration_s = 2\n")
    out = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(matrix), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    (record,) = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert record["status"] == "generator-limited", (record.get("detail"), result.stdout + result.stderr)
    checks, figures = record["summary"]["checks"], record["summary"]["figures"]
    assert not checks["generator_kept_up"]["ok"]
    for name in ("requests_match_ledger", "locust_count_matches", "all_finished", "no_duplicates"):
        assert checks[name]["ok"], (name, checks[name])
    assert record["generator"]["policy"] == "send-late"
    requests = store.read_requests_table(out / record["run_id"])
    sent = ledger.executions(out / record["run_id"] / "ledger")
    # Every sent row is a request's, and every request that reached the API has its id in the ledger.
    accepted = set(sent["request_id"].dropna())
    assert accepted <= set(requests["request_id"].dropna())
    assert (requests["status"] == 202).sum() + figures["not_202_accepted"] == figures["sent"]
    # Sends went late instead of piling up: never more than the bound awaited answers at once.
    spans = pd.concat([pd.DataFrame({"t": requests["sent_ns"], "d": 1}),
                       pd.DataFrame({"t": requests["done_ns"], "d": -1})]).sort_values(["t", "d"])
    assert spans["d"].cumsum().max() <= record["generator"]["max_in_flight"]
