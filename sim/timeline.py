"""What partition-heal and heterogeneous runs are about, per evaluation instant.

:class:`Timeline` follows, at every evaluation instant, the consensus distance (the mean L2
distance of the drones' models to their average), the mean accuracy per device class and per
partition group, and how many drones are down for each reason (churn, landed, crashed, ...).
:func:`distances_to_mean` is computed at evaluation instants only, one model at a time (no
``drones × parameters`` matrix, so a thousand drones cost a few milliseconds).
:func:`graph_components` counts the communication graph's connected components.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from swarmfl.sim.metrics import DroneSample

__all__ = ["Timeline", "distances_to_mean", "graph_components"]

DOWN_STATES = ("starting", "churn", "dropped", "landed", "crashed")
"""Why a drone is down, as ``metrics.jsonl``'s ``state`` says (besides ``up`` and ``removed``)."""


def distances_to_mean(vectors: Sequence[np.ndarray]) -> list[float] | None:
    """Each vector's L2 distance to the vectors' mean (None if none or of different sizes)."""
    if not vectors or len({v.size for v in vectors}) != 1:
        return None
    mean = np.zeros(vectors[0].size, dtype=np.float64)
    for vector in vectors:
        mean += vector
    mean /= len(vectors)
    return [float(np.linalg.norm(vector - mean)) for vector in vectors]


def graph_components(graph: nx.Graph, drones: Sequence[int]) -> list[int]:
    """Sizes of the connected components among ``drones`` in ``graph``, largest first."""
    sub = graph.subgraph(drones)
    return sorted((len(c) for c in nx.connected_components(sub)), reverse=True)


@dataclass
class Timeline:
    """Per-instant consensus distance, accuracy per class and group, and down counts."""

    t: list[float] = field(default_factory=list)
    consensus: list[float | None] = field(default_factory=list)
    by_class: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    by_group: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    down: dict[str, list[int]] = field(default_factory=lambda: {state: [] for state in DOWN_STATES})

    def add(self, t: float, samples: Sequence[DroneSample], counted: set[int]) -> None:
        """Record one evaluation instant (``counted``: the drones not removed)."""
        self.t.append(t)
        kept = [s for s in samples if s.drone in counted]
        distances = [s.distance for s in kept if s.distance is not None]
        self.consensus.append(float(np.mean(distances)) if distances else None)
        for key, table in (("device_class", self.by_class), ("group", self.by_group)):
            groups: dict[object, list[float]] = defaultdict(list)
            for sample in kept:
                value = getattr(sample, key)
                if value is not None:
                    groups[value].append(sample.accuracy)
            for value, accuracies in groups.items():
                table[value].append(float(np.mean(accuracies)))  # type: ignore[index]
        for state in DOWN_STATES:
            self.down[state].append(sum(s.state == state for s in kept))

    def final(self) -> dict[str, object]:
        """The last instant's figures, for ``summary.json``."""
        last = self.consensus[-1] if self.consensus else None
        return {
            "consensus_distance": None if last is None else round(last, 6),
            "accuracy_by_class": {k: round(v[-1], 6) for k, v in sorted(self.by_class.items())},
            "accuracy_by_group": {
                str(k): round(v[-1], 6) for k, v in sorted(self.by_group.items())
            },
        }
