"""The sweep's progress display (rich): cells done of all, the current cell and what it is doing (while a
drain is awaited: tasks finished and outstanding), an ETA.

The ETA is the planned seconds of the cells still to run (`runner.cell_seconds`), scaled by how long
the finished cells took against their own plan.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: Width of result tables written to a file or a pipe (rich would fold them to 80 columns).
PIPED_TABLE_WIDTH = 160


def table_console() -> Console:
    """The console result tables go to (stdout): the terminal's width, or `PIPED_TABLE_WIDTH` columns
    when stdout is not a terminal, so saved output keeps whole run ids on one line."""
    return Console(width=None if sys.stdout.isatty() else PIPED_TABLE_WIDTH)


STATUS_STYLE = {"ok": "green", "generator-limited": "yellow", "skipped": "dim", "failed": "red", "error": "red",
                "interrupted": "red"}


class SweepProgress:
    def __init__(self, console: Console | None = None) -> None:
        # The runner loads here, not at the top: the analysis commands print through `table_console` and
        # must not load the measuring harness with it (tests/test_layering.py checks what they load).
        from benchmarks.runner import cell_seconds

        self.cell_seconds = cell_seconds
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                                 TextColumn("{task.fields[doing]}"), console=self.console, transient=False)
        self.task_id: Any = None
        self.planned_left = 0.0
        self.planned_done = 0.0
        self.actual_done = 0.0
        self.cell_started = 0.0

    def start_sweep(self, todo: list[Any], already_done: int) -> None:
        self.planned_left = sum(self.cell_seconds(c) for c in todo)
        if already_done:
            self.console.print(f"{already_done} cell(s) already done (kept; --force redoes them)")
        self.progress.start()
        self.task_id = self.progress.add_task("cells", total=len(todo), eta=self._eta(), doing="")

    def _eta(self) -> str:
        scale = self.actual_done / self.planned_done if self.planned_done else 1.0
        seconds = int(self.planned_left * scale)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def expect(self, cell: Any) -> None:
        """One more cell to run, found while running (a step search learns its steps as it goes)."""
        self.planned_left += self.cell_seconds(cell)
        total = self.progress.tasks[0].total if self.progress.tasks else 0
        self.progress.update(self.task_id, total=(total or 0) + 1, eta=self._eta())

    def start_cell(self, cell: Any) -> None:
        self.cell_started = time.monotonic()
        self.progress.console.print(f"[bold]{cell.run_id}[/]")
        self.progress.update(self.task_id, doing="")

    def note(self, text: str) -> None:
        self.progress.update(self.task_id, doing=text)

    def draining(self, finished: int, outstanding: int, waited_s: float) -> None:
        """While a drain is awaited (about once a second): how far it has got."""
        self.note(f"draining: {finished:,} finished, {outstanding:,} outstanding, {waited_s:.0f} s")

    def end_cell(self, cell: Any, result: Any) -> None:
        planned = self.cell_seconds(cell)
        self.planned_left -= planned
        self.planned_done += planned
        self.actual_done += time.monotonic() - self.cell_started
        style = STATUS_STYLE.get(result.status, "")
        self.progress.console.print(f"  [{style}]{result.status}[/] {result.detail}")
        self.progress.update(self.task_id, advance=1, eta=self._eta(), doing="")

    def stop(self) -> None:
        self.progress.stop()
