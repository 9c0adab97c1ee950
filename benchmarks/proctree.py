"""A process tree's CPU and memory, as one row of ``resources.csv`` (standard library and psutil only).

Shared by the local sampler (`benchmarks.sampler`, a thread beside the supervisor) and the sampler daemon
each host of an inventory runs (`benchmarks.deploy.host` ``sample``), so both write the same rows:

    t_ns, component, name, n_procs, cpu_s, rss_bytes

``cpu_s`` is cumulative CPU seconds of the whole tree: user + system of every live process plus the
children times each has collected from descendants that already exited (so RQ's fork-per-job work
horses are counted once they are reaped). ``rss_bytes`` sums the tree's resident sets (shared pages are
counted in each process: an upper bound).
"""

from __future__ import annotations

import psutil

RESOURCE_COLUMNS = ("t_ns", "component", "name", "n_procs", "cpu_s", "rss_bytes")


def component_of(name: str) -> str:
    """The component a supervised process belongs to, from its name."""
    if name in ("redis", "rabbitmq", "redis-replica", "sentinel"):  # a Sentinel group counts as the broker
        return "broker"
    if name == "results-redis":
        return "result_store"
    if name in ("api", "locust"):
        return name
    if name.startswith("locust-"):  # a distributed run's Locust workers, beside their master
        return "locust"
    return "workers"


def tree_usage(root_pid: int) -> tuple[int, float, int]:
    """(processes, cumulative CPU seconds, RSS bytes) of a process and its descendants."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0.0, 0
    count, cpu, rss = 0, 0.0, 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                rss += proc.memory_info().rss
                count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return count, cpu, rss


def tree_row(t_ns: int, name: str, root_pid: int) -> tuple[int, str, str, int, float, int] | None:
    """The ``resources.csv`` row of the tree rooted at `root_pid`, named `name`, at `t_ns`; None once the tree
    has gone."""
    n, cpu_s, rss = tree_usage(root_pid)
    return (t_ns, component_of(name), name, n, round(cpu_s, 3), rss) if n else None
