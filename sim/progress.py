"""Live progress bar and closing summary table for ``swarmfl sim`` (rich)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarmfl.config.scenario_file import Scenario
from swarmfl.sim.metrics import SwarmPoint


class LiveProgress:
    """A rich progress display of ``columns``, live while used as a context manager (``with``),
    redrawn ``refresh_per_second``; ``enabled=False`` shows nothing."""

    def __init__(
        self,
        columns: Sequence[str | ProgressColumn],
        console: Console,
        *,
        enabled: bool,
        refresh_per_second: float = 10,
    ) -> None:
        self._progress = Progress(
            *columns,
            console=console,
            disable=not enabled,
            refresh_per_second=refresh_per_second,
        )

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()


class SimulationProgress(LiveProgress):
    """A progress bar over virtual time showing mean and min accuracy across drones."""

    def __init__(self, scenario: Scenario, console: Console, *, enabled: bool = True) -> None:
        self._duration = scenario.run.duration_s
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("t={task.completed:>7.1f}/{task.total:.0f} s virtual"),
            TextColumn("acc mean {task.fields[mean]:.3f} min {task.fields[min]:.3f}"),
            TimeElapsedColumn(),
        )
        super().__init__(columns, console, enabled=enabled)
        self._task = self._progress.add_task(
            f"{scenario.run.name} ({scenario.swarm.drones} drones)",
            total=self._duration,
            mean=0.0,
            min=0.0,
        )

    def update(self, point: SwarmPoint) -> None:
        """Show the swarm's state at one evaluation instant."""
        self._progress.update(self._task, completed=point.t, mean=point.mean, min=point.min)


def print_summary(summary: dict[str, Any], out: Path | None, console: Console) -> None:
    """The closing table of a run."""
    table = Table(title=f"swarmfl sim: {summary['scenario']}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    acc = summary["accuracy"]
    tta = summary["time_to_accuracy"]
    rows = [
        ("drones", str(summary["drones"])),
        ("seed", str(summary["seed"])),
        (
            "virtual / wall seconds",
            f"{summary['virtual_seconds']:.0f} / {summary['wall_seconds']:.1f}",
        ),
        ("accuracy mean / min / max", f"{acc['mean']:.3f} / {acc['min']:.3f} / {acc['max']:.3f}"),
        (
            "time to mean 0.8 / 0.9",
            " / ".join("never" if tta[k] is None else f"{tta[k]:.0f} s" for k in ("0.8", "0.9")),
        ),
        ("bytes sent", f"{summary['bytes_sent']:,}"),
        ("frames sent", f"{summary['frames_sent']:,}"),
        ("link deliveries lost", _delivery(summary)),
    ]
    honest = summary.get("honest_accuracy")
    if honest is not None:
        suspects = ", ".join(summary.get("suspects", {})) or "none"
        rows += [
            (
                f"honest accuracy mean / min ({summary['merge_rule']})",
                f"{honest['mean']:.3f} / {honest['min']:.3f}",
            ),
            ("attackers / suspected by honest drones", f"{summary['attackers']} / {suspects}"),
        ]
    if out is not None:
        rows.append(("run folder", str(out)))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _delivery(summary: dict[str, Any]) -> str:
    ratio = summary.get("delivery_ratio")
    lost = f"{summary['frames_lost']:,}"
    return lost if ratio is None else f"{lost} ({1 - ratio:.1%} of attempts)"
