"""An independent drain measurement, to check queuebench's drain-mode figures against.

It shares no code with queuebench (no backends/, no ledger, no runner): each library's own API
enqueues N `sleep` tasks on a private redis-server, then each library's own worker CLI drains them;
the task bodies record when they started and finished (one O_APPEND write per task to a file per worker
process; `--record redis` pushes to a Redis list instead, as the script did before 2026-12-03), and the
throughput is
N / (last finish - first start), the window queuebench's drain mode uses. Library defaults
everywhere, results off, one thread per process (slots = processes), as in
benchmarks/matrices/crosscheck.toml, which measures the same configurations through queuebench.

    python benchmarks/crosscheck_drain.py --processes 2 4 --tasks 800 --sleep-ms 20 --repeats 3

Knob variants (the check of ``queuebench tune``): ``--sleep-ms 0`` drains no-op tasks, and
``--dramatiq-prefetch default 64`` / ``--rq-worker-class Worker SimpleWorker`` run each library once per
value in every repeat (Dramatiq's ``dramatiq_queue_prefetch`` environment variable; ``rq worker-pool -w``),
interleaved, and print each variant's ratio to the first value:

    python benchmarks/crosscheck_drain.py --libraries dramatiq --processes 2 --tasks 3000 --sleep-ms 0 \
        --repeats 3 --dramatiq-prefetch default 64

Prints one line per run and a JSON summary (median tasks/s per library, process count and variant, and the
ratios) on stdout. See benchmarks/NOTES.md for how the two were compared.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

LIBRARIES = ("celery", "rq", "dramatiq")
DONE_KEY = "crosscheck:done"

TASK_MODULES = {
    "x_celery": '''
import os, time, redis
from celery import Celery
app = Celery("x", broker=os.environ["X_URL"])
app.conf.task_ignore_result = True
r = redis.Redis.from_url(os.environ["X_URL"])
@app.task(name="sleep")
def sleep(ms):
    t0 = time.time(); ms and time.sleep(ms / 1000); {record}
''',
    "x_rq": '''
import os, time, redis
r = redis.Redis.from_url(os.environ["X_URL"])
def sleep(ms):
    t0 = time.time(); ms and time.sleep(ms / 1000); {record}
''',
    "x_dramatiq": '''
import os, time, redis, dramatiq
from dramatiq.brokers.redis import RedisBroker
dramatiq.set_broker(RedisBroker(url=os.environ["X_URL"]))
r = redis.Redis.from_url(os.environ["X_URL"])
@dramatiq.actor(max_retries=0)
def sleep(ms):
    t0 = time.time(); ms and time.sleep(ms / 1000); {record}
''',
}


#: How a task body records its start and finish: a Redis RPUSH to the script's own server (one round
#: trip per task), or one O_APPEND write to a file per worker process (about as cheap as queuebench's
#: ledger). At a few hundred tasks/s either is noise; a no-op drain of several thousand tasks/s spends
#: most of its time in the round trip, so `--record file` is what a tuned no-op drain is compared with.
RECORDS = {
    "redis": 'r.rpush("{done}", f"{{t0}} {{time.time()}}")',
    "file": 'os.write(_done_fd(), f"{{t0}} {{time.time()}}\\n".encode())',
}
DONE_FD = '''
_FDS = {}
def _done_fd():
    pid = os.getpid()  # RQ's default worker forks per job: each process opens its own file
    if pid not in _FDS:
        _FDS[pid] = os.open(os.path.join(os.environ["X_DONE_DIR"], f"{pid}.txt"),
                            os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return _FDS[pid]
'''


def done_rows(record: str, r: redis.Redis, done_dir: Path) -> list[str]:
    """The rows the task bodies recorded so far ("start finish" in seconds since the epoch)."""
    if record == "redis":
        return [x.decode() for x in r.lrange(DONE_KEY, 0, -1)]
    return [line for path in done_dir.glob("*.txt") for line in path.read_text().splitlines() if line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def enqueue(library: str, count: int, sleep_ms: int) -> None:
    if library == "celery":
        import x_celery
        for _ in range(count):
            x_celery.sleep.delay(sleep_ms)
    elif library == "rq":
        import rq
        import x_rq
        queue = rq.Queue("default", connection=x_rq.r)
        for _ in range(count):
            queue.enqueue(x_rq.sleep, sleep_ms, result_ttl=0)
    else:
        import x_dramatiq
        for _ in range(count):
            x_dramatiq.sleep.send(sleep_ms)


def worker_argv(library: str, processes: int, variant: str = "default") -> list[str]:
    if library == "celery":
        return [bin_path("celery"), "-A", "x_celery", "worker", "-c", str(processes), "--loglevel", "WARNING"]
    if library == "rq":
        worker_class = [] if variant == "default" else ["-w", f"rq.worker.{variant}"]
        return [bin_path("rq"), "worker-pool", "-n", str(processes), "-u", os.environ["X_URL"], *worker_class,
                "default"]
    return [bin_path("dramatiq"), "x_dramatiq", "-p", str(processes), "-t", "1"]


def worker_env(library: str, variant: str) -> dict[str, str]:
    if library == "dramatiq" and variant != "default":
        return {"dramatiq_queue_prefetch": variant}
    return {}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def one_run(library: str, processes: int, count: int, sleep_ms: int, url: str, workdir: Path,
            variant: str = "default", record: str = "file") -> float:
    r = redis.Redis.from_url(url)
    r.flushdb()  # the script's own private redis-server: nothing else lives there
    done_dir = workdir / "done"
    shutil.rmtree(done_dir, ignore_errors=True)
    done_dir.mkdir()
    enqueue(library, count, sleep_ms)
    with open(workdir / f"{library}-p{processes}.log", "ab") as log:
        proc = subprocess.Popen(worker_argv(library, processes, variant), cwd=workdir, stdout=log, stderr=log,
                                start_new_session=True,
                                env=os.environ | {"PYTHONPATH": str(workdir), "X_DONE_DIR": str(done_dir)}
                                | worker_env(library, variant))
    try:
        deadline = time.monotonic() + 60 + count * sleep_ms / 1000
        while (done := len(done_rows(record, r, done_dir))) < count:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{library} p{processes}: {done} of {count} done")
            time.sleep(0.05)
    finally:
        stop(proc)
    rows = [tuple(map(float, x.split())) for x in done_rows(record, r, done_dir)]
    if len(rows) != count:
        raise RuntimeError(f"{library} p{processes}: {len(rows)} executions of {count} tasks")
    return count / (max(f for _, f in rows) - min(s for s, _ in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--tasks", type=int, default=800)
    parser.add_argument("--sleep-ms", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--lock", default=os.environ.get("QUEUEBENCH_LOCK") or
                        os.path.join(tempfile.gettempdir(), "queuebench-measure.lock"),
                        help="a lock file held while measuring (waited for when taken), so no queuebench sweep "
                             "shares the cores: the path queuebench's sweeps lock; '' for none")
    parser.add_argument("--dramatiq-prefetch", nargs="+", default=["default"], metavar="N",
                        help="dramatiq_queue_prefetch values to run, 'default' for Dramatiq's own (2 x threads)")
    parser.add_argument("--rq-worker-class", nargs="+", default=["default"], metavar="CLASS",
                        help="rq worker classes to run (Worker, SimpleWorker, SpawnWorker), 'default' for RQ's own")
    parser.add_argument("--record", choices=tuple(RECORDS), default="file",
                        help="how task bodies record start and finish: one O_APPEND write per task to a file "
                             "per process (default, about as cheap as queuebench's ledger) or one Redis RPUSH "
                             "(what this script did before 2026-12-03: a round trip per task)")
    options = parser.parse_args()
    variants = {"celery": ["default"], "rq": options.rq_worker_class, "dramatiq": options.dramatiq_prefetch}

    lock = open(options.lock, "a+") if options.lock else None  # noqa: SIM115 - held until the script ends
    if lock is not None:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the measuring lock {options.lock} ...", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
    workdir = Path(tempfile.mkdtemp(prefix="crosscheck-"))
    for name, text in TASK_MODULES.items():
        body = text.replace("{record}", RECORDS[options.record].format(done=DONE_KEY))
        (workdir / f"{name}.py").write_text(body + (DONE_FD if options.record == "file" else ""))
    sys.path.insert(0, str(workdir))
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["X_URL"] = url
    server = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        figures: dict[str, list[float]] = {}
        for repeat in range(options.repeats):  # interleaved, as queuebench runs repeats
            for processes in options.processes:
                for library in options.libraries:
                    for variant in variants[library]:
                        rate = one_run(library, processes, options.tasks, options.sleep_ms, url, workdir, variant,
                                       options.record)
                        key = f"{library}-p{processes}" + ("" if variant == "default" else f"-{variant}")
                        figures.setdefault(key, []).append(rate)
                        print(f"repeat {repeat} {key}: {rate:.1f} tasks/s", file=sys.stderr)
    finally:
        stop(server)
    summary: dict[str, dict[str, object]] = {key: {"median_per_s": statistics.median(v), "runs_per_s": v}
                                             for key, v in figures.items()}
    for processes in options.processes:
        for library in options.libraries:
            first = variants[library][0]
            base = f"{library}-p{processes}" + ("" if first == "default" else f"-{first}")
            for variant in variants[library][1:]:
                key = f"{library}-p{processes}" + ("" if variant == "default" else f"-{variant}")
                ratios = [b / a for a, b in zip(figures[base], figures[key], strict=True)]
                summary[key]["ratio_to_first"] = {
                    "of_medians": summary[key]["median_per_s"] / summary[base]["median_per_s"],  # type: ignore[operator]
                    "of_geometric_means": math.exp(statistics.fmean(math.log(x) for x in figures[key])
                                                   - statistics.fmean(math.log(x) for x in figures[base])),
                    "per_repeat": ratios}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
