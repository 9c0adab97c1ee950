"""Ansible drives the hosts: the playbooks in ``playbooks/``, run with ansible-runner.

queuebench composes what each host runs (`benchmarks.deploy.plan`) and hands it to a playbook as variables;
Ansible does every remote step (install, start, load, progress, stop, collect). ansible-runner runs
``ansible-playbook`` and returns its results as events, so a command's output (ledger progress) is read
from the event, not parsed from the console. Each playbook's console output is kept in the run's logs.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.deploy.inventory import Inventory, ansible_env, ansible_tool
from benchmarks.stack import PROJECT_ROOT

PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
#: What the install playbook unpacks on each host: the packages and the files pip needs to install them.
SOURCE_PARTS = ("api", "backends", "benchmarks", "scenarios", "pyproject.toml", "README.md")
#: Seconds a playbook may take before ansible-runner stops it (Locust's run is bounded separately).
DEFAULT_TIMEOUT_S = 600


class AnsibleError(RuntimeError):
    """A playbook failed; the message names the playbook, the host, the task and Ansible's reason."""


@dataclass
class PlaybookResult:
    name: str
    status: str
    rc: int
    #: (task name, host) -> the module's result of the last event of that task on that host.
    results: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def stdout_of(self, task: str) -> dict[str, str]:
        """Each host's stdout of one task."""
        return {host: str(res.get("stdout", "")) for (name, host), res in self.results.items() if name == task}


def _reason(res: Mapping[str, Any]) -> str:
    """Why a task failed, in Ansible's words (a looped task: each failed item's)."""
    failed_items = [item for item in res.get("results", []) if isinstance(item, Mapping) and item.get("failed")]
    if failed_items:
        return "; ".join(_reason(item) for item in failed_items)
    parts = [str(res.get("msg") or "")]
    for key in ("stderr", "stdout"):
        text = str(res.get(key) or "").strip()
        if text:
            parts.append(text[-800:])
    return " ".join(p for p in parts if p).strip() or json.dumps(res)[:800]


def run_playbook(name: str, inventory: Inventory, variables: Mapping[str, Any], *, log_path: Path,
                 timeout_s: int = DEFAULT_TIMEOUT_S) -> PlaybookResult:
    """Run ``playbooks/<name>.yml`` on the inventory with `variables`; keep its console output at `log_path`;
    raise `AnsibleError` when it did not succeed."""
    import ansible_runner  # the `hosts` extra; imported here so a local run never needs it

    private = Path(tempfile.mkdtemp(prefix="queuebench-ansible-"))
    env = {k: v for k, v in ansible_env().items() if k.startswith("ANSIBLE_")}
    # ansible-runner starts `ansible-playbook` from PATH: the one beside this interpreter (the virtualenv's) first.
    env["PATH"] = os.pathsep.join([str(Path(ansible_tool("ansible-playbook")).parent), os.environ.get("PATH", "")])
    try:
        runner = ansible_runner.run(private_data_dir=str(private), playbook=str(PLAYBOOKS / f"{name}.yml"),
                                    inventory=str(inventory.path), extravars=dict(variables), envvars=env,
                                    quiet=True, timeout=timeout_s)
        result = PlaybookResult(name, str(runner.status), int(runner.rc if runner.rc is not None else -1))
        for event in runner.events:
            kind = event.get("event", "")
            data = event.get("event_data", {})
            if kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
                result.results[(data.get("task", ""), data.get("host", ""))] = data.get("res", {})
            if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                result.failures.append(f"host {data.get('host')}, task {data.get('task')!r}: "
                                       f"{_reason(data.get('res', {}))}")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stdout = private / "artifacts"
        with open(log_path, "a") as out:
            for path in sorted(stdout.glob("*/stdout")):
                out.write(path.read_text(errors="replace"))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if result.status != "successful":
        why = "; ".join(result.failures) or f"ansible-playbook ended {result.status} (rc {result.rc}); see {log_path}"
        raise AnsibleError(f"playbook {name}.yml: {why}")
    return result


def source_archive(directory: Path) -> Path:
    """A .tar.gz of the project's source for the install playbook (caches and bytecode left out)."""
    path = Path(directory) / "queuebench-source.tar.gz"

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = info.name.rsplit("/", 1)[-1]
        if name == "__pycache__" or name.endswith((".pyc", ".pyo")) or name.endswith(".egg-info"):
            return None
        return info

    with tarfile.open(path, "w:gz") as tar:
        for part in SOURCE_PARTS:
            tar.add(PROJECT_ROOT / part, arcname=part, filter=keep)
    return path


def install(inventory: Inventory, workdir: Path, log_path: Path) -> PlaybookResult:
    """Install queuebench on every host (`playbooks/install.yml`)."""
    return run_playbook("install", inventory, {"qb_source": str(source_archive(workdir))}, log_path=log_path)
