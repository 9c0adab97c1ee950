"""From raw records to figures and verdicts. Pure functions of stored frames: nothing here runs anything.

Inputs are the two raw tables every run stores:

- ``tasks.parquet``: one row per execution (task id x attempt), from the ledger
  (`backends.ledger.executions`): scheduled/sent/enqueued times from the API's ``sent`` row,
  started/finished/outcome from the worker's rows. A task that never started keeps one row, attempt 0.
- ``requests.parquet`` (load mode): one row per HTTP request Locust sent, from the scenario's raw log:
  scheduled/sent/done times and the status code.

Everything `run.json` reports is computed here from those two tables, so anyone can recompute it:

- Achieved rate = tasks the API accepted (ledger `sent` rows, API clock) in the window / its length.
- The measured window starts `warmup_s` after the first scheduled arrival and lasts `duration_s`.
- Throughput = successful executions whose ``finished_ns`` falls in the window / window length.
- Latencies (ms) of the tasks *scheduled* in the window: HTTP enqueue (request done - sent, from
  Locust's side), queue wait (first attempt's started - enqueued), service (finished - started of the
  successful attempt), end to end (success finished - scheduled; anchored at the schedule, so a stalled
  generator cannot hide latency). Percentiles are numpy's default (linear interpolation) over raw rows.
- Accounting: every request is a raw row (answered, or status -1 when unanswered at the end of the
  load phase and its bounded wait); a request answered 202 names its task's `sent` row, any other is
  looked up in the ledger by its ``X-Request-Id`` (`request_accounting`). Locust's own count is compared
  with the raw rows that got an answer, since that is what Locust counts.
- Little's law: executions finished in the window / length <= slots / mean service time of those
  executions (all attempts hold a slot). Above the bound is a harness bug, never a result.
- Retries as promised: a task that fails every time (`poison`) must run exactly 1 + the retries its
  library's retry policy promises (``final_attempts``, from `QueueBackend.retry_policy`) and end failed; it
  is then settled, not lost (``all_finished`` leaves it to this check).
- Distributed load (several Locust workers under one master): the raw rows are every worker's, merged,
  and Locust's count is the master's (the sum of its workers' reports); every worker the master expected
  must have reported the end of its load in the master's roll call (`load_workers_reported`), else the
  generator check fails: the offered rate was not sent.
- Resources (``resources.csv``, `resource_use`): per component, CPU seconds of its process trees from the
  first sample to the last, and peak RSS. On an inventory each host also samples its whole machine
  (``machine.csv``, `machine_use`): busy CPU as a share of all its CPUs, over the run and over the window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 95, 99)
#: The generator kept up when it sent at least this share of what it scheduled...
ACHIEVED_MIN_RATIO = 0.95
#: ...and its schedule lag (send - scheduled) at p99 stayed under this many milliseconds.
LAG_P99_LIMIT_MS = 100.0
#: Slack on the Little's-law bound for window edges (an execution straddling the window's start).
LITTLE_SLACK = 1.02

LATENCY_NAMES = ("http_enqueue_ms", "queue_wait_ms", "service_ms", "e2e_ms")
#: A raw request row's status when its answer had not come when the load phase ended and the generator's
#: bounded wait ran out (`scenarios/inflight.py`); such a request is looked up in the ledger by its id.
UNANSWERED_STATUS = -1


@dataclass(frozen=True)
class Window:
    start_ns: int
    end_ns: int

    @property
    def length_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def contains(self, values: pd.Series) -> pd.Series:
        return (values >= self.start_ns) & (values < self.end_ns)


def arrival_ns(tasks: pd.DataFrame) -> pd.Series:
    """When each row's task was meant to arrive: its scheduled time, else (no schedule) its sent time."""
    return tasks["scheduled_ns"].fillna(tasks["sent_ns"])


def load_window(tasks: pd.DataFrame, requests: pd.DataFrame | None, warmup_s: float, duration_s: float) -> Window:
    """The measured window: from `warmup_s` after the first scheduled arrival, `duration_s` long."""
    firsts = [int(arrival_ns(tasks).min())] if len(tasks) and arrival_ns(tasks).notna().any() else []
    if requests is not None and len(requests):
        firsts.append(int(requests["scheduled_ns"].min()))
    if not firsts:
        raise ValueError("no task and no request was recorded: nothing to measure")
    start = min(firsts) + int(warmup_s * 1e9)
    return Window(start, start + int(duration_s * 1e9))


