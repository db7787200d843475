"""The link layer every radio shares: frames to datagrams and back, throttled and queued. Sans-IO.

A :class:`DatagramLink` is what sits between the agent's whole frames and an unreliable datagram
medium (a UDP socket, an MQTT topic, the simulated air). It never touches a socket or a clock:
the driver passes ``now`` (seconds, virtual or real) into every call.

Sending::

    link.send(frame, now)                      # bounded queue; may drop a superseded frame
    while (datagram := link.next_datagram(now)) is not None:
        sock.sendto(datagram, address)         # each at most mtu_bytes, within the token bucket
    at = link.ready_at(now)                    # None: nothing queued; else call again at ``at``

Receiving::

    frame = link.receive(datagram, address, now)   # the whole frame once its last datagram is in

The datagram medium is unreliable: no ordering, no delivery guarantee, no duplicate suppression.
A frame split into ``k`` datagrams arrives only if all ``k`` do, so over a link that loses each
datagram with probability ``p`` a frame arrives with probability ``(1 - p) ** k``. The link does
nothing to hide that (no retransmission): the gossip protocol above tolerates loss.

The simulator prices a whole frame at once (:meth:`DatagramLink.next_frame`: how many datagrams
and wire bytes it makes) instead of building its datagrams, through the same queue and bucket.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from swarmfl.errors import ConfigError
from swarmfl.radio.fragment import HEADER_SIZE, MAX_FRAME_BYTES, Fragmenter
from swarmfl.radio.reassembly import Reassembler, ReassemblyStats
from swarmfl.radio.sendqueue import SendQueue, SendQueueStats
from swarmfl.radio.throttle import TokenBucket

__all__ = [
    "DEFAULT_SOURCE_FRAMES_PER_S",
    "DatagramLink",
    "FrameClass",
    "LinkConfig",
    "LinkStats",
    "SourceRateLimit",
    "wire_frame_class",
]

# What the send queue needs to know of a frame: its stream (or None) and whether it is a full
# snapshot of that stream (which makes every older queued frame of the stream useless).
FrameClass = tuple[Hashable | None, bool]

_WIRE_MAGIC = b"SWFL"
_KIND_KEY = 1  # swarmfl.core.wire.FrameKind.KEY
_KIND_DELTA = 2  # swarmfl.core.wire.FrameKind.DELTA
_MODEL_STREAM = "model"
_NO_STREAM: FrameClass = (None, False)
_KEYFRAME: FrameClass = (_MODEL_STREAM, True)
_DELTA: FrameClass = (_MODEL_STREAM, False)


def wire_frame_class(frame: bytes) -> FrameClass:
    """Classify a swarmfl wire frame for the send queue, from its unauthenticated header.

    A keyframe is a snapshot of the sender's model stream: it supersedes every older queued
    frame of that stream, deltas included. A delta belongs to the stream but supersedes nothing
    (receivers need every delta in sequence). Anything else (NACKs, foreign bytes) is in no
    stream. Reading the header unauthenticated is safe: a radio only queues its own frames.
    """
    if len(frame) > 5 and frame[:4] == _WIRE_MAGIC:
        kind = frame[5]
        if kind == _KIND_KEY:
            return _KEYFRAME
        if kind == _KIND_DELTA:
            return _DELTA
    return _NO_STREAM


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"must be a positive integer, got {value!r}", key=key)
    return value


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """How one radio's link behaves. All sizes are in bytes, times in seconds.

    * ``rate_bps``: the token bucket's refill rate, the long-run bit rate of what is sent
      (datagram headers included); ``burst_bytes``: the bucket's depth (default: one MTU, so
      datagrams leave back to back at ``rate_bps``, as from a radio's transmitter).
    * ``mtu_bytes``: the largest datagram, 19 header bytes (see :mod:`swarmfl.radio.fragment`)
      included.
    * ``queue_frames`` / ``queue_bytes``: bounds of the send queue (see
      :class:`~swarmfl.radio.sendqueue.SendQueue` for what is dropped when it is full).
    * ``reassembly_timeout_s`` / ``reassembly_buffer_bytes``: how long an incomplete frame is
      kept after its first datagram, and the cap on all incomplete frames held.
    * ``max_frame_bytes``: the largest frame sent or accepted.

    Raises :class:`ConfigError` (naming the field) for a non-positive or non-finite value, an
    MTU that cannot hold a header and one byte, a burst below one MTU, or a reassembly buffer
    smaller than one frame.
    """

    rate_bps: float = 1_000_000.0
    mtu_bytes: int = 1472
    burst_bytes: int | None = None
    queue_frames: int = 16
    queue_bytes: int = 4 * 1024 * 1024
    reassembly_timeout_s: float = 5.0
    reassembly_buffer_bytes: int = 16 * 1024 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not (isinstance(self.rate_bps, int | float) and math.isfinite(self.rate_bps)):
            raise ConfigError(f"must be a finite number, got {self.rate_bps!r}", key="rate_bps")
        if self.rate_bps <= 0:
            raise ConfigError(f"must be > 0, got {self.rate_bps!r}", key="rate_bps")
        mtu = _positive_int(self.mtu_bytes, "mtu_bytes")
        if mtu < HEADER_SIZE + 1:
            raise ConfigError(
                f"must be at least {HEADER_SIZE + 1} (a {HEADER_SIZE}-byte header and 1 byte), "
                f"got {mtu}",
                key="mtu_bytes",
            )
        if self.burst_bytes is not None:
            burst = _positive_int(self.burst_bytes, "burst_bytes")
            if burst < mtu:
                raise ConfigError(
                    f"must be at least mtu_bytes ({mtu}), got {burst}", key="burst_bytes"
                )
        _positive_int(self.queue_frames, "queue_frames")
        _positive_int(self.queue_bytes, "queue_bytes")
        frame_cap = _positive_int(self.max_frame_bytes, "max_frame_bytes")
        if frame_cap > MAX_FRAME_BYTES:
            raise ConfigError(
                f"must be at most {MAX_FRAME_BYTES}, got {frame_cap}", key="max_frame_bytes"
            )
        buffer = _positive_int(self.reassembly_buffer_bytes, "reassembly_buffer_bytes")
        if buffer < frame_cap:
            raise ConfigError(
                f"must be at least max_frame_bytes ({frame_cap}), got {buffer}",
                key="reassembly_buffer_bytes",
            )
        timeout = self.reassembly_timeout_s
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError(
                f"must be a positive finite number, got {timeout!r}", key="reassembly_timeout_s"
            )

    @property
    def burst(self) -> int:
        """The token bucket's depth in bytes (``burst_bytes``, or one MTU)."""
        return self.burst_bytes if self.burst_bytes is not None else self.mtu_bytes

    @property
    def payload_bytes(self) -> int:
        """Frame bytes carried by each full datagram (``mtu_bytes - 19``)."""
        return self.mtu_bytes - HEADER_SIZE


