"""The fault verdict, on synthetic ledgers: every count recomputable from the rows, each judged against
what the library's delivery contract lets that fault do."""

from __future__ import annotations

from benchmarks.analysis.faults import p99_text
from benchmarks.fault_verdict import AS_DOCUMENTED, VIOLATES, judge

S = 1_000_000_000
AT = 10 * S  # the fault
DEADLINE = 40 * S


class Ledger:
    """Rows as the API and the workers write them, with times in seconds."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def sent(self, task_id: str, at_s: float = 0.0) -> Ledger:
        self.rows.append({"ev": "sent", "id": task_id, "sent_ns": int(at_s * S), "scheduled_ns": None})
        return self

    def ran(self, task_id: str, start_s: float, end_s: float | None = None, *, attempt: int = 1,
            outcome: str = "ok", pid: int = 100, task: str = "sleep_ms") -> Ledger:
        self.rows.append({"ev": "started", "id": task_id, "task": task, "attempt": attempt, "t_ns": int(start_s * S),
                          "pid": pid})
        if end_s is not None:
            self.rows.append({"ev": "finished", "id": task_id, "task": task, "attempt": attempt,
                              "t_ns": int(end_s * S), "outcome": outcome, "pid": pid})
        return self


def fault(kind: str, **more) -> dict:
    return {"kind": kind, "at_ns": AT, "deadline_ns": DEADLINE, **more}


def test_an_early_ack_library_losing_the_task_its_killed_child_ran_is_as_documented():
    book = Ledger().sent("a").sent("b").sent("c").ran("a", 1, 2).ran("b", 9).ran("c", 11, 12)
    result = judge(book.rows, fault("kill_child"), "at-most-once")
    assert result["acknowledged"] == 3 and result["in_flight_at_fault"] == 1
    assert (result["lost_in_flight"], result["lost_queued"], result["duplicated"]) == (1, 0, 0)
    assert result["verdict"] == AS_DOCUMENTED and result["ids"]["lost"] == ["b"]
    assert result["recovered_s"] is None  # the one affected task never finished


def test_an_at_least_once_library_losing_a_task_in_flight_violates_its_contract():
    book = Ledger().sent("a").sent("b").ran("a", 9).ran("b", 11, 12)
    result = judge(book.rows, fault("kill_worker"), "at-least-once")
    assert result["lost_in_flight"] == 1 and result["verdict"] == VIOLATES
    assert "in flight lost" in result["reasons"][0]


def test_a_redelivered_task_is_reexecuted_and_recovered_at_its_second_finish():
    book = Ledger().sent("a").ran("a", 9).ran("a", 10.5, 12)
    result = judge(book.rows, fault("kill_child"), "at-least-once")
    assert (result["lost_in_flight"], result["reexecuted"], result["duplicated"]) == (0, 1, 0)
    assert result["first_redelivery_s"] == 0.5 and result["recovered_s"] == 2.0
    assert result["verdict"] == AS_DOCUMENTED


def test_a_retry_the_library_was_asked_for_is_not_a_reexecution():
    book = Ledger().sent("f").ran("f", 1, 2, outcome="error").ran("f", 2.5, 3, attempt=2)
    result = judge(book.rows, fault("kill_child"), "at-most-once")
    assert result["reexecuted"] == 0 and result["verdict"] == AS_DOCUMENTED


def test_a_task_finishing_twice_under_at_most_once_violates_the_contract():
    book = Ledger().sent("a").ran("a", 9, 30).ran("a", 25, 26)
    result = judge(book.rows, fault("kill_worker"), "at-most-once")
    assert result["duplicated"] == 1 and result["reexecuted"] == 1 and result["verdict"] == VIOLATES


def test_a_task_the_broker_still_holds_at_the_deadline_is_stranded_not_lost():
    book = Ledger().sent("a").sent("b").ran("a", 9).ran("b", 9.5)
    result = judge(book.rows, fault("kill_worker"), "at-least-once", held_ids={"a", "b"})
    assert (result["lost_in_flight"], result["stranded"], result["stranded_in_flight"]) == (0, 2, 2)
    assert result["verdict"] == AS_DOCUMENTED


def test_without_reading_the_broker_stranded_is_unknown():
    result = judge(Ledger().sent("a").rows, fault("kill_worker"), "at-least-once")
    assert result["stranded"] is None and result["lost_queued"] == 1


def test_a_queued_task_lost_by_a_broker_without_persistence_is_as_documented_and_with_aof_is_not():
    book = Ledger().sent("a").sent("b").ran("a", 1, 2)
    off = judge(book.rows, fault("restart_broker", persistence="off"), "at-least-once")
    aof = judge(book.rows, fault("restart_broker", persistence="aof"), "at-least-once")
    assert off["lost_queued"] == aof["lost_queued"] == 1
    assert off["verdict"] == AS_DOCUMENTED and aof["verdict"] == VIOLATES


def test_a_task_lost_in_a_sentinel_failover_is_as_documented_but_running_twice_under_at_most_once_is_not():
    # Replication is asynchronous: what the master had not yet copied may be gone, whatever the promise.
    lost = Ledger().sent("a").sent("b").ran("a", 1, 2)
    assert judge(lost.rows, fault("failover_broker", persistence="replica"), "at-least-once")["verdict"] == AS_DOCUMENTED
    twice = Ledger().sent("a").ran("a", 9, 11).ran("a", 12, 13, pid=101)
    assert judge(twice.rows, fault("failover_broker", persistence="replica"), "at-most-once")["verdict"] == VIOLATES


def test_a_task_that_finished_only_after_the_deadline_is_lost():
    book = Ledger().sent("a").ran("a", 9, 41)
    assert judge(book.rows, fault("hang_worker"), "at-least-once")["lost_in_flight"] == 1


def test_a_graceful_stop_escalated_to_sigkill_is_judged_as_a_kill():
    book = Ledger().sent("a").ran("a", 9)
    graceful = judge(book.rows, fault("term_worker"), "at-most-once")
    escalated = judge(book.rows, fault("term_worker", escalated=True), "at-most-once")
    assert graceful["verdict"] == VIOLATES and escalated["verdict"] == AS_DOCUMENTED


def test_an_execution_that_was_never_sent_always_violates():
    book = Ledger().sent("a").ran("a", 1, 2).ran("ghost", 3, 4)
    result = judge(book.rows, fault("restart_broker", persistence="off"), "at-least-once")
    assert result["unexpected"] == 1 and result["verdict"] == VIOLATES


def test_probe_rows_are_left_out():
    book = Ledger().sent("a").ran("a", 1, 2)
    book.rows.append({"ev": "sent", "id": "p", "sent_ns": 0, "probe": True})
    assert judge(book.rows, fault("kill_child"), "at-most-once")["acknowledged"] == 1


def test_the_dip_compares_one_second_buckets_after_the_fault_with_the_rate_before_it():
    book = Ledger()
    for i in range(10):  # 2 per second from 5 s to 10 s, then nothing for 2 s, then 2 per second again
        book.sent(f"b{i}").ran(f"b{i}", 5 + i / 2 - 0.1, 5 + i / 2 + 0.01)
    for i in range(56):
        book.sent(f"a{i}").ran(f"a{i}", 12 + i / 2, 12 + i / 2 + 0.01)
    dip = judge(book.rows, {"kind": "hang_worker", "at_ns": AT, "deadline_ns": DEADLINE}, "at-least-once")
    assert dip["throughput_dip"]["depth"] == 1.0
    assert dip["throughput_dip"]["buckets_per_s"][:3] == [0, 0, 2]


def test_a_p99_of_too_few_tasks_sent_during_the_fault_is_no_number_but_their_largest_is_given():
    book = Ledger().sent("a", 11).ran("a", 12, 13.5).sent("b", 12).ran("b", 12, 12.1)
    result = judge(book.rows, fault("hang_worker"), "at-least-once")
    assert result["e2e_p99_during_fault_ms"] is None and result["e2e_p99_during_fault_interval_ms"] is None
    assert result["e2e_p99_during_fault_note"] == "too few samples (n=2)"
    assert result["e2e_max_during_fault_ms"] == 2500.0 and result["e2e_during_fault_n"] == 2


def test_enough_tasks_sent_during_the_fault_give_the_end_to_end_p99_with_its_interval():
    book = Ledger()
    for i in range(400):  # end to end 1 ms .. 400 ms
        book.sent(f"t{i}", 11).ran(f"t{i}", 11, 11 + (i + 1) / 1000)
    result = judge(book.rows, fault("hang_worker"), "at-least-once")
    low, high = result["e2e_p99_during_fault_interval_ms"]
    assert result["e2e_during_fault_n"] == 400 and result["e2e_p99_during_fault_note"] is None
    assert low <= result["e2e_p99_during_fault_ms"] <= high <= result["e2e_max_during_fault_ms"]
    assert abs(result["e2e_p99_during_fault_ms"] - 396) < 1  # the 396th of 400 in order, nearest rank


def poison(book: Ledger, task_id: str, attempts: int, start_s: float = 11.0) -> Ledger:
    """`attempts` failed attempts of a task that always fails, one a second from `start_s`."""
    for attempt in range(1, attempts + 1):
        book.ran(task_id, start_s + attempt - 1, start_s + attempt - 0.5, attempt=attempt, outcome="error",
                 task="poison")
    return book


def test_a_poison_task_that_failed_after_its_promised_attempts_is_settled_not_lost():
    book = poison(Ledger().sent("p").sent("a").ran("a", 9, 12), "p", 4)
    result = judge(book.rows, fault("kill_child"), "at-least-once", final_attempts={"poison": 4})
    assert result["failed_as_promised"] == 1
    assert result["lost_in_flight"] == result["lost_queued"] == 0 and result["reexecuted"] == 0
    assert result["verdict"] == AS_DOCUMENTED


def test_a_poison_task_short_of_its_promised_attempts_at_the_deadline_is_not_settled():
    book = poison(Ledger().sent("p"), "p", 2)
    result = judge(book.rows, fault("kill_child"), "at-least-once", final_attempts={"poison": 4})
    assert result["failed_as_promised"] == 0 and result["lost_queued"] == 1
    assert result["verdict"] == VIOLATES


def test_a_rabbitmq_restart_may_lose_unconfirmed_messages_but_not_confirmed_ones():
    book = Ledger().sent("a").sent("b").ran("a", 9, 10.5)  # b was queued at the restart and never ran
    unconfirmed = judge(book.rows, fault("restart_broker", persistence="durable-unconfirmed"), "at-least-once")
    confirmed = judge(book.rows, fault("restart_broker", persistence="durable-confirmed"), "at-least-once")
    assert unconfirmed["lost_queued"] == confirmed["lost_queued"] == 1
    assert unconfirmed["verdict"] == AS_DOCUMENTED and confirmed["verdict"] == VIOLATES


def test_the_report_prints_a_fault_p99_only_when_its_tasks_bound_it_even_for_runs_recorded_before_the_rule():
    older = {"e2e_p99_during_fault_ms": 2500.0, "e2e_during_fault_n": 60}  # a raw figure from before the rule
    assert p99_text(older) == "too few samples (n=60)"
    few = judge(Ledger().sent("a", 11).ran("a", 12, 13.5).rows, fault("hang_worker"), "at-least-once")
    assert p99_text(few) == "too few samples (n=1); largest 2500 ms"
    book = Ledger()
    for i in range(400):
        book.sent(f"t{i}", 11).ran(f"t{i}", 11, 11 + (i + 1) / 1000)
    text = p99_text(judge(book.rows, fault("hang_worker"), "at-least-once"))
    assert text.startswith("396 ms (95 % CI ") and text.endswith(", n=400)")
