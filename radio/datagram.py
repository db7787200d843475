"""The datagram pump the real radios share: frames out through the link, datagrams in to frames.

:class:`DatagramRadio` is the part of a field radio that does not depend on the medium. It owns
the radio's :class:`~swarmfl.radio.link.DatagramLink` (the bounded send queue where a newer
keyframe supersedes older frames of our stream, fragmentation into MTU-sized datagrams, the
token bucket at ``rate_bps``, and the reassembly of what is heard), the
:class:`~swarmfl.radio.base.FrameInbox` that :meth:`~DatagramRadio.frames` reads, and the
:class:`DatagramRadioStats` that :meth:`~DatagramRadio.counters` reports. Its pump takes each
datagram off the link when the bucket allows and hands it to the subclass, which says how one
datagram is put on its medium: the UDP radio sends a copy to every peer, the MQTT radio
publishes it on its frames topic. Datagrams heard go the other way through
:meth:`~DatagramRadio._hear`, after whatever the medium filters first (status queries and
injected loss on UDP, the broker's echo of our own messages on MQTT).

The simulated radio (:mod:`swarmfl.sim.medium`) uses the same link but no pump: it sends whole
frames as scheduled transmissions in virtual time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Self

from swarmfl.errors import ClosedRadioError
from swarmfl.radio.base import FrameInbox, ReceivedFrame
from swarmfl.radio.link import (
    DEFAULT_SOURCE_FRAMES_PER_S,
    DatagramLink,
    LinkConfig,
    SourceRateLimit,
)

__all__ = ["DATAGRAMS_PER_YIELD", "DatagramRadio", "DatagramRadioStats"]

log = logging.getLogger(__name__)

#: The pump yields to the event loop after this many datagrams sent back to back (a fast link
#: with a deep bucket must not starve the agent's other tasks).
DATAGRAMS_PER_YIELD = 64


@dataclass(slots=True)
class DatagramRadioStats:
    """What a real radio did beyond its link's counters (counters only grow).

    ``datagrams_sent``/``bytes_sent`` count every copy put on the medium (one per unicast
    destination); ``frames_dropped_inbox`` frames heard while the reader was too far behind;
    ``datagrams_lost_injected`` datagrams dropped on purpose by the test loss injector;
    ``send_errors`` copies the medium refused; ``frames_rate_limited`` whole frames dropped
    unread because their link sender was over its per-source frame rate; ``datagrams_oversize``
    datagrams larger than the MTU, refused unread (part of ``datagrams_malformed``);
    ``frames_forged`` whole frames that failed the radio's ``frame_check`` (the swarm tag).
    """

    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_received: int = 0
    bytes_received: int = 0
    frames_received: int = 0
    frames_dropped_inbox: int = 0
    datagrams_lost_injected: int = 0
    send_errors: int = 0
    frames_rate_limited: int = 0
    datagrams_oversize: int = 0
    frames_forged: int = 0


class DatagramRadio(ABC):
    """An unreliable, unordered broadcast of frames as datagrams over a real medium.

    No ordering, no delivery guarantee, no duplicate suppression. ``send`` queues a frame on the
    link (``link``: its settings) and wakes the pump; frames heard are read with ``frames``,
    at most ``inbox_frames`` of them waiting, each link sender limited to ``source_frames_per_s``
    frames per second (see :class:`~swarmfl.radio.link.SourceRateLimit`: a flood from one source
    is dropped before the agent authenticates it). ``frame_check`` (e.g.
    :func:`~swarmfl.core.wire.frame_tag_check`), when given, is run on each whole frame first:
    a frame that fails it is dropped and counted (``frames_forged``). Subclasses say how one
    datagram is transmitted (:meth:`_transmit`), run :meth:`_pump` while their medium is open,
    pass each datagram heard to :meth:`_hear`, and implement :meth:`start` and
    :meth:`_close_medium`. ``transport`` names the medium as discovery does
    (:class:`~swarmfl.radio.discovery.PeerInfo`: ``"udp"``, ``"mqtt"``).

    Use ``async with radio:`` or ``start()`` / ``aclose()``.
    """

    transport: str

    def __init__(
        self,
        *,
        drone_id: int,
        link: LinkConfig,
        inbox_frames: int,
        source_frames_per_s: float = DEFAULT_SOURCE_FRAMES_PER_S,
        frame_check: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.drone_id = drone_id
        self._frame_check = frame_check
        self.link_config = link
        # A random first frame id: receivers never take a restarted drone's new frames for
        # fragments of its old ones.
        self._link = DatagramLink(link, sender=drone_id, first_frame_id=secrets.randbits(32))
        self.stats = DatagramRadioStats()
        self._inbox = FrameInbox(inbox_frames)
        self._source_rate = SourceRateLimit(source_frames_per_s)
        self._wake = asyncio.Event()
        self._closed: bool = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @abstractmethod
    async def start(self) -> None:
        """Open the medium and start sending (errors: see the subclass)."""

    async def aclose(self) -> None:
        """Release the medium; queued frames are dropped and readers stop. Idempotent.

        Raises what the subclass's :meth:`_close_medium` raises (neither real radio raises).
        """
        if self._closed:
            return
        self._closed = True
        await self._close_medium()
        self._link.clear()
        self._inbox.close()

    # -- the Radio protocol -------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue ``frame`` for the medium. Raises :class:`ClosedRadioError` once closed."""
        if self._closed:
            raise ClosedRadioError(
                f"{self.transport.upper()} radio of drone {self.drone_id} is closed"
            )
        self._link.send(frame, asyncio.get_running_loop().time())
        self._wake.set()

    def frames(self) -> AsyncIterator[ReceivedFrame]:
        """Whole frames heard (not yet authenticated), until the radio closes."""
        return self._inbox.frames()  # no second generator hop per frame

    def counters(self) -> dict[str, int]:
        """The radio's and its link's counters, as one flat dict (status lines, telemetry).

        The keys are the field status record's: ``frames_sent``, ``datagrams_sent``,
        ``bytes_sent``, ``frames_received``, ``datagrams_received``, ``bytes_received``,
        ``datagrams_malformed``, ``frames_incomplete``, ``frames_dropped_sending``,
        ``frames_dropped_inbox``, ``datagrams_lost_injected``, ``send_errors`` and
        ``frames_rate_limited``.
        """
        snapshot = self._link.stats()
        reassembly = snapshot.reassembly
        stats = self.stats
        return {
            "frames_sent": snapshot.frames_sent,
            "datagrams_sent": stats.datagrams_sent,
            "bytes_sent": stats.bytes_sent,
            "frames_received": stats.frames_received,
            "datagrams_received": stats.datagrams_received,
            "bytes_received": stats.bytes_received,
            "datagrams_malformed": (
                reassembly.malformed + reassembly.oversize + stats.datagrams_oversize
            ),
            "frames_incomplete": snapshot.frames_incomplete,
            "frames_dropped_sending": snapshot.frames_dropped_sending,
            "frames_dropped_inbox": stats.frames_dropped_inbox,
            "datagrams_lost_injected": stats.datagrams_lost_injected,
            "send_errors": stats.send_errors,
            "frames_rate_limited": stats.frames_rate_limited,
            "frames_forged": stats.frames_forged,
        }

    # -- for subclasses -----------------------------------------------------------------------

    @abstractmethod
    async def _transmit(self, datagram: bytes, now: float) -> int | None:
        """Put ``datagram`` (already charged once to the token bucket) on the medium at ``now``.

        Returns how many copies went out (counted in ``datagrams_sent`` and ``bytes_sent``), or
        None when the medium is gone for good, which ends the pump. Errors the medium raises
        end the pump too, and reach whoever runs it.
        """

    @abstractmethod
    async def _close_medium(self) -> None:
        """Stop the pump and release the medium; called once, by :meth:`aclose`."""

    async def _pump(self) -> None:
        """Send queued datagrams as the token bucket allows, until cancelled or the medium goes."""
        loop = asyncio.get_running_loop()
        link = self._link
        stats = self.stats
        wake = self._wake
        burst = 0
        while True:
            now = loop.time()
            ready_at = link.ready_at(now)
            if ready_at is None:
                wake.clear()
                await wake.wait()
                burst = 0
                continue
            if ready_at > now:
                await asyncio.sleep(ready_at - now)
                burst = 0
                continue
            datagram = link.next_datagram(now)
            if datagram is None:
                await asyncio.sleep(0)
                continue
            copies = await self._transmit(datagram, now)
            if copies is None:
                return
            stats.datagrams_sent += copies
            stats.bytes_sent += copies * len(datagram)
            burst += 1
            if burst >= DATAGRAMS_PER_YIELD:
                burst = 0
                await asyncio.sleep(0)

    def _refuse_oversize(self, size: int, link_sender: Hashable) -> None:
        """Count a datagram of ``size`` bytes (over the MTU) from ``link_sender``, unread."""
        stats = self.stats
        stats.datagrams_received += 1
        stats.bytes_received += size
        stats.datagrams_oversize += 1
        log.debug("datagram of %d bytes from %s: over the MTU, dropped", size, link_sender)

    def _hear(self, data: bytes, link_sender: Hashable, now: float | None = None) -> None:
        """Count a datagram heard from ``link_sender`` (at loop time ``now``, default: the
        loop's clock); queue the frame it completes, if any.

        Never raises for bad input: a datagram that is not ours is counted by the reassembler
        (``datagrams_malformed``) and dropped. With a ``frame_check``, a whole frame that fails
        it is counted in ``frames_forged`` and dropped before the per-source frame rate is
        charged (forgeries cannot spend the budget of the address they claim). Both are
        reported to :meth:`_fault`.
        """
        if now is None:
            now = asyncio.get_running_loop().time()
        stats = self.stats
        stats.datagrams_received += 1
        stats.bytes_received += len(data)
        reassembler = self._link.reassembler
        faults = reassembler.faults
        frame = reassembler.push(data, link_sender, now)
        if frame is None:
            if reassembler.faults != faults:
                self._fault(link_sender, now)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "datagram of %d bytes from %s: no frame completed", len(data), link_sender
                )
            return
        stats.frames_received += 1
        check = self._frame_check
        if check is not None and not check(frame):
            stats.frames_forged += 1
            self._fault(link_sender, now)
            return
        if not self._source_rate.allow(link_sender, now):
            stats.frames_rate_limited += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("frame from %s dropped: over its per-source rate", link_sender)
            return
        if not self._inbox.push(ReceivedFrame(frame, link_sender, now)):
            stats.frames_dropped_inbox += 1

    def _fault(self, link_sender: Hashable, now: float) -> None:
        """``link_sender`` sent a datagram the reassembler refused, or a frame that failed the
        ``frame_check``, at ``now``. A hook for media that budget faults per source (UDP)."""
        del link_sender, now  # nothing is budgeted by default
