"""The radio seam: one protocol, several media (simulated, UDP, MQTT).

:class:`Radio` is what the agent needs from any medium; :class:`UnicastRadio` is a radio that
sends to explicit destinations, which discovery supplies; :class:`FrameInbox` is the queue of
frames heard that every radio reads from.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    """A whole frame as it came off the medium (reassembled, not yet authenticated).

    ``link_sender`` is who the *medium* says sent it (an address or drone id); it is a hint only:
    the frame's authenticated sender id is what counts.
    """

    data: bytes
    link_sender: object
    received_at: float


@runtime_checkable
class Radio(Protocol):
    """An unreliable, unordered broadcast of whole frames to whoever is in range.

    No ordering, no delivery guarantee, no duplicate suppression: callers must tolerate loss,
    reordering and duplicates. ``send`` never blocks on the medium; a radio that is over its rate
    queues (bounded) or drops, and counts what it drops.
    """

    def send(self, frame: bytes) -> None:
        """Queue ``frame`` for broadcast. Raises :class:`~swarmfl.errors.ClosedRadioError`."""
        ...

    def frames(self) -> AsyncIterator[ReceivedFrame]:
        """Frames heard from the medium, until the radio closes."""
        ...

    async def aclose(self) -> None:
        """Stop sending and receiving; pending frames are dropped."""
        ...


@runtime_checkable
class UnicastRadio(Radio, Protocol):
    """A :class:`Radio` that sends each frame to explicit destinations rather than to the air.

    Discovery is a hint: :meth:`set_peer` on :class:`~swarmfl.radio.discovery.PeerUp` (a peer's
    host and port) and :meth:`remove_peer` on :class:`~swarmfl.radio.discovery.PeerDown` only
    say where a drone may be. Its ``send`` reaches the drones whose authenticated frames came
    from an address (:meth:`confirm_peer`, called by whoever authenticates frames), and the
    hinted addresses get small HELLO frames (:meth:`probe`) so that drones confirm each other.
    ``transport`` names the medium its destinations
    are on, as :class:`~swarmfl.radio.discovery.PeerInfo` does (``"udp"``): only peers announced
    on it are destinations. The UDP radio is one; the simulated and MQTT radios broadcast (to
    the drones in range, or through the broker) and are not. ``isinstance(radio, UnicastRadio)``
    tells them apart.
    """

    transport: str

    def set_peer(self, drone_id: int, host: str, port: int) -> None:
        """Send to ``host:port`` as drone ``drone_id`` (replaces its previous address).

        Our own ``drone_id`` is ignored. Raises nothing: an address that cannot be reached
        shows up as send errors in the radio's counters.
        """
        ...

    def remove_peer(self, drone_id: int) -> None:
        """Discovery says ``drone_id`` left (a hint: what authenticated frames confirmed stays)."""
        ...

    def confirm_peer(self, drone_id: int, link_sender: object, now: float) -> None:
        """A fresh authenticated frame of ``drone_id`` came from ``link_sender`` (as
        :class:`ReceivedFrame` reported it): that is where the drone is."""
        ...

    def probes_due(self, now: float) -> bool:
        """Whether an address discovery hinted at is due for a HELLO probe."""
        ...

    def probe(self, hello: Callable[[int], bytes], now: float) -> int:
        """Send ``hello(drone_id)`` (a HELLO for that drone) to the hinted addresses due for
        one; return how many."""
        ...

    def reply(self, frame: bytes, link_sender: object) -> None:
        """Send ``frame`` straight back to ``link_sender`` (the source of a frame heard)."""
        ...


class FrameInbox:
    """Frames heard and not yet read: a bounded FIFO with one asynchronous reader.

    The same semantics as an ``asyncio.Queue`` feeding an async iterator, at a fraction of the
    cost (a frame received is the simulator's most frequent event). Every radio uses it for
    :meth:`Radio.frames`.
    """

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self.closed = False
        self._frames: deque[ReceivedFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: ReceivedFrame) -> bool:
        """Queue ``frame`` for the reader; False (nothing queued) if full or closed."""
        if self.closed or len(self._frames) >= self.max_frames:
            return False
        self._frames.append(frame)
        self._wake()
        return True

    def clear(self) -> None:
        """Drop every frame not yet read."""
        self._frames.clear()

    def close(self) -> None:
        """Drop what is queued and end the reader's iteration."""
        self.closed = True
        self._frames.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def frames(self) -> AsyncIterator[ReceivedFrame]:
        """Frames in arrival order, waiting when there is none, until :meth:`close`."""
        frames = self._frames
        while not self.closed:
            if frames:
                yield frames.popleft()
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
