"""swarmfl.core.wire: round trips, the total decoder, caps, replay window, key derivation."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import random
import struct
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmfl.core.codecs import CODECS
from swarmfl.core.quant import (
    BlockInt4Quantizer,
    BlockInt8Quantizer,
    Float32Quantizer,
    make_quantizer,
)
from swarmfl.core.replay import ReplayWindow
from swarmfl.core.wire import (
    CODEC_NAMES,
    FLAG_LZ4,
    MAX_FRAME_BYTES,
    MAX_LAYERS,
    MAX_PAYLOAD_BYTES,
    TAG_BYTES,
    Frame,
    FrameKind,
    _hkdf_sha256,
    codec_id,
    decode_frame,
    derive_swarm_key,
    encode_frame,
    epoch_payload,
    nack_payload,
    nack_target,
    quantizer_for,
)
from swarmfl.errors import ConfigError, FrameDecodeError

KEY = derive_swarm_key("test secret", 7)
SWARM = 7
SIG = b"archhash"
HEAD = 48  # fixed header bytes before the layer list


def make_frame(**changes: object) -> Frame:
    fields: dict[str, object] = {
        "kind": FrameKind.DELTA,
        "swarm_id": SWARM,
        "sender": 42,
        "signature": SIG,
        "seq": 9,
        "counter": 120,
        "layers": (0, 3, 4),
        "samples": 640,
        "codec": 1,
        "block_size": 128,
        "payload": bytes(30) + b"xyz" * 3,
    }
    fields.update(changes)
    return Frame(**fields)  # type: ignore[arg-type]


def decode(
    data: bytes | bytearray | memoryview, key: bytes = KEY, signature: bytes | None = SIG
) -> Frame:
    return decode_frame(data, key, swarm_id=SWARM, signature=signature)


def sign(body: bytes, key: bytes = KEY) -> bytes:
    return body + hmac.digest(key, body, hashlib.sha256)[:TAG_BYTES]


def resigned(data: bytes, edit: object) -> bytes:
    """``data`` with its body edited by ``edit(bytearray)`` and a fresh valid tag."""
    body = bytearray(data[:-TAG_BYTES])
    edit(body)  # type: ignore[operator]
    return sign(bytes(body))


frames = st.builds(
    Frame,
    kind=st.sampled_from(list(FrameKind)),
    swarm_id=st.just(SWARM),
    sender=st.integers(0, 2**32 - 1),
    signature=st.just(SIG),
    seq=st.integers(0, 2**64 - 1),
    counter=st.integers(0, 2**64 - 1),
    layers=st.lists(st.integers(0, 65535), max_size=40, unique=True).map(
        lambda layers: tuple(sorted(layers))
    ),
    samples=st.integers(0, 2**32 - 1),
    codec=st.sampled_from([1, 2]),
    block_size=st.integers(64, 256),
    payload=st.binary(max_size=600) | st.binary(max_size=8).map(lambda b: b * 70),
).map(
    lambda f: (
        replace(f, payload=nack_payload(f.sender))
        if f.kind == FrameKind.NACK
        else replace(f, payload=epoch_payload(f.sender, f.seq))
        if f.kind == FrameKind.EPOCH
        else f
    )
)


@settings(max_examples=200, deadline=None)
@given(frame=frames)
def test_round_trip(frame: Frame) -> None:
    data = encode_frame(frame, KEY)
    assert decode(data) == frame
    assert (
        data[:4] == b"SWFL"
        and len(data) <= HEAD + 2 * len(frame.layers) + 8 + len(frame.payload) + TAG_BYTES
    )


def test_compression_flag_and_raw_fallback() -> None:
    compressible = make_frame(payload=bytes(5000))
    data = encode_frame(compressible, KEY)
    assert data[6] == FLAG_LZ4 and len(data) < 200
    assert decode(data).payload == bytes(5000)
    incompressible = make_frame(payload=random.Random(1).randbytes(5000))
    data = encode_frame(incompressible, KEY)
    assert data[6] == 0 and len(data) == HEAD + 6 + 8 + 5000 + TAG_BYTES
    assert decode(data) == incompressible
    empty = make_frame(payload=b"", layers=())
    assert decode(encode_frame(empty, KEY)) == empty
    # lz4's best case (~255:1) stays within the decoder's ratio bound.
    zeros = make_frame(payload=bytes(2**20))
    data = encode_frame(zeros, KEY)
    assert len(data) < 2**20 // 200
    assert decode(data) == zeros


def test_header_layout() -> None:
    data = encode_frame(make_frame(), KEY)
    fields = struct.unpack_from("<4sBBBBHII8sQQIH", data)
    assert fields == (b"SWFL", 1, 2, FLAG_LZ4, 1, 128, SWARM, 42, SIG, 9, 120, 640, 3)
    assert struct.unpack_from("<3H", data, HEAD) == (0, 3, 4)
    assert data[-TAG_BYTES:] == hmac.digest(KEY, data[:-TAG_BYTES], hashlib.sha256)[:16]


@pytest.mark.parametrize("compressible", [True, False])
def test_every_single_bit_flip_is_rejected(compressible: bool) -> None:
    payload = bytes(64) if compressible else bytes(range(40))
    data = encode_frame(make_frame(payload=payload), KEY)
    assert (data[6] == FLAG_LZ4) is compressible
    for bit in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameDecodeError):
            decode(bytes(mutated))


def test_every_truncation_and_extension_is_rejected() -> None:
    data = encode_frame(make_frame(), KEY)
    for length in range(len(data)):
        with pytest.raises(FrameDecodeError, match=r"truncated|bad tag"):
            decode(data[:length])
    with pytest.raises(FrameDecodeError, match="trailing bytes"):
        decode(data + b"\x00")


def test_wrong_key_foreign_swarm_and_foreign_model_are_rejected() -> None:
    data = encode_frame(make_frame(), KEY)
    with pytest.raises(FrameDecodeError, match="bad tag"):
        decode(data, key=derive_swarm_key("other secret", SWARM))
    with pytest.raises(FrameDecodeError, match="foreign swarm"):
        decode_frame(data, KEY, swarm_id=8, signature=SIG)
    other_swarm = encode_frame(make_frame(swarm_id=8), derive_swarm_key("test secret", 8))
    with pytest.raises(FrameDecodeError, match="foreign swarm"):
        decode(other_swarm)
    other_model = encode_frame(make_frame(signature=b"othermod"), KEY)
    with pytest.raises(FrameDecodeError, match="foreign model"):
        decode(other_model)
    assert decode(other_model, signature=None).signature == b"othermod"
    hello = encode_frame(make_frame(kind=FrameKind.HELLO, signature=b"othermod"), KEY)
    with pytest.raises(FrameDecodeError, match="foreign model"):
        decode(hello)  # HELLO and NACK frames must carry our signature too


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda b: b.__setitem__(0, ord("X")), "bad magic"),
        (lambda b: b.__setitem__(4, 2), "unsupported version"),
        (lambda b: b.__setitem__(5, 9), "unknown kind"),
        (lambda b: b.__setitem__(5, 0), "unknown kind"),
        (lambda b: b.__setitem__(6, 0x05), "unknown flags"),
        (lambda b: b.__setitem__(7, 3), "bad codec"),
        (lambda b: struct.pack_into("<H", b, 8, 32), "bad codec"),
        (lambda b: struct.pack_into("<H", b, 8, 300), "bad codec"),
        (lambda b: struct.pack_into("<H", b, HEAD + 2, 0), "bad layers"),
        (lambda b: struct.pack_into("<H", b, HEAD + 2, 4), "bad layers"),
        (lambda b: struct.pack_into("<H", b, 46, 2), "truncated|trailing bytes"),
        (lambda b: struct.pack_into("<H", b, 46, 4), "truncated"),
        (lambda b: struct.pack_into("<H", b, 46, MAX_LAYERS + 1), "too many layers"),
        (lambda b: struct.pack_into("<I", b, HEAD + 6 + 4, 5), "trailing bytes"),
        (lambda b: struct.pack_into("<I", b, HEAD + 6 + 4, 10_000), "truncated"),
        (lambda b: struct.pack_into("<I", b, HEAD + 6, 40), "length mismatch"),
        (lambda b: struct.pack_into("<I", b, HEAD + 6, 38), "corrupt lz4"),
        (lambda b: b.__setitem__(6, 0), "length mismatch"),
    ],
)
def test_authenticated_but_malformed_frames_are_rejected(edit: object, reason: str) -> None:
    """Frames re-signed with the key: the checks behind the tag must still refuse them."""
    data = encode_frame(make_frame(), KEY)
    assert data[6] == FLAG_LZ4
    with pytest.raises(FrameDecodeError, match=reason):
        decode(resigned(data, edit))


def test_nack_frames() -> None:
    nack = make_frame(kind=FrameKind.NACK, payload=nack_payload(77), layers=())
    assert nack_target(decode(encode_frame(nack, KEY))) == 77
    with pytest.raises(ConfigError, match="NACK payload"):
        encode_frame(replace(nack, payload=b"\x01"), KEY)
    data = encode_frame(replace(nack, kind=FrameKind.HELLO, payload=b"\x01\x02"), KEY)
    with pytest.raises(FrameDecodeError, match="bad NACK payload"):
        decode(resigned(data, lambda b: b.__setitem__(5, int(FrameKind.NACK))))
    with pytest.raises(FrameDecodeError, match="not a NACK"):
        nack_target(make_frame())


def bomb(raw_len: int, stored: bytes) -> bytes:
    """A validly signed LZ4 frame with a tiny payload that declares ``raw_len`` bytes."""
    data = encode_frame(make_frame(payload=bytes(1000), layers=()), KEY)
    body = bytearray(data[: HEAD + 8])
    body[6] = FLAG_LZ4
    struct.pack_into("<II", body, HEAD, raw_len, len(stored))
    return sign(bytes(body) + stored)


@pytest.mark.parametrize(
    ("raw_len", "reason"),
    [
        (2**32 - 1, "payload too large"),
        (MAX_PAYLOAD_BYTES + 1, "payload too large"),
        (MAX_PAYLOAD_BYTES, "impossible ratio"),
        (200 * 2**20, "impossible ratio"),
    ],
)
def test_decompression_bomb_is_refused_without_allocating(raw_len: int, reason: str) -> None:
    stored = lz4.block.compress(bytes(10_000), store_size=False)  # 10 kB of zeros in ~50 bytes
    data = bomb(raw_len, stored)
    tracemalloc.start()
    try:
        with pytest.raises(FrameDecodeError, match=reason):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak


def test_declared_size_larger_than_actual_lz4_output_is_refused() -> None:
    stored = lz4.block.compress(bytes(10_000), store_size=False)
    assert decode(bomb(10_000, stored)).payload == bytes(10_000)
    with pytest.raises(FrameDecodeError, match="length mismatch"):
        decode(bomb(12_000, stored))
    with pytest.raises(FrameDecodeError, match="corrupt lz4"):
        decode(bomb(9_000, stored))


def test_oversized_and_non_bytes_input() -> None:
    with pytest.raises(FrameDecodeError, match="oversized"):
        decode(bytes(MAX_FRAME_BYTES + 1))
    for junk in ("SWFL", None, 12, [1, 2, 3]):
        with pytest.raises(FrameDecodeError, match="not bytes"):
            decode(junk)  # type: ignore[arg-type]
    frame = make_frame()
    data = encode_frame(frame, KEY)
    assert decode(bytearray(data)) == frame
    assert decode(memoryview(data)) == frame


def test_encode_refuses_frames_over_the_cap() -> None:
    big = make_frame(payload=random.Random(0).randbytes(MAX_FRAME_BYTES))
    with pytest.raises(ConfigError, match="exceeds"):
        encode_frame(big, KEY)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"kind": 9}, "kind"),
        ({"swarm_id": 2**32}, "swarm_id"),
        ({"sender": -1}, "sender"),
        ({"seq": 2**64}, "seq"),
        ({"counter": 1.5}, "counter"),
        ({"samples": True}, "samples"),
        ({"signature": b"short"}, "signature"),
        ({"layers": (3, 1)}, "layers"),
        ({"layers": (1, 1)}, "layers"),
        ({"layers": (65536,)}, "layers"),
        ({"layers": tuple(range(MAX_LAYERS + 1))}, "layers"),
        ({"layers": "abc"}, "layers"),
        ({"layers": (1.5,)}, "layers"),
        ({"layers": (True,)}, "layers"),
        ({"codec": 3}, "codec"),
        ({"codec": 1, "block_size": 32}, "block_size"),
        ({"payload": "text"}, "payload"),
    ],
)
def test_frame_validation(changes: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_frame(**changes)
    assert info.value.key == key


def test_frame_normalisation_and_codecs() -> None:
    frame = make_frame(layers=[1, 2], payload=bytearray(b"ab"), kind=3)
    assert frame.layers == (1, 2) and frame.payload == b"ab" and frame.kind is FrameKind.HELLO
    numpy_ints = make_frame(layers=np.arange(3, dtype=np.int64).tolist(), seq=np.uint64(5))
    assert type(numpy_ints.seq) is int and numpy_ints.seq == 5
    numpy_layers = make_frame(layers=tuple(np.array([1, 4], dtype=np.int32)))
    assert numpy_layers.layers == (1, 4) and all(type(i) is int for i in numpy_layers.layers)
    assert make_frame(codec=0, block_size=0).codec == 0  # fp32 ignores the block size
    assert quantizer_for(make_frame(codec=0, block_size=0)) == Float32Quantizer()
    assert quantizer_for(make_frame(codec=1, block_size=64)) == BlockInt8Quantizer(64)
    assert quantizer_for(make_frame(codec=2, block_size=256)) == BlockInt4Quantizer(256)
    assert [
        codec_id(q) for q in (Float32Quantizer(), BlockInt8Quantizer(), BlockInt4Quantizer())
    ] == [0, 1, 2]


def test_every_codec_has_one_wire_number() -> None:
    assert sorted(CODEC_NAMES.values()) == sorted(CODECS)
    for name in CODECS:
        number = codec_id(make_quantizer(name))
        assert CODEC_NAMES[number] == name
        assert quantizer_for(make_frame(codec=number, block_size=128)).name == name


def test_key_and_argument_errors_are_config_errors() -> None:
    data = encode_frame(make_frame(), KEY)
    with pytest.raises(ConfigError, match="16 bytes"):
        encode_frame(make_frame(), b"short")
    with pytest.raises(ConfigError, match="16 bytes"):
        decode(data, key=b"")
    with pytest.raises(ConfigError):
        decode_frame(data, KEY, swarm_id=-1, signature=SIG)
    with pytest.raises(ConfigError):
        decode_frame(data, KEY, swarm_id=SWARM, signature=b"x")


def test_replay_window_basics() -> None:
    window = ReplayWindow(size=8)
    window.check_and_update(1, 100)
    with pytest.raises(FrameDecodeError, match="replayed"):
        window.check_and_update(1, 100)
    window.check_and_update(1, 98)  # reordered, within the window
    window.check_and_update(1, 93)  # the oldest still in the window
    with pytest.raises(FrameDecodeError, match="replayed"):
        window.check_and_update(1, 98)
    with pytest.raises(FrameDecodeError, match="older than the window"):
        window.check_and_update(1, 92)
    window.check_and_update(2, 5)  # senders are independent
    window.check_and_update(1, 2**64 - 1)  # a jump beyond the window clears it
    with pytest.raises(FrameDecodeError, match="older than the window"):
        window.check_and_update(1, 101)
    with pytest.raises(FrameDecodeError, match="bad sequence"):
        window.check_and_update(1, -1)
    assert len(window) == 2
    window.forget(1)
    window.check_and_update(1, 0)
    with pytest.raises(ConfigError):
        ReplayWindow(0)


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 70),
    seqs=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 150)), max_size=200),
)
def test_replay_window_matches_a_reference_model(size: int, seqs: list[tuple[int, int]]) -> None:
    """Accept iff never seen and newer than (highest seen - size)."""
    window = ReplayWindow(size)
    seen: dict[int, set[int]] = {}
    for sender, seq in seqs:
        history = seen.setdefault(sender, set())
        expected = seq not in history and (not history or seq > max(history) - size)
        try:
            window.check_and_update(sender, seq)
            accepted = True
        except FrameDecodeError:
            accepted = False
        assert accepted == expected, (sender, seq)
        if accepted:
            history.add(seq)


def test_replayed_frame_is_rejected_end_to_end() -> None:
    window = ReplayWindow()
    frames = [encode_frame(make_frame(seq=seq), KEY) for seq in (1, 3, 2)]
    for data in frames:
        frame = decode(data)
        window.check_and_update(frame.sender, frame.seq)  # in-window reordering is fine
    frame = decode(frames[0])  # a byte-exact replay authenticates...
    with pytest.raises(FrameDecodeError, match="replayed"):
        window.check_and_update(frame.sender, frame.seq)  # ...and the window refuses it


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    okm = _hkdf_sha256(bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_derive_swarm_key() -> None:
    key = derive_swarm_key("secret", 1)
    assert len(key) == 32
    assert key == derive_swarm_key(b"secret", 1)
    assert key != derive_swarm_key("secret", 2)
    assert key != derive_swarm_key("secret2", 1)
    for bad_secret, bad_swarm in (("", 1), (b"", 1), ("s", -1), ("s", 2**32), (None, 1)):
        with pytest.raises(ConfigError):
            derive_swarm_key(bad_secret, bad_swarm)  # type: ignore[arg-type]


def load_fuzzer() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_wire.py"
    spec = importlib.util.spec_from_file_location("swarmfl_fuzz_wire", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fuzz_mutated_frames_only_raise_frame_decode_error() -> None:
    """20,000 mutants (half re-signed): only FrameDecodeError, none via the catch-all, fast."""
    fuzz = load_fuzzer()
    rng = random.Random(2024)
    corpus = fuzz.corpus(rng)
    for data in corpus:
        decode_frame(data, fuzz.KEY, swarm_id=fuzz.SWARM_ID, signature=fuzz.SIGNATURE)
    reasons: dict[str, int] = {}
    slowest = 0.0
    # CPU time of this thread, not wall time: on a busy machine a decode can wait for a core
    # for longer than it runs, and that says nothing about the decoder.
    started = time.thread_time()
    for _ in range(20_000):
        data = fuzz.mutate(rng, corpus)
        t0 = time.thread_time()
        try:
            decode_frame(data, fuzz.KEY, swarm_id=fuzz.SWARM_ID, signature=fuzz.SIGNATURE)
        except FrameDecodeError as error:
            reason = fuzz.reason_of(error)
            reasons[reason] = reasons.get(reason, 0) + 1
        slowest = max(slowest, time.thread_time() - t0)
    assert time.thread_time() - started < 15
    assert slowest < 0.05, slowest
    # The catch-all in decode_frame must never be what caught a mutant.
    assert "malformed" not in reasons, reasons
    # The re-signed share reached the checks behind the tag, including lz4 on garbage.
    for reason in ("bad tag", "corrupt lz4 payload", "unknown kind", "bad codec", "bad layers"):
        assert reasons.get(reason, 0) > 0, reasons
