"""The sans-IO gossip node, driven through a fake lossy link (no sockets, no event loop)."""

import random
from dataclasses import replace

import numpy as np
import pytest
from _node_helpers import SwarmSettings

from swarmfl.core.merge import MergeRule, merge_into
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.quant import NonFiniteError
from swarmfl.core.verifier import FrameVerifier
from swarmfl.core.wire import FrameKind, derive_swarm_key, encode_frame
from swarmfl.errors import ConfigError

KEY = derive_swarm_key("test swarm", 7)
SIG = b"model-01"
OFFSETS = (0, 512, 576, 1216, 1226)  # four layers


SWARM = SwarmSettings(swarm_id=7, signature=SIG, key=KEY, layer_offsets=OFFSETS)


def make_node(drone_id, *, codec="fp32", trained=(0, 1, 2, 3), key=KEY, swarm=7, **kw):
    swarm_settings = replace(SWARM, key=key, swarm_id=swarm)
    return swarm_settings.node(drone_id, trained_layers=trained, codec=codec, **kw)


class LossyLink:
    """Joins nodes: every frame one sends reaches each other node unless the link drops it."""

    def __init__(self, nodes, loss=0.0, seed=0):
        self.nodes = nodes
        self.loss = loss
        self.rng = random.Random(seed)
        self.sent = self.dropped = 0

    def broadcast(self, sender, frames, now):
        replies = []
        for frame in frames:
            for node in self.nodes:
                if node is sender:
                    continue
                self.sent += 1
                if self.rng.random() < self.loss:
                    self.dropped += 1
                    continue
                replies.extend((node, r) for r in node.receive(frame, now))
        for node, reply in replies:
            self.broadcast(node, [reply], now)


def test_fp32_replica_is_exact_and_mix_averages():
    a, b = make_node(1), make_node(2)
    link = LossyLink([a, b])
    xa = np.random.default_rng(0).standard_normal(OFFSETS[-1]).astype(np.float32)
    xb = np.zeros_like(xa)
    link.broadcast(a, a.publish(xa, samples=10, now=0.0), now=0.0)
    assert b.known_peers() == {1: 0.0}
    assert b.mix(xb, now=0.0) == 1
    np.testing.assert_allclose(xb, xa / 2, rtol=1e-6)


def test_int8_streams_bring_a_lossy_swarm_to_consensus():
    rng = np.random.default_rng(1)
    nodes = [make_node(i, codec="int8", keyframe_interval=8) for i in range(5)]
    models = [rng.standard_normal(OFFSETS[-1]).astype(np.float32) for _ in nodes]
    low, high = np.min(models, axis=0), np.max(models, axis=0)
    link = LossyLink(nodes, loss=0.2, seed=3)
    spread0 = np.ptp(np.stack(models), axis=0).max()
    for step in range(60):
        now = float(step)
        for node, x in zip(nodes, models, strict=True):
            node.mix(x, now)
            link.broadcast(node, node.publish(x, 10, now), now)
    spread = np.ptp(np.stack(models), axis=0).max()
    assert spread < spread0 / 50
    # Pull averaging converges to a weighted combination of the starting models (not exactly
    # their mean): every coordinate ends inside their hull, up to a quantisation step.
    consensus = np.mean(models, axis=0)
    assert np.all(consensus >= low - 0.05) and np.all(consensus <= high + 0.05)
    assert sum(n.stats.stream_gaps for n in nodes) > 0  # loss was detected...
    assert sum(n.stats.nacks_sent for n in nodes) > 0  # ...and answered with NACKs...
    assert sum(n.stats.keyframes_requested for n in nodes) > 0  # ...that forced keyframes
    assert link.dropped > 0


def test_bad_frames_are_counted_and_dropped_never_raised():
    receiver = make_node(2)
    good = make_node(1).publish(np.ones(OFFSETS[-1], np.float32), 5, 0.0)[0]
    stranger_key = make_node(3, key=derive_swarm_key("other", 7)).publish(
        np.ones(OFFSETS[-1], np.float32), 5, 0.0
    )[0]
    other_swarm = make_node(4, swarm=8).publish(np.ones(OFFSETS[-1], np.float32), 5, 0.0)[0]
    flipped = bytearray(good)
    flipped[40] ^= 0x01
    for junk in (b"", b"garbage", bytes(flipped), stranger_key, other_swarm, good[:-1]):
        assert receiver.receive(junk, 1.0) == []
    assert receiver.stats.frames_rejected == 6
    assert receiver.receive(good, 1.0) == []
    # The same frame again: a replay. The sender is told the newest number heard from it (a
    # sender that restarted without its epoch would move past it; this one sent it, and ignores it).
    (hint,) = receiver.receive(good, 2.0)
    assert SWARM.decode(hint).kind == FrameKind.EPOCH
    assert receiver.receive(good, 2.5) == []  # at most one hint per period per sender
    assert receiver.stats.frames_accepted == 1
    assert receiver.stats.frames_replayed == 2


