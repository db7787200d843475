"""Plots of what a run is about: groups, classes and consensus; drones down and why.

``groups.png``: mean accuracy per device class and per partition group, and the consensus
distance, over virtual time. ``down.png``: how many drones are down for each reason (churn,
landed on a flat battery, crashed, dropped, not started yet). Both shade the scheduled
partitions and mark scripted crashes (red) and removals (black).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from swarmfl.config.scenario_file import Scenario
from swarmfl.sim.timeline import DOWN_STATES, Timeline

__all__ = ["mark_events", "plot_down", "plot_groups"]

_DOWN_COLOURS = {
    "starting": "0.8",
    "churn": "tab:blue",
    "dropped": "tab:purple",
    "landed": "tab:orange",
    "crashed": "tab:red",
}


def mark_events(ax: Axes, scenario: Scenario) -> None:
    """Shade scheduled partitions; mark scripted crashes and removals with vertical lines."""
    faults = scenario.faults
    for index, partition in enumerate(faults.partitions):
        ax.axvspan(
            partition.start_s,
            partition.end_s,
            color="tab:red",
            alpha=0.08,
            label="partition" if index == 0 else None,
        )
    for times, color, label in (
        ([crash.at_s for crash in faults.crashes], "tab:red", "scripted crash"),
        ([removal.at_s for removal in faults.removals], "black", "removal"),
    ):
        for index, at_s in enumerate(times):
            ax.axvline(
                at_s, color=color, linewidth=0.8, linestyle=":", label=label if index == 0 else None
            )


def plot_groups(timeline: Timeline, scenario: Scenario, path: Path, *, title: str) -> None:
    """Accuracy per device class and per partition group, and the consensus distance."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), dpi=110, sharex=True)
    t = timeline.t
    if len(timeline.by_class) > 1:
        for name, values in sorted(timeline.by_class.items()):
            top.plot(t, values, linewidth=1.6, label=f"class {name}")
    for group, values in sorted(timeline.by_group.items()):
        top.plot(t, values, linewidth=1.2, linestyle="--", label=f"group {group}")
    if len(timeline.by_class) <= 1 and not timeline.by_group:
        for values in timeline.by_class.values():
            top.plot(t, values, linewidth=1.6, label="all drones")
    top.set_ylim(0, 1)
    top.set_ylabel("mean test accuracy")
    mark_events(top, scenario)
    consensus = [float("nan") if c is None else c for c in timeline.consensus]
    bottom.plot(t, consensus, linewidth=1.8, color="tab:green", label="consensus distance")
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("mean ‖model − mean model‖₂")
    bottom.set_xlabel("virtual time (s)")
    mark_events(bottom, scenario)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    top.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_down(timeline: Timeline, scenario: Scenario, path: Path, *, title: str) -> None:
    """Drones down over virtual time, stacked by why (churn, landed, crashed, ...)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    shown = [state for state in DOWN_STATES if any(timeline.down[state])]
    if shown:
        ax.stackplot(
            timeline.t,
            [timeline.down[state] for state in shown],
            labels=shown,
            colors=[_DOWN_COLOURS[state] for state in shown],
            alpha=0.85,
            step="post",
        )
    mark_events(ax, scenario)
    ax.set_ylim(0, max(1, scenario.swarm.drones))
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("drones down")
    ax.set_title(title if shown else f"{title} · no drone down")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
