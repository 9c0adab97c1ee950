"""The step search: per configuration, raise the offered rate until backlog grows or the latency SLO breaks.

Each step is an ordinary load cell of the matrix at one offered rate, run by `runner.CellRun` into its
own run directory with every self-check, so the evidence for a knee is a set of whole runs that the
report and ``queuebench plan`` read like any other. (The Locust `step` scenario raises the rate inside
one run, for a person at the web UI; here each stage is drained and checked on its own, so a
saturated stage cannot blur the next one's latencies.)

The search, for one configuration (a matrix cell without its ``rate``; the cell's ``rate`` is where
the search starts):

1. run the step at rate r (all of the matrix's repeats) and judge it (`judge_step`): *sustained* when
   every repeat is ``ok``, r is below Little's bound, slots / mean service time (else ``bound``: a short
   Poisson window can send less than r and hide the backlog), every repeat finished at least 95 % of
   what the generator sent in the window (else the backlog grew: ``backlog``) and kept the SLO's
   end-to-end quantile within its limit (else ``slo``). A quantile the step's tasks cannot bound
   (`verdicts.bounds`: p95 needs 72 tasks in each repeat's window) judges nothing: the step is
   ``too-few-samples``, neither sustained nor a miss;
2. while sustained (or too few samples to judge: a higher rate brings more tasks), r = r x ``factor``
   (at most ``max_steps`` steps);
3. once a step is not sustained, bisect between the last sustained rate and it ``refine`` times;
4. the knee is the highest sustained rate; its evidence is that step's run ids and the first
   unsustained step's. A step that failed or errored ends the search without a conclusion beyond it,
   and says so. A step whose repeats are ``generator-limited`` (the load generator sent less than was
   offered) is judged on what was sent: a backlog or an SLO miss there is a miss like any other (the
   queue failed at even less than the step's rate); a queue that kept up with it ends the search at the
   generator's ceiling, "the knee is above what this machine can offer", never as a knee.

Every search writes ``<out>/searches/<search_id>.json`` through `benchmarks.store` (schema
`store.SEARCH_SCHEMA_VERSION`): the configuration, the SLO, every step with its run ids and figures, the
knee and the reason the search stopped. The report reads them back through the store too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks import runner, store
from benchmarks.matrix import Cell, Matrix, spec_digest
from benchmarks.verdicts import SUSTAINED_RATIO, Slo, bounds, kept_up, min_samples, too_few_samples

#: Scenarios a search can step: one task kind at one offered rate.
SEARCHABLE_SCENARIOS = ("latency", "throughput")
#: The verdict of a step that kept up but whose tasks cannot bound the SLO's quantile.
TOO_FEW_SAMPLES = "too-few-samples"
#: A run's status (and a step's verdict) when the load generator sent less than was offered.
GENERATOR_LIMITED = "generator-limited"


@dataclass
class Step:
    """One offered rate of a search: its repeats' run ids and statuses, and the verdict on them."""

    rate_per_s: float
    run_ids: list[str]
    statuses: list[str]
    #: sustained | backlog | slo | bound | too-few-samples | generator-limited | failed | error | interrupted
    verdict: str
    reason: str
    sent_rate_per_s: float | None = None
    throughput_per_s: float | None = None
    #: The SLO's end-to-end quantile, worst repeat's; None when a repeat's tasks could not bound it.
    e2e_ms: float | None = None
    #: The fewest end-to-end latencies any repeat's quantile rests on (its n).
    e2e_tasks: int | None = None

    @property
    def sustained(self) -> bool:
        """Whether every repeat kept up within the SLO, below Little's bound."""
        return self.verdict == "sustained"

    @property
    def conclusive(self) -> bool:
        """Sustained or not because of the queue (backlog, SLO): a fact about the configuration."""
        return self.verdict in ("sustained", "backlog", "slo", "bound")

    @property
    def unjudged(self) -> bool:
        """The queue kept up, but too few tasks to judge the SLO's quantile: the search may rise past it."""
        return self.verdict == TOO_FEW_SAMPLES


