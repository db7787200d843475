"""Quantizers: float32 vectors to compact payloads and back (pure numpy, vectorised).

Three codecs, all over a 1-D float32 vector of ``count`` values:

* ``fp32`` -- the raw little-endian float32 values (``4 * count`` bytes). Lossless.
* ``int8`` -- per-block symmetric int8. The vector is cut into blocks of ``block_size`` values
  (64 to 256; the last block may be shorter). Each block stores one little-endian float32 scale
  ``s = maxabs / 127`` and one int8 code ``q = rint(x / s)`` per value, so ``|x - q * s| <= s / 2``.
  A block of zeros has scale 0. Layout: all scales first, then all codes
  (``4 * nblocks + count`` bytes).
* ``int4`` -- the same with codes in [-7, 7] and ``s = maxabs / 7``, two codes per byte: value
  ``2i`` in the low nibble of byte ``i``, value ``2i + 1`` in the high nibble, each stored as
  ``q + 8`` (1 to 15). An odd count leaves the last high nibble as padding
  (``4 * nblocks + ceil(count / 2)`` bytes).

Why float32 scales and not float16: a float16 scale overflows for values above ~8e6 and flushes
blocks below ~8e-6 to zero, while a float32 scale costs only 2 more bytes per block (1.6 % of an
int8 payload at block 128) and keeps the error bound for every finite float32 input.

Scales are kept within ``[FLT_MIN, FLT_MAX / qmax]``: the upper clamp means a decoded value can
never overflow to infinity, and the lower clamp (for blocks of denormals only) keeps the reciprocal
finite. Encoding refuses NaN and infinity (:class:`NonFiniteError`, the caller's bug). Decoding is
total: a payload whose size does not match ``count``, a negative or non-finite scale, a scale above
the clamp, or a code outside the symmetric range raises
:class:`~swarmfl.errors.FrameDecodeError`, so an authenticated but broken peer cannot plant NaN or
infinity in a replica.

The codec names (:data:`CODECS`, :data:`DEFAULT_CODEC`, :data:`CodecName`) are defined in
:mod:`swarmfl.core.codecs` and exported here too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from swarmfl.core.codecs import CODECS, DEFAULT_CODEC, CodecName
from swarmfl.errors import ConfigError, FrameDecodeError

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "BlockInt4Quantizer",
    "BlockInt8Quantizer",
    "CodecName",
    "Float32Quantizer",
    "NonFiniteError",
    "Quantizer",
    "all_finite",
    "make_quantizer",
    "quantization_step",
]

MIN_BLOCK_SIZE = 64
MAX_BLOCK_SIZE = 256


_F32 = np.dtype(np.float32)
_LE_F32 = np.dtype("<f4")
_LE_U2 = np.dtype("<u2")
_FLT_MIN = np.float32(np.finfo(np.float32).tiny)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
# Values quantised per pass: the float32 scratch (512 KB) stays in cache and is all the encoder
# allocates beyond its payload, instead of two float32 arrays the size of the model.
_CHUNK_VALUES = 131072
_FINITE_CHUNK_VALUES = 262144

FloatArray = npt.NDArray[np.float32]


class NonFiniteError(ConfigError):
    """The values to encode contain NaN or infinity: the caller's bug, never put on the wire."""