def test_frames_naming_unknown_layers_are_rejected():
    frame = SWARM.keyframe(9, (7,), 1, b"\0" * 4)
    receiver = make_node(2)
    receiver.receive(encode_frame(frame, KEY), 0.0)
    assert receiver.stats.frames_rejected == 1
    assert receiver.known_peers() == {}


def test_stale_replicas_are_forgotten_past_the_cutoff():
    a, b = make_node(1), make_node(2, merge=MergeRule(cutoff=3.0), period_s=1.0)
    LossyLink([a, b]).broadcast(a, a.publish(np.ones(OFFSETS[-1], np.float32), 1, 0.0), 0.0)
    x = np.zeros(OFFSETS[-1], np.float32)
    assert b.mix(x, now=2.0) == 1
    assert b.mix(x, now=10.0) == 0
    assert b.known_peers() == {}


def test_a_partial_trainer_sends_only_its_layers():
    head_only, full = make_node(1, trained=(2, 3)), make_node(2)
    x = np.full(OFFSETS[-1], 5.0, np.float32)
    frames = head_only.publish(x, 3, 0.0)
    assert len(frames[0]) < 4 * (OFFSETS[-1] - OFFSETS[2]) + 200  # no backbone bytes
    LossyLink([head_only, full]).broadcast(head_only, frames, 0.0)
    y = np.zeros(OFFSETS[-1], np.float32)
    full.mix(y, 0.0)
    np.testing.assert_array_equal(y[: OFFSETS[2]], 0.0)  # layers it does not carry: untouched
    np.testing.assert_allclose(y[OFFSETS[2] :], 2.5)


def test_a_diverged_model_is_never_sent():
    x = np.ones(OFFSETS[-1], np.float32)
    x[3] = np.nan
    with pytest.raises(NonFiniteError):
        make_node(1).publish(x, 1, 0.0)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"gossip\.codec"):
        make_node(1, codec="int3")
    with pytest.raises(ConfigError, match="trained_layers"):
        make_node(1, trained=(9,))
    with pytest.raises(ConfigError, match="shared verifier"):
        GossipNode(
            NodeConfig(
                drone_id=1,
                swarm_id=7,
                signature=SIG,
                key=KEY,
                layer_offsets=OFFSETS,
                trained_layers=(0,),
            ),
            FrameVerifier(KEY, 8, SIG),
        )


def test_a_diverged_model_adopts_its_neighbours_merge():
    a, b, c = make_node(1), make_node(2), make_node(3)
    link = LossyLink([a, b, c])
    link.broadcast(a, a.publish(np.full(OFFSETS[-1], 2.0, np.float32), 1, 0.0), 0.0)
    link.broadcast(b, b.publish(np.full(OFFSETS[-1], 4.0, np.float32), 1, 0.0), 0.0)
    broken = np.full(OFFSETS[-1], np.nan, np.float32)
    assert c.adopt_neighbours(broken, 0.0) == 2
    np.testing.assert_allclose(broken, 3.0)
    lonely = np.full(OFFSETS[-1], np.nan, np.float32)
    assert make_node(4).adopt_neighbours(lonely, 0.0) == 0  # nothing heard: left as it is


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_a_shared_verifier_hands_receivers_the_senders_keyframe(codec):
    verifier = FrameVerifier(KEY, 7, SIG)

    def shared(drone_id):
        config = make_node(drone_id, codec=codec).config
        return GossipNode(config, verifier)

    a, b, c = shared(1), shared(2), shared(3)
    x = np.random.default_rng(5).standard_normal(OFFSETS[-1]).astype(np.float32)
    (frame,) = a.publish(x, samples=10, now=0.0)
    for receiver in (b, c):
        receiver.receive(frame, 0.0)
    # Neither receiver decoded the payload: both hold the sender's own read-only replica.
    held_b, held_c = b._peers[1].decoder.replica, c._peers[1].decoder.replica
    assert np.shares_memory(held_b, held_c)
    assert not held_b.flags.writeable
    # ... which is bitwise what a receiver with its own verifier decodes.
    alone = make_node(4, codec=codec)
    alone.receive(frame, 0.0)
    np.testing.assert_array_equal(held_b, alone._peers[1].decoder.replica)


def test_a_verifier_refuses_to_share_writable_keyframe_values():
    node = make_node(1)
    (data,) = node.publish(np.zeros(OFFSETS[-1], np.float32), samples=1, now=0.0)
    verifier = FrameVerifier(KEY, 7, SIG)
    with pytest.raises(ConfigError, match="read-only"):
        verifier.remember(data, verifier.decode(data), np.zeros(OFFSETS[-1], np.float32))


