"""Progress on the terminal: a one-task Rich bar that the runner and the shared stages draw."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class ProgressBar:
    """A one-task Rich progress bar with a free-text info column. It appears at its first update,
    so a stage that comes from the cache (no step to show) leaves no empty bar behind.

        with ProgressBar(console, "SFT (cold start)", 400) as (bar, task):
            bar.update(task, completed=step, info=f"loss {loss:.3f}")
    """

    def __init__(self, console: Console, label: str, total: float, fraction: bool = False) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%") if fraction else TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        self.progress = Progress(*columns, console=console, transient=False)
        self.label, self.total, self.started = label, total, False

    def __enter__(self) -> tuple[ProgressBar, Any]:
        return self, self.progress.add_task(self.label, total=self.total, info="")

    def update(self, task: Any, **fields: Any) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        self.progress.update(task, **fields)

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.progress.stop()
