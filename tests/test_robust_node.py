"""A robust node against a free rider: a peer that keeps sending the same model.

Nodes joined by an in-memory link (every frame reaches every other node), real frames, codec
and staleness weights; no sockets, no clock.
"""

import numpy as np
import pytest

from swarmfl.core.merge import MergeRule
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.wire import derive_swarm_key

KEY = derive_swarm_key("robust node", 5)
OFFSETS = (0, 300, 310)
RIDER = 3


def make_node(drone_id: int, rule: MergeRule) -> GossipNode:
    return GossipNode(
        NodeConfig(
            drone_id=drone_id,
            swarm_id=5,
            signature=b"robust-1",
            key=KEY,
            layer_offsets=OFFSETS,
            trained_layers=(0, 1),
            merge=rule,
        )
    )


def run(rule: MergeRule, periods: int, codec_seed: int = 0) -> tuple[list[GossipNode], list]:
    """Drones 0-2 move their models every period (as training does); drone 3 sends its first
    model again and again. Returns the nodes and, per period, drone 0's live replicas."""
    rng = np.random.default_rng(codec_seed)
    nodes = [make_node(i, rule) for i in range(4)]
    models = [rng.standard_normal(OFFSETS[-1]).astype(np.float32) for _ in nodes]
    first = models[RIDER].copy()
    seen = []
    for step in range(periods):
        now = float(step)
        for i, node in enumerate(nodes):
            if i != RIDER:
                node.mix(models[i], now)
                models[i] += 0.01 * rng.standard_normal(OFFSETS[-1]).astype(np.float32)
            sent = first if i == RIDER else models[i]
            for frame in node.publish(sent, 10, now):
                for other in nodes:
                    if other is not node:
                        other.receive(frame, now + 0.5)
        seen.append(nodes[0].live_replicas(now + 0.6))
    return nodes, seen


def test_a_peer_sending_the_same_model_again_ages_out_and_is_named() -> None:
    rule = MergeRule(rule="clip")  # cut-off: 10 periods
    nodes, seen = run(rule, 25)
    weights = [view[RIDER].weight if RIDER in view else 0.0 for view in seen]
    # The first frame is fresh; each frame after it carries the same values, so its weight is
    # that of its first sending: (1 + s) ** -0.5 for s periods, then out past the cut-off.
    assert weights[0] == pytest.approx(1.0 / np.sqrt(1.1))
    assert weights[3] == pytest.approx(1.0 / np.sqrt(4.1))
    assert all(w == 0.0 for w in weights[10:])
    assert all(view[peer].weight > 0.9 for view in seen for peer in (1, 2))  # they move
    for node in nodes[:RIDER]:
        assert node.suspects() == [RIDER]
        record = node.conduct()[RIDER]
        assert record.outliers >= 14  # every merge past the cut-off, at least
        honest = 2 if node is nodes[1] else 1
        assert node.staleness(RIDER, 25.0) > 20.0 and node.staleness(honest, 25.0) < 1.0
        assert RIDER in node.known_peers()  # still heard, never merged again
    assert nodes[0].stats.replicas_excluded >= 14


def test_under_the_default_rule_a_repeated_model_keeps_the_weight_of_its_frame() -> None:
    nodes, seen = run(MergeRule(), 15)
    assert all(view[RIDER].weight == pytest.approx(1.0 / np.sqrt(1.1)) for view in seen)
    assert nodes[0].suspects() == [] and nodes[0].stats.replicas_excluded == 0
