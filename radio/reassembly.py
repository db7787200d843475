"""Reassembly of frames from datagrams, paid as bytes arrive, within per-source budgets. Sans-IO.

The datagram format is :mod:`swarmfl.radio.fragment`'s. A :class:`Reassembler` takes datagrams
that may be lost, duplicated, reordered, truncated or hostile, and returns whole frames. A
header's declared size is never allocated up front, and each link sender has its own budget of
partial frames and bytes, so a flood from one source cannot evict another's partial frames.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from swarmfl.errors import ConfigError
from swarmfl.radio.fragment import HEADER_SIZE, HEADER_STRUCT, MAGIC, VERSION

__all__ = ["DEFAULT_SOURCE_FRAMES", "Reassembler", "ReassemblyStats"]

_U32 = 0xFFFFFFFF
# Each incomplete buffer is charged at least this much against ``max_buffer_bytes``: its
# bookkeeping (objects, dict entry) costs a few hundred bytes however small the frame, so a flood
# of tiny two-fragment frames must not hold far more memory than the cap says.
_MIN_BUFFER_CHARGE_BYTES = 256
# Keys of recently completed multi-fragment frames, so that a late duplicate fragment is counted
# as a duplicate instead of opening a buffer that can only expire. Bounded, and kept timeout_s.
_RECENT_COMPLETED_MAX = 1024


@dataclass(frozen=True, slots=True)
class ReassemblyStats:
    """Counters of a :class:`Reassembler`, as a snapshot.

    ``complete``: frames returned. ``malformed``: datagrams refused as garbage (short, bad magic
    or version, header or payload size that contradicts itself or its buffer). ``duplicates``:
    fragments already held (or of a frame just completed). ``expired``: incomplete frames dropped
    by age. ``evicted``: incomplete frames dropped to stay under a memory or slot budget (the
    source's own, or the total). ``inconsistent``: incomplete frames dropped because a fragment
    with the same key declared a different ``count`` or ``total_len``. ``buffered_bytes``: memory
    charged to incomplete frames now. ``oversize``: datagrams refused because their
    ``total_len`` is over ``max_frame_bytes``. ``sources``: link senders holding incomplete
    frames now.
    """

    complete: int
    malformed: int
    duplicates: int
    expired: int
    evicted: int
    inconsistent: int
    buffered_bytes: int
    oversize: int
    sources: int = 0


class _Buffer:
    """One incomplete frame: the fragments received so far (never the declared size up front)."""

    __slots__ = ("charge", "chunk", "count", "created_at", "key", "parts", "received", "total")

    def __init__(self, key: _Key, created_at: float, count: int, total: int, chunk: int) -> None:
        self.key = key
        self.created_at = created_at
        self.count = count
        self.total = total
        self.chunk = chunk
        self.charge = 0
        self.received = 0
        # Only what arrived: a first fragment claiming a 4 MiB frame costs its own bytes.
        self.parts: dict[int, bytes | memoryview] = {}


class _Source:
    """What one link sender holds: its incomplete frames (oldest first) and their charge."""

    __slots__ = ("buffers", "charge")

    def __init__(self) -> None:
        self.buffers: OrderedDict[_Key, _Buffer] = OrderedDict()
        self.charge = 0


_Key = tuple[Hashable, int, int]

#: Default number of incomplete frames one link sender may hold at once. An honest sender
#: sends its frames whole, one after the other, so it has one in flight plus a few lost ones
#: waiting to expire.
DEFAULT_SOURCE_FRAMES = 8


class Reassembler:
    """Rebuilds frames from datagrams that may be lost, duplicated, reordered or garbled.

    Buffers are keyed by ``(link_sender, header sender, frame_id)``, so frames from many senders
    interleave freely. :meth:`push` is total: for bad input it counts and returns ``None``,
    never raises. The cheap checks come first (size, magic, version, the header's arithmetic,
    the declared size against ``max_frame_bytes``); nothing is allocated for a datagram that
    fails them.

    Memory is bounded and paid as bytes arrive: an incomplete frame holds only the fragments
    received so far, and is charged ``max(bytes received, 256)`` (a declared ``total_len`` is
    never allocated up front; one over ``max_frame_bytes`` is refused outright). Budgets are per
    link sender, so that one source cannot push out another's partial frames:

    * each link sender holds at most ``max_source_frames`` incomplete frames and
      ``max_source_bytes`` bytes of them; over either, *its own* oldest frames are evicted;
    * over ``max_buffer_bytes`` in all, the oldest frame of the source that holds the most
      bytes is evicted (never the frame being filled), so an honest sender loses a partial frame
      only when it holds more than every other source.

    Buffers older than ``timeout_s`` (since their first fragment) are dropped by :meth:`expire`,
    and also lazily by :meth:`push`, so a caller that never calls :meth:`expire` is still
    bounded.

    A duplicate of a single-datagram frame is returned again: the radio does not suppress
    duplicates (the protocol's sequence numbers do). Time is monotonic: a ``now`` earlier than the
    latest one seen is treated as that latest one.

    Raises :class:`~swarmfl.errors.ConfigError` if ``timeout_s`` is not positive and finite,
    ``max_frame_bytes`` is negative, ``max_buffer_bytes`` is below 1 or below
    ``max_frame_bytes``, ``max_source_bytes`` is below ``max_frame_bytes`` or above
    ``max_buffer_bytes``, or ``max_source_frames`` is below 1.
    """

    __slots__ = (
        "_buffered",
        "_buffers",
        "_check_at",
        "_complete",
        "_duplicates",
        "_evicted",
        "_expired",
        "_inconsistent",
        "_malformed",
        "_max_buffer",
        "_max_frame",
        "_max_source_bytes",
        "_max_source_frames",
        "_min_charge",
        "_now",
        "_oversize",
        "_recent",
        "_sources",
        "faults",
        "timeout_s",
    )

    def __init__(
        self,
        timeout_s: float,
        max_buffer_bytes: int,
        max_frame_bytes: int,
        *,
        max_source_bytes: int | None = None,
        max_source_frames: int = DEFAULT_SOURCE_FRAMES,
    ) -> None:
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(
                f"must be a positive finite number, got {timeout_s!r}", key="timeout_s"
            )
        if not isinstance(max_frame_bytes, int) or not 0 <= max_frame_bytes <= _U32:
            raise ConfigError(
                f"must be an integer in [0, 2**32), got {max_frame_bytes!r}", key="max_frame_bytes"
            )
        if not isinstance(max_buffer_bytes, int) or max_buffer_bytes < max(1, max_frame_bytes):
            raise ConfigError(
                f"must be an integer >= max(1, max_frame_bytes={max_frame_bytes}), "
                f"got {max_buffer_bytes!r}",
                key="max_buffer_bytes",
            )
        min_charge = min(_MIN_BUFFER_CHARGE_BYTES, max_buffer_bytes)
        if max_source_bytes is None:
            # Room for a whole frame and a few lost ones; at most the total.
            max_source_bytes = min(max_buffer_bytes, max(max_frame_bytes, min_charge) * 2)
        if (
            isinstance(max_source_bytes, bool)
            or not isinstance(max_source_bytes, int)
            or not max(1, max_frame_bytes) <= max_source_bytes <= max_buffer_bytes
        ):
            raise ConfigError(
                f"must be an integer in [max(1, max_frame_bytes={max_frame_bytes}), "
                f"max_buffer_bytes={max_buffer_bytes}], got {max_source_bytes!r}",
                key="max_source_bytes",
            )
        if (
            isinstance(max_source_frames, bool)
            or not isinstance(max_source_frames, int)
            or max_source_frames < 1
        ):
            raise ConfigError(
                f"must be a positive integer, got {max_source_frames!r}", key="max_source_frames"
            )
        self.timeout_s = float(timeout_s)
        self._max_buffer = max_buffer_bytes
        self._max_frame = max_frame_bytes
        self._max_source_bytes = max_source_bytes
        self._max_source_frames = max_source_frames
        self._min_charge = min_charge
        # Insertion order is age order (time is clamped monotonic), so the oldest is first.
        self._buffers: OrderedDict[_Key, _Buffer] = OrderedDict()
        self._sources: dict[Hashable, _Source] = {}
        self._recent: OrderedDict[_Key, tuple[float, int, int]] = OrderedDict()
        self._buffered = 0
        self._now = -math.inf
        self._check_at = math.inf
        self._complete = 0
        self._malformed = 0
        self._duplicates = 0
        self._expired = 0
        self._evicted = 0
        self._inconsistent = 0
        self._oversize = 0
        #: Datagrams that were their link sender's fault: refused (malformed, oversize) or
        #: pushing out that sender's own partial frames. A radio reads it before and after
        #: :meth:`push` to charge the sender (see :class:`~swarmfl.radio.guard.SourceGuard`).
        self.faults = 0

    def __len__(self) -> int:
        """Number of incomplete frames held."""
        return len(self._buffers)

    def stats(self) -> ReassemblyStats:
        """A snapshot of the counters."""
        return ReassemblyStats(
            complete=self._complete,
            malformed=self._malformed,
            duplicates=self._duplicates,
            expired=self._expired,
            evicted=self._evicted,
            inconsistent=self._inconsistent,
            buffered_bytes=self._buffered,
            oversize=self._oversize,
            sources=len(self._sources),
        )

    def expire(self, now: float) -> int:
        """Drop incomplete frames whose first fragment is more than ``timeout_s`` old.

        Returns how many were dropped (they are also counted in ``stats().expired``).
        """
        if now > self._now:
            self._now = now
        return self._expire_due(self._now)

    def _drop(self, buf: _Buffer) -> None:
        """Forget ``buf`` everywhere and give back its charge (the caller counts why)."""
        key = buf.key
        self._buffers.pop(key, None)
        self._buffered -= buf.charge
        source = self._sources.get(key[0])
        if source is not None:
            source.buffers.pop(key, None)
            source.charge -= buf.charge
            if not source.buffers:
                del self._sources[key[0]]

    def _expire_due(self, now: float) -> int:
        limit = now - self.timeout_s
        check_at = math.inf
        dropped = 0
        buffers = self._buffers
        while buffers:
            buf = next(iter(buffers.values()))
            if buf.created_at >= limit:
                check_at = buf.created_at + self.timeout_s
                break
            self._drop(buf)
            dropped += 1
        recent = self._recent
        while recent:
            completed_at = next(iter(recent.values()))[0]
            if completed_at >= limit:
                check_at = min(check_at, completed_at + self.timeout_s)
                break
            recent.popitem(last=False)
        self._expired += dropped
        self._check_at = check_at
        return dropped

    def _charge(self, buf: _Buffer, source: _Source, charge: int) -> None:
        """Raise ``buf``'s charge to ``charge``, evicting within the budgets described above."""
        extra = charge - buf.charge
        if extra <= 0:
            return
        buf.charge = charge
        source.charge += extra
        self._buffered += extra
        # The source's own budget: its oldest frames go first, never the one being filled.
        while source.charge > self._max_source_bytes:
            oldest = next((b for b in source.buffers.values() if b is not buf), None)
            if oldest is None:
                break  # cannot happen: one frame fits max_source_bytes (>= max_frame_bytes)
            self._drop(oldest)
            self._evicted += 1
            self.faults += 1
        # The total: the heaviest source pays, so a light honest sender keeps its frame.
        while self._buffered > self._max_buffer:
            victim: _Buffer | None = None
            heaviest = -1
            for other in self._sources.values():
                weight = other.charge - (buf.charge if other is source else 0)
                if weight > heaviest:
                    candidates = iter(other.buffers.values())
                    first = next(candidates)
                    if first is buf:
                        first = next(candidates, buf)
                    if first is not buf:
                        heaviest, victim = weight, first
            if victim is None:
                break  # only ``buf`` is left, and it fits (max_buffer_bytes >= max_frame_bytes)
            self._drop(victim)
            self._evicted += 1

    def push(self, datagram: bytes, link_sender: Hashable, now: float) -> bytes | None:
        """Take one datagram; return the whole frame if this completed it, else ``None``.

        ``link_sender`` is who the medium says sent it (an address, a drone id); it must be
        hashable. Never raises for any ``datagram`` content: bad input is counted in
        :meth:`stats` and yields ``None``.
        """
        if now > self._now:
            self._now = now
        else:
            now = self._now
        if now > self._check_at:
            self._expire_due(now)

        size = len(datagram)
        if size < HEADER_SIZE:
            self._malformed += 1
            self.faults += 1
            return None
        magic, version, sender, frame_id, index, count, total = HEADER_STRUCT.unpack_from(datagram)
        if magic != MAGIC or version != VERSION or index >= count:
            self._malformed += 1
            self.faults += 1
            return None
        if total > self._max_frame:
            self._oversize += 1
            self.faults += 1
            return None
        plen = size - HEADER_SIZE

        if count == 1:
            if plen != total:
                self._malformed += 1
                self.faults += 1
                return None
            if self._buffers:
                stale = self._buffers.get((link_sender, sender, frame_id))
                if stale is not None:
                    self._drop(stale)
                    self._inconsistent += 1
            self._complete += 1
            return bytes(datagram[HEADER_SIZE:])

        # Every fragment says what the sender's payload size (chunk) was: a non-final one by its
        # length, the final one by what is left of total_len. Anything else is not our sender's.
        last = count - 1
        if plen == 0:
            self._malformed += 1
            self.faults += 1
            return None
        if index < last:
            chunk = plen
            if chunk * last >= total or chunk * count < total:
                self._malformed += 1
                self.faults += 1
                return None
        else:
            rest = total - plen
            if rest < last or rest % last:
                self._malformed += 1
                self.faults += 1
                return None
            chunk = rest // last
            if plen > chunk:
                self._malformed += 1
                self.faults += 1
                return None

        key = (link_sender, sender, frame_id)
        buffers = self._buffers
        buf = buffers.get(key)
        if buf is not None and (buf.count != count or buf.total != total):
            # Newest header wins: a sender that restarted reuses frame ids with new frames.
            self._drop(buf)
            self._inconsistent += 1
            buf = None
        source = self._sources.get(link_sender)
        if buf is None:
            done = self._recent.get(key)
            if done is not None and done[1] == count and done[2] == total:
                self._duplicates += 1
                return None
            if source is None:
                source = self._sources[link_sender] = _Source()
            while len(source.buffers) >= self._max_source_frames:
                self._drop(next(iter(source.buffers.values())))
                self._evicted += 1
                self.faults += 1
                if link_sender not in self._sources:
                    source = self._sources[link_sender] = _Source()
            buf = _Buffer(key, now, count, total, chunk)
            buffers[key] = buf
            source.buffers[key] = buf
            if self._check_at == math.inf:
                self._check_at = now + self.timeout_s
        elif buf.chunk != chunk:
            # Same frame, wrong payload size: a truncated or padded datagram, not a new frame.
            self._malformed += 1
            self.faults += 1
            return None
        assert source is not None  # a held buffer's source is always recorded

        parts = buf.parts
        if index in parts:
            self._duplicates += 1
            return None
        # A bytes datagram is immutable: hold a view of it rather than a copy of its payload, so
        # the frame is copied once, by the join below. Anything else may be reused by the caller.
        if type(datagram) is bytes:
            parts[index] = memoryview(datagram)[HEADER_SIZE:]
        else:
            parts[index] = bytes(datagram[HEADER_SIZE:])
        buf.received += plen
        if len(parts) < count:
            received = buf.received
            self._charge(buf, source, received if received > self._min_charge else self._min_charge)
            return None

        self._drop(buf)
        self._complete += 1
        recent = self._recent
        recent.pop(key, None)  # re-insert at the end, to keep age order
        recent[key] = (now, count, total)
        if len(recent) > _RECENT_COMPLETED_MAX:
            recent.popitem(last=False)
        if self._check_at == math.inf:
            self._check_at = now + self.timeout_s
        return b"".join([parts[i] for i in range(count)])