@dataclass(frozen=True, slots=True)
class LinkStats:
    """What a :class:`DatagramLink` has done, as a snapshot.

    Sending: ``frames_sent`` frames left whole (all their datagrams), ``datagrams_sent`` and
    ``wire_bytes_sent`` (headers included), ``frames_oversize`` frames refused for being over
    ``max_frame_bytes``; ``queue`` holds the send queue's counters
    (``superseded``, ``overflow`` and ``refused`` frames never left). Receiving: ``reassembly``
    holds the reassembler's counters; frames that never completed are its ``expired`` and
    ``evicted``.
    """

    frames_sent: int
    datagrams_sent: int
    wire_bytes_sent: int
    frames_oversize: int
    queue: SendQueueStats
    reassembly: ReassemblyStats

    @property
    def frames_dropped_sending(self) -> int:
        """Frames that never left: superseded, dropped for room or refused by the queue."""
        queue = self.queue
        return queue.superseded + queue.overflow + queue.refused + self.frames_oversize

    @property
    def frames_incomplete(self) -> int:
        """Frames whose datagrams never all arrived (expired or evicted buffers)."""
        return self.reassembly.expired + self.reassembly.evicted


class DatagramLink:
    """Frames in and out of one radio over an unreliable datagram medium (sans-IO).

    Sending: :meth:`send` queues a whole frame in a bounded
    :class:`~swarmfl.radio.sendqueue.SendQueue` (a newer keyframe supersedes the older queued
    frames of its stream; see :func:`wire_frame_class`); :meth:`next_datagram` hands out the
    next datagram of at most ``mtu_bytes`` when the :class:`~swarmfl.radio.throttle.TokenBucket`
    allows it, and :meth:`ready_at` says when to ask again. Once a frame's first datagram has
    left, the rest of that frame follows before anything else (a partial frame is worthless).

    Receiving: :meth:`receive` feeds a datagram to a per-sender
    :class:`~swarmfl.radio.fragment.Reassembler` (timeout and memory cap from the config) and
    returns the frame it completes, if any. It never raises for bad input.

    ``sender`` is the u32 written in every datagram's header (the drone id; a UDP radio may use
    0 and rely on the address). ``first_frame_id`` lets a restarted sender avoid reusing frame
    ids its receivers may still hold buffers for. ``classify`` tells the queue which stream a
    frame belongs to (default: :func:`wire_frame_class`).

    Raises :class:`ConfigError` for a bad ``sender`` or ``first_frame_id``.
    """

    def __init__(
        self,
        config: LinkConfig,
        *,
        sender: int = 0,
        first_frame_id: int = 0,
        classify: Callable[[bytes], FrameClass] = wire_frame_class,
    ) -> None:
        self.config = config
        self.fragmenter = Fragmenter(
            sender,
            config.mtu_bytes,
            max_frame_bytes=config.max_frame_bytes,
            first_frame_id=first_frame_id,
        )
        self.bucket = TokenBucket(config.rate_bps, config.burst)
        self.queue = SendQueue(config.queue_frames, config.queue_bytes)
        self.reassembler = Reassembler(
            config.reassembly_timeout_s, config.reassembly_buffer_bytes, config.max_frame_bytes
        )
        self._classify = classify
        self._chunk = config.payload_bytes
        self._pending: deque[bytes] = deque()
        self._frames_sent = 0
        self._datagrams_sent = 0
        self._wire_bytes_sent = 0
        self._oversize = 0

    # -- sending ------------------------------------------------------------------------------

    def send(self, frame: bytes, now: float) -> list[bytes]:
        """Queue ``frame``; return the frames dropped to do so (possibly ``frame`` itself).

        A frame over ``max_frame_bytes`` (or over 65535 datagrams) is refused (returned, and
        counted in ``stats().frames_oversize``) rather than raising, like any frame the queue
        cannot hold. ``now`` is accepted for symmetry with the other calls (queueing does not
        depend on time).
        """
        if len(frame) > self.fragmenter.max_frame_bytes:
            self._oversize += 1
            return [frame]
        stream, snapshot = self._classify(frame)
        return self.queue.push(frame, stream=stream, snapshot=snapshot)

    def next_datagram(self, now: float) -> bytes | None:
        """The next datagram to transmit at ``now``, or ``None`` (nothing queued, or throttled).

        A returned datagram has been charged to the token bucket: transmit it now.
        """
        pending = self._pending
        if not pending:
            frame = self.queue.pop()
            if frame is None:
                return None
            pending.extend(self.fragmenter.split(frame))
        datagram = pending[0]
        if not self.bucket.try_consume(len(datagram), now):
            return None
        pending.popleft()
        self._datagrams_sent += 1
        self._wire_bytes_sent += len(datagram)
        if not pending:
            self._frames_sent += 1
        return datagram

    def ready_at(self, now: float) -> float | None:
        """When :meth:`next_datagram` will next return a datagram; ``None`` if nothing is queued.

        ``now`` itself if one can be sent at once.
        """
        if self._pending:
            size = len(self._pending[0])
        else:
            head = self.queue.peek_size()
            if head is None:
                return None
            size = min(head, self._chunk) + HEADER_SIZE
        return now + self.bucket.time_until(size, now)

    def next_frame(self, now: float) -> tuple[bytes, int, int] | None:
        """Pop the next whole frame as one transmission: ``(frame, datagrams, wire_bytes)``.

        For simulators, which price a frame instead of building its datagrams: the frame is
        charged to the token bucket as its ``datagrams`` (``fragment_count``) datagrams of
        ``wire_bytes`` bytes in all, headers included, sent back to back. Call it when
        :meth:`frame_ready_at` says so. Returns ``None`` if nothing is queued.
        """
        frame = self.queue.pop()
        if frame is None:
            return None
        size = len(frame)
        count = (size + self._chunk - 1) // self._chunk or 1
        wire = size + count * HEADER_SIZE
        self.bucket.consume(wire, now)
        self._frames_sent += 1
        self._datagrams_sent += count
        self._wire_bytes_sent += wire
        return frame, count, wire

    def send_now(self, frame: bytes, now: float) -> tuple[int, int] | None:
        """Send ``frame`` as one transmission at once, if nothing waits and the bucket allows.

        For simulators: the fast path of :meth:`send` followed by :meth:`next_frame` when the
        queue is empty. Returns ``(datagrams, wire_bytes)`` if the frame was sent (charged and
        counted), else ``None`` and nothing changed: queue it with :meth:`send`.
        """
        if self._pending or len(self.queue):
            return None
        size = len(frame)
        if size > self.fragmenter.max_frame_bytes:
            return None
        chunk = self._chunk
        bucket = self.bucket
        if bucket.time_until((size if size < chunk else chunk) + HEADER_SIZE, now) > 0.0:
            return None
        count = (size + chunk - 1) // chunk or 1
        wire = size + count * HEADER_SIZE
        bucket.consume(wire, now)
        self._frames_sent += 1
        self._datagrams_sent += count
        self._wire_bytes_sent += wire
        return count, wire

    def frame_ready_at(self, now: float) -> float | None:
        """When :meth:`next_frame` may send the head of the queue; ``None`` if nothing is queued.

        The bucket must hold the frame's first datagram (or, for a frame larger than the
        burst, be full), as for :meth:`next_datagram`.
        """
        head = self.queue.peek_size()
        if head is None:
            return None
        size = min(head, self._chunk) + HEADER_SIZE
        return now + self.bucket.time_until(size, now)

    def clear(self) -> list[bytes]:
        """Drop everything queued or half-sent (the radio went down); return the queued frames.

        Not counted as drops: the caller knows why they went.
        """
        self._pending.clear()
        return self.queue.clear()

    @property
    def idle(self) -> bool:
        """Nothing queued and no frame half-sent."""
        return not self._pending and not len(self.queue)

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, datagram: bytes, link_sender: Hashable, now: float) -> bytes | None:
        """Take one datagram heard from ``link_sender``; return the frame it completes, if any.

        Never raises for any ``datagram`` content: bad input is counted in :meth:`stats`.
        """
        return self.reassembler.push(datagram, link_sender, now)

    def expire(self, now: float) -> int:
        """Drop incomplete frames older than the reassembly timeout; return how many."""
        return self.reassembler.expire(now)

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        return LinkStats(
            frames_sent=self._frames_sent,
            datagrams_sent=self._datagrams_sent,
            wire_bytes_sent=self._wire_bytes_sent,
            frames_oversize=self._oversize,
            queue=self.queue.stats(),
            reassembly=self.reassembler.stats(),
        )