@dataclass
class Search:
    """One configuration's search: its steps so far and why it stopped."""

    search_id: str
    config: dict[str, Any]
    slo: Slo
    factor: float
    steps: list[Step] = field(default_factory=list)
    stopped_because: str = ""

    @property
    def knee(self) -> Step | None:
        """The highest sustained step, if any."""
        good = [s for s in self.steps if s.sustained]
        return max(good, key=lambda s: s.rate_per_s) if good else None

    @property
    def first_unsustained(self) -> Step | None:
        """The lowest step above the knee that was not sustained because of the queue, if any."""
        knee = self.knee
        above = [s for s in self.steps if s.conclusive and not s.sustained
                 and (knee is None or s.rate_per_s > knee.rate_per_s)]
        return min(above, key=lambda s: s.rate_per_s) if above else None

    def record(self) -> dict[str, Any]:
        """The search as `store.write_search` stores it (``searches/<search_id>.json``)."""
        knee, above = self.knee, self.first_unsustained
        evidence = (knee.run_ids if knee else []) + (above.run_ids if above else [])
        return {
            "schema_version": store.SEARCH_SCHEMA_VERSION, "search_id": self.search_id, "config": self.config,
            "slo": self.slo.cli, "factor": self.factor,
            "steps": [vars(s) for s in sorted(self.steps, key=lambda s: s.rate_per_s)],
            "knee_rate_per_s": knee.rate_per_s if knee else None,
            "first_unsustained_rate_per_s": above.rate_per_s if above else None,
            "evidence_run_ids": evidence, "stopped_because": self.stopped_because,
        }


def search_id(config: Mapping[str, Any]) -> str:
    """Readable and deterministic, like run ids: the same configuration always has the same search id."""
    what = config.get("task", config.get("scenario", ""))
    what += "".join(f"-{k}{v}" for k, v in sorted((config.get("args") or {}).items()))
    return (f"{config['backend']}-{config['broker']}-{config['serializer']}-p{config['processes']}"
            f"t{config['threads']}-{config['routing']}-{what}-{spec_digest(config)}")


def configurations(matrix: Matrix) -> list[tuple[dict[str, Any], float, int]]:
    """(configuration without ``rate``, starting rate, repeats) per distinct configuration of the matrix.

    Raises ValueError naming the first cell a search cannot step (drain mode, a mixed scenario).
    """
    found: dict[str, tuple[dict[str, Any], float, int]] = {}
    for cell in matrix.cells:
        if cell.skip_reason:
            continue
        spec = dict(cell.spec)
        if spec["mode"] != "load" or spec.get("scenario") not in SEARCHABLE_SCENARIOS:
            raise ValueError(f"{cell.run_id}: a step search needs mode = \"load\" and scenario one of "
                             f"{', '.join(SEARCHABLE_SCENARIOS)} (one task kind at one offered rate)")
        rate = float(spec.pop("rate"))
        key = spec_digest(spec)
        config, start, repeats = found.get(key, (spec, rate, 0))
        found[key] = (config, min(start, rate), max(repeats, cell.repeat + 1))
    return list(found.values())


def step_rate(rate: float) -> float:
    """Three significant figures, so run ids stay readable and a rerun lands on the same ids."""
    if rate <= 0:
        raise ValueError("a rate must be positive")
    digits = 2 - int(math.floor(math.log10(rate)))
    return float(round(rate, digits))


def judge_step(rate: float, records: list[Mapping[str, Any] | None], slo: Slo) -> Step:
    """The verdict on one step from its repeats' run.json records (worst repeat decides)."""
    run_ids = [r.get("run_id", "?") if r else "?" for r in records]
    statuses = [str(r.get("status")) if r else "missing" for r in records]
    step = Step(rate, run_ids, statuses, "sustained", "")
    for bad in ("interrupted", "error", "failed"):
        if bad in statuses:
            record = records[statuses.index(bad)] or {}
            step.verdict, step.reason = bad, f"{record.get('run_id')}: {bad}: {record.get('detail') or ''}".strip()
            return step
    if "missing" in statuses or any(s not in ("ok", GENERATOR_LIMITED) for s in statuses):
        step.verdict, step.reason = "error", f"unexpected statuses {statuses}"
        return step
    step = _judge_queue(step, records, slo)
    if GENERATOR_LIMITED in statuses and step.verdict in ("sustained", TOO_FEW_SAMPLES):
        # The queue kept up with everything that was sent, but less was sent than offered: the
        # generator, not the queue, is the limit here, so the step says nothing about higher rates.
        record = records[statuses.index(GENERATOR_LIMITED)] or {}
        step.verdict = GENERATOR_LIMITED
        step.reason = (f"the queue kept up with what was sent ({step.sent_rate_per_s:.1f}/s of {rate:g}/s offered, "
                       f"{record.get('run_id')}), but the load generator could send no more: the knee is above "
                       "what this machine can offer (more load processes: load_workers, or load machines)")
    elif GENERATOR_LIMITED in statuses:
        # Backlog or SLO miss at even less than was offered: a fact about the queue all the same.
        step.reason += f" (at {step.sent_rate_per_s:.1f}/s sent of {rate:g}/s offered: the generator fell short too)"
    return step


