"""GossipNode state export / import: a restarted drone continues its streams (sans-IO)."""

from __future__ import annotations

import numpy as np
import pytest

from swarmfl.core.node import GossipNode, NodeConfig, NodeState
from swarmfl.core.wire import FrameKind, decode_frame
from swarmfl.errors import ConfigError

KEY = bytes(range(32))
SIG = b"sig12345"
OFFSETS = (0, 300, 310)


def node(drone_id: int, codec: str = "int8") -> GossipNode:
    return GossipNode(
        NodeConfig(
            drone_id=drone_id,
            swarm_id=1,
            signature=SIG,
            key=KEY,
            layer_offsets=OFFSETS,
            trained_layers=(0, 1),
            codec=codec,
            keyframe_interval=5,
        )
    )


def kind(frame: bytes) -> FrameKind:
    return decode_frame(frame, KEY, swarm_id=1, signature=SIG).kind


def test_a_restarted_sender_is_replayed_unless_it_continues_its_numbers() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=310).astype(np.float32)
    sender, receiver = node(1), node(2)
    for t in range(7):
        for frame in sender.publish(x, 10, float(t)):
            receiver.receive(frame, float(t))
    state = sender.export_state()
    assert (state.counter, state.next_seq) == (7, 7)
    assert receiver.stats.frames_accepted == 7

    naive = node(1)  # restarted from scratch: numbers 0, 1, ... were all seen
    for frame in naive.publish(x, 10, 8.0):
        receiver.receive(frame, 8.0)
    assert receiver.stats.frames_replayed == 1

    resumed = node(1)
    resumed.import_state(NodeState(state.counter, state.next_seq + 100, state.control_seq + 100))
    assert resumed.counter == 7
    frames = resumed.publish(x, 10, 9.0)
    # The first frame after a restart is a keyframe: the receiver's replica may be newer than
    # anything the checkpoint knew.
    assert [kind(f) for f in frames] == [FrameKind.KEY]
    for frame in frames:
        receiver.receive(frame, 9.0)
    assert receiver.stats.frames_accepted == 8
    assert resumed.export_state() == NodeState(8, state.next_seq + 101, state.control_seq + 100)
    # Deltas follow as usual.
    assert kind(resumed.publish(x + 0.01, 10, 10.0)[0]) == FrameKind.DELTA


def test_negative_state_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        node(1).import_state(NodeState(0, -1, 0))
    assert info.value.key == "next_seq"
