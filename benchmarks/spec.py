"""Every key of a run spec, declared once: type, allowed values, default, kind, modes, help.

A run spec is what a matrix cell resolves to and what ``queuebench serve`` starts: the system under
test (backend, broker, serializer, slots, routing, ...; *system* keys) and the load put on it (mode,
scenario, task, rate, windows; *workload* keys). Library knobs are not declared here: each backend
declares its own (`backends.base.Knob`), and a spec carries them under ``options``.

Everything that needs the keys reads them from `KEYS`: the matrix validator (`benchmarks.matrix`), the
``serve`` options (`benchmarks.cli`), run ids, the analysis labels (`SYSTEM_KEYS`, `WORKLOAD_KEYS`) and
the README's key table (checked against this declaration by a test).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import backends
from backends import workload
from backends.base import (
    BROKERS,
    DEFAULT_QUEUE,
    LONG_QUEUE,
    QUEUE_TYPES,
    ROUTINGS,
    SERIALIZERS,
    SHORT_QUEUE,
    BackendSettings,
    Knob,
    UnsupportedOption,
    WorkerSpec,
    check_shapes,
)

Kind = Literal["system", "workload"]
Mode = Literal["load", "drain"]

#: Scenarios a matrix cell may run (`step`, scenarios/step.py, is driven by the step search only).
SCENARIOS = ("throughput", "latency", "routing_mix", "payload", "poll")
#: Scenarios that send their own mix of tasks: `task` and `args` do not apply to them.
MIXED_SCENARIOS = ("routing_mix", "payload")
MODES = ("load", "drain")
ARRIVALS = ("constant", "poisson")
#: Faults a cell may inject (`benchmarks.faults`), and what each fault's own keys are.
NO_FAULT = "none"
FAULTS = (NO_FAULT, "kill_child", "kill_worker", "hang_worker", "restart_broker", "term_worker", "failover_broker")
VICTIMS = ("tree", "parent")
PERSISTENCES = ("off", "aof")
#: Fault keys and the faults they belong to (every fault but "none" has `fault_at_s` and `observe_s`).
FAULT_PARAMS: dict[str, tuple[str, ...]] = {
    "fault_at_s": FAULTS[1:], "observe_s": FAULTS[1:], "restart_after_s": ("kill_worker", "term_worker"),
    "victim": ("kill_worker",), "hang_s": ("hang_worker",), "persistence": ("restart_broker",),
    "grace_s": ("term_worker",),
}


@dataclass(frozen=True)
class Key:
    """One spec key. `domain` holds its type, allowed values, default and help (the same declaration a
    library knob uses); `check`, when set, replaces the domain's own check (for values only known at run
    time, such as backend names); `modes` are the modes it applies to; `serve` says whether ``queuebench
    serve`` takes it as an option."""

    name: str
    kind: Kind
    domain: Knob
    modes: frozenset[str] = frozenset(MODES)
    serve: bool = False
    check: Callable[[Any], str | None] | None = None
    values_text: str = ""

    @property
    def default(self) -> Any:
        return self.domain.default

    @property
    def help(self) -> str:
        return self.domain.help

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (a phrase after "must be"), or None."""
        return self.check(value) if self.check is not None else self.domain.problem(value)

    @property
    def allowed(self) -> str:
        """The allowed values in a few words (README table, messages)."""
        return self.values_text or self.domain.values_text


def _backend(value: Any) -> str | None:
    if value == backends.ALL:
        return None
    return backends.check_backend_name(value)


def _args(value: Any) -> str | None:
    return None if isinstance(value, dict) else "an inline table such as {ms = 50}"


def _key(name: str, kind: Kind, type_: type, default: Any, help_: str, **more: Any) -> Key:
    key_fields = {k: more.pop(k) for k in ("modes", "serve", "check", "values_text") if k in more}
    if "modes" in key_fields:
        key_fields["modes"] = frozenset(key_fields["modes"])
    return Key(name, kind, Knob(type_, default, help_, **more), **key_fields)


