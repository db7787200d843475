"""Replay protection: which sequence numbers of each sender were already accepted.

A sliding bitmap per sender, as in IPsec and DTLS. Only authenticated frames are checked, so a
forged frame can never move a sender's window.

Sequence numbers carry the sender's *boot epoch* in their high 32 bits (:func:`epoch_of`,
:func:`epoch_start_seq`): a field drone increments a persisted counter before the first frame of
each life, so a restarted sender's numbers are above anything its earlier lives sent, whatever
its clock says, and its first frame slides every receiver's window into the new epoch. A
receiver keeps its windows across restarts (:meth:`ReplayWindow.export` into the checkpoint,
:meth:`ReplayWindow.restore` from it), so what it refused before it refuses after.
"""

from __future__ import annotations

from swarmfl.errors import ConfigError, FrameDecodeError

__all__ = ["EPOCH_SHIFT", "MAX_EPOCH", "ReplayWindow", "epoch_of", "epoch_start_seq"]

_U64 = 0xFFFF_FFFF_FFFF_FFFF
_MAX_WINDOW = 4096
_MAX_SENDERS_RESTORED = 1 << 20

EPOCH_SHIFT = 32
"""A sequence number is ``epoch << EPOCH_SHIFT | frame number within that life``."""
MAX_EPOCH = (1 << (64 - EPOCH_SHIFT)) - 1


def epoch_of(seq: int) -> int:
    """The boot epoch a sequence number belongs to (its high 32 bits)."""
    return seq >> EPOCH_SHIFT


def epoch_start_seq(epoch: int) -> int:
    """The first sequence number of boot epoch ``epoch``.

    Raises :class:`ConfigError` if ``epoch`` is not an int in [0, MAX_EPOCH].
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise ConfigError(f"must be an int in [0, {MAX_EPOCH}], got {epoch!r}", key="epoch")
    return epoch << EPOCH_SHIFT


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

    def highest(self, sender: int) -> int | None:
        """The highest sequence number accepted from ``sender`` (None: none yet)."""
        state = self._senders.get(sender)
        return None if state is None else state[0]

    def export(self) -> list[list[int]]:
        """Every sender's window as ``[sender, highest, bitmap]`` rows (JSON-friendly)."""
        return [[sender, highest, bitmap] for sender, (highest, bitmap) in self._senders.items()]

    def restore(self, rows: object) -> None:
        """Merge windows saved by :meth:`export` (a checkpoint): each sender keeps the newer.

        Raises :class:`ConfigError` (key ``replay``) if ``rows`` is not what :meth:`export`
        writes.
        """
        if not isinstance(rows, list) or len(rows) > _MAX_SENDERS_RESTORED:
            raise ConfigError("must be a list of [sender, highest, bitmap]", key="replay")
        for row in rows:
            if (
                not isinstance(row, list)
                or len(row) != 3
                or any(isinstance(v, bool) or not isinstance(v, int) for v in row)
                or not (0 <= row[0] <= _U64 and 0 <= row[1] <= _U64 and 0 <= row[2] <= self._mask)
            ):
                raise ConfigError(f"bad window {row!r}", key="replay")
            sender, highest, bitmap = row
            held = self._senders.get(sender)
            if held is None or held[0] < highest:
                self._senders[sender] = (highest, bitmap | 1)

    def forget(self, sender: int) -> None:
        """Drop ``sender``'s window; its next frame, whatever its number, starts a new one.

        The node never calls this for a departed peer (that would let its old frames be replayed);
        a restarted sender moves to a newer epoch instead.
        """
        self._senders.pop(sender, None)

    def __len__(self) -> int:
        """The number of senders tracked."""
        return len(self._senders)