#: Frames per second (and burst) one link sender may hand to the agent before the surplus is
#: dropped unread. An honest drone sends a frame or two per gossip period (and a NACK now and
#: then): this is far above that, and far below what a flood costs to authenticate.
DEFAULT_SOURCE_FRAMES_PER_S = 100.0
_DEFAULT_MAX_SOURCES = 1024


class SourceRateLimit:
    """Per-source token buckets counted in frames: who may hand how many frames to the agent.

    Sans-IO. :meth:`allow` charges one frame to ``source`` at ``now`` and says whether it fits
    (``rate_per_s`` frames per second, up to ``burst`` at once; a source seen for the first time
    starts with a full bucket). It runs before any expensive work on a frame (authentication,
    decoding), so a flood from one address costs the agent at most ``rate_per_s`` frames' work
    per second while other sources keep their own budgets. The table holds at most
    ``max_sources`` sources; the least recently heard is forgotten first (an attacker that
    churns source addresses then only gets fresh buckets, never another source's).

    Raises :class:`ConfigError` if ``rate_per_s`` is not positive and finite, or ``burst`` or
    ``max_sources`` is not a positive integer.
    """

    __slots__ = ("_burst", "_max_sources", "_rate", "_sources", "limited")

    def __init__(
        self,
        rate_per_s: float = DEFAULT_SOURCE_FRAMES_PER_S,
        burst: int | None = None,
        *,
        max_sources: int = _DEFAULT_MAX_SOURCES,
    ) -> None:
        if not (
            isinstance(rate_per_s, int | float)
            and not isinstance(rate_per_s, bool)
            and math.isfinite(rate_per_s)
            and rate_per_s > 0
        ):
            raise ConfigError(
                f"must be a positive finite number, got {rate_per_s!r}", key="rate_per_s"
            )
        self._rate = float(rate_per_s)
        self._burst = float(
            _positive_int(burst, "burst") if burst is not None else max(1, math.ceil(rate_per_s))
        )
        self._max_sources = _positive_int(max_sources, "max_sources")
        # source -> [tokens, last refill time]; insertion order is recency order.
        self._sources: OrderedDict[Hashable, list[float]] = OrderedDict()
        #: Frames refused so far.
        self.limited = 0

    def __len__(self) -> int:
        """Sources tracked now."""
        return len(self._sources)

    def allow(self, source: Hashable, now: float) -> bool:
        """Charge one frame to ``source`` at ``now``; False (and counted) if over its rate."""
        sources = self._sources
        state = sources.get(source)
        if state is None:
            if len(sources) >= self._max_sources:
                sources.popitem(last=False)
            state = sources[source] = [self._burst, now]
        else:
            sources.move_to_end(source)
            elapsed = now - state[1]
            if elapsed > 0:
                state[0] = min(self._burst, state[0] + elapsed * self._rate)
                state[1] = now
        if state[0] >= 1.0:
            state[0] -= 1.0
            return True
        self.limited += 1
        return False

    def forget(self, source: Hashable) -> None:
        """Drop ``source``'s bucket: it starts full again when next charged."""
        self._sources.pop(source, None)