#: The declaration. Order is the order of tables, labels and the README.
KEYS: dict[str, Key] = {k.name: k for k in (
    # --- the system under test ---
    _key("backend", "system", str, "celery", "the queue library (baseline: a bare Redis list, the floor; "
         "discard: no queue at all, the harness's own ceiling; all: every library and the floor; or a "
         "dotted path mypkg.mod:MyBackend)", serve=True, check=_backend,
         values_text="`" + "`, `".join(("celery", "rq", "dramatiq", "...")) + "` (`queuebench backends`), "
                     "`all`, a dotted path"),
    _key("broker", "system", str, "redis", "message broker: a private Redis, RabbitMQ, or a SQLite file in "
         "the run directory (libraries that can queue in SQLite); a cell its backend cannot run on is "
         "recorded as skipped", choices=BROKERS, serve=True),
    _key("serializer", "system", str, "json", "the message format on the broker (HTTP input is always JSON)",
         choices=SERIALIZERS, serve=True),
    _key("processes", "system", int, 1, "worker processes in all (dedicated routing splits them between the "
         "queues)", low=1, high=256, serve=True),
    _key("threads", "system", int, 1, "threads (or async jobs) per worker process: slots = processes x "
         "threads", low=1, high=256, serve=True),
    _key("prefetch", "system", int, None, "messages a worker claims ahead (Celery: multiplier per slot; "
         "Dramatiq: per process); library default when unset, refused where the library has none",
         low=1, high=100_000, serve=True),
    _key("acks_late", "system", bool, None, "acknowledge after running instead of before; library default "
         "when unset", serve=True),
    _key("routing", "system", str, "shared", "shared: one queue; dedicated: sleep_ms/cpu_ms >= "
         "long_threshold_ms go to queue `long`, the rest to `short`", choices=ROUTINGS, serve=True),
    _key("long_threshold_ms", "system", int, 100, "what counts as long under dedicated routing, ms",
         low=0, high=60_000, serve=True),
    _key("results", "system", bool, True, "keep task results in the library's result store (GET "
         "/tasks/<id> needs them)", serve=True),
    # Absent from a spec that keeps RabbitMQ's classic queues, so cells and run ids of matrices that name no
    # queue type are what they were before this key existed.
    _key("queue_type", "system", str, "classic", "RabbitMQ queue type the library declares: classic, or "
         "quorum (replicated; Celery only: Dramatiq's broker declares classic queues only)",
         choices=QUEUE_TYPES, serve=True),
    _key("api_workers", "system", int, 2, "gunicorn gthread workers serving the API", low=1, high=64,
         modes=("load",), serve=True),
    _key("api_threads", "system", int, 4, "threads per gunicorn worker", low=1, high=256, modes=("load",),
         serve=True),
    # --- the workload ---
    _key("mode", "workload", str, "load", "load: Locust through the API; drain: preload `tasks`, then "
         "start the workers", choices=MODES),
    _key("scenario", "workload", str, "throughput", "Locust scenario (scenarios/<name>.py)", choices=SCENARIOS,
         modes=("load",)),
    _key("task", "workload", str, "noop", "the task kind (not used by routing_mix and payload: they send "
         "their own mix)", choices=tuple(workload.CATALOGUE)),
    _key("args", "workload", dict, {}, "the task's arguments, checked against the catalogue", check=_args,
         values_text="inline table, e.g. `{ms = 50}`"),
    _key("rate", "workload", float, 50, "tasks/s offered (open loop)", low=0, modes=("load",),
         check=lambda v: None if isinstance(v, int | float) and not isinstance(v, bool) and v > 0
         else "a number > 0", values_text="number > 0"),
    _key("arrival", "workload", str, "constant", "open-loop arrival process", choices=ARRIVALS,
         modes=("load",)),
    # Absent from a spec at its default (1), like the fault keys, so cells and run ids of matrices that do
    # not name it are what they were before it existed.
    _key("load_workers", "workload", int, 1, "Locust processes sending the load: 1 runs Locust alone; N > 1 "
         "runs a headless master (loopback only) and N worker processes, each sending rate / N on its own "
         "share of the schedule (so the offered rate is their sum); every worker must report its end, else "
         "the generator check fails", low=1, high=64, modes=("load",)),
    _key("tasks", "workload", int, 1000, "tasks preloaded before the workers start", low=1, high=10_000_000,
         modes=("drain",)),
    _key("warmup_s", "workload", float, 2, "warm-up, discarded, seconds", low=0, modes=("load",)),
    _key("duration_s", "workload", float, 10, "measured window, seconds", modes=("load",),
         check=lambda v: None if isinstance(v, int | float) and not isinstance(v, bool) and v > 0
         else "a number > 0", values_text="seconds > 0"),
    _key("drain_stall_s", "workload", float, 30, "a drain (drain mode, and load mode's tail once Locust stops) "
         "fails when no task has finished for this long; it must exceed the longest task and the workers' "
         "boot (30 s: 30 x the longest task a shipped matrix sends, routing_mix's 1 s, and several times "
         "the slowest worker boot seen on 2 cores)", check=lambda v: None if isinstance(v, int | float) and not isinstance(v, bool) and v > 0
         else "a number > 0", values_text="seconds > 0"),
    _key("drain_timeout_s", "workload", float, 600, "hard ceiling on a drain, however it progresses (600 s: "
         "3,000 no-op tasks through RQ's default worker at 2 slots, about 50/s on 2 cores, need about 60 s; arq "
         "at its default 0.5 s poll, about 4/s at 2 slots, drains about 2,400)",
         check=lambda v: None if isinstance(v, int | float) and not isinstance(v, bool) and v > 0
         else "a number > 0", values_text="seconds > 0"),
    # --- fault injection (benchmarks/faults.py; see docs/FAULTS.md). Absent from a spec without a fault,
    # so cells and run ids of matrices that name no fault are what they were before these keys existed.
    _key("fault", "workload", str, NO_FAULT, "what goes wrong, `fault_at_s` after the first task starts: kill_child "
         "(SIGKILL the process running a task the ledger shows started and not finished), kill_worker (SIGKILL a "
         "worker, restarted after `restart_after_s`), hang_worker (SIGSTOP a worker tree for `hang_s`), "
         "restart_broker (SIGKILL the cell's own broker, a redis-server or a private RabbitMQ node, and restart it "
         "on the same port), term_worker "
         "(SIGTERM a worker, SIGKILL after `grace_s`), failover_broker (the cell runs on a private Redis Sentinel "
         "group, a master, a replica and a Sentinel; SIGKILL the master and let Sentinel promote the replica); "
         "run.json's `faults` counts what was lost, duplicated and "
         "stranded", choices=FAULTS),
    _key("fault_at_s", "workload", float, 3, "seconds after the first task starts (the ledger's first "
         "`started` row: worker boot times differ by seconds between libraries) when the fault is injected",
         low=0, high=3600),
    _key("observe_s", "workload", float, 30, "seconds after the fault the run waits for the tasks to finish or "
         "come back; what has not finished by then is lost, or stranded when the broker still holds it",
         low=1, high=3600),
    _key("restart_after_s", "workload", float, 2, "seconds after a kill_worker or term_worker victim has gone "
         "before the same worker command starts again", low=0, high=3600),
    _key("victim", "workload", str, "tree", "kill_worker: the whole worker tree (children first) or only "
         "its parent process", choices=VICTIMS),
    _key("hang_s", "workload", float, 10, "hang_worker: seconds the worker tree stays stopped", low=0,
         high=3600),
    _key("persistence", "system", str, "off", "restart_broker: the private Redis keeps nothing (off) or an "
         "append-only file fsynced every second (aof) across the restart (RabbitMQ: off; a node keeps what the "
         "library declares durable and persistent)", choices=PERSISTENCES),
    _key("grace_s", "workload", float, 10, "term_worker: seconds between SIGTERM and SIGKILL", low=0,
         high=3600),
)}

