"""Tests of swarmfl.core.stream: error-feedback tracking, keyframes, gaps, loss and resync."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from swarmfl.core.quant import (
    BlockInt4Quantizer,
    BlockInt8Quantizer,
    NonFiniteError,
    Quantizer,
    make_quantizer,
)
from swarmfl.core.stream import StreamDecoder, StreamEncoder, StreamPacket
from swarmfl.errors import ConfigError, FrameDecodeError, StreamGapError

SIZE = 10_000


def drifting(steps: int, size: int, seed: int, noise: float = 0.01) -> list[np.ndarray]:
    """x_0 ~ N(0, 1), x_{t+1} = x_t + noise * N(0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size).astype(np.float32)
    out = [x]
    for _ in range(steps - 1):
        x = (x + noise * rng.standard_normal(size)).astype(np.float32)
        out.append(x)
    return out


def packet_step(quantizer: Quantizer, packet: StreamPacket) -> float:
    """The largest block scale used by ``packet`` (the quantization step of that frame)."""
    assert isinstance(quantizer, (BlockInt8Quantizer, BlockInt4Quantizer))
    return float(quantizer.scales(packet.payload, packet.count).max())


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_error_feedback_tracks_without_drift(name: str) -> None:
    quantizer = make_quantizer(name, 128)  # type: ignore[arg-type]
    encoder = StreamEncoder(quantizer, SIZE, keyframe_interval=10**9)  # only the first is a key
    decoder = StreamDecoder(quantizer, SIZE)
    errors, steps = [], []
    for t, x in enumerate(drifting(1000, SIZE, seed=3)):
        packet = encoder.encode(x)
        assert packet.seq == t
        assert packet.kind == ("key" if t == 0 else "delta")
        replica = decoder.apply(packet.kind, packet.seq, packet.payload, packet.count)
        assert replica is not None
        # Sender and receiver apply the same bytes the same way: bitwise equal replicas.
        assert encoder.replica is not None
        assert np.array_equal(replica, encoder.replica)
        error = float(np.abs(replica - x).max())
        step = packet_step(quantizer, packet)
        assert error <= step / 2 * (1 + 1e-4) + 1e-6, (t, error, step)
        errors.append(error)
        steps.append(step)
    delta_steps = np.array(steps[1:])
    assert float(np.max(errors[1:])) <= 1.01 * float(delta_steps.max())
    first, last = np.mean(errors[1:101]), np.mean(errors[-100:])
    assert last <= 1.2 * first, (first, last)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_without_error_feedback_the_same_codec_drifts(name: str) -> None:
    """Control for the test above: quantizing x_t - x_{t-1} (no feedback) accumulates error."""
    quantizer = make_quantizer(name, 128)  # type: ignore[arg-type]
    xs = drifting(1000, SIZE, seed=3)
    replica = xs[0].copy()  # even from an exact start
    errors, steps = [], []
    for previous, x in itertools.pairwise(xs):
        payload = quantizer.encode(x - previous)
        replica += quantizer.decode(payload, SIZE)
        errors.append(float(np.abs(replica - x).max()))
        steps.append(float(quantizer.scales(payload, SIZE).max()))  # type: ignore[attr-defined]
    assert np.mean(errors[-100:]) > 2 * np.mean(errors[:100])
    assert np.mean(errors[-100:]) > 10 * max(steps) / 2  # far beyond the feedback bound


def test_fp32_stream_replica_equals_x_exactly() -> None:
    quantizer = make_quantizer("fp32")
    encoder = StreamEncoder(quantizer, 6, keyframe_interval=5)
    decoder = StreamDecoder(quantizer, 6)
    rng = np.random.default_rng(0)
    # 1e-8 next to 1.0: an arithmetic delta would round the small value away.
    x = np.array([1e-8, 1.0, -0.0, 3e38, 1e-45, -5.0], np.float32)
    for _ in range(12):
        packet = encoder.encode(x)
        replica = decoder.apply(packet.kind, packet.seq, packet.payload, packet.count)
        assert replica is not None
        assert replica.tobytes() == x.tobytes()
        assert encoder.replica is not None and encoder.replica.tobytes() == x.tobytes()
        x = x.copy()
        x[rng.integers(0, 6)] = np.float32(rng.standard_normal())
    # An unchanged model sends an all-zero delta (which lz4 removes on the wire).
    encoder.encode(x)
    packet = encoder.encode(x)
    assert packet.kind == "delta" and packet.payload == bytes(24)


def test_keyframe_schedule_and_force() -> None:
    quantizer = make_quantizer("int8", 64)
    encoder = StreamEncoder(quantizer, 100, keyframe_interval=4, first_seq=2)
    x = np.ones(100, np.float32)
    kinds = [encoder.encode(x).kind for _ in range(8)]  # seq 2..9
    assert kinds == ["key", "delta", "key", "delta", "delta", "delta", "key", "delta"]
    encoder.force_keyframe()
    assert encoder.encode(x).kind == "key"
    assert encoder.encode(x).kind == "delta"
    assert encoder.next_seq == 12


