"""A learning swarm of sans-IO gossip nodes on an in-memory graph, with insiders attacking.

Each drone trains a softmax regression on its shard of scikit-learn's digits (numpy only, a
few full-batch steps per round), merges with its node's rule, and publishes through its node;
an attacker publishes what its :mod:`swarmfl.sim.attacks` model makes of its own model and the
replicas it heard. Frames cross the real wire encoding, codec and staleness weights; the graph
delivers each frame to the sender's neighbours only. No sockets, no event loop, no clock.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from sklearn.datasets import load_digits

from swarmfl.core.merge import MergeRule
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.quant import NonFiniteError
from swarmfl.core.verifier import FrameVerifier
from swarmfl.core.wire import derive_swarm_key
from swarmfl.sim.attacks import Attack, NeighbourView

KEY = derive_swarm_key("robust swarm", 3)
SIGNATURE = b"softmax1"
FEATURES, CLASSES = 64, 10
OFFSETS = (0, FEATURES * CLASSES, FEATURES * CLASSES + CLASSES)  # weights, biases


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1], shuffled once: (x_train, y_train, x_test, y_test)."""
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = (data.data[order] / 16.0).astype(np.float32)
    y = data.target[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def dirichlet_shards(drones: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Indices of the training set per drone, label proportions drawn from Dirichlet(alpha)."""
    _, y, _, _ = digits()
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(drones)]
    for label in range(CLASSES):
        ids = np.flatnonzero(y == label)
        rng.shuffle(ids)
        cuts = (np.cumsum(rng.dirichlet([alpha] * drones)) * ids.size).astype(int)[:-1]
        for shard, part in zip(shards, np.split(ids, cuts), strict=True):
            shard.extend(part.tolist())
    return [np.array(sorted(s), dtype=np.int64) for s in shards]


def gradient(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of the mean cross-entropy of softmax regression ``w`` on ``(x, y)``."""
    weights = w[: OFFSETS[1]].reshape(FEATURES, CLASSES)
    logits = x @ weights + w[OFFSETS[1] :]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(y.size), y] -= 1.0
    p /= y.size
    return np.concatenate([(x.T @ p).ravel(), p.sum(axis=0)]).astype(np.float32)


def accuracy(w: np.ndarray) -> float:
    """Test accuracy of softmax regression ``w`` (0 for a model that is not finite)."""
    if not np.isfinite(w).all():
        return 0.0
    _, _, x, y = digits()
    with np.errstate(all="ignore"):
        logits = x @ w[: OFFSETS[1]].reshape(FEATURES, CLASSES) + w[OFFSETS[1] :]
    return float(np.mean(logits.argmax(axis=1) == y))


def circulant(drones: int, hops: tuple[int, ...] = (1, 2)) -> dict[int, set[int]]:
    """A ring where each drone also hears the drones ``hops`` away on each side (4-regular)."""
    return {i: {(i + s * h) % drones for h in hops for s in (-1, 1)} for i in range(drones)}


@dataclass
class Outcome:
    """The end of a run: every drone's model and node, and who attacked."""

    models: list[np.ndarray]
    nodes: list[GossipNode]
    attackers: frozenset[int]
    honest: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.honest = [i for i in range(len(self.models)) if i not in self.attackers]

    @property
    def honest_accuracy(self) -> float:
        """Mean test accuracy of the honest drones."""
        return float(np.mean([accuracy(self.models[i]) for i in self.honest]))

    @property
    def honest_spread(self) -> float:
        """Root-mean-square distance of the honest models to their mean (inf if one diverged)."""
        stacked = np.stack([self.models[i] for i in self.honest]).astype(np.float64)
        if not np.isfinite(stacked).all():
            return float("inf")
        return float(np.sqrt(((stacked - stacked.mean(axis=0)) ** 2).sum(axis=1).mean()))

    def suspected(self) -> set[int]:
        """Every drone some honest drone suspects."""
        return {s for i in self.honest for s in self.nodes[i].suspects()}


def run_swarm(
    rule: MergeRule,
    attacks: dict[int, Attack] | None = None,
    *,
    drones: int = 12,
    rounds: int = 40,
    codec: str = "fp32",
    trained: dict[int, tuple[int, ...]] | None = None,
    seed: int = 1,
) -> Outcome:
    """Run ``rounds`` synchronous gossip rounds; every drone merges, trains 5 steps, publishes.

    ``attacks`` maps attacker ids to their attack; ``trained`` the layers a drone trains (all
    by default: a head-only drone still merges the weights it hears).
    """
    attacks = attacks or {}
    trained = trained or {}
    x_train, y_train, _, _ = digits()
    graph = circulant(drones)
    verifier = FrameVerifier(KEY, 3, SIGNATURE)
    nodes = [
        GossipNode(
            NodeConfig(
                drone_id=i,
                swarm_id=3,
                signature=SIGNATURE,
                key=KEY,
                layer_offsets=OFFSETS,
                trained_layers=trained.get(i, (0, 1)),
                codec=codec,
                merge=rule,
            ),
            verifier,
        )
        for i in range(drones)
    ]
    rng = np.random.default_rng(seed)
    data = []
    for i, shard in enumerate(dirichlet_shards(drones, 1.0, seed)):
        labels = y_train[shard]
        if i in attacks:
            labels = attacks[i].poison_labels(labels, rng)
        data.append((x_train[shard], labels))
    models = [np.zeros(OFFSETS[-1], np.float32) for _ in range(drones)]
    for step in range(rounds):
        now = float(step)
        for i, (node, x) in enumerate(zip(nodes, models, strict=True)):
            node.mix(x, now)
            with np.errstate(all="ignore"):  # a poisoned plain-mean drone may overflow
                for _ in range(5):
                    update = gradient(x, *data[i])
                    for layer in trained.get(i, (0, 1)):
                        start, stop = OFFSETS[layer], OFFSETS[layer + 1]
                        x[start:stop] -= 0.5 * update[start:stop]
            sent = x
            if i in attacks:
                sent = attacks[i].publish_values(x, NeighbourView.from_node(node, now), rng)
            try:
                frames = node.publish(sent, int(data[i][1].size), now)
            except NonFiniteError:  # what the agent does with a diverged model
                node.adopt_neighbours(x, now)
                frames = []
            for frame in frames:
                for j in graph[i]:
                    nodes[j].receive(frame, now)  # NACKs cannot arise: the link is lossless
    return Outcome(models, nodes, frozenset(attacks))
