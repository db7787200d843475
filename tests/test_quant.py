"""Tests of swarmfl.core.quant: round trips, error bounds, layouts, refusals, total decoding."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarmfl.core.quant import (
    BlockInt4Quantizer,
    BlockInt8Quantizer,
    Float32Quantizer,
    NonFiniteError,
    make_quantizer,
    quantization_step,
)
from swarmfl.errors import ConfigError, FrameDecodeError

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
BLOCK_QUANTIZERS = [BlockInt8Quantizer, BlockInt4Quantizer]

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
vectors = hnp.arrays(np.float32, st.integers(0, 700), elements=finite_f32)
block_sizes = st.sampled_from([64, 100, 128, 256])


def assert_within_half_step(
    quantizer: BlockInt8Quantizer | BlockInt4Quantizer, x: np.ndarray
) -> np.ndarray:
    """Encode/decode ``x``; check sizes, scales and |x - decoded| <= scale / 2 per block."""
    payload = quantizer.encode(x)
    assert len(payload) == quantizer.payload_bytes(x.size)
    decoded = quantizer.decode(payload, x.size)
    assert decoded.dtype == np.float32 and decoded.shape == x.shape
    assert decoded.flags.writeable
    scales = quantizer.scales(payload, x.size).astype(np.float64)
    assert scales.size == -(-x.size // quantizer.block_size)
    per_value = np.repeat(scales, quantizer.block_size)[: x.size]
    error = np.abs(x.astype(np.float64) - decoded.astype(np.float64))
    # A few float32 ulps of slack: the reciprocal and the product each round once.
    bound = per_value / 2 * (1 + 1e-5) + np.abs(x.astype(np.float64)) * 1e-6 + 1e-45
    assert (error <= bound).all(), float((error - bound).max())
    # The scale is maxabs / qmax (clamped) for non-zero blocks and 0 for zero blocks.
    for block, scale in enumerate(scales):
        chunk = np.abs(x[block * quantizer.block_size : (block + 1) * quantizer.block_size])
        maxabs = float(chunk.max())
        if maxabs == 0:
            assert scale == 0
        else:
            expected = min(max(maxabs / quantizer.qmax, FLT_MIN), FLT_MAX / quantizer.qmax)
            assert scale == pytest.approx(expected, rel=1e-6)
    return decoded


@pytest.mark.parametrize("cls", BLOCK_QUANTIZERS)
@settings(max_examples=150, deadline=None)
@given(x=vectors, block_size=block_sizes)
def test_block_round_trip_error_is_at_most_half_a_step(
    cls: type[BlockInt8Quantizer], x: np.ndarray, block_size: int
) -> None:
    assert_within_half_step(cls(block_size), x)


@pytest.mark.parametrize("cls", BLOCK_QUANTIZERS)
@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.integers(1, 400),
        elements=st.sampled_from([0.0, -0.0, 1e30, -1e30, FLT_MAX, -FLT_MAX, 1e-45, -1e-40])
        | finite_f32,
    )
)
def test_block_extreme_values(cls: type[BlockInt8Quantizer], x: np.ndarray) -> None:
    decoded = assert_within_half_step(cls(64), x)
    assert np.isfinite(decoded).all()


@pytest.mark.parametrize("cls", BLOCK_QUANTIZERS)
@pytest.mark.parametrize(
    "values",
    [
        np.zeros(300, np.float32),
        np.full(129, 1e30, np.float32),
        np.full(65, -FLT_MAX, np.float32),
        np.array([1e-45, -2e-45, 3e-44, 0.0] * 40, np.float32),  # denormal blocks
        np.linspace(-1, 1, 1000, dtype=np.float32),
    ],
    ids=["zeros", "1e30", "-flt-max", "denormals", "linspace"],
)
def test_block_named_extremes(cls: type[BlockInt8Quantizer], values: np.ndarray) -> None:
    decoded = assert_within_half_step(cls(64), values)
    if not values.any():
        assert not decoded.any()
        assert quantization_step(values, cls(64)) == 0.0


@pytest.mark.parametrize("name", ["fp32", "int8", "int4"])
def test_empty_vector(name: str) -> None:
    quantizer = make_quantizer(name, 128)  # type: ignore[arg-type]
    payload = quantizer.encode(np.zeros(0, np.float32))
    assert payload == b""
    assert quantizer.decode(payload, 0).shape == (0,)
    with pytest.raises(FrameDecodeError):
        quantizer.decode(b"\x00", 0)


@settings(max_examples=100, deadline=None)
@given(x=vectors)
def test_fp32_round_trip_is_bitwise_exact(x: np.ndarray) -> None:
    quantizer = Float32Quantizer()
    payload = quantizer.encode(x)
    assert payload == x.astype("<f4").tobytes()
    decoded = quantizer.decode(payload, x.size)
    assert decoded.tobytes() == x.tobytes()  # also keeps -0.0 and denormals
    assert quantization_step(x, quantizer) == 0.0


def test_int8_layout() -> None:
    # maxabs 127 -> scale 1.0; rint rounds half to even: -63.5 -> -64.
    x = np.array([127.0, -63.5, 0.4, 0.6], np.float32)
    payload = BlockInt8Quantizer(64).encode(x)
    assert payload == struct.pack("<f", 1.0) + bytes([127, 256 - 64, 0, 1])


def test_int4_layout() -> None:
    # maxabs 7 -> scale 1.0; codes 7, -7, 1, 0, 2 -> nibbles 15, 1, 9, 8, 10 (+ padding 8).
    x = np.array([7.0, -7.0, 1.0, 0.0, 2.0], np.float32)
    payload = BlockInt4Quantizer(64).encode(x)
    assert payload == struct.pack("<f", 1.0) + bytes([0x1F, 0x89, 0x8A])
    assert BlockInt4Quantizer(64).decode(payload, 5).tolist() == [7.0, -7.0, 1.0, 0.0, 2.0]


def test_partial_last_block_has_its_own_scale() -> None:
    x = np.concatenate([np.full(64, 1.0), np.full(10, 100.0)]).astype(np.float32)
    quantizer = BlockInt8Quantizer(64)
    scales = quantizer.scales(quantizer.encode(x), x.size)
    assert scales.tolist() == pytest.approx([1 / 127, 100 / 127])
    assert quantization_step(x, quantizer) == pytest.approx(100 / 127)


@pytest.mark.parametrize("name", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(name: str, bad: float) -> None:
    x = np.ones(300, np.float32)
    x[[5, 299]] = bad
    quantizer = make_quantizer(name)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError, match="2 of 300 values"):
        quantizer.encode(x)
    assert issubclass(NonFiniteError, ConfigError)


def test_float64_input_is_cast_and_overflow_is_refused() -> None:
    quantizer = BlockInt8Quantizer()
    decoded = quantizer.decode(quantizer.encode(np.array([1.0, 2.0])), 2)
    assert decoded.tolist() == pytest.approx([1.0, 2.0], rel=1e-2)
    with pytest.raises(NonFiniteError, match="1 of 1"):
        quantizer.encode(np.array([1e300]))


@pytest.mark.parametrize("name", ["fp32", "int8", "int4"])
def test_two_dimensional_input_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="1-D"):
        make_quantizer(name).encode(np.zeros((2, 3), np.float32))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [63, 257, 0, -128, True, 128.0])
def test_block_size_out_of_range_is_refused(size: object) -> None:
    for cls in BLOCK_QUANTIZERS:
        with pytest.raises(ConfigError, match="block_size"):
            cls(size)  # type: ignore[arg-type]


def test_make_quantizer() -> None:
    assert make_quantizer("fp32") == Float32Quantizer()
    assert make_quantizer("int8", 64) == BlockInt8Quantizer(64)
    assert make_quantizer("int4", 256) == BlockInt4Quantizer(256)
    assert make_quantizer("int8").name == "int8" and make_quantizer("int8").block_size == 128
    with pytest.raises(ConfigError, match="unknown quantizer"):
        make_quantizer("int2")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("count", [1, 64, 129, 1001])
def test_decode_refuses_wrong_sizes(name: str, count: int) -> None:
    quantizer = make_quantizer(name, 64)  # type: ignore[arg-type]
    payload = quantizer.encode(np.ones(count, np.float32))
    for bad in (payload[:-1], payload + b"\x00", b""):
        with pytest.raises(FrameDecodeError, match="size mismatch"):
            quantizer.decode(bad, count)
    with pytest.raises(FrameDecodeError):
        quantizer.decode(payload, count + 2)  # int4 packs two per byte: +1 may fit the padding
    for bad_count in (-1, 1.5, True):
        with pytest.raises(FrameDecodeError, match="bad value count"):
            quantizer.decode(payload, bad_count)  # type: ignore[arg-type]
    with pytest.raises(FrameDecodeError, match="not bytes"):
        quantizer.decode("text", count)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", BLOCK_QUANTIZERS)
@pytest.mark.parametrize("scale", [np.nan, np.inf, -1.0, FLT_MAX, 1e38])
def test_decode_refuses_bad_scales(cls: type[BlockInt8Quantizer], scale: float) -> None:
    quantizer = cls(64)
    payload = bytearray(quantizer.encode(np.ones(100, np.float32)))
    struct.pack_into("<f", payload, 4, scale)  # the second block's scale
    with pytest.raises(FrameDecodeError, match="scale"):
        quantizer.decode(bytes(payload), 100)


def test_decode_refuses_out_of_range_codes() -> None:
    int8 = BlockInt8Quantizer(64)
    payload = bytearray(int8.encode(np.ones(10, np.float32)))
    payload[4 + 3] = 0x80  # -128
    with pytest.raises(FrameDecodeError, match="-128"):
        int8.decode(bytes(payload), 10)
    int4 = BlockInt4Quantizer(64)
    payload = bytearray(int4.encode(np.ones(10, np.float32)))
    payload[4 + 2] &= 0xF0  # a low nibble of 0, i.e. the code -8
    with pytest.raises(FrameDecodeError, match="nibble"):
        int4.decode(bytes(payload), 10)


def test_decode_refuses_non_finite_fp32() -> None:
    with pytest.raises(FrameDecodeError, match="NaN"):
        Float32Quantizer().decode(struct.pack("<ff", 1.0, float("inf")), 2)


@pytest.mark.parametrize("name", ["fp32", "int8", "int4"])
@settings(max_examples=150, deadline=None)
@given(data=st.data(), count=st.integers(0, 300))
def test_decode_of_arbitrary_bytes_is_total(name: str, data: st.DataObject, count: int) -> None:
    """Any payload of the right size decodes to finite floats or raises FrameDecodeError."""
    quantizer = make_quantizer(name, 64)  # type: ignore[arg-type]
    size = quantizer.payload_bytes(count)
    payload = data.draw(st.binary(min_size=size, max_size=size))
    try:
        decoded = quantizer.decode(payload, count)
    except FrameDecodeError:
        return
    assert decoded.shape == (count,) and np.isfinite(decoded).all()


def test_encoding_is_deterministic_and_leaves_input_untouched() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    copy = x.copy()
    for name in ("fp32", "int8", "int4"):
        quantizer = make_quantizer(name)  # type: ignore[arg-type]
        assert quantizer.encode(x) == quantizer.encode(x)
        assert np.array_equal(x, copy)


def test_compression_ratio_of_block_codecs() -> None:
    x = np.ones(128 * 100, np.float32)
    assert len(BlockInt8Quantizer(128).encode(x)) == 100 * 4 + 12800
    assert len(BlockInt4Quantizer(128).encode(x)) == 100 * 4 + 6400


@pytest.mark.parametrize("name", ["fp32", "int8", "int4"])
@given(x=vectors, block_size=block_sizes)
@settings(max_examples=60, deadline=None)
def test_encode_decoded_is_encode_then_decode_bit_for_bit(
    name: str, x: np.ndarray, block_size: int
) -> None:
    quantizer = make_quantizer(name, block_size)  # type: ignore[arg-type]
    payload, values = quantizer.encode_decoded(x)
    assert payload == quantizer.encode(x)
    # Bit patterns, so that -0.0 and 0.0 count as different.
    assert values.tobytes() == quantizer.decode(payload, x.size).tobytes()
    assert values.flags.writeable
