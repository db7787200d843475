"""Live progress across a sweep (rich): runs done, running and failed, and the ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from swarmfl.sim.executors import RunOutcome
from swarmfl.sim.progress import LiveProgress
from swarmfl.sim.results import Experiment


class SweepProgress(LiveProgress):
    """A bar over a sweep's runs; finished runs found on disk count as done from the start."""

    def __init__(
        self, total: int, finished: int, slots: int, console: Console, *, enabled: bool = True
    ) -> None:
        self._total = total
        self._done = finished
        self._failed = 0
        self._slots = slots
        columns = (
            TextColumn("[bold]sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done · {task.fields[running]} running · {task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        # Redrawn twice a second, not ten times: the bar moves when a run ends and the clocks
        # tick in seconds, and the cores are the runs'.
        super().__init__(columns, console, enabled=enabled, refresh_per_second=2)
        self._task = self._progress.add_task(
            "sweep", total=total, completed=finished, running=self._running(), failed=0
        )

    def _running(self) -> int:
        return min(self._slots, self._total - self._done - self._failed)

    def advance(self, outcome: RunOutcome) -> None:
        """Count one run that ended (finished or failed)."""
        if outcome.ok:
            self._done += 1
        else:
            self._failed += 1
        self._progress.update(
            self._task,
            completed=self._done + self._failed,
            running=self._running(),
            failed=self._failed,
        )


def print_variants(experiment: Experiment, console: Console) -> None:
    """The closing table of a sweep or comparison: one row per variant, mean ± CI half-width."""
    table = Table(title=f"{experiment.folder}: {len(experiment.runs)} runs")
    for column in ("variant", "runs", "final mean acc", "time to 0.9 (s)", "MB sent"):
        table.add_column(column)
    for row in experiment.variants:
        table.add_row(
            row["variant"],
            str(row["runs"]),
            _mean_ci(row, "final_mean_accuracy", "{:.3f}"),
            _mean_ci(row, "time_to_0.9", "{:.0f}"),
            _mean_ci(row, "bytes_sent", "{:.2f}", scale=1e-6),
        )
    console.print(table)


def _mean_ci(row: dict[str, Any], metric: str, form: str, scale: float = 1.0) -> str:
    mean = row[f"{metric}_mean"]
    if mean is None:
        return "never"
    text = form.format(mean * scale)
    high = row[f"{metric}_ci95_high"]
    if high is not None:
        text += " ± " + form.format((high - mean) * scale)
    if row[f"{metric}_n"] < row["runs"]:
        text += f" ({row[f'{metric}_n']}/{row['runs']} runs)"
    return text