def _judge_queue(step: Step, records: list[Mapping[str, Any] | None], slo: Slo) -> Step:
    """Judge the queue on what the step's repeats sent: Little's bound, backlog, the SLO's quantile."""
    rate = step.rate_per_s
    sent, done, e2e, littles, tasks = [], [], [], [], []
    for record in records:
        assert record is not None
        figures = (record.get("summary") or {}).get("figures") or {}
        sent.append(float(figures.get("achieved_rate_per_s") or math.nan))
        done.append(float(figures.get("throughput_per_s") or math.nan))
        littles.append(float(figures.get("littles_bound_per_s") or math.inf))
        family = (figures.get("latency") or {}).get("e2e_ms") or {}
        value = family.get(slo.name)
        e2e.append(math.nan if value is None else float(value))
        tasks.append(int(family.get("count") or 0))
    step.sent_rate_per_s = float(pd.Series(sent).mean())
    step.throughput_per_s = float(pd.Series(done).min())
    step.e2e_tasks = min(tasks)
    # The quantile rule: a repeat whose tasks cannot bound the quantile leaves the step without one.
    judged = all(bounds(n, slo.quantile) for n in tasks)
    step.e2e_ms = float(pd.Series(e2e).max()) if judged else None
    repeats = f"{len(records)} repeat{'s' if len(records) != 1 else ''}"
    latency = (f"end-to-end {slo.name} {step.e2e_ms:.0f} ms (n={step.e2e_tasks}, worst of {repeats})"
               if step.e2e_ms is not None and math.isfinite(step.e2e_ms) else "")
    short = [(d, s) for d, s in zip(done, sent, strict=True) if not kept_up(d, s)]
    bound = min(littles)
    if rate >= bound:
        step.verdict = "bound"
        step.reason = (f"{rate:g}/s offered is at or above Little's bound (slots / mean service = {bound:.1f}/s): "
                       "no window, however lucky, makes that sustainable")
    elif short:
        d, s = short[0]
        step.verdict = "backlog"
        step.reason = (f"finished {d:.1f}/s of {s:.1f}/s sent (< {SUSTAINED_RATIO:.0%}, in one of {repeats}): "
                       "the backlog grew")
    elif not judged:
        step.verdict = TOO_FEW_SAMPLES
        step.reason = (f"kept up, but end-to-end {slo.name} is {too_few_samples(step.e2e_tasks)} in a repeat "
                       f"(needs n ≥ {min_samples(slo.quantile)} tasks in the window): not judged; a longer "
                       "duration_s lets this rate be judged")
    elif not step.e2e_ms <= slo.limit_ms:
        step.verdict = "slo"
        step.reason = f"{latency} > {slo.limit_ms:g} ms"
    else:
        step.reason = (f"finished {step.throughput_per_s:.1f}/s of {step.sent_rate_per_s:.1f}/s sent (worst of "
                       f"{repeats}); {latency} <= {slo.limit_ms:g} ms")
    return step


