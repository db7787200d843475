"""A simulated broadcast medium for the simulator's virtual-time event loop.

Every drone's :class:`SimRadio` sends through the same :class:`~swarmfl.radio.link.DatagramLink`
the real radios use: a bounded send queue (a newer keyframe supersedes older queued frames of
the model stream) and a token bucket at the radio's ``rate_bps``. A transmission takes one
frame off the queue when the transmitter (and, with ``airtime``, the channel) is free; the frame
is cut into ``k = fragment_count(size, mtu)`` datagrams and occupies the air for
``wire_bytes * 8 / rate_bps`` seconds (``wire_bytes`` = frame + ``k`` 19-byte headers). It then
reaches every drone the world lists as in range of the sender at the start of the transmission,
``latency_s`` later, unless the link loses it.

**Loss.** Each link has a per-datagram loss ``p`` (from distance, see
:class:`~swarmfl.sim.pathloss.LinkModel`, or one value for a static topology) and the world may
add a per-frame loss ``f`` (the static topologies' ``radio.loss``). A frame arrives only if every
datagram does: with probability ``(1 - f) * (1 - p) ** k``. With ``fragments="sampled"`` (the
default) that is one draw per link and frame; with ``"exact"`` the frame is really fragmented,
every datagram is drawn on every link, and receivers reassemble with the real
:class:`~swarmfl.radio.fragment.Reassembler` (slower; same distribution).

**Shared medium.** With ``airtime`` a transmission also keeps the channel busy for every drone in
the sender's range until it ends: they defer their own transmissions (carrier sense, no
collisions modelled).

One transmission reaches all neighbours, as on a real radio, so it is counted once in
``bytes_sent``. A drone that is down neither sends nor receives; deliveries are only attempted
to neighbours that are up. Loss draws come from one seeded generator consumed in event order, so
a run is reproducible bit for bit.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from swarmfl.errors import ClosedRadioError, ConfigError
from swarmfl.radio.base import FrameInbox, ReceivedFrame
from swarmfl.radio.link import DatagramLink, LinkConfig

__all__ = ["LinkParams", "LinkTable", "MediumStats", "SimMedium", "SimRadio", "SimRadioStats"]

FragmentMode = Literal["sampled", "exact"]


@dataclass(frozen=True, slots=True)
class LinkParams:
    """One directed link: per-datagram loss probability, latency and the sender's bit rate."""

    loss: float
    latency_s: float
    rate_bps: float


class LinkTable(Protocol):
    """What the medium asks the world: who is in range of a sender now, over what loss.

    ``out_links(sender, now)`` returns the receivers in range (a tuple of drone ids, in a fixed
    order) and, aligned with it, each link's per-datagram loss probability. ``frame_loss`` is an
    extra per-frame loss on every link and ``latency_s`` the one-way latency of every link.
    """

    @property
    def latency_s(self) -> float: ...

    @property
    def frame_loss(self) -> float: ...

    def out_links(self, sender: int, now: float) -> tuple[tuple[int, ...], tuple[float, ...]]: ...


@dataclass(slots=True)
class SimRadioStats:
    """What one simulated radio sent, heard and lost.

    ``bytes_sent`` counts frame bytes, ``wire_bytes_sent`` adds the datagram headers.
    ``deliveries_attempted`` counts (frame, neighbour) pairs for neighbours that were up when
    the frame went out; ``frames_lost`` those the link lost, so the delivery ratio is
    ``1 - frames_lost / deliveries_attempted``. ``frames_dropped`` counts frames this radio
    dropped on receipt (down, closed or receive queue full); ``frames_dropped_queue`` frames
    that never left its send queue (superseded by a newer keyframe, dropped for room, or sent
    while down).
    """

    frames_sent: int = 0
    bytes_sent: int = 0
    wire_bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    deliveries_attempted: int = 0
    frames_lost: int = 0
    frames_dropped: int = 0
    frames_dropped_queue: int = 0

    @property
    def delivery_ratio(self) -> float | None:
        """Fraction of attempted link deliveries that arrived (None before any attempt)."""
        if not self.deliveries_attempted:
            return None
        return 1.0 - self.frames_lost / self.deliveries_attempted


@dataclass(slots=True)
class MediumStats:
    """Totals over the whole medium: transmissions and link deliveries that arrived."""

    transmissions: int = 0
    deliveries: int = 0