#: Keys left out of a spec at their default, so run ids of specs that do not name them stay as they were:
#: where such a key is absent, its value is the default.
ABSENT_AT_DEFAULT: tuple[str, ...] = ("fault", "load_workers")

#: How often each cell runs (one integer at the top of a matrix file; not part of a cell's spec).
REPEATS = Knob(int, 1, "each cell runs this many times (separate run ids, interleaved)", low=1, high=100)

#: Spec keys naming the system under test, plus ``options`` (the library knobs): two configurations that
#: differ in one of these are different systems.
SYSTEM_KEYS: tuple[str, ...] = ("backend", "options",
                                *[k.name for k in KEYS.values() if k.kind == "system" and k.name != "backend"])
#: Spec keys describing the load and how it is measured.
WORKLOAD_KEYS: tuple[str, ...] = tuple(k.name for k in KEYS.values() if k.kind == "workload")
#: Keys one mode lacks by design (a drain has no rate): their absence is no difference.
MODE_ONLY_KEYS: tuple[str, ...] = tuple(k.name for k in KEYS.values() if k.modes != frozenset(MODES))
#: System keys that tell two configurations of one backend apart besides their slots.
VARIANT_KEYS: tuple[str, ...] = tuple(k for k in SYSTEM_KEYS
                                      if k not in ("processes", "threads", "api_workers", "api_threads"))
