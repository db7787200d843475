"""Replay protection: which sequence numbers of each sender were already accepted.

A sliding bitmap per sender, as in IPsec and DTLS. Only authenticated frames are checked, so a
forged frame can never move a sender's window.
"""

from __future__ import annotations

from swarmfl.errors import ConfigError, FrameDecodeError

__all__ = ["ReplayWindow"]

_U64 = 0xFFFF_FFFF_FFFF_FFFF
_MAX_WINDOW = 4096


class ReplayWindow:
    """Per-sender anti-replay window (a sliding bitmap, as in IPsec and DTLS).

    Call :meth:`check_and_update` only for authenticated frames. A sequence number newer than
    any seen so far slides the window; one within the last ``size`` numbers is accepted once
    (reordering); a repeat, or one older than the window, is a replay.
    Raises :class:`ConfigError` if ``size`` is not in [1, 4096].
    """

    def __init__(self, size: int = 64) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= _MAX_WINDOW:
            raise ConfigError(f"must be an int in [1, {_MAX_WINDOW}], got {size!r}", key="size")
        self._size = size
        self._mask = (1 << self._size) - 1
        # sender -> (highest seq seen, bitmap with bit i set if highest - i was seen)
        self._senders: dict[int, tuple[int, int]] = {}

    @property
    def size(self) -> int:
        """How many sequence numbers back reordering is tolerated."""
        return self._size

    def check_and_update(self, sender: int, seq: int) -> None:
        """Record ``seq`` from ``sender``; raise :class:`FrameDecodeError` ("replayed") if seen.

        A sequence number that is not an integer in [0, 2**64) is also refused.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _U64:
            raise FrameDecodeError(f"bad sequence number: {seq!r}")
        state = self._senders.get(sender)
        if state is None:
            self._senders[sender] = (seq, 1)
            return
        highest, bitmap = state
        if seq > highest:
            shift = seq - highest
            bitmap = ((bitmap << shift) | 1) & self._mask if shift < self._size else 1
            self._senders[sender] = (seq, bitmap)
            return
        age = highest - seq
        if age >= self._size:
            raise FrameDecodeError(f"replayed: seq {seq} older than the window (latest {highest})")
        bit = 1 << age
        if bitmap & bit:
            raise FrameDecodeError(f"replayed: seq {seq} already seen")
        self._senders[sender] = (highest, bitmap | bit)

    def forget(self, sender: int) -> None:
        """Drop ``sender``'s window (a departed peer); its next frame starts a new window."""
        self._senders.pop(sender, None)

    def __len__(self) -> int:
        """The number of senders tracked."""
        return len(self._senders)
