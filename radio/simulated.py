"""A simulated broadcast medium for the simulator's virtual-time event loop.

Each transmission occupies its sender's transmitter for ``size * 8 / rate_bps`` seconds (frames
queue behind each other), then reaches every neighbour the world reports for the sender after
the link latency, unless the link loses it. One transmission reaches all neighbours, as on a
real radio, so it is counted once in ``bytes_sent``. A drone that is down neither sends nor
receives. Loss draws come from one seeded generator consumed in event order, so a run is
reproducible bit for bit.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from swarmfl.errors import ClosedRadioError
from swarmfl.radio.base import ReceivedFrame


@dataclass(frozen=True, slots=True)
class LinkParams:
    """One directed link: frame loss probability, latency and the sender's bit rate."""

    loss: float
    latency_s: float
    rate_bps: float


@dataclass(slots=True)
class RadioStats:
    """What one simulated radio sent, heard and lost."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    frames_lost: int = 0  # link deliveries lost on the way out of this sender
    frames_dropped: int = 0  # frames this radio dropped: down, closed or receive queue full


class SimMedium:
    """The shared air: routes each transmission to the sender's current neighbours.

    ``neighbours_of(i)`` gives drone ``i``'s current neighbours and ``link(i, j)`` the link's
    parameters; both come from the world and may change as it evolves.
    """

    def __init__(
        self,
        neighbours_of: Callable[[int], Sequence[int]],
        link: Callable[[int, int], LinkParams],
        *,
        seed: int,
        receive_queue_frames: int = 1024,
    ) -> None:
        self._neighbours_of = neighbours_of
        self._link = link
        self._rng = random.Random(seed)
        self._radios: dict[int, SimRadio] = {}
        self._busy_until: dict[int, float] = {}
        self.receive_queue_frames = receive_queue_frames

    def radio(self, drone_id: int) -> SimRadio:
        """The radio of ``drone_id`` (created on first use)."""
        radio = self._radios.get(drone_id)
        if radio is None:
            radio = SimRadio(self, drone_id)
            self._radios[drone_id] = radio
        return radio

    def transmit(self, sender: int, frame: bytes) -> None:
        """Broadcast ``frame`` from ``sender`` to its current neighbours."""
        radio = self._radios[sender]
        loop = asyncio.get_running_loop()
        now = loop.time()
        neighbours = self._neighbours_of(sender)
        start = max(now, self._busy_until.get(sender, now))
        rate_bps = self._link(sender, neighbours[0]).rate_bps if neighbours else 0.0
        end = start + (len(frame) * 8 / rate_bps if rate_bps > 0 else 0.0)
        self._busy_until[sender] = end
        radio.stats.frames_sent += 1
        radio.stats.bytes_sent += len(frame)
        # One timer per distinct arrival time (usually one per transmission), not per receiver.
        arrivals: dict[float, list[SimRadio]] = {}
        for receiver in neighbours:
            params = self._link(sender, receiver)
            if params.loss > 0 and self._rng.random() < params.loss:
                radio.stats.frames_lost += 1
                continue
            target = self._radios.get(receiver)
            if target is not None:
                arrivals.setdefault(end + params.latency_s, []).append(target)
        for at, targets in arrivals.items():
            loop.call_at(at, _deliver_all, targets, frame, sender, at)


def _deliver_all(targets: list[SimRadio], frame: bytes, sender: int, at: float) -> None:
    for target in targets:
        target.deliver(frame, sender, at)


class SimRadio:
    """One drone's radio on a :class:`SimMedium`: unreliable, unordered broadcast.

    No ordering, no delivery guarantee. ``up`` is switched by the simulator's churn model.
    """

    def __init__(self, medium: SimMedium, drone_id: int) -> None:
        self.medium = medium
        self.drone_id = drone_id
        self.stats = RadioStats()
        self.up = True
        self.closed = False
        # A deque and one waiter future: the same semantics as asyncio.Queue at a fraction of
        # the cost (a receive is the simulator's most frequent event).
        self._inbox: deque[ReceivedFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def send(self, frame: bytes) -> None:
        """Broadcast ``frame``; dropped (and counted) if the drone is down."""
        if self.closed:
            raise ClosedRadioError(f"radio of drone {self.drone_id} is closed")
        if not self.up:
            self.stats.frames_dropped += 1
            return
        self.medium.transmit(self.drone_id, frame)

    def deliver(self, frame: bytes, sender: int, now: float) -> None:
        """Called by the medium when a frame arrives; dropped if down, closed or full."""
        if not self.up or self.closed or len(self._inbox) >= self.medium.receive_queue_frames:
            self.stats.frames_dropped += 1
            return
        self.stats.frames_received += 1
        self.stats.bytes_received += len(frame)
        self._inbox.append(ReceivedFrame(frame, sender, now))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def set_up(self, up: bool) -> None:
        """Power the radio on or off; switching off drops whatever was waiting to be read."""
        self.up = up
        if not up:
            self._inbox.clear()

    async def frames(self) -> AsyncIterator[ReceivedFrame]:
        """Frames heard, as they arrive, until the radio is closed."""
        inbox = self._inbox
        while not self.closed:
            if inbox:
                yield inbox.popleft()
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def aclose(self) -> None:
        """Close the radio; later sends raise :class:`ClosedRadioError`; readers stop."""
        self.closed = True
        self._inbox.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