def next_rate(search: Search, *, max_steps: int, refine: int) -> float | None:
    """The next rate to try, or None when the search is over (setting `stopped_because`)."""
    steps = search.steps
    if not steps:
        raise ValueError("next_rate needs a first step")
    last = steps[-1]
    if not last.conclusive and not last.unjudged:
        search.stopped_because = f"step at {last.rate_per_s:g}/s is {last.verdict}: {last.reason}"
        return None
    knee, above = search.knee, search.first_unsustained
    unjudged = sorted(s.rate_per_s for s in steps if s.unjudged)
    too_few = (f"; too few tasks to judge {search.slo.name} at {', '.join(f'{r:g}' for r in unjudged)}/s "
               "(a longer duration_s judges them)" if unjudged else "")
    if above is None:
        if len(steps) >= max_steps:
            search.stopped_because = (f"every step up to {last.rate_per_s:g}/s kept up and the step limit "
                                      f"({max_steps}) was reached: the knee is at least "
                                      f"{knee.rate_per_s if knee else last.rate_per_s:g}/s{too_few}")
            return None
        return step_rate(last.rate_per_s * search.factor)
    if knee is None:
        below = ("every step below it had too few tasks to judge its SLO: lengthen duration_s" if unjudged
                 else "start lower (a smaller rate in the matrix)")
        search.stopped_because = f"no step was sustained up to the first miss ({above.rate_per_s:g}/s): {below}"
        return None
    bisections = len(steps) - 1 - _first_unsustained_index(steps)  # every step after the first miss
    if bisections >= refine:
        search.stopped_because = (f"sustained at {knee.rate_per_s:g}/s, not at {above.rate_per_s:g}/s "
                                  f"({above.verdict}: {above.reason}){too_few}")
        return None
    middle = step_rate(math.sqrt(knee.rate_per_s * above.rate_per_s))
    if middle in (knee.rate_per_s, above.rate_per_s):
        search.stopped_because = (f"sustained at {knee.rate_per_s:g}/s, not at {above.rate_per_s:g}/s "
                                  "(no rate left between them)")
        return None
    return middle


def _first_unsustained_index(steps: list[Step]) -> int:
    for i, step in enumerate(steps):
        if step.conclusive and not step.sustained:
            return i
    return len(steps)


def run_search(config: Mapping[str, Any], start_rate: float, repeats: int, slo: Slo, out_dir: Path, *,
               matrix_name: str, factor: float = 1.5, max_steps: int = 8, refine: int = 1, force: bool = False,
               amqp_url: str | None = None, progress: Any = None,
               log: Callable[[str], None] = print, sweep: runner.Sweep | None = None) -> Search:
    """Step one configuration's rate up from `start_rate` (see the module docstring); write its JSON.

    Steps already measured in `out_dir` are reused (resume) unless `force`. The caller runs it inside
    `runner.sweep` (`run_searches` does).
    """
    config = dict(config)
    search = Search(search_id(config), config, slo, factor)
    rate: float | None = step_rate(start_rate)
    try:
        while rate is not None:
            records = []
            for repeat in range(repeats):
                cell = Cell({**config, "rate": rate}, repeat)
                run_dir = out_dir / cell.run_id
                if force or not store.is_done(run_dir):
                    if progress is not None:
                        progress.expect(cell)
                    runner.run_cell(cell, matrix_name, out_dir, amqp_url=amqp_url, progress=progress, log=log,
                                    sweep=sweep)
                records.append(store.read_run(run_dir))
            step = judge_step(rate, records, slo)
            search.steps.append(step)
            log(f"{search.search_id}: {rate:g}/s {step.verdict} ({step.reason})")
            rate = next_rate(search, max_steps=max_steps, refine=refine)
    finally:
        if search.steps:
            write_search(search, out_dir)
    return search


def write_search(search: Search, out_dir: Path) -> Path:
    """Store the search's record as ``<out_dir>/searches/<search_id>.json``."""
    return store.write_search(out_dir, search.record())


def run_searches(matrix: Matrix, slo: Slo, out_dir: Path, *, factor: float = 1.5, max_steps: int = 8,
                 refine: int = 1, force: bool = False, amqp_url: str | None = None, progress: Any = None,
                 log: Callable[[str], None] = print) -> list[Search]:
    """Search every configuration of `matrix`, one step at a time, under the measuring lock.

    SIGINT/SIGTERM stop the step in progress (everything it started), write what was found so far and
    raise `runner.Interrupted`; a rerun resumes from the stored steps.
    """
    configs = configurations(matrix)
    searches = []
    with runner.sweep(out_dir, matrix.name) as current:
        for config, start, repeats in configs:
            searches.append(run_search(config, start, repeats, slo, out_dir, matrix_name=matrix.name,
                                       factor=factor, max_steps=max_steps, refine=refine, force=force,
                                       amqp_url=amqp_url, progress=progress, log=log, sweep=current))
    return searches