#: Keys ``queuebench serve`` takes as options, in declaration order.
SERVE_KEYS: tuple[str, ...] = tuple(k.name for k in KEYS.values() if k.serve)


def defaults(kind: Kind | None = None) -> dict[str, Any]:
    """Every key's default (of one kind, if given)."""
    return {k.name: k.default for k in KEYS.values() if kind is None or k.kind == kind}


def applies(key: str, spec: dict[str, Any]) -> bool:
    """Whether `key` belongs in a spec with this mode and scenario."""
    declared = KEYS[key]
    fault = spec.get("fault", NO_FAULT)
    if key == "fault":
        return fault != NO_FAULT
    if key in FAULT_PARAMS:
        return fault in FAULT_PARAMS[key]
    if key == "queue_type":
        return spec.get("queue_type", KEYS["queue_type"].default) != KEYS["queue_type"].default
    mode = spec.get("mode", "load")
    if mode not in declared.modes:
        return False
    if key == "load_workers":  # absent at its default: see the declaration
        return spec.get("load_workers", KEYS["load_workers"].default) != KEYS["load_workers"].default
    return not (key in ("task", "args") and mode == "load" and spec.get("scenario") in MIXED_SCENARIOS)


# --- from a spec to what a backend is given ------------------------------------------------------------


def settings_for(spec: Mapping[str, Any], broker_url: str, result_url: str | None) -> BackendSettings:
    """The `BackendSettings` the API and the workers of `spec` share, on these broker URLs."""
    return BackendSettings(broker=spec["broker"], broker_url=broker_url, result_url=result_url,
                           serializer=spec["serializer"], results=spec["results"], routing=spec["routing"],
                           long_threshold_ms=spec["long_threshold_ms"], options=dict(spec.get("options", {})),
                           queue_type=spec.get("queue_type", KEYS["queue_type"].default))


def worker_specs(spec: Mapping[str, Any]) -> list[WorkerSpec]:
    """Worker groups: one on the shared queue, or the processes split between the short and long queues.

    `processes` is the total either way, so shared and dedicated routing compare at equal slots.
    """
    common = {"threads": spec["threads"], "prefetch": spec.get("prefetch"), "acks_late": spec.get("acks_late")}
    processes = spec["processes"]
    if spec["routing"] == "shared":
        return [WorkerSpec(queues=(DEFAULT_QUEUE,), processes=processes, **common)]
    if processes < 2:
        raise UnsupportedOption("processes", processes, spec["backend"],
                                "dedicated routing needs at least 2 processes (one per queue)")
    long_processes = processes // 2
    return [WorkerSpec(queues=(SHORT_QUEUE,), processes=processes - long_processes, **common),
            WorkerSpec(queues=(LONG_QUEUE,), processes=long_processes, **common)]


#: Placeholder URLs for checking a spec against its backend without starting anything.
_PLACEHOLDER_URLS = {"redis": "redis://127.0.0.1:6379/0", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
                     "sqlite": f"sqlite:///{Path(tempfile.gettempdir()) / 'queuebench-check.sqlite3'}"}

