"""Plots a researcher would rather look at than read (matplotlib, no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection

from swarmfl.sim.metrics import Snapshot, SwarmPoint, TrafficPoint


def _finish_time_plot(fig: Figure, ax: Axes, path: Path, *, title: str, ylabel: str) -> None:
    """Label, grid, legend and save a plot over virtual time, then free it."""
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_accuracy(
    series: Sequence[SwarmPoint],
    path: Path,
    *,
    title: str,
    partitions: Sequence[tuple[float, float]] = (),
) -> None:
    """Mean, min and max accuracy across drones over virtual time, saved as a PNG.

    ``partitions`` (start, end) windows are shaded. With insiders, the honest drones' mean and
    min and the attackers' mean are drawn too.
    """
    t = [p.t for p in series]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for index, (start, end) in enumerate(partitions):
        ax.axvspan(
            start, end, color="tab:red", alpha=0.08, label="partition" if not index else None
        )
    ax.fill_between(
        t,
        [p.min for p in series],
        [p.max for p in series],
        alpha=0.25,
        label="min-max across drones",
    )
    ax.plot(t, [p.mean for p in series], linewidth=2, label="mean")
    ax.plot(t, [p.min for p in series], linewidth=0.8, linestyle="--", label="min")
    if any(p.honest_mean is not None for p in series):
        # insiders: the honest drones are what counts; the attackers are drawn apart
        insider_lines: list[tuple[list[float | None], dict[str, Any]]] = [
            (
                [p.honest_mean for p in series],
                {"linewidth": 2, "color": "tab:green", "label": "honest mean"},
            ),
            (
                [p.honest_min for p in series],
                {"linewidth": 0.8, "color": "tab:green", "linestyle": "--", "label": "honest min"},
            ),
            (
                [p.attacker_mean for p in series],
                {
                    "linewidth": 1.2,
                    "color": "tab:red",
                    "linestyle": ":",
                    "label": "attackers' mean",
                },
            ),
        ]
        for values, style in insider_lines:
            # a gap (NaN) where no drone of the kind is up
            ax.plot(t, [np.nan if v is None else v for v in values], **style)
    ax.set_ylim(0, 1)
    _finish_time_plot(fig, ax, path, title=title, ylabel="test accuracy")


def plot_topology(snapshots: Sequence[Snapshot], path: Path, *, title: str) -> None:
    """The swarm at a few instants: links as lines, drones as dots coloured by accuracy.

    Drones that are down (landed, crashed, churned out, removed) are grey crosses. Positions
    are metres (x, y seen from above) for a world with positions, else a drawing layout of the
    fixed graph.
    """
    shown = list(snapshots)[:4] or []
    panels = max(len(shown), 1)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 0.8, 4.4), dpi=110, squeeze=False)
    scatter = None
    for ax, shot in zip(axes[0], shown, strict=False):
        xy = shot.positions[:, :2]
        if len(shot.edges):
            segments = xy[shot.edges]
            ax.add_collection(LineCollection(segments, colors="0.55", linewidths=0.5, alpha=0.5))
        up = shot.up.astype(bool)
        size = max(6.0, min(40.0, 3000.0 / max(len(xy), 1)))
        scatter = ax.scatter(
            xy[up, 0],
            xy[up, 1],
            c=shot.accuracy[up],
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            s=size,
            edgecolors="black",
            linewidths=0.3,
            zorder=3,
        )
        if (~up).any():
            ax.scatter(xy[~up, 0], xy[~up, 1], marker="x", c="0.5", s=size, zorder=2)
        mean = float(shot.accuracy[up].mean()) if up.any() else 0.0
        ax.set_title(f"t = {shot.t:g} s · {len(shot.edges)} links · acc {mean:.2f}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.autoscale_view()
        if shot.metric:
            ax.set_xlabel("x (m)")
            if ax is axes[0][0]:
                ax.set_ylabel("y (m)")
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("graph layout (not to scale)")
    if scatter is not None:
        fig.colorbar(scatter, ax=list(axes[0]), label="test accuracy (grey x: down)", shrink=0.85)
    fig.suptitle(title)
    fig.savefig(path)
    plt.close(fig)


def _rates(traffic: Sequence[TrafficPoint]) -> tuple[list[float], list[float], list[float]]:
    """Mid-interval times, frame bytes/s and on-air bytes/s between consecutive points."""
    t, frames, wire = [], [], []
    for before, after in pairwise(traffic):
        span = after.t - before.t
        if span <= 0:
            continue
        t.append(after.t)
        frames.append((after.bytes_sent - before.bytes_sent) / span)
        wire.append((after.wire_bytes_sent - before.wire_bytes_sent) / span)
    return t, frames, wire


def plot_bytes(traffic: Sequence[TrafficPoint], path: Path, *, title: str) -> None:
    """Bytes the whole swarm sent per virtual second, over time (frames and on air)."""
    t, frames, wire = _rates(traffic)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(t, [w / 1000 for w in wire], linewidth=2, label="on air (with datagram headers)")
    ax.plot(t, [f / 1000 for f in frames], linewidth=1, linestyle="--", label="frames")
    total = traffic[-1].wire_bytes_sent if traffic else 0
    ax.set_ylim(bottom=0)
    _finish_time_plot(
        fig,
        ax,
        path,
        title=f"{title} · {total / 1e6:,.1f} MB on air",
        ylabel="swarm traffic (kB/s)",
    )


def plot_delivery(traffic: Sequence[TrafficPoint], path: Path, *, title: str) -> None:
    """Delivery ratio over time: swarm-wide per interval, and the spread across drones.

    The swarm line is the fraction of link deliveries attempted in each interval that arrived;
    the band spans the 10th to 90th percentile of the drones' cumulative delivery ratios.
    """
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    t, interval, low, median, high = [], [], [], [], []
    for before, after in pairwise(traffic):
        attempted = after.deliveries_attempted - before.deliveries_attempted
        if attempted <= 0 or not after.delivery_ratios:
            continue
        lost = after.frames_lost - before.frames_lost
        t.append(after.t)
        interval.append(1.0 - lost / attempted)
        q10, q50, q90 = np.percentile(after.delivery_ratios, [10, 50, 90])
        low.append(q10)
        median.append(q50)
        high.append(q90)
    ax.fill_between(t, low, high, alpha=0.25, label="drones, 10th-90th percentile (cumulative)")
    ax.plot(t, median, linewidth=1, linestyle="--", label="drones, median (cumulative)")
    ax.plot(t, interval, linewidth=2, label="swarm, per interval")
    ax.set_ylim(0, 1.02)
    _finish_time_plot(
        fig, ax, path, title=title, ylabel="delivery ratio (frames arrived / attempted)"
    )
