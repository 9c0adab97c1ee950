"""A short end-to-end check of every backend through the API: what the README's main command runs
until the matrix runner lands.

For each backend: start a private broker, its workers and the API; POST every task kind; wait for each
to succeed with the right result; check the ledger holds exactly one successful execution per task.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends import ledger, workload
from benchmarks.stack import Stack, StackConfig

ECHO_SIZE = 1000
KINDS: list[tuple[str, dict[str, int], Any]] = [
    ("noop", {}, None),
    ("sleep_ms", {"ms": 50}, 50),
    ("cpu_ms", {"ms": 20}, 20),
    ("echo", {"size": ECHO_SIZE},
     {"length": ECHO_SIZE, "crc32": workload.payload_checksum(workload.make_payload(ECHO_SIZE))}),
    ("flaky", {"fail_times": 2}, 3),
    ("add", {"x": 5, "y": 3}, 8),
]


@dataclass
class SmokeResult:
    backend: str
    broker: str
    ok: bool = False
    ready_s: float = 0.0
    end_to_end_ms: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def smoke_one(config: StackConfig, run_dir: Path, timeout_s: float = 60) -> SmokeResult:
    """Bring `config` up, round-trip every task kind, check the ledger, tear it all down."""
    result = SmokeResult(config.backend, config.broker)
    started = time.monotonic()
    with Stack(config, run_dir) as stack:
        result.ready_s = time.monotonic() - started
        sent: dict[str, tuple[str, Any]] = {}
        for task, args, expected in KINDS:
            code, body = _http("POST", f"{stack.api_url}/tasks", {"task": task, "args": args})
            if code != 202:
                result.problems.append(f"POST {task}: {code} {body}")
                continue
            sent[body["id"]] = (task, expected)
        deadline = time.monotonic() + timeout_s
        pending = dict(sent)
        while pending and time.monotonic() < deadline:
            for task_id, (task, expected) in list(pending.items()):
                code, body = _http("GET", f"{stack.api_url}/tasks/{task_id}")
                if body.get("status") in ("success", "failure"):
                    del pending[task_id]
                    if body["status"] != "success" or body["result"] != expected:
                        result.problems.append(f"{task}: {body}")
            time.sleep(0.05)
        result.problems += [f"{task}: not finished in {timeout_s:.0f} s" for task, _ in pending.values()]
        runs = ledger.executions(stack.ledger_dir)
        ok = runs[runs["outcome"] == "ok"]
        if sorted(ok["id"]) != sorted(sent) or (ok["n_finished"] != 1).any():
            result.problems.append(f"ledger: {len(ok)} successful executions for {len(sent)} tasks")
        for _, row in ok.iterrows():
            task = sent.get(row["id"], ("?",))[0]
            result.end_to_end_ms[task] = (int(row["finished_ns"]) - int(row["sent_ns"])) / 1e6
    result.ok = not result.problems
    return result
