"""Plots a researcher would rather look at than read (matplotlib, no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from swarmfl.sim.metrics import SwarmPoint


def plot_accuracy(series: Sequence[SwarmPoint], path: Path, *, title: str) -> None:
    """Mean, min and max accuracy across drones over virtual time, saved as a PNG."""
    t = [p.t for p in series]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.fill_between(
        t,
        [p.min for p in series],
        [p.max for p in series],
        alpha=0.25,
        label="min-max across drones",
    )
    ax.plot(t, [p.mean for p in series], linewidth=2, label="mean")
    ax.plot(t, [p.min for p in series], linewidth=0.8, linestyle="--", label="min")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
