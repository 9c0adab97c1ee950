"""Resource and queue-depth samples taken while a run is measured (psutil, one background thread).

Every `interval_s` the sampler walks each supervised process tree (broker, each worker command, the
API, Locust) and writes one row per component to ``resources.csv`` (`benchmarks.proctree` walks the trees
and says what each column holds; an inventory's hosts write the same rows). Queue depths from the backend
go to ``queue_depths.csv`` (``t_ns, queue, depth``). Sampling errors never stop a run; they are counted in `errors`.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from benchmarks import store
from benchmarks.procs import Supervisor
from benchmarks.proctree import RESOURCE_COLUMNS, tree_row

DEPTH_COLUMNS = ("t_ns", "queue", "depth")


class Sampler:
    """Samples the supervisor's processes (and queue depths) until stopped; a context manager."""

    def __init__(self, supervisor: Supervisor, out_dir: Path, *, interval_s: float = 0.5,
                 depths: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.supervisor = supervisor
        self.interval_s = interval_s
        self.depths = depths
        self.resources_path = out_dir / store.RESOURCES_CSV
        self.depths_path = out_dir / store.QUEUE_DEPTHS_CSV
        self.errors = 0
        self.last_depths: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="queuebench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=10)

    def sample_once(self, res_writer: csv.writer, depth_writer: csv.writer) -> None:
        now = time.time_ns()
        for proc in list(self.supervisor.procs):
            row = tree_row(now, proc.name, proc.pid)
            if row is not None:
                res_writer.writerow(row)
        if self.depths is not None:
            try:
                depths = dict(self.depths())
            except Exception:  # a broker busy or gone for a moment must not stop the run
                self.errors += 1
            else:
                self.last_depths = depths
                for queue, depth in depths.items():
                    depth_writer.writerow((now, queue, depth))

    def _loop(self) -> None:
        with open(self.resources_path, "w", newline="") as res, open(self.depths_path, "w", newline="") as dep:
            res_writer, depth_writer = csv.writer(res), csv.writer(dep)
            res_writer.writerow(RESOURCE_COLUMNS)
            depth_writer.writerow(DEPTH_COLUMNS)
            while True:
                try:
                    self.sample_once(res_writer, depth_writer)
                except Exception:
                    self.errors += 1
                res.flush()
                dep.flush()
                if self._stop.wait(self.interval_s):
                    self.sample_once(res_writer, depth_writer)  # one last sample at the end
                    return