class Quantizer(Protocol):
    """Turns a 1-D float32 vector into a payload and back.

    ``decode(encode(x), len(x))`` approximates ``x`` (exactly for a lossless codec). ``encode``
    raises :class:`NonFiniteError` on NaN or infinity and :class:`ConfigError` on a vector that
    is not 1-D. ``decode`` is total: it raises :class:`FrameDecodeError` on any payload that is
    not exactly what ``count`` implies, and returns a fresh, writable float32 array.
    """

    @property
    def name(self) -> str:
        """The codec name, one of :data:`CODECS`."""
        ...

    @property
    def block_size(self) -> int:
        """Values per scale (0 for a codec without blocks)."""
        ...

    def payload_bytes(self, count: int) -> int:
        """The exact payload size for ``count`` values."""
        ...

    def encode(self, values: np.ndarray) -> bytes:
        """Encode a 1-D float32 vector."""
        ...

    def decode(self, payload: bytes | memoryview, count: int) -> np.ndarray:
        """Decode ``count`` values from ``payload``."""
        ...

    def encode_decoded(
        self, values: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[bytes, np.ndarray]:
        """``encode(values)`` and, bit for bit, what ``decode`` makes of it (in ``out`` if
        given: a flat float32 array, which may be ``values`` itself), in one pass.

        The sender of a stream needs both (its replica is what receivers decode); taking the
        decoded values from the codes in hand skips parsing and re-checking its own payload.
        """
        ...


def is_flat_float32(values: object) -> bool:
    """True for a contiguous 1-D float32 ndarray: what the codecs take as it is, no conversion."""
    return (
        type(values) is np.ndarray
        and values.dtype == _F32
        and values.ndim == 1
        and values.flags.c_contiguous
    )


def all_finite(values: np.ndarray) -> bool:
    """True if no value of the flat float array ``values`` is NaN or infinite.

    Chunk by chunk: ``np.isfinite(values).all()`` would allocate a bool per value (a quarter of
    a float32 model); a chunk's bools (256 KB) cost about the same time.
    """
    step = _FINITE_CHUNK_VALUES
    if values.size <= step:
        return bool(np.isfinite(values).all())
    return all(np.isfinite(values[i : i + step]).all() for i in range(0, values.size, step))


def _as_vector(values: np.ndarray) -> FloatArray:
    """The input as a contiguous 1-D float32 array (no copy when it already is one)."""
    if is_flat_float32(values):
        return values
    # A float64 input above FLT_MAX becomes inf in the cast; the finiteness check reports it.
    with np.errstate(over="ignore", invalid="ignore"):
        vector = np.ascontiguousarray(values, dtype=_F32)
    if vector.ndim != 1:
        raise ConfigError(f"expected a 1-D vector, got shape {vector.shape}", key="values")
    return vector


def _non_finite_error(vector: FloatArray) -> NonFiniteError:
    bad = int(np.count_nonzero(~np.isfinite(vector)))
    return NonFiniteError(
        f"{bad} of {vector.size} values are NaN or infinite; refusing to encode them",
        key="values",
    )


def _out(out: np.ndarray | None, count: int) -> FloatArray | None:
    """``out`` checked to be a flat float32 array of ``count`` values (None stays None)."""
    if out is not None and (not is_flat_float32(out) or out.size != count):
        raise ConfigError(f"must be {count} contiguous float32 values", key="out")
    return out


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise FrameDecodeError(f"bad value count: {count!r}")
    return int(count)


def _check_payload(payload: bytes | memoryview, expected: int, name: str, count: int) -> memoryview:
    try:
        view = memoryview(payload).cast("B")
    except TypeError as exc:
        raise FrameDecodeError(f"{name} payload is not bytes") from exc
    if view.nbytes != expected:
        raise FrameDecodeError(
            f"{name} payload size mismatch: {view.nbytes} bytes for {count} values, "
            f"expected {expected}"
        )
    return view


@dataclass(frozen=True, slots=True)
class Float32Quantizer:
    """The lossless codec: raw little-endian float32 values."""

    name: ClassVar[str] = "fp32"
    block_size: ClassVar[int] = 0

    def payload_bytes(self, count: int) -> int:
        """``4 * count``."""
        return 4 * count

    def encode(self, values: np.ndarray) -> bytes:
        """The values as little-endian float32 bytes.

        Raises :class:`NonFiniteError` on NaN/inf and :class:`ConfigError` if not 1-D.
        """
        vector = _as_vector(values)
        if not all_finite(vector):
            raise _non_finite_error(vector)
        return vector.astype(_LE_F32, copy=False).tobytes()

    def encode_view(self, values: np.ndarray) -> memoryview:
        """The payload as a read-only byte view of ``values`` itself when they are already
        little-endian float32 (no copy; the view changes if ``values`` do), else of a copy.

        Raises :class:`NonFiniteError` on NaN/inf and :class:`ConfigError` if not 1-D.
        """
        vector = _as_vector(values)
        if not all_finite(vector):
            raise _non_finite_error(vector)
        return vector.astype(_LE_F32, copy=False).data.cast("B").toreadonly()

    def encode_decoded(
        self, values: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[bytes, np.ndarray]:
        """The payload and the values it holds (lossless): a fresh float32 copy, or ``out``."""
        payload = self.encode(values)
        decoded = np.frombuffer(payload, dtype=_LE_F32)
        if out is None:
            return payload, decoded.astype(_F32)
        target = _out(out, decoded.size)
        assert target is not None
        target[:] = decoded
        return payload, target

    def decode(self, payload: bytes | memoryview, count: int) -> np.ndarray:
        """A fresh float32 array of ``count`` values.

        Raises :class:`FrameDecodeError` if the size is not ``4 * count`` or a value is not finite.
        """
        count = _check_count(count)
        view = _check_payload(payload, 4 * count, self.name, count)
        out = np.frombuffer(view, dtype=_LE_F32, count=count).astype(_F32)
        if not all_finite(out):
            raise FrameDecodeError("fp32 payload contains NaN or infinity")
        return out


@dataclass(frozen=True, slots=True)
class _BlockQuantizer:
    """Per-block symmetric quantization with float32 scales; subclasses pick the code width."""

    block_size: int = 128

    name: ClassVar[str] = ""
    qmax: ClassVar[int] = 0

    def __post_init__(self) -> None:
        size = self.block_size
        if (
            isinstance(size, bool)
            or not isinstance(size, (int, np.integer))
            or not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE
        ):
            raise ConfigError(
                f"must be an integer in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}], got {size!r}",
                key="block_size",
            )

    @property
    def scale_max(self) -> np.float32:
        """The largest scale, so that ``qmax * scale`` cannot overflow float32."""
        return _scale_max(self.qmax)

    def blocks(self, count: int) -> int:
        """The number of blocks (and scales) for ``count`` values."""
        return -(-count // self.block_size)

    def payload_bytes(self, count: int) -> int:
        """The exact payload size for ``count`` values."""
        return 4 * self.blocks(count) + self._code_bytes(count)

    def _code_bytes(self, count: int) -> int:
        raise NotImplementedError  # pragma: no cover - abstract, both subclasses override

    def scales(self, payload: bytes | memoryview, count: int) -> np.ndarray:
        """The per-block scales stored in ``payload`` (the quantization step of each block).

        Raises :class:`FrameDecodeError` if the payload size does not match ``count``.
        """
        count = _check_count(count)
        view = _check_payload(payload, self.payload_bytes(count), self.name, count)
        return np.frombuffer(view, dtype=_LE_F32, count=self.blocks(count)).astype(_F32)

    def _quantize(self, vector: FloatArray, scales_out: np.ndarray, codes_out: np.ndarray) -> None:
        """Fill ``scales_out`` and ``codes_out`` (the rint'ed codes, in its own dtype) for
        ``vector``.

        Two passes, chunk by chunk of whole blocks through one float32 scratch (not a model's
        worth): the block maxima (``maximum.reduceat``), then each value times its block's
        reciprocal scale, rounded; the partial last block included.
        """
        count = vector.size
        if count == 0:
            return
        size = self.block_size
        chunk = size * max(1, _CHUNK_VALUES // size)
        scratch = np.empty(min(chunk, count), dtype=_F32)
        maxabs = np.empty(self.blocks(count), dtype=_F32)
        for first in range(0, count, chunk):
            part = vector[first : first + chunk]
            blocks = first // size
            maxabs[blocks : blocks + -(-part.size // size)] = np.maximum.reduceat(
                np.abs(part, out=scratch[: part.size]), block_starts(part.size, size)
            )
        if not np.isfinite(maxabs).all():
            raise _non_finite_error(vector)
        zero = maxabs == 0
        scale = np.minimum(np.maximum(maxabs / np.float32(self.qmax), _FLT_MIN), self.scale_max)
        scale[zero] = 0
        # x * (1/s) instead of x / s: a multiply is cheaper, and the bound still holds since
        # the rounding of the reciprocal moves x/s by a few ulps, far below half a step.
        inverse = np.reciprocal(np.where(zero, np.float32(1), scale))
        inverse[zero] = 0
        scales_out[:] = scale
        for first in range(0, count, chunk):
            part = vector[first : first + chunk]
            work = scratch[: part.size]
            blocks = first // size
            full = part.size // size
            np.multiply(
                part[: full * size].reshape(full, size),
                inverse[blocks : blocks + full, None],
                out=work[: full * size].reshape(full, size),
            )
            if part.size > full * size:
                np.multiply(part[full * size :], inverse[blocks + full], out=work[full * size :])
            np.rint(work, out=work)
            np.copyto(codes_out[first : first + part.size], work, casting="unsafe")

    def _decode_scales(self, view: memoryview, count: int) -> np.ndarray:
        scales = np.frombuffer(view, dtype=_LE_F32, count=self.blocks(count)).astype(_F32)
        # NaN fails both comparisons, so this also refuses NaN scales.
        if scales.size and not (scales.min() >= 0 and scales.max() <= self.scale_max):
            raise FrameDecodeError(f"{self.name} payload has a negative, non-finite or huge scale")
        return scales

    def _scale_codes(
        self,
        codes: npt.NDArray[np.int8],
        scales: np.ndarray,
        count: int,
        out: FloatArray | None = None,
    ) -> FloatArray:
        """``codes * scale`` of each block, in ``out`` or a fresh float32 array."""
        if out is None:
            out = np.empty(count, dtype=_F32)
        size = self.block_size
        full = count // size
        np.multiply(
            codes[: full * size].reshape(full, size),
            scales[:full, None],
            out=out[: full * size].reshape(full, size),
        )
        if count > full * size:
            np.multiply(codes[full * size :], scales[full], out=out[full * size :])
        return out


@functools.lru_cache(maxsize=64)
def block_starts(count: int, block_size: int) -> npt.NDArray[np.intp]:
    """The index of each block's first value (read-only; for ``ufunc.reduceat``)."""
    starts = np.arange(0, count, block_size, dtype=np.intp)
    starts.flags.writeable = False
    return starts


def _scale_max(qmax: int) -> np.float32:
    scale = np.float32(np.float64(_FLT_MAX) / qmax)
    while np.float64(scale) * qmax > np.float64(_FLT_MAX):
        scale = np.nextafter(scale, np.float32(0))
    return scale


@dataclass(frozen=True, slots=True)
class BlockInt8Quantizer(_BlockQuantizer):
    """Per-block symmetric int8: one float32 scale per block, codes in [-127, 127].

    Raises :class:`ConfigError` if ``block_size`` is not in [64, 256].
    """

    name: ClassVar[str] = "int8"
    qmax: ClassVar[int] = 127

    def _code_bytes(self, count: int) -> int:
        return count

    def encode(self, values: np.ndarray) -> bytes:
        """Scales then int8 codes; see the module docstring for the layout.

        Raises :class:`NonFiniteError` on NaN/inf and :class:`ConfigError` if not 1-D.
        """
        return self._encode(values)[0].tobytes()

    def encode_decoded(
        self, values: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[bytes, np.ndarray]:
        """The payload and what :meth:`decode` returns for it (the same codes times scales),
        written into ``out`` if given (it may be ``values`` itself, read before it is written)."""
        payload, nblocks = self._encode(values)
        codes = payload[4 * nblocks :].view(np.int8)
        scales = payload[: 4 * nblocks].view(_LE_F32)
        return payload.tobytes(), self._scale_codes(
            codes, scales, codes.size, _out(out, codes.size)
        )

    def _encode(self, values: np.ndarray) -> tuple[npt.NDArray[np.uint8], int]:
        vector = _as_vector(values)
        nblocks = self.blocks(vector.size)
        payload = np.empty(4 * nblocks + vector.size, dtype=np.uint8)
        scales = payload[: 4 * nblocks].view(_LE_F32)
        # The codes are integers in [-127, 127] by construction, so the cast is exact.
        self._quantize(vector, scales, payload[4 * nblocks :].view(np.int8))
        return payload, nblocks

    def decode(self, payload: bytes | memoryview, count: int) -> np.ndarray:
        """A fresh float32 array of ``count`` values.

        Raises :class:`FrameDecodeError` on a size mismatch, a bad scale or the code -128.
        """
        count = _check_count(count)
        view = _check_payload(payload, self.payload_bytes(count), self.name, count)
        scales = self._decode_scales(view, count)
        codes = np.frombuffer(view, dtype=np.int8, offset=4 * scales.size)
        if codes.size and codes.min() < -self.qmax:
            raise FrameDecodeError("int8 payload has the code -128")
        return self._scale_codes(codes, scales, count)


@dataclass(frozen=True, slots=True)
class BlockInt4Quantizer(_BlockQuantizer):
    """Per-block symmetric int4: one float32 scale per block, codes in [-7, 7], two per byte.

    Raises :class:`ConfigError` if ``block_size`` is not in [64, 256].
    """

    name: ClassVar[str] = "int4"
    qmax: ClassVar[int] = 7

    def _code_bytes(self, count: int) -> int:
        return (count + 1) // 2

    def encode(self, values: np.ndarray) -> bytes:
        """Scales then packed nibbles; see the module docstring for the layout.

        Raises :class:`NonFiniteError` on NaN/inf and :class:`ConfigError` if not 1-D.
        """
        return self._encode(values)[0]

    def encode_decoded(
        self, values: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[bytes, np.ndarray]:
        """The payload and what :meth:`decode` returns for it (the same codes times scales),
        written into ``out`` if given (it may be ``values`` itself, read before it is written)."""
        payload, scales, nibbles = self._encode(values)
        codes = nibbles.view(np.int8)
        codes -= 8
        return payload, self._scale_codes(codes, scales, codes.size, _out(out, codes.size))

    def _encode(self, values: np.ndarray) -> tuple[bytes, np.ndarray, npt.NDArray[np.uint8]]:
        """The payload, its scales and the ``count`` nibbles (codes + 8, one per byte)."""
        vector = _as_vector(values)
        count = vector.size
        nblocks = self.blocks(count)
        payload = np.empty(4 * nblocks + (count + 1) // 2, dtype=np.uint8)
        scales = payload[: 4 * nblocks].view(_LE_F32)
        codes = np.empty(count + (count & 1), dtype=_F32)
        codes[count:] = 0  # the padding nibble of an odd count encodes 0
        self._quantize(vector, scales, codes[:count])
        codes += 8  # offset to 1..15, so a nibble is unsigned
        nibbles = codes.astype(np.uint8)
        # Each little-endian pair (lo, hi) of nibble bytes becomes the byte lo | hi << 4.
        pairs = nibbles.view(_LE_U2)
        packed = (pairs & 0x000F) | ((pairs >> 4) & 0x00F0)
        np.copyto(payload[4 * nblocks :], packed, casting="unsafe")
        return payload.tobytes(), scales, nibbles[:count]

    def decode(self, payload: bytes | memoryview, count: int) -> np.ndarray:
        """A fresh float32 array of ``count`` values.

        Raises :class:`FrameDecodeError` on a size mismatch, a bad scale or the nibble 0 (-8).
        """
        count = _check_count(count)
        view = _check_payload(payload, self.payload_bytes(count), self.name, count)
        scales = self._decode_scales(view, count)
        packed = np.frombuffer(view, dtype=np.uint8, offset=4 * scales.size)
        pairs = np.empty(packed.size, dtype=_LE_U2)
        np.bitwise_and(packed, 0x0F, out=pairs, casting="unsafe")
        pairs |= (packed & 0xF0).astype(_LE_U2) << 4
        nibbles = pairs.view(np.uint8)[:count]
        if count and nibbles.min() == 0:
            raise FrameDecodeError("int4 payload has the nibble 0 (code -8)")
        codes = nibbles.view(np.int8)
        codes -= 8
        return self._scale_codes(codes, scales, count)


def make_quantizer(name: CodecName, block_size: int = 128) -> Quantizer:
    """The quantizer called ``name`` (``"fp32"``, ``"int8"`` or ``"int4"``).

    ``block_size`` is ignored for ``fp32``. Raises :class:`ConfigError` for an unknown name or a
    block size outside [64, 256].
    """
    if name == "fp32":
        return Float32Quantizer()
    if name == "int8":
        return BlockInt8Quantizer(block_size)
    if name == "int4":
        return BlockInt4Quantizer(block_size)
    raise ConfigError(
        f"unknown quantizer {name!r}; expected one of {', '.join(CODECS)}", key="codec"
    )


def quantization_step(values: np.ndarray, quantizer: Quantizer) -> float:
    """The largest block scale ``quantizer`` uses for ``values`` (0.0 for a lossless codec).

    Decoding errs by at most half of this per value. Raises what ``quantizer.encode`` raises.
    """
    if not isinstance(quantizer, _BlockQuantizer):
        return 0.0
    vector = _as_vector(values)
    scales = quantizer.scales(quantizer.encode(vector), vector.size)
    return float(scales.max()) if scales.size else 0.0