class SimMedium:
    """The shared air: routes each transmission to the sender's current neighbours.

    ``world`` says who is in range of whom (see :class:`LinkTable`). ``airtime`` turns on the
    shared channel (carrier sense); ``fragments`` chooses how a frame's datagram loss is
    simulated (see the module docstring).

    Raises :class:`ConfigError` for an unknown ``fragments`` mode.
    """

    def __init__(
        self,
        world: LinkTable,
        *,
        seed: int,
        airtime: bool = False,
        fragments: FragmentMode = "sampled",
        receive_queue_frames: int = 1024,
    ) -> None:
        if fragments not in ("sampled", "exact"):
            raise ConfigError(
                f"must be 'sampled' or 'exact', got {fragments!r}", key="radio.fragments"
            )
        self.world = world
        self.airtime = bool(airtime)
        self.exact = fragments == "exact"
        self.receive_queue_frames = receive_queue_frames
        self.stats = MediumStats()
        self._rng = random.Random(seed)
        self._radios: dict[int, SimRadio] = {}

    def radio(self, drone_id: int, config: LinkConfig | None = None) -> SimRadio:
        """The radio of ``drone_id``, created on first use with ``config`` (default settings)."""
        radio = self._radios.get(drone_id)
        if radio is None:
            radio = SimRadio(self, drone_id, config or LinkConfig())
            self._radios[drone_id] = radio
        return radio

    # -- the transmitter ----------------------------------------------------------------------

    def kick(self, radio: SimRadio, now: float) -> None:
        """Start ``radio``'s next transmission now if it may, else make sure it is retried."""
        link = radio.link
        while True:
            at = radio.tx_free_at
            if self.airtime and radio.channel_free_at > at:
                at = radio.channel_free_at
            if at <= now:
                ready = link.frame_ready_at(now)
                if ready is None:
                    return
                if ready <= now:
                    self._transmit(radio, now)
                    if link.idle:
                        return
                    continue  # the transmitter is busy now: schedule the next frame
                at = ready
            break
        handle = radio.pump_handle
        if handle is not None:
            if radio.pump_at <= at:
                return
            handle.cancel()
        radio.pump_at = at
        radio.pump_handle = asyncio.get_running_loop().call_at(at, self._pump, radio)

    def _pump(self, radio: SimRadio) -> None:
        radio.pump_handle = None
        if radio.up and not radio.closed:
            self.kick(radio, asyncio.get_running_loop().time())

    def _transmit(self, radio: SimRadio, now: float) -> None:
        item = radio.link.next_frame(now)
        assert item is not None  # kick() checked that the queue is not empty
        self.transmit(radio, now, *item)

    def transmit(self, radio: SimRadio, now: float, frame: bytes, count: int, wire: int) -> None:
        """Put ``frame`` (``count`` datagrams, ``wire`` bytes) on the air from ``radio`` now.

        The caller took it off the radio's link (queue and token bucket).
        """
        stats = radio.stats
        stats.frames_sent += 1
        stats.bytes_sent += len(frame)
        stats.wire_bytes_sent += wire
        self.stats.transmissions += 1
        end = now + wire * radio.seconds_per_byte
        radio.tx_free_at = end
        if radio.on_transmit is not None:
            radio.on_transmit(wire, now)
        sender = radio.drone_id
        world = self.world
        receivers, losses = world.out_links(sender, now)
        if not receivers:
            return
        arrive = end + world.latency_s
        radios = self._radios
        airtime = self.airtime
        frame_keep = 1.0 - world.frame_loss
        draw = self._rng.random
        attempted = lost = 0
        if self.exact:
            datagrams = radio.link.fragmenter.split(frame)
            heard: list[tuple[SimRadio, list[bytes]]] = []
            for receiver, p in zip(receivers, losses, strict=False):  # aligned by the world
                target = radios.get(receiver)
                if target is None:
                    continue
                if airtime and target.channel_free_at < end:
                    target.channel_free_at = end
                if not target.up:
                    continue
                attempted += 1
                if frame_keep < 1.0 and draw() >= frame_keep:
                    lost += 1
                    continue
                survivors = datagrams if p <= 0.0 else [d for d in datagrams if draw() >= p]
                if len(survivors) < count:
                    lost += 1
                if survivors:
                    heard.append((target, survivors))
            if heard:
                asyncio.get_running_loop().call_at(
                    arrive, _deliver_datagrams, heard, sender, arrive
                )
        else:
            targets: list[SimRadio] = []
            for receiver, p in zip(receivers, losses, strict=False):  # aligned by the world
                target = radios.get(receiver)
                if target is None:
                    continue
                if airtime and target.channel_free_at < end:
                    target.channel_free_at = end
                if not target.up:
                    continue
                attempted += 1
                if (p > 0.0 or frame_keep < 1.0) and draw() >= frame_keep * (1.0 - p) ** count:
                    lost += 1
                    continue
                targets.append(target)
            if targets:
                asyncio.get_running_loop().call_at(
                    arrive, _deliver_all, targets, frame, sender, arrive
                )
        stats.deliveries_attempted += attempted
        stats.frames_lost += lost
        self.stats.deliveries += attempted - lost


