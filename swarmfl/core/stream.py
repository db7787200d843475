"""Model streams with error feedback (CHOCO-style), sans-IO.

A sender streams one flat float32 vector (its model, or the layers it trains) to all its
neighbours as a sequence of frames. Both ends hold the *public replica* ``x_hat``: what the
neighbours believe the sender's model is.

Stream rules:

1. **Frames are numbered.** ``seq`` increases by exactly 1 per frame (a sender restarted from a
   checkpoint continues its numbering: pass ``first_seq``).
2. **Keyframes.** The first frame, every frame with ``seq % keyframe_interval == 0``, and the
   next frame after :meth:`StreamEncoder.force_keyframe` (for example on a neighbour's NACK) is
   a keyframe: ``payload = Q(x)`` and the replica becomes ``decode(payload)``.
3. **Deltas.** Any other frame is a delta: ``payload = Q(x - x_hat)`` and both ends do
   ``x_hat += decode(payload)``. The sender applies exactly the decoded bytes its receivers
   apply, so the quantization error of one frame is carried into the next delta (error feedback
   by construction) and the replica tracks ``x`` within about one quantization step, without
   drift. Sender and receiver replicas are bitwise equal.
4. **Lossless codec.** With ``fp32`` a delta is the XOR of the float32 bit patterns of ``x`` and
   ``x_hat`` (not their difference, whose rounding would leave ``x_hat`` an ulp away from ``x``),
   so the replica equals ``x`` exactly after every frame; unchanged values XOR to zero bytes,
   which lz4 then removes.
5. **Receiving.** A keyframe newer than the last applied frame resets the replica. A delta whose
   ``seq`` is exactly one more than the last applied frame is added. A delta after a gap, or
   with no replica, raises :class:`~swarmfl.errors.StreamGapError` and drops the replica until
   the next keyframe (:attr:`StreamDecoder.needs_keyframe`; the node may NACK the sender). A
   frame at or before the last applied ``seq`` is a duplicate or arrived late: it is ignored.
   Loss therefore costs freshness, never correctness.
6. **Sparse deltas (optional).** With ``delta_density < 1`` a delta carries only that fraction of
   quantisation blocks, those where ``x - x_hat`` has the most energy; the others are sent as
   zeros (which lz4 packs away) and their residual waits in ``x - x_hat`` for a later frame.
7. **Overflow.** If ``x - x_hat`` or ``x_hat + delta`` would leave the float32 range, the sender
   sends a keyframe instead; a receiver whose replica would overflow refuses the frame
   (:class:`~swarmfl.errors.FrameDecodeError`) and drops the replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from swarmfl.core.quant import (
    Float32Quantizer,
    NonFiniteError,
    Quantizer,
    all_finite,
    block_starts,
    is_flat_float32,
)
from swarmfl.errors import ConfigError, FrameDecodeError, StreamGapError

__all__ = ["PacketKind", "StreamDecoder", "StreamEncoder", "StreamPacket"]

PacketKind = Literal["key", "delta"]

_F32 = np.dtype(np.float32)
_LE_U4 = np.dtype("<u4")
_LE_F32 = np.dtype("<f4")
_ENERGY_CHUNK_VALUES = 65536


def _check_positive_int(value: int, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", key=key)
    return int(value)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _is_lossless(quantizer: Quantizer) -> bool:
    return isinstance(quantizer, Float32Quantizer)


@dataclass(frozen=True, slots=True)
class StreamPacket:
    """One frame of a model stream: what :meth:`StreamEncoder.encode` produced.

    ``count`` is the number of float32 values the payload decodes to. ``payload`` is a
    memoryview only for a borrowed lossless keyframe (see :meth:`StreamEncoder.encode`).
    """

    kind: PacketKind
    seq: int
    payload: bytes | memoryview
    count: int


class StreamEncoder:
    """The sending end of a model stream: turns successive models into key and delta frames.

    Raises :class:`ConfigError` if ``size`` < 1, ``keyframe_interval`` < 1 or ``first_seq`` < 0.
    """

    def __init__(
        self,
        quantizer: Quantizer,
        size: int,
        keyframe_interval: int,
        *,
        first_seq: int = 0,
        delta_density: float = 1.0,
    ) -> None:
        if not 0.0 < delta_density <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {delta_density!r}", key="delta_density")
        self._density = float(delta_density)
        self._quantizer = quantizer
        self._size = _check_positive_int(size, "size", 1)
        self._interval = _check_positive_int(keyframe_interval, "keyframe_interval", 1)
        self._next_seq = _check_positive_int(first_seq, "first_seq", 0)
        self._lossless = _is_lossless(quantizer)
        self._replica: np.ndarray | None = None
        self._force = False
        self._lent = False

    @property
    def size(self) -> int:
        """The number of float32 values in the stream."""
        return self._size

    @property
    def next_seq(self) -> int:
        """The sequence number the next frame will carry."""
        return self._next_seq

    @property
    def replica(self) -> np.ndarray | None:
        """The public replica (what receivers hold), read-only, or None before frame 1.

        Each frame replaces it by a new array (never written in place), so the array returned
        after a frame is also a stable identity for it: a receiver holding this very array
        may take the next one as it is (:meth:`StreamDecoder.follow`).
        """
        return self._replica

    def force_keyframe(self) -> None:
        """Make the next frame a keyframe (for example when a neighbour NACKs)."""
        self._force = True

    def encode(self, x: np.ndarray, *, borrow: bool = False) -> StreamPacket:
        """The next frame for the current model ``x`` (any shape with ``size`` values).

        Updates the replica exactly as receivers will. Raises :class:`ConfigError` if ``x`` has
        the wrong number of values and :class:`~swarmfl.core.quant.NonFiniteError` if it holds NaN
        or infinity (the stream state is then unchanged).

        With ``borrow``, a lossless keyframe is not copied: its payload is a read-only view of
        ``x`` (valid until ``x`` changes) and the replica is unset until the caller, having
        copied the payload where it goes (into a frame), hands that copy to :meth:`adopt`. A
        caller that does not is sent a keyframe next time. Other frames ignore ``borrow``.
        """
        self._lent = False
        if is_flat_float32(x):
            vector = x  # the common case (a learner's flat parameters): no conversion at all
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                vector = np.ascontiguousarray(x, dtype=_F32).reshape(-1)
        if vector.size != self._size:
            raise ConfigError(f"expected {self._size} values, got {vector.size}", key="x")
        seq = self._next_seq
        packet: StreamPacket | None = None
        keyframe = self._replica is None or self._force or seq % self._interval == 0
        if not keyframe:
            packet = self._delta(vector, seq)
        if packet is None:
            if self._lossless and borrow:
                assert isinstance(self._quantizer, Float32Quantizer)
                lent = self._quantizer.encode_view(vector)
                self._replica, self._lent = None, True
                self._next_seq = seq + 1
                self._force = False
                return StreamPacket("key", seq, lent, self._size)
            if self._lossless:
                # A lossless keyframe decodes to exactly ``vector``: view the (immutable)
                # payload bytes instead of decoding or copying them.
                payload: bytes = self._quantizer.encode(vector)
                self._replica = np.frombuffer(payload, dtype=_LE_F32).astype(_F32, copy=False)
            else:
                payload, self._replica = self._quantizer.encode_decoded(vector)
            packet = StreamPacket("key", seq, payload, self._size)
        assert self._replica is not None
        self._replica.flags.writeable = False
        self._next_seq = seq + 1
        self._force = False
        return packet

    def adopt(self, values: np.ndarray) -> None:
        """Take ``values`` as the replica after a borrowed keyframe (see :meth:`encode`):
        the caller's immutable copy of its payload, read-only float32 of ``size`` values.

        Raises :class:`ConfigError` if the last frame was not a borrowed keyframe or ``values``
        is not such an array.
        """
        if not self._lent:
            raise ConfigError("the last frame was not a borrowed keyframe", key="values")
        if values.dtype != _F32 or values.shape != (self._size,) or values.flags.writeable:
            raise ConfigError(
                f"must be {self._size} read-only float32 values, got {values.shape} {values.dtype}",
                key="values",
            )
        self._replica, self._lent = values, False

    def _delta(self, vector: np.ndarray, seq: int) -> StreamPacket | None:
        """A delta frame, updating the replica; None when a keyframe must be sent instead."""
        replica = self._replica
        assert replica is not None
        if self._lossless:
            if not all_finite(vector):
                return None  # let the keyframe path refuse it with NonFiniteError
            bits = np.bitwise_xor(vector.view(np.uint32), replica.view(np.uint32))
            payload = bits.astype(_LE_U4, copy=False).tobytes()
            self._replica = vector.copy()
            return StreamPacket("delta", seq, payload, self._size)
        with np.errstate(over="ignore", invalid="ignore"):
            difference = np.subtract(vector, replica)
        if self._density < 1.0 and self._quantizer.block_size:
            _keep_strongest_blocks(difference, self._quantizer.block_size, self._density)
        try:
            # The decoded step overwrites the difference: no second model-sized array.
            payload, step = self._quantizer.encode_decoded(difference, out=difference)
        except NonFiniteError:
            return None  # x is not finite, or x - x_hat overflowed: a keyframe decides
        with np.errstate(over="ignore", invalid="ignore"):
            np.add(replica, step, out=step)
        if not all_finite(step):
            return None
        self._replica = step
        return StreamPacket("delta", seq, payload, self._size)


def _keep_strongest_blocks(residual: np.ndarray, block_size: int, density: float) -> None:
    """Zero, in place, all but the ``density`` fraction of blocks with the most energy.

    Top-k sparsification on top of quantisation (CHOCO-SGD's compressors compose): the blocks
    left out stay in ``x - x_hat`` and go out in a later delta (error feedback), and their
    all-zero codes cost almost nothing once lz4 packs the payload.
    """
    blocks = -(-residual.size // block_size)
    keep = max(1, int(np.ceil(density * blocks)))
    if keep >= blocks:
        return
    # Block energies in float64, chunk by chunk of whole blocks: a float64 square of the whole
    # residual would be two models' worth of temporary memory.
    energy = np.empty(blocks, dtype=np.float64)
    chunk = block_size * max(1, _ENERGY_CHUNK_VALUES // block_size)
    for first in range(0, residual.size, chunk):
        part = residual[first : first + chunk]
        done = first // block_size
        energy[done : done + -(-part.size // block_size)] = np.add.reduceat(
            np.square(part, dtype=np.float64), block_starts(part.size, block_size)
        )
    dropped = np.argpartition(energy, blocks - keep)[: blocks - keep]
    mask = np.zeros(blocks, dtype=bool)
    mask[dropped] = True
    full = residual.size // block_size
    residual[: full * block_size].reshape(full, block_size)[mask[:full]] = 0.0
    if full < blocks and mask[full]:
        residual[full * block_size :] = 0.0


class StreamDecoder:
    """The receiving end of one sender's model stream: keeps our copy of its public replica.

    Raises :class:`ConfigError` if ``size`` < 1.
    """

    def __init__(self, quantizer: Quantizer, size: int) -> None:
        self._quantizer = quantizer
        self._size = _check_positive_int(size, "size", 1)
        self._lossless = _is_lossless(quantizer)
        self._replica: np.ndarray | None = None
        self._last_seq: int | None = None

    @property
    def size(self) -> int:
        """The number of float32 values in the stream."""
        return self._size

    @property
    def replica(self) -> np.ndarray | None:
        """A read-only view of the sender's replica, or None while waiting for a keyframe."""
        return None if self._replica is None else _read_only(self._replica)

    @property
    def needs_keyframe(self) -> bool:
        """True while there is no replica (never synced, or dropped after a gap)."""
        return self._replica is None

    @property
    def last_seq(self) -> int | None:
        """The sequence number of the last frame applied, or None if none was."""
        return self._last_seq

    def reset(self) -> None:
        """Forget the replica and the sequence number (for a sender that restarted from scratch)."""
        self._replica = None
        self._last_seq = None

    def apply(
        self, kind: PacketKind, seq: int, payload: bytes | memoryview, count: int
    ) -> np.ndarray | None:
        """Apply one frame; return a read-only view of the updated replica, or None if ignored.

        Raises :class:`StreamGapError` for a delta after a gap or before any keyframe (the
        replica is dropped), :class:`FrameDecodeError` for a ``count`` other than ``size``, a
        payload that does not decode, or a delta that would overflow the replica (a delta's
        replica is then dropped), and :class:`ConfigError` for an unknown ``kind``.
        """
        if kind not in ("key", "delta"):
            raise ConfigError(f"must be 'key' or 'delta', got {kind!r}", key="kind")
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or seq < 0:
            raise FrameDecodeError(f"bad sequence number {seq!r}")
        seq = int(seq)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise FrameDecodeError(f"bad value count {count!r}")
        if count != self._size:
            raise FrameDecodeError(f"stream carries {self._size} values, frame has {count}")
        if self._last_seq is not None and seq <= self._last_seq:
            return None
        if kind == "key":
            return self.apply_key(seq, self._quantizer.decode(payload, self._size))
        if self._replica is None or self._last_seq is None:
            raise StreamGapError(f"delta {seq} arrived without a replica; waiting for a keyframe")
        if seq != self._last_seq + 1:
            missing = seq - self._last_seq - 1
            self._replica = None
            raise StreamGapError(
                f"delta {seq} follows {self._last_seq}: {missing} frame(s) missing; "
                "replica dropped until the next keyframe"
            )
        try:
            updated = self._apply_delta(self._replica, payload)
        except FrameDecodeError:
            self._replica = None
            raise
        self._replica = updated
        self._last_seq = seq
        return _read_only(updated)

    def apply_key(self, seq: int, values: np.ndarray) -> np.ndarray | None:
        """Apply a keyframe whose payload is already decoded into ``values``.

        On a broadcast medium every receiver of a keyframe decodes the same payload; the caller
        may decode it once and share ``values`` (it is never written to: a delta builds a new
        array). Returns None for an old ``seq``. Raises :class:`FrameDecodeError` if ``values``
        is not ``size`` float32 values.
        """
        if values.dtype != _F32 or values.shape != (self._size,):
            raise FrameDecodeError(f"keyframe holds {values.shape} values, expected {self._size}")
        if self._last_seq is not None and seq <= self._last_seq:
            return None
        self._replica = values
        self._last_seq = int(seq)
        return _read_only(values)

    def follow(self, seq: int, previous: np.ndarray, values: np.ndarray) -> bool:
        """Take delta ``seq`` when its result is already known; False if it does not apply.

        ``previous`` and ``values`` are the sender's replica before and after the delta (the
        arrays :attr:`StreamEncoder.replica` returned). If our replica *is* ``previous`` (the
        same array, not an equal one) and ``seq`` is the next frame, applying the payload would
        give ``values`` bit for bit (rule 3), so we take ``values`` (read-only, never written
        to) instead of decoding. Otherwise nothing changes and the caller applies the payload
        with :meth:`apply`, which handles gaps, duplicates and bad payloads.
        """
        if (
            self._replica is not previous
            or self._last_seq is None
            or seq != self._last_seq + 1
            or values.flags.writeable
            or values.shape != (self._size,)
        ):
            return False
        self._replica = values
        self._last_seq = int(seq)
        return True

    def _apply_delta(self, replica: np.ndarray, payload: bytes | memoryview) -> np.ndarray:
        if self._lossless:
            try:
                bits = np.frombuffer(payload, dtype=_LE_U4)
            except (TypeError, ValueError) as exc:
                raise FrameDecodeError(
                    "fp32 delta payload is not a whole number of values"
                ) from exc
            if bits.size != self._size:
                raise FrameDecodeError(
                    f"fp32 delta payload has {bits.size} values, expected {self._size}"
                )
            updated = np.bitwise_xor(replica.view(np.uint32), bits).view(_F32)
        else:
            updated = self._quantizer.decode(payload, self._size)
            with np.errstate(over="ignore", invalid="ignore"):
                np.add(replica, updated, out=updated)
        if not all_finite(updated):
            raise FrameDecodeError("delta makes the replica overflow or NaN; replica dropped")
        return updated
