"""A bounded FIFO of outgoing frames with a drop policy fit for model streams. Sans-IO.

A radio that is over its rate keeps what it cannot send yet in a :class:`SendQueue`. When the
queue is full something must go, and what may go depends on the frame:

* a **snapshot** (a keyframe: the full state of a stream) makes every older queued frame of the
  same stream useless, deltas included, so those are dropped first (*superseded*);
* a newer **delta** never supersedes an older one: the receiver needs every delta in sequence;
* then, if still over capacity, the oldest frames pushed as ``droppable`` go (*overflow*);
* and if that is not enough, the new frame itself is *refused*.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from swarmfl.errors import ConfigError

__all__ = ["SendQueue", "SendQueueStats"]


@dataclass(frozen=True, slots=True)
class SendQueueStats:
    """Counters of a :class:`SendQueue`, as a snapshot.

    ``pushed``: calls to :meth:`SendQueue.push`. ``popped``: frames handed out by
    :meth:`SendQueue.pop`. ``superseded``: queued frames dropped because a snapshot of their
    stream was pushed. ``overflow``: queued droppable frames dropped to make room. ``refused``:
    pushed frames that could not be queued at all. ``queued_frames`` and ``queued_bytes``: what
    is queued now.
    """

    pushed: int
    popped: int
    superseded: int
    overflow: int
    refused: int
    queued_frames: int
    queued_bytes: int


# A queued frame: (frame, stream or None, droppable).
_Entry = tuple[bytes, Hashable | None, bool]


class SendQueue:
    """A FIFO of frames bounded by ``max_frames`` frames and ``max_bytes`` bytes.

    Every operation is O(1) amortised, except that a snapshot costs O(k) for the k queued frames
    of its stream it supersedes. See the module docstring for the drop policy.

    Raises :class:`~swarmfl.errors.ConfigError` if ``max_frames`` or ``max_bytes`` is not a
    positive integer.
    """

    __slots__ = (
        "_bytes",
        "_droppable",
        "_droppable_bytes",
        "_overflow",
        "_popped",
        "_pushed",
        "_queue",
        "_refused",
        "_seq",
        "_streams",
        "_superseded",
        "max_bytes",
        "max_frames",
    )

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        for name, value in (("max_frames", max_frames), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"must be a positive integer, got {value!r}", key=name)
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        # Keyed by a push counter: OrderedDict gives O(1) pop from the front *and* O(1) removal
        # from the middle, which supersede and overflow need.
        self._queue: OrderedDict[int, _Entry] = OrderedDict()
        self._droppable: OrderedDict[int, None] = OrderedDict()
        self._streams: dict[Hashable, dict[int, None]] = {}
        self._seq = 0
        self._bytes = 0
        self._droppable_bytes = 0
        self._pushed = 0
        self._popped = 0
        self._superseded = 0
        self._overflow = 0
        self._refused = 0

    def __len__(self) -> int:
        """Number of frames queued."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Total bytes of the frames queued."""
        return self._bytes

    def push(
        self,
        frame: bytes,
        *,
        stream: Hashable | None = None,
        snapshot: bool = False,
        droppable: bool = True,
    ) -> list[bytes]:
        """Queue ``frame`` and return the frames dropped to do so (oldest first).

        ``stream`` names the stream the frame belongs to (for instance a model stream); with
        ``snapshot=True`` every queued frame of that stream is dropped first (superseded).
        Frames pushed with ``droppable=False`` are never dropped for room, only superseded.
        If the frame cannot fit even after dropping every droppable frame, nothing is dropped,
        the frame is refused, and the returned list is ``[frame]``.

        Raises :class:`~swarmfl.errors.ConfigError` if ``snapshot`` is set without a ``stream``.
        """
        self._pushed += 1
        queue = self._queue
        size = len(frame)
        stale = None
        if snapshot:
            if stream is None:
                raise ConfigError("a snapshot must name its stream", key="stream")
            stale = self._streams.get(stream)
        if stale or len(queue) >= self.max_frames or self._bytes + size > self.max_bytes:
            dropped = self._make_room(size, stream, stale)
            if dropped is None:
                self._refused += 1
                return [frame]
        else:
            dropped = []

        seq = self._seq
        self._seq = seq + 1
        queue[seq] = (frame, stream, droppable)
        self._bytes += size
        if droppable:
            self._droppable[seq] = None
            self._droppable_bytes += size
        if stream is not None:
            seqs = self._streams.get(stream)
            if seqs is None:
                self._streams[stream] = {seq: None}
            else:
                seqs[seq] = None
        return dropped

    def _make_room(
        self, size: int, stream: Hashable | None, stale: dict[int, None] | None
    ) -> list[bytes] | None:
        """Supersede ``stale`` and drop for room so ``size`` more bytes fit, or return None."""
        queue = self._queue
        frames_left = len(queue) - len(self._droppable)
        bytes_left = self._bytes - self._droppable_bytes
        if stale:
            # Superseded frames that are not droppable free room the overflow pass cannot.
            for seq in stale:
                frame, _, droppable = queue[seq]
                if not droppable:
                    frames_left -= 1
                    bytes_left -= len(frame)
        if frames_left + 1 > self.max_frames or bytes_left + size > self.max_bytes:
            return None

        dropped: list[bytes] = []
        if stale:
            del self._streams[stream]
            for seq in stale:
                frame, _, droppable = queue.pop(seq)
                self._bytes -= len(frame)
                if droppable:
                    del self._droppable[seq]
                    self._droppable_bytes -= len(frame)
                dropped.append(frame)
            self._superseded += len(stale)

        while len(queue) >= self.max_frames or self._bytes + size > self.max_bytes:
            seq, _ = self._droppable.popitem(last=False)
            frame, old_stream, _ = queue.pop(seq)
            self._bytes -= len(frame)
            self._droppable_bytes -= len(frame)
            if old_stream is not None:
                self._forget(old_stream, seq)
            dropped.append(frame)
            self._overflow += 1
        return dropped

    def _forget(self, stream: Hashable, seq: int) -> None:
        seqs = self._streams[stream]
        del seqs[seq]
        if not seqs:
            del self._streams[stream]

    def pop(self) -> bytes | None:
        """Remove and return the oldest queued frame, or ``None`` if the queue is empty."""
        if not self._queue:
            return None
        seq, (frame, stream, droppable) = self._queue.popitem(last=False)
        self._bytes -= len(frame)
        if droppable:
            del self._droppable[seq]
            self._droppable_bytes -= len(frame)
        if stream is not None:
            self._forget(stream, seq)
        self._popped += 1
        return frame

    def peek_size(self) -> int | None:
        """Length in bytes of the frame :meth:`pop` would return, or ``None`` if empty."""
        if not self._queue:
            return None
        return len(next(iter(self._queue.values()))[0])

    def clear(self) -> list[bytes]:
        """Remove every queued frame and return them, oldest first (not counted as dropped)."""
        frames = [entry[0] for entry in self._queue.values()]
        self._queue.clear()
        self._droppable.clear()
        self._streams.clear()
        self._bytes = 0
        self._droppable_bytes = 0
        return frames

    def stats(self) -> SendQueueStats:
        """A snapshot of the counters."""
        return SendQueueStats(
            pushed=self._pushed,
            popped=self._popped,
            superseded=self._superseded,
            overflow=self._overflow,
            refused=self._refused,
            queued_frames=len(self._queue),
            queued_bytes=self._bytes,
        )