def _deliver_all(targets: list[SimRadio], frame: bytes, sender: int, at: float) -> None:
    for target in targets:
        target.deliver(frame, sender, at)


def _deliver_datagrams(heard: list[tuple[SimRadio, list[bytes]]], sender: int, at: float) -> None:
    for target, datagrams in heard:
        target.deliver_datagrams(datagrams, sender, at)


class SimRadio:
    """One drone's radio on a :class:`SimMedium`: an unreliable, unordered broadcast.

    No ordering, no delivery guarantee, no duplicate suppression. ``send`` queues the frame on
    the drone's :class:`~swarmfl.radio.link.DatagramLink` (bounded: an older queued frame may
    be superseded or dropped, and is counted). ``up`` is switched by the simulator (churn,
    battery, crashes). ``on_transmit(wire_bytes, now)``, if set, is called as each frame goes
    on air (the simulator charges the battery with it).
    """

    def __init__(self, medium: SimMedium, drone_id: int, config: LinkConfig) -> None:
        self.medium = medium
        self.drone_id = drone_id
        self.link = DatagramLink(config, sender=drone_id)
        self.seconds_per_byte = 8.0 / config.rate_bps
        self.stats = SimRadioStats()
        self.up = True
        self.closed = False
        self.on_transmit: Callable[[int, float], None] | None = None
        # Transmitter and channel state, kept here for speed; only the medium writes them.
        self.tx_free_at = float("-inf")
        self.channel_free_at = float("-inf")
        self.pump_at = float("inf")
        self.pump_handle: asyncio.TimerHandle | None = None
        self._inbox = FrameInbox(medium.receive_queue_frames)

    @property
    def config(self) -> LinkConfig:
        """The radio's link settings (rate, MTU, queue)."""
        return self.link.config

    def send(self, frame: bytes) -> None:
        """Queue ``frame`` for broadcast; dropped (and counted) if the drone is down.

        Raises :class:`ClosedRadioError` once the radio is closed.
        """
        if self.closed:
            raise ClosedRadioError(f"radio of drone {self.drone_id} is closed")
        if not self.up:
            self.stats.frames_dropped_queue += 1
            return
        now = asyncio.get_running_loop().time()
        medium = self.medium
        if self.tx_free_at <= now and (not medium.airtime or self.channel_free_at <= now):
            # The transmitter is idle: skip the queue when nothing waits in it (most frames).
            priced = self.link.send_now(frame, now)
            if priced is not None:
                medium.transmit(self, now, frame, *priced)
                return
        dropped = self.link.send(frame, now)
        if dropped:
            self.stats.frames_dropped_queue += len(dropped)
        medium.kick(self, now)

    def deliver(self, frame: bytes, sender: int, now: float) -> None:
        """Called by the medium when a frame arrives; dropped if down, closed or full."""
        if not self.up or not self._inbox.push(ReceivedFrame(frame, sender, now)):
            self.stats.frames_dropped += 1
            return
        self.stats.frames_received += 1
        self.stats.bytes_received += len(frame)

    def deliver_datagrams(self, datagrams: list[bytes], sender: int, now: float) -> None:
        """Called by the medium with datagrams heard (``fragments="exact"``); reassembles them."""
        if not self.up or self.closed:
            return
        for datagram in datagrams:
            frame = self.link.receive(datagram, sender, now)
            if frame is not None:
                self.deliver(frame, sender, now)

    def set_up(self, up: bool) -> None:
        """Power the radio on or off.

        Switching off drops whatever was waiting to be read or sent (half-received frames
        expire on their own); while off, nothing is sent or heard.
        """
        self.up = up
        if not up:
            self._inbox.clear()
            self.link.clear()
            if self.pump_handle is not None:
                self.pump_handle.cancel()
                self.pump_handle = None

    def frames(self) -> AsyncIterator[ReceivedFrame]:
        """Frames heard, as they arrive, until the radio is closed."""
        return self._inbox.frames()  # no second generator hop per frame

    async def aclose(self) -> None:
        """Close the radio; later sends raise :class:`ClosedRadioError`; readers stop."""
        self.closed = True
        self._inbox.close()
        self.link.clear()
        if self.pump_handle is not None:
            self.pump_handle.cancel()
            self.pump_handle = None
