"""Copies of the model on the way out and in: the peak memory of encode, reassemble and decode
(tracemalloc), and that the copy-free paths send and take exactly the bytes the copying ones do.
"""

import tracemalloc

import numpy as np
import pytest
from _node_helpers import SwarmSettings

from swarmfl.core import quant, stream
from swarmfl.core.node import GossipNode
from swarmfl.core.quant import Float32Quantizer, make_quantizer
from swarmfl.core.stream import StreamEncoder
from swarmfl.core.wire import (
    derive_swarm_key,
    encode_frame,
    payload_view,
)
from swarmfl.errors import ConfigError
from swarmfl.radio.fragment import Fragmenter
from swarmfl.radio.reassembly import Reassembler

KEY = derive_swarm_key("copies", 3)
SIG = b"copies-1"
VALUES = 2**20  # a 4 MiB float32 model: fixed costs (objects, scratch) are then small
OFFSETS = (0, VALUES // 2, VALUES - 10, VALUES)


SWARM = SwarmSettings(swarm_id=3, signature=SIG, key=KEY, layer_offsets=OFFSETS)


def make_node(drone_id: int, codec: str = "fp32") -> GossipNode:
    return SWARM.node(drone_id, trained_layers=(0, 1, 2), codec=codec)


def peak_over(model_bytes: int, call):
    """``call()`` and the peak bytes allocated during it, over ``model_bytes``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return result, peak / model_bytes


def model(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(VALUES).astype(np.float32)


def test_fp32_encode_and_decode_hold_at_most_one_extra_copy_of_the_model():
    sender, receiver = make_node(1), make_node(2)
    x = model(0)
    for frame in sender.publish(x, 10, 0.0):
        receiver.receive(frame, 0.0)
    x += 0.5
    frames, encode_peak = peak_over(x.nbytes, lambda: sender.publish(x, 10, 1.0))
    # The frame itself is one copy; before, the payload was a second one.
    assert encode_peak <= 1.3
    _, decode_peak = peak_over(x.nbytes, lambda: receiver.receive(frames[0], 1.0))
    # The replica is one copy; before, the payload and a bool per value came on top.
    assert decode_peak <= 1.3
    assert receiver.stats.frames_accepted == 2
    np.testing.assert_array_equal(receiver.live_replicas(1.0)[1].values, x)


def test_reassembly_copies_the_frame_once():
    frame = bytes(np.random.default_rng(1).integers(0, 256, 2**20, dtype=np.uint8))
    datagrams = Fragmenter(5, 1472, max_frame_bytes=2**21).split(frame)
    reassembler = Reassembler(5.0, 2**22, 2**21)

    def reassemble():
        whole = None
        for datagram in datagrams:
            whole = reassembler.push(datagram, "a", 1.0) or whole
        return whole

    whole, peak = peak_over(len(frame), reassemble)
    assert whole == frame
    assert peak <= 1.5  # one copy and the views' bookkeeping; before, every part was copied too


def test_a_lent_keyframe_is_the_same_frame_as_a_copied_one():
    sender = make_node(1)
    x = model(2)
    (data,) = sender.publish(x, 10, 0.0)
    expected = encode_frame(SWARM.keyframe(1, (0, 1, 2), 10, x.astype("<f4").tobytes()), KEY)
    assert data == expected
    assert payload_view(data) == x.astype("<f4").tobytes()


def test_the_senders_replica_does_not_follow_the_lent_model():
    encoder = StreamEncoder(Float32Quantizer(), 4, 1)
    x = np.arange(4, dtype=np.float32)
    packet = encoder.encode(x, borrow=True)
    assert isinstance(packet.payload, memoryview) and encoder.replica is None
    frame = bytes(packet.payload)  # where the caller copies it
    encoder.adopt(np.frombuffer(frame, dtype=np.float32))
    x += 1  # training goes on
    np.testing.assert_array_equal(encoder.replica, np.arange(4, dtype=np.float32))
    with pytest.raises(ConfigError, match="values"):
        encoder.adopt(np.frombuffer(frame, dtype=np.float32))  # nothing lent any more


def test_a_keyframe_lent_and_never_adopted_is_followed_by_a_keyframe():
    encoder = StreamEncoder(Float32Quantizer(), 4, 100)
    x = np.ones(4, dtype=np.float32)
    assert encoder.encode(x, borrow=True).kind == "key"
    assert encoder.encode(x).kind == "key"  # no replica to delta against
    assert encoder.encode(x).kind == "delta"


def test_adopt_refuses_a_writable_or_misshapen_replica():
    encoder = StreamEncoder(Float32Quantizer(), 4, 1)
    encoder.encode(np.ones(4, dtype=np.float32), borrow=True)
    with pytest.raises(ConfigError, match="read-only float32"):
        encoder.adopt(np.ones(4, dtype=np.float32))
    with pytest.raises(ConfigError, match="read-only float32"):
        encoder.adopt(np.frombuffer(bytes(12), dtype=np.float32))


def test_a_decoded_payload_never_changes_with_the_callers_buffer():
    payload = np.arange(8, dtype="<f4").tobytes()
    data = encode_frame(SWARM.keyframe(1, (0,), 1, payload), KEY)
    from_bytes = SWARM.decode(data)
    assert isinstance(from_bytes.payload, memoryview)  # a view of the immutable frame: no copy
    buffer = bytearray(data)
    from_bytearray = SWARM.decode(buffer)
    buffer[-40:-20] = bytes(20)  # the caller reuses its receive buffer
    assert from_bytes.payload == payload and from_bytearray.payload == payload


def test_an_int8_sparse_delta_holds_no_float64_or_whole_model_temporaries():
    encoder = StreamEncoder(make_quantizer("int8", 128), VALUES, 10, delta_density=0.5)
    x = model(3)
    encoder.encode(x)
    x += np.float32(0.01)
    packet, peak = peak_over(x.nbytes, lambda: encoder.encode(x))
    assert packet.kind == "delta"
    # The difference (it becomes the new replica) and the payload; before, a float64 square
    # of the residual and a float32 code array came on top (3x).
    assert peak <= 1.8


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_chunked_quantisation_sends_the_bytes_one_pass_would(monkeypatch, codec):
    values = 3 * quant._CHUNK_VALUES + 1077  # three whole chunks, then a partial one and block
    x = np.random.default_rng(4).standard_normal(values).astype(np.float32)
    x[70_000:70_300] = 0  # zero blocks inside a chunk
    sent = []
    for chunk in (quant._CHUNK_VALUES, 10**9):  # chunked, then the whole vector at once
        monkeypatch.setattr(quant, "_CHUNK_VALUES", chunk)
        monkeypatch.setattr(stream, "_ENERGY_CHUNK_VALUES", chunk)
        encoder = StreamEncoder(make_quantizer(codec, 128), values, 10, delta_density=0.3)
        key = encoder.encode(x)
        delta = encoder.encode(x * np.float32(1.5))
        sent.append((key.payload, delta.payload, encoder.replica.tobytes()))
    assert sent[0] == sent[1]
