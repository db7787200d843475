"""The radio seam: one protocol, several media (simulated, UDP, MQTT)."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
