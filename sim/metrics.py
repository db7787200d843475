"""Run metrics: per-drone JSON lines and the run summary.

Every line is written with the same float formatting and key order, so two runs with the same
scenario and seed produce byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

ACCURACY_TARGETS = (0.8, 0.9)


@dataclass(frozen=True, slots=True)
class DroneSample:
    """One drone measured at one instant.

    Traffic counters are cumulative since the start. ``wire_bytes_sent`` adds the datagram
    headers to ``bytes_sent``; ``deliveries_attempted`` counts (frame, neighbour) pairs for
    neighbours that were up when the frame went out, of which ``frames_lost`` were lost on the
    link; ``frames_dropped_queue`` frames never left the send queue. ``state`` is ``"up"``,
    ``"removed"`` or why the drone is down; ``battery`` the charge fraction (None without
    batteries); ``position`` metres (None for a static topology). ``device_class`` (``class``
    in JSON) names the drone's device class; ``group`` is its group in the first scheduled
    partition (None without partitions); ``distance`` the L2 distance of its model to the mean
    model of the drones not removed (the consensus distance's terms). ``attacker`` marks an
    insider of the scenario's ``[[attack]]``; ``replicas_clipped`` counts the replicas its
    robust merges clipped, ``suspects`` the peers it names as suspected attackers; ``epsilon``
    is the privacy it spent so far under DP-SGD (None without DP).
    """

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
    wire_bytes_sent: int = 0
    deliveries_attempted: int = 0
    frames_dropped_queue: int = 0
    state: str = "up"
    battery: float | None = None
    position: Sequence[float] | None = None
    device_class: str | None = None
    group: int | None = None
    distance: float | None = None
    attacker: bool = False
    replicas_clipped: int = 0
    suspects: Sequence[int] = ()
    epsilon: float | None = None

    @property
    def delivery_ratio(self) -> float | None:
        """Fraction of attempted link deliveries that arrived (None before any attempt)."""
        if not self.deliveries_attempted:
            return None
        return 1.0 - self.frames_lost / self.deliveries_attempted

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
                "wire_bytes_sent": self.wire_bytes_sent,
                "deliveries_attempted": self.deliveries_attempted,
                "delivery_ratio": _rounded(self.delivery_ratio),
                "frames_dropped_queue": self.frames_dropped_queue,
                "state": self.state,
                "battery": _rounded(self.battery),
                "position": None if self.position is None else [round(v, 2) for v in self.position],
                "class": self.device_class,
                "group": self.group,
                "distance": _rounded(self.distance),
                "attacker": self.attacker,
                "replicas_clipped": self.replicas_clipped,
                "suspects": list(self.suspects),
                "epsilon": _rounded(self.epsilon),
            },
            separators=(",", ":"),
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass(frozen=True, slots=True)
class TrafficPoint:
    """The swarm's traffic at one instant: cumulative totals over every drone.

    ``delivery_ratios`` holds each drone's cumulative delivery ratio (drones with no attempted
    delivery yet left out).
    """

    t: float
    bytes_sent: int
    wire_bytes_sent: int
    deliveries_attempted: int
    frames_lost: int
    frames_dropped_queue: int
    delivery_ratios: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where the drones were and who heard whom at one instant, for ``topology.png``.

    ``positions`` is ``(n, 3)`` (metres if ``metric``, else a drawing layout), ``edges`` the
    undirected links ``(m, 2)``, ``accuracy`` and ``up`` per drone.
    """

    t: float
    positions: np.ndarray
    edges: np.ndarray
    accuracy: np.ndarray
    up: np.ndarray
    metric: bool


@dataclass(slots=True)
class SwarmPoint:
    """Accuracy across the (not removed) drones at one instant.

    With insiders in the swarm, ``honest_mean`` and ``honest_min`` are over the honest drones
    only and ``attacker_mean`` over the attackers (all None without attackers).
    """

    t: float
    mean: float
    min: float
    max: float
    honest_mean: float | None = None
    honest_min: float | None = None
    attacker_mean: float | None = None


@dataclass
class MetricsRecorder:
    """Collects samples, writes them as JSON lines, and summarises the run."""

    sink: IO[str] | None = None
    series: list[SwarmPoint] = field(default_factory=list)
    last: dict[int, DroneSample] = field(default_factory=dict)
    traffic: list[TrafficPoint] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)

    def record(self, t: float, samples: list[DroneSample], counted: set[int]) -> SwarmPoint:
        """Record one instant; ``counted`` are the drones that count for swarm accuracy."""
        for sample in samples:
            self.last[sample.drone] = sample
            if self.sink is not None:
                self.sink.write(sample.to_json() + "\n")
        values = np.array([s.accuracy for s in samples if s.drone in counted] or [0.0])
        point = SwarmPoint(t, float(values.mean()), float(values.min()), float(values.max()))
        if any(s.attacker for s in samples):
            honest = [s.accuracy for s in samples if s.drone in counted and not s.attacker]
            attackers = [s.accuracy for s in samples if s.drone in counted and s.attacker]
            point.honest_mean = float(np.mean(honest)) if honest else 0.0
            point.honest_min = float(np.min(honest)) if honest else 0.0
            point.attacker_mean = float(np.mean(attackers)) if attackers else None
        self.series.append(point)
        ratios = (s.delivery_ratio for s in samples)
        self.traffic.append(
            TrafficPoint(
                t,
                sum(s.bytes_sent for s in samples),
                sum(s.wire_bytes_sent for s in samples),
                sum(s.deliveries_attempted for s in samples),
                sum(s.frames_lost for s in samples),
                sum(s.frames_dropped_queue for s in samples),
                tuple(r for r in ratios if r is not None),
            )
        )
        return point

    def time_to_accuracy(self, target: float) -> float | None:
        """Virtual seconds at which the mean accuracy first reached ``target`` (or None)."""
        for point in self.series:
            if point.mean >= target:
                return round(point.t, 6)
        return None


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (sorted keys, 2-space indent) atomically: temporary file, rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics JSON-lines file back (for plots and tests)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