def drain_window(tasks: pd.DataFrame) -> Window:
    """Drain mode: from the first execution's start to the last successful finish (to the last finish of
    any outcome when none succeeded: a drain of `poison` tasks, which fail by design)."""
    ok = tasks[tasks["outcome"] == "ok"]
    if ok.empty:
        ok = tasks[tasks["outcome"].notna()]
    if ok.empty:
        raise ValueError("no task finished: nothing to measure")
    return Window(int(tasks["started_ns"].min()), int(ok["finished_ns"].max()))


def stats(values_ms: pd.Series | np.ndarray) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p95, p99 and max of raw values in milliseconds (None when empty)."""
    array = np.asarray(pd.Series(values_ms).dropna(), dtype="float64")
    out: dict[str, float | int | None] = {"count": int(array.size)}
    if array.size == 0:
        out |= {"mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
        return out
    out["mean"] = float(array.mean())
    for p, value in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True):
        out[f"p{p}"] = float(value)
    out["max"] = float(array.max())
    return out


def _ms(later: pd.Series, earlier: pd.Series) -> pd.Series:
    return (later - earlier).astype("Float64") / 1e6


def per_task(tasks: pd.DataFrame) -> pd.DataFrame:
    """One row per task id: arrival, first attempt's start, the successful attempt (if any), counts."""
    sent = tasks.dropna(subset=["sent_ns"]) if "sent_ns" in tasks else tasks
    frame = tasks.assign(arrival_ns=arrival_ns(tasks))
    attempts = frame[frame["attempt"] > 0]
    first = attempts.sort_values("attempt").drop_duplicates("id")[["id", "started_ns"]]
    ok = attempts[attempts["outcome"] == "ok"].sort_values("attempt").drop_duplicates("id")
    ok = ok[["id", "started_ns", "finished_ns"]].rename(
        columns={"started_ns": "ok_started_ns", "finished_ns": "ok_finished_ns"})
    columns = ["id", "task", "queue", "arrival_ns", "scheduled_ns", "sent_ns", "enqueued_ns"]
    base = frame.drop_duplicates("id")[columns + (["request_id"] if "request_id" in frame else [])]
    out = base.merge(first.rename(columns={"started_ns": "first_started_ns"}), on="id", how="left")
    out = out.merge(ok, on="id", how="left")
    counts = attempts.groupby("id").agg(executions=("attempt", "size"),
                                        ok_executions=("outcome", lambda s: int((s == "ok").sum())))
    out = out.merge(counts, left_on="id", right_index=True, how="left")
    out[["executions", "ok_executions"]] = out[["executions", "ok_executions"]].fillna(0).astype("int64")
    out["was_sent"] = out["id"].isin(set(sent["id"]))
    return out


def latencies(tasks: pd.DataFrame, requests: pd.DataFrame | None, window: Window | None) -> dict[str, dict[str, Any]]:
    """The four latency families, each as `stats`, for the tasks scheduled in `window` (None: all tasks)."""
    each = per_task(tasks)
    inside = each[window.contains(each["arrival_ns"]).fillna(False)] if window is not None else each
    out = {
        "queue_wait_ms": stats(_ms(inside["first_started_ns"], inside["enqueued_ns"])),
        "service_ms": stats(_ms(inside["ok_finished_ns"], inside["ok_started_ns"])),
        "e2e_ms": stats(_ms(inside["ok_finished_ns"], inside["arrival_ns"])),
    }
    if requests is not None and len(requests):
        req = requests[window.contains(requests["scheduled_ns"])]
        out = {"http_enqueue_ms": stats(_ms(req["done_ns"], req["sent_ns"])), **out}
    return out