_SENTINEL_PLACEHOLDER_URL = "redis+sentinel://127.0.0.1:26379/queuebench/0"


def validate(spec: Mapping[str, Any], broker_url: str | None = None) -> None:
    """Raise `UnsupportedOption` when the spec's backend cannot honour it (checked without starting or
    connecting to anything), KeyError/ImportError for a backend that does not resolve.

    `broker_url` is a user's Redis (``--broker-url``: the broker, or the result store beside RabbitMQ): its
    topology (a Sentinel URL, a Cluster URL) is checked against what the backend declares, too."""
    cls = backends.backend_class(spec["backend"])
    if spec["broker"] not in cls.brokers:
        raise UnsupportedOption("broker", spec["broker"], cls.name,
                                f"{cls.name} runs on {', '.join(sorted(cls.brokers))} only")
    problem = fault_problem(spec)
    if problem:
        raise UnsupportedOption("fault", spec["fault"], cls.name, problem)
    result_url = None if spec["broker"] != "rabbitmq" else (broker_url or _PLACEHOLDER_URLS["redis"])
    url = broker_url if broker_url and spec["broker"] == "redis" else _PLACEHOLDER_URLS[spec["broker"]]
    if spec.get("fault") == "failover_broker":  # its clients find the private group's master through Sentinel
        url = _SENTINEL_PLACEHOLDER_URL
    settings = settings_for(spec, url, result_url)
    check_shapes(cls, settings)
    backend = cls(settings)
    try:
        for group in worker_specs(spec):
            backend.worker_commands(group)
    finally:
        backend.close()


def fault_problem(spec: Mapping[str, Any]) -> str | None:
    """Why the spec's fault cannot be injected on its broker (checked without starting anything), or None."""
    if spec.get("fault") == "failover_broker" and spec["broker"] != "redis":
        return ("failover_broker fails over a private Redis Sentinel group (a master, a replica, a Sentinel): "
                "broker must be redis")
    if spec.get("fault", NO_FAULT) != "restart_broker" or spec["broker"] == "redis":
        return None
    if spec["broker"] == "sqlite":
        return "restart_broker restarts a broker server; a SQLite file has none"
    if spec.get("persistence", "off") != "off":
        return ("persistence chooses the private Redis's append-only file; RabbitMQ keeps what the library "
                "declares durable and persistent (leave persistence unset)")
    if not shutil.which("rabbitmq-server"):
        return ("restart_broker on RabbitMQ restarts a private node of the cell's own, and rabbitmq-server is not "
                "installed here (the system's node and --amqp-url's are never restarted)")
    return None


def slots(spec: Mapping[str, Any]) -> int:
    """Tasks the spec's workers run at once, as its backend maps processes x threads."""
    cls = backends.backend_class(spec["backend"])
    return sum(cls.slots(group) for group in worker_specs(spec))


# --- the README's key table ------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "library default"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "`{}`"
    return f"`{value}`"


def markdown_table() -> str:
    """The README's table of matrix keys, generated from `KEYS` (a test keeps the README equal to it)."""
    rows = ["| key | kind | values | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for key in KEYS.values():
        choices = key.domain.choices or ((True, False) if key.domain.type is bool else ())
        values = key.values_text or (", ".join(_cell(c) for c in choices) if choices else key.allowed)
        modes = "" if key.modes == frozenset(MODES) else f" ({'/'.join(sorted(key.modes))} mode only)"
        if key.name in FAULT_PARAMS:
            modes += (" (with any fault)" if FAULT_PARAMS[key.name] == FAULTS[1:]
                      else f" ({', '.join(FAULT_PARAMS[key.name])} only)")
        rows.append(f"| `{key.name}` | {key.kind} | {values} | {_cell(key.default)} | {key.help}{modes} |")
    rows.append(f"| `repeats` | sweep | {REPEATS.values_text} (one value, top level) | `{REPEATS.default}` | "
                f"{REPEATS.help} |")
    return "\n".join(rows) + "\n"
