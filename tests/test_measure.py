"""Self-checks and figures on synthetic ledgers: a clean run passes, each kind of breakage is caught.

The ledgers are written row by row as the API and workers would write them (JSON lines per process),
with timestamps chosen by the test, then read back through the same code a real run uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backends import ledger
from benchmarks import measure

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def write_rows(directory: Path, name: str, rows: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.jsonl", "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def task_rows(task_id: str, arrival_ns: int, *, wait_ms: float = 2, service_ms: float = 5, attempts=("ok",),
              pid: int = 11) -> tuple[list[dict], list[dict]]:
    """(API rows, worker rows) of one task: sent, then one started/finished pair per attempt outcome."""
    enqueued = arrival_ns + 1 * MS
    api = [{"ev": "sent", "id": task_id, "task": "sleep_ms", "queue": "default", "scheduled_ns": arrival_ns,
            "sent_ns": arrival_ns + MS // 2, "enqueued_ns": enqueued, "request_id": f"r-{task_id}", "pid": 1,
            "host": "h"}]
    worker = []
    t = enqueued + int(wait_ms * MS)
    for attempt, outcome in enumerate(attempts, 1):
        worker.append({"ev": "started", "id": task_id, "task": "sleep_ms", "attempt": attempt, "t_ns": t,
                       "pid": pid, "host": "h"})
        t += int(service_ms * MS)
        worker.append({"ev": "finished", "id": task_id, "task": "sleep_ms", "attempt": attempt, "t_ns": t,
                       "outcome": outcome, "pid": pid, "host": "h"})
    return api, worker


def requests_for(arrivals: list[int], lag_ms: float = 1.0, status: int = 202,
                 task_ids: list[str] | None = None) -> pd.DataFrame:
    """The raw request rows of `arrivals` (by default clean_run's tasks t0000, t0001, ...), each with the
    request id its task's sent row carries."""
    task_ids = task_ids or [f"t{i:04d}" for i in range(len(arrivals))]
    return pd.DataFrame({"scheduled_ns": arrivals, "sent_ns": [a + int(lag_ms * MS) for a in arrivals],
                         "done_ns": [a + int((lag_ms + 3) * MS) for a in arrivals], "status": [status] * len(arrivals),
                         "task_id": task_ids, "request_id": [f"r-{t}" for t in task_ids]})


def clean_run(directory: Path, n: int = 200, rate_per_s: float = 100.0) -> list[int]:
    """`n` tasks arriving evenly at `rate_per_s`, each run once by one of two workers."""
    arrivals = [T0 + int(i * 1e9 / rate_per_s) for i in range(n)]
    api_rows, worker_rows = [], {11: [], 12: []}
    for i, arrival in enumerate(arrivals):
        api, worker = task_rows(f"t{i:04d}", arrival, pid=11 + i % 2)
        api_rows += api
        worker_rows[11 + i % 2] += worker
    write_rows(directory, "api-1", api_rows)
    for pid, rows in worker_rows.items():
        write_rows(directory, f"worker-{pid}", rows)
    return arrivals


def summarise(directory: Path, arrivals: list[int], **overrides):
    tasks = ledger.executions(directory)
    requests = overrides.pop("requests", requests_for(arrivals))
    window = measure.load_window(tasks, requests, warmup_s=0.5, duration_s=1.0)
    kwargs = dict(slots=2, offered_rate_per_s=100.0, locust_post_counts=(len(arrivals), 0), queue_leftovers={"default": 0})
    return measure.summarise(tasks, requests, window, **(kwargs | overrides)), tasks, window


def test_a_clean_run_passes_every_check_and_says_ok(tmp_path):
    arrivals = clean_run(tmp_path)
    summary, _, _ = summarise(tmp_path, arrivals)
    assert summary["verdict"] == "ok", summary["checks"]
    assert all(check["ok"] for check in summary["checks"].values())


def test_throughput_and_percentiles_can_be_recomputed_from_the_stored_parquet(tmp_path):
    arrivals = clean_run(tmp_path / "ledger")
    summary, tasks, window = summarise(tmp_path / "ledger", arrivals)
    tasks.to_parquet(tmp_path / "tasks.parquet", index=False)
    stored = pd.read_parquet(tmp_path / "tasks.parquet")
    ok = stored[(stored["outcome"] == "ok") & (stored["finished_ns"] >= window.start_ns)
                & (stored["finished_ns"] < window.end_ns)]
    assert summary["figures"]["throughput_per_s"] == pytest.approx(len(ok) / window.length_s, rel=0.01)
    inside = stored[(stored["scheduled_ns"] >= window.start_ns) & (stored["scheduled_ns"] < window.end_ns)]
    e2e_ms = (inside["finished_ns"] - inside["scheduled_ns"]).astype("float64") / 1e6
    assert summary["figures"]["latency"]["e2e_ms"]["p95"] == pytest.approx(np.percentile(e2e_ms, 95), rel=0.01)


def test_a_lost_task_fails_the_run_and_is_named(tmp_path):
    arrivals = clean_run(tmp_path)
    api, _ = task_rows("lost", arrivals[50] + 1)
    write_rows(tmp_path, "api-1", api)
    summary, _, _ = summarise(tmp_path, arrivals, locust_post_counts=(len(arrivals) + 1, 0))
    assert summary["verdict"] == "failed"
    assert "all_finished" in summary["failed_checks"] and "lost" in summary["checks"]["all_finished"]["detail"]


def test_a_task_run_twice_is_caught_as_a_duplicate(tmp_path):
    arrivals = clean_run(tmp_path)
    _, worker = task_rows("t0007", arrivals[7], pid=99)
    write_rows(tmp_path, "worker-99", worker)
    summary, _, _ = summarise(tmp_path, arrivals)
    assert summary["verdict"] == "failed" and "no_duplicates" in summary["failed_checks"]


def test_an_execution_without_a_sent_row_is_caught(tmp_path):
    arrivals = clean_run(tmp_path)
    _, worker = task_rows("stranger", arrivals[3])
    write_rows(tmp_path, "worker-11", worker)
    summary, _, _ = summarise(tmp_path, arrivals)
    assert "nothing_unsent_ran" in summary["failed_checks"]


def test_throughput_above_the_littles_law_bound_is_flagged_as_a_harness_bug(tmp_path):
    arrivals = clean_run(tmp_path)  # 100 executions/s of 5 ms each: 2 slots allow 400/s, 0.25 slot only 50/s
    summary, _, _ = summarise(tmp_path, arrivals, slots=0.25)
    assert "littles_law" in summary["failed_checks"]


def test_retries_of_a_flaky_task_are_not_counted_as_duplicates(tmp_path):
    arrivals = clean_run(tmp_path)
    api, worker = task_rows("flaky", arrivals[20] + 1, attempts=("error", "error", "ok"))
    write_rows(tmp_path, "api-1", api)
    write_rows(tmp_path, "worker-11", worker)
    summary, _, _ = summarise(tmp_path, arrivals, locust_post_counts=(len(arrivals) + 1, 0),
                              requests=requests_for([*arrivals, arrivals[20] + 1],
                                                    task_ids=[*(f"t{i:04d}" for i in range(len(arrivals))), "flaky"]))
    assert summary["verdict"] == "ok", summary["failed_checks"]
    assert summary["figures"]["retried_tasks"] == 1


def poison_rows(task_id: str, arrival_ns: int, attempts: int) -> tuple[list[dict], list[dict]]:
    """A `poison` task's rows: sent, then `attempts` failed attempts."""
    api, worker = task_rows(task_id, arrival_ns, attempts=("error",) * attempts)
    for row in api + worker:
        row["task"] = "poison"
    return api, worker


def summarise_with_poison(directory: Path, attempts: int, promised: int):
    arrivals = clean_run(directory)
    api, worker = poison_rows("doomed", arrivals[20] + 1, attempts)
    write_rows(directory, "api-1", api)
    write_rows(directory, "worker-11", worker)
    summary, _, _ = summarise(directory, arrivals, locust_post_counts=(len(arrivals) + 1, 0),
                              requests=requests_for([*arrivals, arrivals[20] + 1],
                                                    task_ids=[*(f"t{i:04d}" for i in range(len(arrivals))), "doomed"]),
                              final_attempts={"poison": promised})
    return summary


def test_a_poison_task_failing_after_exactly_its_promised_attempts_is_settled_not_lost(tmp_path):
    summary = summarise_with_poison(tmp_path, attempts=4, promised=4)
    assert summary["verdict"] == "ok", summary["failed_checks"]
    assert summary["checks"]["retries_as_promised"]["ok"] and summary["checks"]["all_finished"]["ok"]
    assert summary["figures"]["failed_as_promised"] == 1


@pytest.mark.parametrize("attempts", [2, 5])
def test_a_poison_task_retried_more_or_fewer_times_than_promised_fails_the_run(tmp_path, attempts):
    summary = summarise_with_poison(tmp_path, attempts=attempts, promised=4)
    assert summary["failed_checks"] == ["retries_as_promised"]
    assert f"doomed: {attempts} attempt(s)" in summary["checks"]["retries_as_promised"]["detail"]


def test_a_follower_counts_a_poison_task_settled_only_at_its_last_promised_attempt(tmp_path):
    api, worker = poison_rows("doomed", T0, 3)
    write_rows(tmp_path, "api-1", api)
    follower = ledger.Follower(tmp_path, final_attempts={"poison": 3})
    write_rows(tmp_path, "worker-11", worker[:4])  # two failed attempts: the library retries again
    follower.poll()
    assert follower.outstanding() == 1
    write_rows(tmp_path, "worker-11", worker[4:])
    follower.poll()
    assert follower.outstanding() == 0 and follower.failed_ids == {"doomed"} and not follower.done_ids


def test_a_lagging_generator_marks_the_run_generator_limited_not_failed(tmp_path):
    arrivals = clean_run(tmp_path)
    summary, _, _ = summarise(tmp_path, arrivals, requests=requests_for(arrivals, lag_ms=500))
    assert summary["verdict"] == "generator-limited"
    assert not summary["checks"]["generator_kept_up"]["ok"]


def test_a_generator_that_sent_too_little_is_generator_limited(tmp_path):
    arrivals = clean_run(tmp_path)
    summary, _, _ = summarise(tmp_path, arrivals, offered_rate_per_s=200.0)
    assert summary["verdict"] == "generator-limited"


def test_locust_counting_other_than_the_ledger_fails_the_run(tmp_path):
    arrivals = clean_run(tmp_path)
    summary, _, _ = summarise(tmp_path, arrivals, locust_post_counts=(len(arrivals) - 3, 0))
    assert "locust_count_matches" in summary["failed_checks"]


def test_a_request_locust_counted_as_failed_is_reported_but_is_not_a_lost_task(tmp_path):
    arrivals = clean_run(tmp_path)
    refused = pd.DataFrame({"scheduled_ns": [arrivals[9] + 1], "sent_ns": [arrivals[9] + 2], "done_ns": [arrivals[9] + 3],
                            "status": [0], "task_id": [None], "request_id": ["r-refused"]})
    requests = pd.concat([requests_for(arrivals), refused], ignore_index=True)
    summary, _, _ = summarise(tmp_path, arrivals, locust_post_counts=(len(arrivals) + 1, 1), requests=requests)
    assert "locust_count_matches" not in summary["failed_checks"]
    assert summary["figures"]["locust_failed_posts"] == 1
    assert "1 failed" in summary["checks"]["locust_count_matches"]["detail"]


def test_messages_left_in_a_queue_fail_the_run(tmp_path):
    arrivals = clean_run(tmp_path)
    summary, _, _ = summarise(tmp_path, arrivals, queue_leftovers={"default": 4})
    assert "no_leftovers" in summary["failed_checks"]


def test_a_row_cut_short_by_a_killed_writer_is_skipped_not_fatal(tmp_path):
    arrivals = clean_run(tmp_path)
    with open(tmp_path / "worker-11.jsonl", "a") as fh:
        fh.write('{"ev": "finished", "id": "t00')
    summary, _, _ = summarise(tmp_path, arrivals)
    assert summary["verdict"] == "ok"


def test_the_follower_reads_only_complete_new_lines(tmp_path):
    follower = ledger.Follower(tmp_path)
    api, worker = task_rows("a", T0)
    write_rows(tmp_path, "api-1", api)
    follower.poll()
    assert follower.outstanding() == 1
    with open(tmp_path / "worker-11.jsonl", "a") as fh:
        fh.write(json.dumps(worker[0]) + "\n" + json.dumps(worker[1])[:10])
    follower.poll()
    assert follower.outstanding() == 1
    with open(tmp_path / "worker-11.jsonl", "a") as fh:
        fh.write(json.dumps(worker[1])[10:] + "\n")
    follower.poll()
    assert follower.outstanding() == 0