def request_accounting(requests: pd.DataFrame, sent: pd.DataFrame) -> dict[str, Any]:
    """Every request against the ledger's `sent` rows (`sent`: one row per task sent, as `per_task` gives).

    A request answered 202 names its task id: that task must have a sent row. Any other request (refused,
    no answer, or unanswered when the load stopped: status -1) may still have been accepted by the API
    (its answer lost or not awaited): it is looked up by its request id (``X-Request-Id``, stored in the
    sent row). The ledger and the requests agree when every 202 has its sent row and every sent row is
    a 202's task or a request found by id; a sent row that is neither is unexplained. Returns figures,
    and under ``_requests_match`` the check's (ok, detail).
    """
    status = requests["status"]
    answered_ok = requests[status == 202]
    others = requests[status != 202]
    unanswered = int((status == UNANSWERED_STATUS).sum())
    sent_ids = set(sent["id"])
    ok_ids = set(answered_ok["task_id"].dropna()) if "task_id" in answered_ok else set()
    missing = len(answered_ok) - len(ok_ids & sent_ids)  # a 202 whose task has no sent row
    by_request = {}
    if "request_id" in sent and "request_id" in requests:
        by_request = dict(zip(sent["request_id"], sent["id"], strict=True))
        by_request.pop(None, None)
        by_request = {k: v for k, v in by_request.items() if isinstance(k, str)}
    found = {by_request[r] for r in others["request_id"].dropna()
             if r in by_request} if "request_id" in others else set()
    found_unanswered = sum(1 for r in requests.loc[status == UNANSWERED_STATUS, "request_id"].dropna()
                           if r in by_request) if "request_id" in requests else 0
    unexplained = sent_ids - ok_ids - found
    ok = missing == 0 and not unexplained
    detail = f"{len(answered_ok)} requests answered 202, {len(sent_ids)} sent rows in the ledger"
    if len(others):
        detail += (f"; {len(others)} not answered 202 ({unanswered} unanswered at stop), of which "
                   f"{len(found)} found in the ledger by request id")
    if missing:
        detail += f"; {missing} answered 202 without a sent row"
    if unexplained:
        detail += f"; {len(unexplained)} sent rows match no request, e.g. {sorted(unexplained)[:3]}"
    return {"requests": int(len(requests)), "requests_failed": int(len(others)),
            "unanswered_at_stop": unanswered, "unanswered_accepted": int(found_unanswered),
            "not_202_accepted": int(len(found)), "_requests_match": (ok, detail)}