def test_encoder_refuses_bad_input_and_keeps_its_state() -> None:
    quantizer = make_quantizer("int8", 64)
    encoder = StreamEncoder(quantizer, 100, keyframe_interval=8)
    encoder.encode(np.ones(100, np.float32))
    before = encoder.replica
    with pytest.raises(ConfigError, match="expected 100 values"):
        encoder.encode(np.ones(99, np.float32))
    bad = np.ones(100, np.float32)
    bad[3] = np.nan
    with pytest.raises(NonFiniteError):
        encoder.encode(bad)
    assert encoder.next_seq == 1
    assert before is not None and np.array_equal(encoder.replica, before)  # type: ignore[arg-type]
    assert encoder.encode(np.ones((10, 10), np.float32)).kind == "delta"  # any shape, 100 values


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"size": 0, "keyframe_interval": 1}, "size"),
        ({"size": 10, "keyframe_interval": 0}, "keyframe_interval"),
        ({"size": 10, "keyframe_interval": 2, "first_seq": -1}, "first_seq"),
    ],
)
def test_encoder_config_errors(kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        StreamEncoder(make_quantizer("int8"), **kwargs)
    assert info.value.key == key


def test_encoder_sends_a_keyframe_when_the_delta_would_overflow() -> None:
    quantizer = make_quantizer("int8", 64)
    encoder = StreamEncoder(quantizer, 64, keyframe_interval=100)
    encoder.encode(np.full(64, 3e38, np.float32))
    packet = encoder.encode(np.full(64, -3e38, np.float32))  # x - x_hat = -6e38: overflow
    assert packet.kind == "key"
    assert encoder.replica is not None and np.isfinite(encoder.replica).all()


def make_stream(
    name: str = "int8", size: int = 256, interval: int = 5
) -> tuple[StreamEncoder, StreamDecoder, list[StreamPacket]]:
    quantizer = make_quantizer(name, 64)  # type: ignore[arg-type]
    encoder = StreamEncoder(quantizer, size, keyframe_interval=interval)
    packets = [encoder.encode(x) for x in drifting(12, size, seed=1)]
    return encoder, StreamDecoder(quantizer, size), packets


def apply(decoder: StreamDecoder, packet: StreamPacket) -> np.ndarray | None:
    return decoder.apply(packet.kind, packet.seq, packet.payload, packet.count)


def test_decoder_rules_duplicates_gaps_and_resync() -> None:
    _, decoder, packets = make_stream(interval=5)  # keys at 0, 5, 10
    assert decoder.needs_keyframe and decoder.replica is None
    with pytest.raises(StreamGapError, match="without a replica"):
        apply(decoder, packets[1])
    assert apply(decoder, packets[0]) is not None
    assert apply(decoder, packets[1]) is not None
    assert apply(decoder, packets[1]) is None  # duplicate: ignored
    assert apply(decoder, packets[0]) is None  # old keyframe: ignored
    assert decoder.last_seq == 1
    with pytest.raises(StreamGapError, match="1 frame"):
        apply(decoder, packets[3])  # 2 is missing
    assert decoder.needs_keyframe and decoder.replica is None
    with pytest.raises(StreamGapError):
        apply(decoder, packets[4])  # still no replica
    replica = apply(decoder, packets[5])
    assert replica is not None and not decoder.needs_keyframe
    for packet in packets[6:]:
        assert apply(decoder, packet) is not None
    assert decoder.last_seq == 11


def test_decoder_returns_read_only_views() -> None:
    _, decoder, packets = make_stream()
    replica = apply(decoder, packets[0])
    assert replica is not None
    with pytest.raises(ValueError, match="read-only"):
        replica[0] = 1.0
    held = decoder.replica
    assert held is not None and not held.flags.writeable


def test_decoder_refuses_bad_frames() -> None:
    _, decoder, packets = make_stream()
    apply(decoder, packets[0])
    with pytest.raises(FrameDecodeError, match="carries 256 values"):
        decoder.apply("delta", 1, packets[1].payload, 255)
    with pytest.raises(ConfigError, match="kind"):
        decoder.apply("full", 1, packets[1].payload, 256)  # type: ignore[arg-type]
    with pytest.raises(FrameDecodeError, match="sequence"):
        decoder.apply("delta", -1, packets[1].payload, 256)
    # A keyframe that does not decode leaves the current replica alone.
    with pytest.raises(FrameDecodeError):
        decoder.apply("key", 7, b"\x00", 256)
    assert decoder.replica is not None
    # A next-in-line delta that does not decode breaks the stream: the replica is dropped.
    with pytest.raises(FrameDecodeError):
        decoder.apply("delta", 1, packets[1].payload[:-1], 256)
    assert decoder.needs_keyframe


def test_decoder_drops_a_replica_that_would_overflow() -> None:
    quantizer = BlockInt8Quantizer(64)
    decoder = StreamDecoder(quantizer, 64)
    decoder.apply("key", 0, quantizer.encode(np.full(64, 3e38, np.float32)), 64)
    with pytest.raises(FrameDecodeError, match="overflow"):
        decoder.apply("delta", 1, quantizer.encode(np.full(64, 2e38, np.float32)), 64)
    assert decoder.needs_keyframe


def test_fp32_delta_with_wrong_size_is_refused() -> None:
    _, decoder, packets = make_stream("fp32", size=16)
    apply(decoder, packets[0])
    with pytest.raises(FrameDecodeError, match="fp32 delta"):
        decoder.apply("delta", 1, packets[1].payload[:-4], 16)
    assert decoder.needs_keyframe


def test_reset_forgets_the_stream() -> None:
    _, decoder, packets = make_stream()
    apply(decoder, packets[5])
    decoder.reset()
    assert decoder.last_seq is None and decoder.needs_keyframe
    assert apply(decoder, packets[0]) is not None  # an older keyframe is accepted again


@pytest.mark.parametrize("name", ["int8", "int4"])
@pytest.mark.parametrize("nack", [False, True], ids=["wait", "nack"])
def test_random_loss_gaps_then_resync_at_keyframes(name: str, nack: bool) -> None:
    """20 % of frames lost: gaps are detected, the next keyframe resyncs, tracking resumes.

    With ``nack`` the receiver's NACK reaches the sender at once (force_keyframe), as the node
    does; without it the receiver waits for the periodic keyframe.
    """
    quantizer = make_quantizer(name, 128)  # type: ignore[arg-type]
    interval = 10
    encoder = StreamEncoder(quantizer, SIZE, keyframe_interval=interval)
    decoder = StreamDecoder(quantizer, SIZE)
    link = random.Random(7)
    gaps = resyncs = tracked = 0
    waiting = False
    for t, x in enumerate(drifting(300, SIZE, seed=5)):
        packet = encoder.encode(x)
        if link.random() < 0.2:
            continue  # lost
        try:
            replica = apply(decoder, packet)
        except StreamGapError:
            gaps += 1
            assert packet.kind == "delta"
            assert decoder.needs_keyframe and decoder.replica is None
            waiting = True
            if nack:
                encoder.force_keyframe()
            continue
        assert replica is not None  # no duplicates on this link
        if waiting:
            assert packet.kind == "key"
            assert nack or t % interval == 0
            resyncs += 1
            waiting = False
        tracked += 1
        assert encoder.replica is not None
        assert np.array_equal(replica, encoder.replica)
        step = packet_step(quantizer, packet)
        assert float(np.abs(replica - x).max()) <= step / 2 * (1 + 1e-4) + 1e-6
    assert gaps >= 10 and resyncs >= 10
    assert tracked >= (150 if nack else 80), tracked


@pytest.mark.parametrize("density", [0.5, 0.25])
def test_sparse_deltas_still_track_without_drift(density: float) -> None:
    """Top-k blocks + error feedback: skipped blocks wait in the residual, nothing is lost."""
    quantizer = make_quantizer("int8", 128)
    encoder = StreamEncoder(quantizer, SIZE, keyframe_interval=10**9, delta_density=density)
    decoder = StreamDecoder(quantizer, SIZE)
    blocks = -(-SIZE // 128)
    errors = []
    for x in drifting(600, SIZE, seed=5):
        packet = encoder.encode(x)
        replica = decoder.apply(packet.kind, packet.seq, packet.payload, packet.count)
        assert replica is not None and np.array_equal(replica, encoder.replica)
        if packet.kind == "delta":
            codes = np.zeros(blocks * 128, np.int8)
            codes[:SIZE] = np.frombuffer(packet.payload, np.int8, offset=4 * blocks)
            sent = int(codes.reshape(blocks, 128).any(axis=1).sum())
            assert sent <= int(np.ceil(density * blocks))
        errors.append(float(np.abs(replica - x).max()))
    first, last = np.mean(errors[10:110]), np.mean(errors[-100:])
    assert last <= 1.5 * first, (first, last)  # bounded: the residual does not pile up
    # A replica never updated would be off by max|x_t - x_0|, about 0.9 after 600 steps.
    assert last < 0.1


def test_sparse_delta_payloads_pack_small_under_lz4() -> None:
    from swarmfl.core.wire import Frame, FrameKind, encode_frame

    quantizer = make_quantizer("int8", 128)
    xs = drifting(3, SIZE, seed=6)
    sizes = {}
    for density in (1.0, 0.25):
        encoder = StreamEncoder(quantizer, SIZE, keyframe_interval=100, delta_density=density)
        encoder.encode(xs[0])
        packet = encoder.encode(xs[1])
        frame = Frame(
            kind=FrameKind.DELTA,
            swarm_id=1,
            sender=1,
            signature=b"12345678",
            seq=packet.seq,
            counter=1,
            layers=(0,),
            samples=1,
            codec=1,
            block_size=128,
            payload=packet.payload,
        )
        sizes[density] = len(encode_frame(frame, b"k" * 32))
    assert sizes[0.25] < 0.35 * sizes[1.0]


def test_delta_density_is_validated() -> None:
    with pytest.raises(ConfigError, match="delta_density"):
        StreamEncoder(make_quantizer("int8"), 10, 5, delta_density=0.0)