@pytest.mark.parametrize("rule", [MergeRule(), MergeRule(rule="mean", tolerate=3)])
def test_the_default_rule_merges_bit_for_bit_as_merge_into(rule):
    rng = np.random.default_rng(4)
    nodes = [make_node(i, codec="int8", keyframe_interval=4, merge=rule) for i in range(4)]
    nodes.append(make_node(9, trained=(2, 3), merge=rule))  # a partial trainer
    models = [rng.standard_normal(OFFSETS[-1]).astype(np.float32) for _ in nodes]
    link = LossyLink(nodes, loss=0.2, seed=1)
    for step in range(12):
        now = float(step)
        for node, x in zip(nodes, models, strict=True):
            expected = x.copy()
            merge_into(expected, OFFSETS, list(node.live_replicas(now).values()))
            node.mix(x, now)
            np.testing.assert_array_equal(x, expected)
            link.broadcast(node, node.publish(x, 10, now), now)
    for node in nodes:
        assert node.stats.robust_merges == node.stats.replicas_clipped == 0
        assert node.conduct() == {} and node.suspects() == []


def test_a_robust_node_counts_how_each_peer_fared_and_names_the_attacker():
    clip = MergeRule(rule="clip")
    rng = np.random.default_rng(6)
    nodes = [make_node(i, merge=clip) for i in range(5)]
    models = [rng.standard_normal(OFFSETS[-1]).astype(np.float32) for _ in nodes]
    link = LossyLink(nodes)
    for step in range(15):
        now = float(step)
        for i, (node, x) in enumerate(zip(nodes, models, strict=True)):
            node.mix(x, now)
            sent = x * 1000.0 if i == 4 else x  # drone 4 scales what it sends
            link.broadcast(node, node.publish(sent, 10, now), now)
    for node in nodes[:4]:
        assert node.suspects() == [4]
        record = node.conduct()[4]
        assert record.merges == 14 and record.clipped == 14 and record.outliers == 14
        assert node.stats.robust_merges >= 14 and node.stats.replicas_clipped >= 14
    honest = np.stack(models[:4])
    assert np.abs(honest).max() < 10.0  # clipped: the 1000x model never took over


@pytest.mark.parametrize("rule", ["clip", "trimmed_mean", "median"])
def test_under_a_robust_rule_a_diverged_model_restarts_from_the_neighbours_median(rule):
    nodes = [make_node(i, merge=MergeRule(rule=rule)) for i in range(4)]
    link = LossyLink(nodes)
    for node, value in zip(nodes[:3], (2.0, 4.0, 100.0), strict=True):
        link.broadcast(node, node.publish(np.full(OFFSETS[-1], value, np.float32), 1, 0.0), 0.0)
    broken = np.full(OFFSETS[-1], np.nan, np.float32)
    assert nodes[3].adopt_neighbours(broken, 0.0) == 3
    # The median of 2, 4 and 100 is 4; merging 4 again with them keeps it at 4 under each rule
    # (clip: 100 is cut to the radius 2 and balances 2).
    np.testing.assert_allclose(broken, 4.0, rtol=1e-6)


@pytest.mark.parametrize("codec", ["int8", "int4"])  # fp32 frames are all keyframes
def test_receivers_sharing_a_verifier_follow_the_senders_deltas_bit_for_bit(codec):
    verifier = FrameVerifier(KEY, 7, SIG, share_deltas=True)
    sender = GossipNode(make_node(1, codec=codec).config, verifier)
    b, c = (GossipNode(make_node(i, codec=codec).config, verifier) for i in (2, 3))
    alone = make_node(4, codec=codec)  # its own verifier: decodes every payload itself
    rng = np.random.default_rng(9)
    x = rng.standard_normal(OFFSETS[-1]).astype(np.float32)
    kinds = set()
    for step in range(12):
        x = x + np.float32(0.05) * rng.standard_normal(x.size).astype(np.float32)
        (frame,) = sender.publish(x, samples=10, now=float(step))
        kinds.add(verifier.decode(frame).kind)
        receivers = (b, alone) if step == 3 else (b, c, alone)  # c misses frame 3: a gap
        for receiver in receivers:
            receiver.receive(frame, float(step))
        held = alone._peers[1].decoder.replica
        assert b._peers[1].decoder.replica.tobytes() == held.tobytes()
        # b holds the sender's own replica array, not a copy it decoded.
        assert np.shares_memory(b._peers[1].decoder.replica, sender._encoder.replica)
        synced = c._peers[1].decoder.last_seq == b._peers[1].decoder.last_seq
        if synced and c._peers[1].decoder.replica is not None:
            assert c._peers[1].decoder.replica.tobytes() == held.tobytes()
    assert FrameKind.DELTA in kinds and FrameKind.KEY in kinds
    # c lost a delta: it waited for the next keyframe, then caught up with the others.
    assert c.stats.stream_gaps >= 1
    assert c._peers[1].decoder.replica.tobytes() == alone._peers[1].decoder.replica.tobytes()


def test_a_drones_own_verifier_keeps_no_copies_of_its_deltas():
    node = make_node(1, codec="int8")
    x = np.zeros(OFFSETS[-1], np.float32)
    frames = [
        node.publish(x + np.float32(step), samples=1, now=float(step))[0] for step in range(3)
    ]
    deltas = [
        node._verifier.decode(f) for f in frames if node._verifier.decode(f).kind == FrameKind.DELTA
    ]
    assert deltas and all(node._verifier.delta_values(f) is None for f in deltas)