def load_workers_reported(roll_call: Mapping[str, Any] | None, expected: int,
                          expected_by_host: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Whether each of the `expected` Locust workers of a distributed run reported the end of its load,
    from the master's roll call (``locust_workers.json``; None: the master kept none). Returns expected,
    connected, reported, ok and a detail naming each missing worker by its Locust worker index.
    `expected_by_host` (workers on several hosts: how many each host runs) adds ``by_host``, each host's
    expected and reported workers by the host each names in the roll call, and the detail names a host
    short of them (a worker that never connected has no index of its own, but its host is known)."""
    roll_call = roll_call or {}
    workers = [w for w in roll_call.get("workers", {}).values() if w.get("index") is not None]
    connected = sorted({int(w["index"]) for w in workers})
    reported = sorted({int(w["index"]) for w in workers if w.get("ended")})
    never = [i for i in range(expected) if i not in connected]
    silent = [i for i in range(expected) if i in connected and i not in reported]
    wait = roll_call.get("max_wait_s")
    parts = [f"{sum(i in reported for i in range(expected))} of {expected} Locust workers reported the end of "
             "their load"]
    if never:
        parts.append(f"never connected: index {', '.join(map(str, never))}"
                     + (f" (the master waited up to {wait:g} s)" if wait else ""))
    if roll_call and roll_call.get("end_requested_ns") is None:
        parts.append("the master never asked its workers to end the load (it gave up waiting for them, or "
                     "exited early)")
    elif silent:
        named = {int(w["index"]): w for w in workers}
        parts.append("connected but did not report the end of their load (exited or stopped answering): "
                     + ", ".join(f"index {i}" + (f" (pid {named[i]['pid']} on {named[i].get('host')})"
                                                 if named[i].get("pid") else "") for i in silent))
    if not roll_call:
        parts.append("the master kept no roll call")
    by_host = {}
    if expected_by_host:
        for host, count in expected_by_host.items():
            said = sum(1 for w in workers if w.get("host") == host and w.get("ended"))
            by_host[host] = {"expected": count, "reported": said}
            if said < count:
                parts.append(f"{host}: {said} of its {count} Locust worker(s) reported")
    ok = bool(roll_call) and roll_call.get("end_requested_ns") is not None and not never and not silent
    return {"expected": expected, "connected": len(connected), "reported": len(reported), "ok": ok,
            "detail": "; ".join(parts)} | ({"by_host": by_host} if by_host else {})


def summarise(tasks: pd.DataFrame, requests: pd.DataFrame | None, window: Window, *, slots: int,
              offered_rate_per_s: float | None, arrival: str = "constant",
              locust_post_counts: tuple[int, int] | None = None, queue_leftovers: Mapping[str, int] | None = None,
              expected_sent: int | None = None, final_attempts: Mapping[str, int] | None = None,
              load_workers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every figure and every self-check of one run, from its raw tables.

    `final_attempts`: task name -> the attempts its library promises a task that fails every time (the
    `poison` task: 1 + its retry policy's retries); such tasks are judged by ``retries_as_promised``.
    `load_workers` (a distributed run: `load_workers_reported`'s verdict) joins the generator check: a
    Locust worker that did not report the end of its load fails it.

    Returns ``{"figures": {...}, "checks": {name: {"ok": bool, "detail": str}}, "verdict": str}`` where the
    verdict is ``ok``, ``generator-limited`` (the queue's numbers are real but not its limit) or
    ``failed`` (a check that makes the numbers untrustworthy did not hold).
    """
    each = per_task(tasks)
    sent_ids = each[each["was_sent"]]
    attempts = tasks[tasks["attempt"] > 0]
    finished_in = attempts[window.contains(attempts["finished_ns"]).fillna(False)]
    ok_in = finished_in[finished_in["outcome"] == "ok"]
    length_s = window.length_s
    throughput = len(ok_in) / length_s if length_s > 0 else math.nan
    executions_rate = len(finished_in) / length_s if length_s > 0 else math.nan
    service_s = (_ms(finished_in["finished_ns"], finished_in["started_ns"]) / 1e3).dropna()
    mean_service_s = float(service_s.mean()) if len(service_s) else math.nan
    bound = slots / mean_service_s if mean_service_s and mean_service_s > 0 else math.inf

    figures: dict[str, Any] = {
        "window_start_ns": window.start_ns, "window_end_ns": window.end_ns, "window_s": length_s,
        "slots": slots,
        "sent": int(len(sent_ids)),
        "finished_ok": int((each["ok_executions"] > 0).sum()),
        "executions": int(len(attempts)),
        "failed_executions": int((attempts["outcome"] == "error").sum()),
        "retried_tasks": int((each["executions"] > 1).sum()),
        "throughput_per_s": throughput,
        "executions_per_s": executions_rate,
        "mean_service_ms": mean_service_s * 1e3 if not math.isnan(mean_service_s) else None,
        "littles_bound_per_s": bound if math.isfinite(bound) else None,
        # Drain mode (no requests): every task was sent before the window, so latencies cover them all.
        "latency": latencies(tasks, requests, window if requests is not None else None),
    }

    checks: dict[str, dict[str, Any]] = {}
    final = dict(final_attempts or {})
    doomed = sent_ids[sent_ids["task"].isin(list(final))]
    should_finish = sent_ids
    if len(doomed):
        checks["retries_as_promised"], off = retries_check(doomed, attempts, final)
        figures["poison_tasks"] = int(len(doomed))
        figures["failed_as_promised"] = int(len(doomed)) - off
        should_finish = sent_ids[~sent_ids["id"].isin(set(doomed["id"]))]
    lost = should_finish[should_finish["ok_executions"] == 0]["id"].tolist()
    checks["all_finished"] = {"ok": not lost, "detail": f"{len(should_finish) - len(lost)} of {len(should_finish)} "
                              f"sent tasks finished ok" + (f"; lost e.g. {lost[:3]}" if lost else "")
                              + (f" ({len(doomed)} poison task(s) left to retries_as_promised)" if len(doomed) else "")}
    unsent = each[~each["was_sent"]]["id"].tolist()
    checks["nothing_unsent_ran"] = {"ok": not unsent, "detail": f"{len(unsent)} executions without a sent row"}
    dup_attempts = int((attempts["n_finished"] > 1).sum()) if len(attempts) else 0
    dup_ok = int((each["ok_executions"] > 1).sum())
    checks["no_duplicates"] = {"ok": dup_attempts == 0 and dup_ok == 0,
                               "detail": f"{dup_ok} tasks succeeded more than once, {dup_attempts} attempts "
                                         "finished more than once"}
    if expected_sent is not None:
        checks["sent_as_planned"] = {"ok": len(sent_ids) == expected_sent,
                                     "detail": f"{len(sent_ids)} sent of {expected_sent} planned"}
    if queue_leftovers is not None:
        left = {q: n for q, n in queue_leftovers.items() if n}
        checks["no_leftovers"] = {"ok": not left, "detail": f"messages left in queues: {left or 'none'}"}
    within = executions_rate <= bound * LITTLE_SLACK if math.isfinite(bound) else True
    checks["littles_law"] = {"ok": bool(within),
                             "detail": f"{executions_rate:.1f} executions/s <= {slots} slots / "
                                       f"{mean_service_s * 1e3:.3f} ms = {bound:.1f}/s"}
    generator_ok = True
    if requests is not None:
        req = requests[window.contains(requests["scheduled_ns"])]
        # Achieved = tasks the API accepted in the window, by the API's own clock (its `sent` ledger row):
        # a generator or an API that cannot keep up shows here, where scheduled times would hide it.
        accepted = int(window.contains(sent_ids["sent_ns"]).fillna(False).sum())
        achieved = accepted / length_s if length_s > 0 else math.nan
        expected = (offered_rate_per_s or 0) * length_s
        needed = ACHIEVED_MIN_RATIO * expected
        if arrival == "poisson":  # a Poisson count fluctuates: allow three standard deviations
            needed = min(needed, expected - 3 * math.sqrt(expected))
        lag = stats(_ms(req["sent_ns"], req["scheduled_ns"]))
        lag_ok = lag["p99"] is not None and lag["p99"] <= LAG_P99_LIMIT_MS
        figures |= {"offered_rate_per_s": offered_rate_per_s, "achieved_rate_per_s": achieved,
                    "schedule_lag_ms": lag}
        generator_ok = accepted >= needed and lag_ok
        detail = (f"achieved {achieved:.1f}/s of {offered_rate_per_s:g}/s offered (needs >= "
                  f"{needed / length_s if length_s else 0:.1f}/s); schedule lag p99 "
                  f"{lag['p99'] if lag['p99'] is not None else float('nan'):.1f} ms (limit "
                  f"{LAG_P99_LIMIT_MS:g} ms)")
        if load_workers is not None:
            figures["load_workers"] = dict(load_workers)
            generator_ok = generator_ok and bool(load_workers["ok"])
            detail += f"; {load_workers['detail']}"
        checks["generator_kept_up"] = {"ok": generator_ok, "detail": detail}
        figures |= request_accounting(requests, sent_ids)
        matched = figures.pop("_requests_match")
        checks["requests_match_ledger"] = {"ok": matched[0], "detail": matched[1]}
    if locust_post_counts is not None:
        # Compare like with like: Locust counts a request once its answer (or the client's error) came
        # back, so its counts are the raw rows that have one. A request unanswered when the load stopped
        # (status -1) is in neither Locust's count nor, necessarily, the ledger; the ledger side is
        # `requests_match_ledger`'s, which looks it up by request id.
        posted, failed = locust_post_counts
        figures["locust_failed_posts"] = failed
        if requests is not None and len(requests):
            answered = requests[requests["status"] != UNANSWERED_STATUS]
            ok_rows = int((answered["status"] == 202).sum())
            ok = posted - failed == ok_rows and posted == len(answered)
            detail = (f"Locust counted {posted - failed} successful POST /tasks"
                      + (f" (and {failed} failed)" if failed else "")
                      + f"; the raw log has {ok_rows} answered 202"
                      + (f" (and {len(answered) - ok_rows} answered otherwise)" if len(answered) > ok_rows else ""))
        else:  # no raw rows to compare with: Locust's successes must be the ledger's sent rows
            ok = posted - failed == len(sent_ids)
            detail = (f"Locust counted {posted - failed} successful POST /tasks"
                      + (f" (and {failed} failed)" if failed else "")
                      + f", the ledger has {len(sent_ids)} sent rows")
        checks["locust_count_matches"] = {"ok": ok, "detail": detail}

    hard = [name for name, check in checks.items() if not check["ok"] and name != "generator_kept_up"]
    verdict = "failed" if hard else ("ok" if generator_ok else "generator-limited")
    return {"figures": figures, "checks": checks, "verdict": verdict, "failed_checks": hard}


def retries_check(doomed: pd.DataFrame, attempts: pd.DataFrame,
                  final: Mapping[str, int]) -> tuple[dict[str, Any], int]:
    """``retries_as_promised``: each task in `doomed` (`per_task` rows of tasks that fail every time) ran
    exactly the attempts its library promises (`final`, by task name) and its last attempt failed.
    Returns the check and how many tasks did not."""
    last_outcome = attempts.sort_values("attempt").groupby("id")["outcome"].last()
    promised = doomed["task"].map(final)
    outcome = doomed["id"].map(last_outcome)
    failed_last = outcome.eq("error").fillna(False).astype(bool)  # a task never finished has no outcome
    off = doomed[(doomed["executions"] != promised).to_numpy() | ~failed_last.to_numpy()]
    expected = ", ".join(f"{task}: {n} attempt(s), the last failed" for task, n in sorted(final.items()))
    detail = f"{len(doomed)} task(s) that always fail; promised {expected}"
    if len(off):
        first = off.iloc[0]
        detail += (f"; {len(off)} did not, e.g. {first['id']}: {int(first['executions'])} attempt(s), last "
                   f"{outcome.loc[first.name] if isinstance(outcome.loc[first.name], str) else 'never finished'}")
    return {"ok": off.empty, "detail": detail}, int(len(off))


def flatten(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested figures as flat columns: ``latency.e2e_ms.p95`` -> ``e2e_ms_p95``."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key == "latency":
            for family, figures in value.items():
                out |= {f"{family}_{k}": v for k, v in figures.items()}
        elif key == "schedule_lag_ms":
            out |= {f"schedule_lag_ms_{k}": v for k, v in value.items()}
        elif isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{key}_")
        else:
            out[f"{prefix}{key}"] = value
    return out


def resource_use(resources: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per component: CPU seconds used while sampled (last - first sample of each process tree, summed)
    and peak RSS in MiB (the largest sum over the component's trees at one sample time).

    Rows with a ``host`` column (an inventory run) are taken host by host and summed: CPU seconds add up, and
    peak RSS is the sum of each host's peak (the hosts' samples are not simultaneous: an upper bound)."""
    if resources is None or resources.empty:
        return {}
    if "host" in resources.columns:
        total: dict[str, dict[str, float]] = {}
        for _, rows in resources.groupby("host"):
            for component, use in resource_use(rows.drop(columns="host")).items():
                into = total.setdefault(component, {"cpu_s": 0.0, "peak_rss_mib": 0.0})
                into["cpu_s"] = round(into["cpu_s"] + use["cpu_s"], 3)
                into["peak_rss_mib"] = round(into["peak_rss_mib"] + use["peak_rss_mib"], 1)
        return total
    out: dict[str, dict[str, float]] = {}
    cpu = resources.sort_values("t_ns").groupby(["component", "name"])["cpu_s"].agg(["first", "last"])
    used = (cpu["last"] - cpu["first"]).groupby(level="component").sum()
    peak = resources.groupby(["component", "t_ns"])["rss_bytes"].sum().groupby(level="component").max()
    for component in used.index:
        out[str(component)] = {"cpu_s": round(float(used[component]), 3),
                               "peak_rss_mib": round(float(peak.get(component, 0)) / 2**20, 1)}
    return out


def machine_use(machine: pd.DataFrame, window: Window | None = None) -> dict[str, Any]:
    """One host's whole-machine figures from its ``machine.csv`` rows (`benchmarks.deploy.host` ``sample``):
    its CPUs; CPU busy as a percentage of all its CPUs (100 = every CPU busy), over the whole sampled run and
    over the samples inside `window` (None with fewer than two there); peak and total memory in MiB."""
    if machine is None or machine.empty:
        return {}
    rows = machine.sort_values("t_ns")

    def busy_percent(part: pd.DataFrame) -> float | None:
        if len(part) < 2:
            return None
        all_s = float(part["cpu_all_s"].iloc[-1] - part["cpu_all_s"].iloc[0])
        busy_s = float(part["cpu_busy_s"].iloc[-1] - part["cpu_busy_s"].iloc[0])
        return round(100 * busy_s / all_s, 1) if all_s > 0 else None

    inside = rows[window.contains(rows["t_ns"])] if window is not None else rows.iloc[0:0]
    return {"n_cpus": int(rows["n_cpus"].iloc[-1]), "cpu_percent": busy_percent(rows),
            "cpu_percent_window": busy_percent(inside),
            "peak_mem_used_mib": round(float(rows["mem_used_bytes"].max()) / 2**20, 1),
            "mem_total_mib": round(float(rows["mem_total_bytes"].iloc[-1]) / 2**20, 1)}


def host_resource_use(resources: pd.DataFrame, machine: pd.DataFrame, window: Window | None = None
                      ) -> dict[str, dict[str, Any]]:
    """An inventory run's resources per host (both frames carry a ``host`` column): each host's components
    (`resource_use` of its rows) and its whole machine (`machine_use`)."""
    hosts = sorted({*resources.get("host", pd.Series(dtype=object)), *machine.get("host", pd.Series(dtype=object))})
    out = {}
    for host in hosts:
        mine = resources[resources["host"] == host].drop(columns="host") if "host" in resources else resources
        its_machine = machine[machine["host"] == host].drop(columns="host") if "host" in machine else machine
        out[str(host)] = {"components": resource_use(mine), "machine": machine_use(its_machine, window)}
    return out
