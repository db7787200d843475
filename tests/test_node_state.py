"""GossipNode state export / import: a restarted drone continues its streams (sans-IO)."""

from __future__ import annotations

import numpy as np
import pytest
from _node_helpers import SwarmSettings

from swarmfl.core.node import GossipNode, NodeState
from swarmfl.core.replay import epoch_start_seq
from swarmfl.core.wire import FrameKind, epoch_payload
from swarmfl.errors import ConfigError

KEY = bytes(range(32))
SIG = b"sig12345"
OFFSETS = (0, 300, 310)


SWARM = SwarmSettings(swarm_id=1, signature=SIG, key=KEY, layer_offsets=OFFSETS)


def node(drone_id: int, codec: str = "int8") -> GossipNode:
    return SWARM.node(drone_id, trained_layers=(0, 1), codec=codec, keyframe_interval=5)


def kind(frame: bytes) -> FrameKind:
    return SWARM.decode(frame).kind


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


def deliver(frames: list[bytes], to: GossipNode, now: float) -> list[bytes]:
    replies = []
    for frame in frames:
        replies += to.receive(frame, now)
    return replies


def heard_in_epoch(
    epoch: int, rounds: int, seed: int
) -> tuple[np.ndarray, GossipNode, GossipNode, list[list[bytes]]]:
    """Drone 1, in ``epoch``, publishes a random model at t = 0, 1, ... ``rounds`` times and
    drone 2 hears every frame. Returns the model, the sender, the receiver, each round's frames.
    """
    x = np.random.default_rng(seed).normal(size=OFFSETS[-1]).astype(np.float32)
    sender, receiver = node(1), node(2)
    sender.start_epoch(epoch)
    sent = [sender.publish(x, 10, float(t)) for t in range(rounds)]
    for t, frames in enumerate(sent):
        deliver(frames, receiver, float(t))
    return x, sender, receiver, sent


def test_a_receiver_restored_from_its_state_refuses_what_it_heard_before() -> None:
    _, _, receiver, heard = heard_in_epoch(3, rounds=6, seed=1)
    assert receiver.stats.frames_accepted == 6
    saved = receiver.export_state()

    restarted = node(2)  # a new process: no windows in memory
    restarted.import_state(
        NodeState(saved.counter, epoch_start_seq(1), epoch_start_seq(1), saved.replay)
    )
    for frames in heard:
        deliver(frames, restarted, 10.0)
    assert restarted.stats.frames_accepted == 0
    assert restarted.stats.frames_replayed == 6
    # Without the saved windows the same replays get in: this is what the state is for.
    amnesiac = node(2)
    for frames in heard:
        deliver(frames, amnesiac, 10.0)
    assert amnesiac.stats.frames_accepted == 6


def test_a_sender_restarted_in_an_older_epoch_is_told_and_taken_back_within_a_period() -> None:
    x, _, receiver, _ = heard_in_epoch(5, rounds=4, seed=2)
    assert receiver.stats.frames_accepted == 4

    persisted: list[int] = []
    reborn = node(1)  # lost its epoch file: starts at epoch 1, below what the receiver heard
    reborn.epoch_listener = persisted.append
    reborn.start_epoch(1)
    replies = deliver(reborn.publish(x, 10, 10.0), receiver, 10.0)
    assert receiver.stats.frames_replayed == 1 and receiver.stats.epoch_hints_sent == 1
    assert [kind(r) for r in replies] == [FrameKind.EPOCH]
    # A second refused frame in the same period does not earn a second hint.
    assert deliver(reborn.publish(x, 10, 10.5), receiver, 10.5) == []
    deliver(replies, reborn, 10.6)
    assert reborn.epoch == 6 and persisted == [1, 6] and reborn.stats.epoch_restarts == 1
    deliver(reborn.publish(x, 10, 11.0), receiver, 11.0)
    assert receiver.stats.frames_accepted == 5
    # The old life's frames stay refused, and the hint, replayed, moves nobody.
    deliver(replies, reborn, 12.0)
    assert reborn.epoch == 6


def test_an_epoch_hint_for_another_drone_or_an_older_epoch_is_ignored() -> None:
    hinter, target = node(3), node(1)
    target.start_epoch(9)
    frames = [
        hinter._control(FrameKind.EPOCH, epoch_payload(2, epoch_start_seq(20))),
        hinter._control(FrameKind.EPOCH, epoch_payload(1, epoch_start_seq(4))),
    ]
    deliver(frames, target, 0.0)
    assert target.epoch == 9 and target.stats.epoch_restarts == 0


def test_a_sender_restarted_in_the_same_epoch_moves_on_but_a_replay_of_its_frame_does_not() -> None:
    x, sender, receiver, old = heard_in_epoch(1, rounds=5, seed=3)
    # A replay of the live sender's own frame earns a hint that the sender ignores.
    hint = deliver(old[0], receiver, 5.0)
    assert [kind(h) for h in hint] == [FrameKind.EPOCH]
    deliver(hint, sender, 5.1)
    assert sender.epoch == 1 and sender.stats.epoch_restarts == 0
    # The same drone, restarted with a fresh disk, starts epoch 1 again below what was heard.
    reborn = node(1)
    reborn.start_epoch(1)
    hint = deliver(reborn.publish(x, 10, 7.0), receiver, 7.0)
    deliver(hint, reborn, 7.1)
    assert reborn.epoch == 2
    deliver(reborn.publish(x, 10, 8.0), receiver, 8.0)
    assert receiver.stats.frames_accepted == 6
