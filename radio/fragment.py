"""Fragmentation of frames into MTU-sized datagrams, and the datagram format. Sans-IO.

Datagram layout (little-endian, :data:`HEADER_SIZE` = 19 bytes, then the payload)::

    magic     2s   b"SF"
    version   u8   VERSION (1)
    sender    u32  link-level sender id (a UDP radio may put 0 and use the address instead)
    frame_id  u32  per-sender frame counter, wraps at 2**32
    index     u16  fragment index, 0 .. count - 1
    count     u16  number of fragments of the frame, >= 1
    total_len u32  length of the whole frame in bytes

Every fragment of a frame but the last carries the same payload size (the sender's
``mtu_bytes - HEADER_SIZE``); the last carries the rest, at least one byte. A 0-byte frame is one
datagram with an empty payload. The receiver checks these rules on every datagram, so a
truncated or garbled datagram is refused instead of corrupting a frame.

The fragment header is not authenticated: a datagram only ever costs the receiver bounded
memory and time (see :mod:`swarmfl.radio.reassembly`, which puts frames back together). Whole
frames are authenticated afterwards by the wire layer.
"""

from __future__ import annotations

import struct

from swarmfl.errors import ConfigError

__all__ = [
    "HEADER_SIZE",
    "HEADER_STRUCT",
    "MAGIC",
    "MAX_FRAGMENTS",
    "MAX_FRAME_BYTES",
    "VERSION",
    "FragmentError",
    "Fragmenter",
    "fragment_count",
]

MAGIC = b"SF"
VERSION = 1
#: The datagram header (see the module docstring).
HEADER_STRUCT = struct.Struct("<2sBIIHHI")
HEADER_SIZE = HEADER_STRUCT.size
MAX_FRAGMENTS = 0xFFFF
#: Hard cap on a frame handed to :meth:`Fragmenter.split` (the wire layer may cap lower).
MAX_FRAME_BYTES = 64 * 1024 * 1024

_U32 = 0xFFFFFFFF


class FragmentError(ConfigError):
    """A frame cannot be fragmented: it is over the frame cap or needs more than 65535 datagrams.

    The caller's fault (it built a frame too large for this link), hence a
    :class:`~swarmfl.errors.ConfigError`.
    """


def _payload_bytes(mtu_bytes: int) -> int:
    """Payload bytes per datagram for ``mtu_bytes``; ConfigError if not even one byte fits."""
    if isinstance(mtu_bytes, bool) or not isinstance(mtu_bytes, int):
        raise ConfigError(f"must be an integer, got {mtu_bytes!r}", key="mtu_bytes")
    if mtu_bytes < HEADER_SIZE + 1:
        raise ConfigError(
            f"must be at least {HEADER_SIZE + 1} (a {HEADER_SIZE}-byte header and 1 byte of "
            f"payload), got {mtu_bytes}",
            key="mtu_bytes",
        )
    return mtu_bytes - HEADER_SIZE


def fragment_count(frame_len: int, mtu_bytes: int) -> int:
    """Number of datagrams :meth:`Fragmenter.split` makes of a ``frame_len``-byte frame.

    Does not check the frame caps (a simulator may price any frame). Raises
    :class:`~swarmfl.errors.ConfigError` if ``mtu_bytes`` cannot hold a header and one byte, or
    ``frame_len`` is negative.
    """
    if frame_len < 0:
        raise ConfigError(f"must be >= 0, got {frame_len}", key="frame_len")
    chunk = _payload_bytes(mtu_bytes)
    return (frame_len + chunk - 1) // chunk or 1


class Fragmenter:
    """Splits frames from one sender into datagrams of at most ``mtu_bytes`` bytes.

    Each :meth:`split` uses the next ``frame_id`` (starting at ``first_frame_id``, wrapping at
    2**32). A sender that restarts may pick a random ``first_frame_id`` so that receivers do not
    take its new frames for fragments of its old ones.

    Raises :class:`~swarmfl.errors.ConfigError` if ``sender`` or ``first_frame_id`` is not a u32,
    ``mtu_bytes`` cannot hold the header and one payload byte, or ``max_frame_bytes`` is negative.
    """

    __slots__ = ("_chunk", "_max_frame_bytes", "_next_id", "mtu_bytes", "sender")

    def __init__(
        self,
        sender: int,
        mtu_bytes: int,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        first_frame_id: int = 0,
    ) -> None:
        if isinstance(sender, bool) or not isinstance(sender, int) or not 0 <= sender <= _U32:
            raise ConfigError(f"must be an integer in [0, 2**32), got {sender!r}", key="sender")
        if not isinstance(first_frame_id, int) or not 0 <= first_frame_id <= _U32:
            raise ConfigError(
                f"must be an integer in [0, 2**32), got {first_frame_id!r}", key="first_frame_id"
            )
        if not isinstance(max_frame_bytes, int) or not 0 <= max_frame_bytes <= _U32:
            raise ConfigError(
                f"must be an integer in [0, 2**32), got {max_frame_bytes!r}", key="max_frame_bytes"
            )
        self.sender = sender
        self.mtu_bytes = mtu_bytes
        self._chunk = _payload_bytes(mtu_bytes)
        self._max_frame_bytes = min(max_frame_bytes, self._chunk * MAX_FRAGMENTS)
        self._next_id = first_frame_id

    @property
    def payload_bytes(self) -> int:
        """Frame bytes carried by each datagram but the last (``mtu_bytes - HEADER_SIZE``)."""
        return self._chunk

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame :meth:`split` accepts (the cap, or 65535 full datagrams if smaller)."""
        return self._max_frame_bytes

    @property
    def next_frame_id(self) -> int:
        """The ``frame_id`` the next :meth:`split` will use."""
        return self._next_id

    def split(self, frame: bytes) -> list[bytes]:
        """Return the datagrams of ``frame``, in index order, each at most ``mtu_bytes`` long.

        Raises :class:`FragmentError` if the frame is longer than :attr:`max_frame_bytes`; the
        frame id is then not used up.
        """
        total = len(frame)
        if total > self._max_frame_bytes:
            raise FragmentError(
                f"frame of {total} bytes is over the limit of {self._max_frame_bytes} bytes "
                f"(cap {MAX_FRAME_BYTES}, or {MAX_FRAGMENTS} datagrams of {self._chunk} bytes)",
                key="frame",
            )
        frame_id = self._next_id
        self._next_id = (frame_id + 1) & _U32
        chunk = self._chunk
        pack = HEADER_STRUCT.pack
        sender = self.sender
        if total <= chunk:
            return [pack(MAGIC, VERSION, sender, frame_id, 0, 1, total) + frame]
        count = (total + chunk - 1) // chunk
        view = memoryview(frame)
        return [
            pack(MAGIC, VERSION, sender, frame_id, i, count, total)
            + view[i * chunk : (i + 1) * chunk]
            for i in range(count)
        ]
