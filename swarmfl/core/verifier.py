"""Authenticating frames once per medium: the verifier a simulated broadcast shares.

On a broadcast medium the same frame reaches many receivers; in the simulator they all share one
:class:`FrameVerifier`, so the HMAC and decompression run once per transmitted frame, and a
keyframe's payload is decoded once for all its receivers. A delta's result is known to the sender
(its new replica), so receivers that hold the sender's previous replica take the new one as it
is, without decoding or adding anything.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from swarmfl.core.quant import Quantizer
from swarmfl.core.wire import Frame, SenderKeys, decode_frame
from swarmfl.errors import ConfigError

__all__ = ["FrameVerifier"]

_KEYFRAME_VALUES_CACHED = 64
"""Decoded keyframes a shared verifier keeps (each holds a model's worth of float32)."""


class FrameVerifier:
    """Authenticates and parses frames, verifying each distinct frame once.

    On a broadcast medium the same frame reaches many receivers; in the simulator they all share
    one verifier, so the HMAC and decompression run once per transmitted frame. A cache hit still
    compares the whole frame byte for byte, so a forged frame can never borrow a valid tag.
    ``senders`` (the roster's keys) makes it accept only frames signed by their sender.
    ``cache_frames`` need only cover the frames in flight at once: a larger cache keeps many
    large frames alive and makes every new frame land in cold memory. ``share_deltas`` also keeps
    each delta's replica arrays (before and after) for receivers to take: worth it only when
    receivers share this verifier (the simulator); a drone's own verifier leaves it off, so it
    keeps no extra copies of its model.
    """

    def __init__(
        self,
        key: bytes,
        swarm_id: int,
        signature: bytes,
        cache_frames: int = 64,
        senders: SenderKeys | None = None,
        *,
        share_deltas: bool = False,
    ):
        self.key = key
        self.senders = senders
        self.swarm_id = swarm_id
        self.signature = signature
        self._cache: OrderedDict[bytes, tuple[bytes, Frame]] = OrderedDict()
        self._keyframe_values: OrderedDict[int, tuple[Frame, np.ndarray]] = OrderedDict()
        self._delta_values: OrderedDict[int, tuple[Frame, np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_frames = cache_frames
        self._share_deltas = share_deltas

    def decode(self, data: bytes) -> Frame:
        """The authenticated frame in ``data``. Raises :class:`FrameDecodeError` only."""
        tag = data[-16:]
        hit = self._cache.get(tag)
        if hit is not None and (hit[0] is data or hit[0] == data):
            return hit[1]
        frame = decode_frame(
            data, self.key, swarm_id=self.swarm_id, signature=self.signature, senders=self.senders
        )
        self.remember(data, frame)
        return frame

    def keyframe_values(self, frame: Frame, quantizer: Quantizer, count: int) -> np.ndarray:
        """The decoded payload of keyframe ``frame``, decoded once for all its receivers.

        The array is read-only. Raises :class:`FrameDecodeError` if the payload does not decode.
        """
        hit = self._keyframe_values.get(id(frame))
        if hit is not None and hit[0] is frame and hit[1].size == count:
            return hit[1]
        values = quantizer.decode(frame.payload, count)
        values.flags.writeable = False
        self._keep_keyframe_values(frame, values)
        return values

    def delta_values(self, frame: Frame) -> tuple[np.ndarray, np.ndarray] | None:
        """The sender's replica before and after delta ``frame``, if its sender shared them.

        Both arrays are read-only; see :meth:`~swarmfl.core.stream.StreamDecoder.follow`.
        """
        hit = self._delta_values.get(id(frame))
        if hit is None or hit[0] is not frame:
            return None
        return hit[1], hit[2]

    def _keep_keyframe_values(self, frame: Frame, values: np.ndarray) -> None:
        self._keyframe_values[id(frame)] = (frame, values)
        if len(self._keyframe_values) > _KEYFRAME_VALUES_CACHED:
            self._keyframe_values.popitem(last=False)

    def remember(
        self,
        data: bytes,
        frame: Frame,
        values: np.ndarray | None = None,
        previous: np.ndarray | None = None,
    ) -> None:
        """Record that ``data`` is the authentic encoding of ``frame`` (we just encoded it).

        ``values`` is the sender's replica after the frame, bitwise what receivers decode. For
        a keyframe, receivers sharing this verifier then take it instead of decoding; for a
        delta (give ``previous``, the sender's replica before it), receivers holding
        ``previous`` take it instead of decoding and adding. Both must be read-only.
        """
        self._cache[data[-16:]] = (data, frame)
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        if values is None:
            return
        if values.flags.writeable or (previous is not None and previous.flags.writeable):
            raise ConfigError("shared replica values must be read-only", key="values")
        if previous is None:
            self._keep_keyframe_values(frame, values)
            return
        if not self._share_deltas:
            return
        self._delta_values[id(frame)] = (frame, previous, values)
        if len(self._delta_values) > _KEYFRAME_VALUES_CACHED:
            self._delta_values.popitem(last=False)
