"""Overlay plots across runs: accuracy over virtual time with CI bands, accuracy vs bytes.

Used by every sweep (into its experiment folder) and by ``swarmfl compare RUN_OR_EXPERIMENT...``
(existing folders overlaid). Curves come from each run's ``metrics.jsonl``: at each evaluation
instant, the mean accuracy over the drones not removed and the bytes the swarm sent so far.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from swarmfl.sim.results import Experiment

__all__ = ["plot_overlays", "run_curve"]


def run_curve(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, mean accuracy, bytes sent so far)`` of one run, from its ``metrics.jsonl``."""
    accuracy: dict[float, list[float]] = defaultdict(list)
    sent: dict[float, int] = defaultdict(int)
    with (folder / "metrics.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            t = row["t"]
            sent[t] += row["bytes_sent"]
            if row.get("state") != "removed":
                accuracy[t].append(row["accuracy"])
    times = sorted(sent)
    return (
        np.array(times),
        np.array([np.mean(accuracy[t]) if accuracy[t] else 0.0 for t in times]),
        np.array([sent[t] for t in times], dtype=float),
    )


def _band(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95 % t-interval across runs, point by point (curves cut to the shortest)."""
    from scipy import stats

    length = min(len(c) for c in curves)
    stack = np.stack([c[:length] for c in curves])
    mean = stack.mean(axis=0)
    if len(curves) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(curves) - 1) * stack.std(axis=0, ddof=1) / np.sqrt(len(curves))
    return mean, mean - half, mean + half


def plot_overlays(experiment: Experiment, folder: Path) -> None:
    """Write ``accuracy.png`` and ``accuracy-bytes.png`` for the experiment into ``folder``."""
    by_variant: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = defaultdict(list)
    for row in experiment.runs:
        by_variant[row["variant"]].append(run_curve(Path(row["folder"])))
    if not by_variant:
        return
    title = f"{experiment.folder.name}: {len(experiment.runs)} runs, {len(by_variant)} variants"
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    fig_b, ax_b = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, curves in by_variant.items():
        length = min(len(c[0]) for c in curves)
        t = curves[0][0][:length]
        mean, low, high = _band([c[1] for c in curves])
        (line,) = ax.plot(t, mean, linewidth=1.8, label=f"{name} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(t, low, high, alpha=0.2, color=line.get_color())
        sent, _, _ = _band([c[2] for c in curves])
        ax_b.plot(sent / 1e6, mean, linewidth=1.8, label=f"{name} (n={len(curves)})")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("mean test accuracy (band: 95 % CI over seeds)")
    ax_b.set_xlabel("bytes sent by the swarm (MB)")
    ax_b.set_ylabel("mean test accuracy")
    for axes, figure, name in ((ax, fig, "accuracy.png"), (ax_b, fig_b, "accuracy-bytes.png")):
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.set_title(title)
        axes.legend(loc="lower right", fontsize=7)
        figure.tight_layout()
        figure.savefig(folder / name)
        plt.close(figure)
