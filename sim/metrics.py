"""Run metrics: per-drone JSON lines and the run summary.

Every line is written with the same float formatting and key order, so two runs with the same
scenario and seed produce byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

ACCURACY_TARGETS = (0.8, 0.9)


@dataclass(frozen=True, slots=True)
class DroneSample:
    """One drone measured at one instant."""

    t: float
    drone: int
    up: bool
    accuracy: float
    loss: float
    rounds: int
    bytes_sent: int
    frames_sent: int
    frames_lost: int
    frames_received: int
    frames_rejected: int
    peers: int

    def to_json(self) -> str:
        """One JSON line (no trailing newline)."""
        return json.dumps(
            {
                "t": round(self.t, 6),
                "drone": self.drone,
                "up": self.up,
                "accuracy": round(self.accuracy, 6),
                "loss": round(self.loss, 6),
                "rounds": self.rounds,
                "bytes_sent": self.bytes_sent,
                "frames_sent": self.frames_sent,
                "frames_lost": self.frames_lost,
                "frames_received": self.frames_received,
                "frames_rejected": self.frames_rejected,
                "peers": self.peers,
            },
            separators=(",", ":"),
        )


@dataclass(slots=True)
class SwarmPoint:
    """Accuracy across the (not removed) drones at one instant."""

    t: float
    mean: float
    min: float
    max: float


@dataclass
class MetricsRecorder:
    """Collects samples, writes them as JSON lines, and summarises the run."""

    sink: IO[str] | None = None
    series: list[SwarmPoint] = field(default_factory=list)
    last: dict[int, DroneSample] = field(default_factory=dict)

    def record(self, t: float, samples: list[DroneSample], counted: set[int]) -> SwarmPoint:
        """Record one instant; ``counted`` are the drones that count for swarm accuracy."""
        for sample in samples:
            self.last[sample.drone] = sample
            if self.sink is not None:
                self.sink.write(sample.to_json() + "\n")
        values = np.array([s.accuracy for s in samples if s.drone in counted] or [0.0])
        point = SwarmPoint(t, float(values.mean()), float(values.min()), float(values.max()))
        self.series.append(point)
        return point

    def time_to_accuracy(self, target: float) -> float | None:
        """Virtual seconds at which the mean accuracy first reached ``target`` (or None)."""
        for point in self.series:
            if point.mean >= target:
                return round(point.t, 6)
        return None


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (sorted keys, 2-space indent)."""
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics JSON-lines file back (for plots and tests)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
