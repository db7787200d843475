"""The autopilot feed over UDP: an asyncio reader of MAVLink into a :class:`VehicleState`.

A companion computer hears its flight controller (PX4 or ArduPilot) through MAVLink, usually
relayed over UDP by mavlink-router or MAVProxy. :class:`VehicleReader` opens a datagram endpoint
from a pymavlink-style connection string (``udpin:``/``udp:`` listen, ``udpout:`` connect and
announce ourselves), feeds every datagram to the sans-IO
:class:`~swarmfl.field.vehicle_state.VehicleTracker`, runs a watchdog that reports a lost and a
regained link as it happens, and lets a caller wait for a condition on the state.

The state, event and counter types are re-exported here, so ``swarmfl.field.vehicle`` is the one
import a user needs; the policy deciding what to do with the state is
:mod:`swarmfl.field.vehicle_policy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pymavlink.dialects.v20 import common as mavlink

from swarmfl.clock import Clock, LoopClock
from swarmfl.errors import ConfigError, RadioError
from swarmfl.field.vehicle_state import (
    MAX_DATAGRAM_BYTES,
    LandedState,
    VehicleEvent,
    VehicleLinkStats,
    VehicleState,
    VehicleTracker,
)

__all__ = [
    "MAX_DATAGRAM_BYTES",
    "LandedState",
    "MavlinkEndpoint",
    "VehicleEvent",
    "VehicleLinkSettings",
    "VehicleLinkStats",
    "VehicleReader",
    "VehicleState",
    "VehicleTracker",
    "parse_connection",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MavlinkEndpoint:
    """A parsed connection string: ``udpin`` listens on (host, port); ``udpout`` sends there."""

    kind: Literal["udpin", "udpout"]
    host: str
    port: int


def parse_connection(connection: str) -> MavlinkEndpoint:
    """Parse a pymavlink-style connection string (``udpin:0.0.0.0:14550``, ``udpout:HOST:PORT``).

    ``udp:`` is pymavlink's alias of ``udpin:``. IPv6 hosts go in brackets (``udpin:[::]:14550``).
    Raises :class:`ConfigError` (key ``connection``) for any other scheme (serial ports and TCP:
    relay them to UDP with mavlink-router) or a bad host or port.
    """
    scheme, sep, rest = connection.partition(":")
    host, sep2, port_text = rest.rpartition(":")
    if not sep or scheme not in ("udp", "udpin", "udpout"):
        raise ConfigError(
            f"{connection!r} is not udpin:HOST:PORT or udpout:HOST:PORT (serial and TCP links: "
            "relay them to UDP with mavlink-router or MAVProxy)",
            key="connection",
        )
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep2 or not host or not 0 <= port <= 65535 or (scheme == "udpout" and port == 0):
        raise ConfigError(f"{connection!r}: needs HOST:PORT with a valid port", key="connection")
    return MavlinkEndpoint("udpout" if scheme == "udpout" else "udpin", host, port)


@dataclass(frozen=True, slots=True)
class VehicleLinkSettings:
    """How to reach the autopilot.

    ``connection``: see :func:`parse_connection`; the default listens on loopback only, for a
    router on the same board (anyone who can reach the port can speak for the autopilot, so
    bind wider only on a trusted link). ``heartbeat_timeout_s``: silence after which the link
    is lost. ``system_id``: the MAVLink system to follow (None: the first autopilot heard).
    ``heartbeat_period_s``: with ``udpout``, how often we send our own HEARTBEAT (as an onboard
    computer) so that the far end learns our address; ``udpin`` never sends.

    Raises :class:`ConfigError` naming the field.
    """

    connection: str = "udpin:127.0.0.1:14550"
    heartbeat_timeout_s: float = 3.0
    system_id: int | None = None
    heartbeat_period_s: float = 1.0
    endpoint: MavlinkEndpoint = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoint", parse_connection(self.connection))
        VehicleTracker(heartbeat_timeout_s=self.heartbeat_timeout_s, system_id=self.system_id)
        if not math.isfinite(self.heartbeat_period_s) or self.heartbeat_period_s <= 0:
            raise ConfigError(
                f"must be a finite number > 0, got {self.heartbeat_period_s!r}",
                key="heartbeat_period_s",
            )


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, reader: VehicleReader) -> None:
        self._reader = reader

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._reader._datagram(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on udpout while the router is not up yet: expected, harmless.
        log.debug("autopilot link: socket error %s", exc)


class VehicleReader:
    """Reads the autopilot over UDP into a :class:`VehicleTracker`; an async context manager.

    ``async with VehicleReader(settings) as reader:`` binds (``udpin``) or connects (``udpout``)
    the socket and starts a watchdog that logs a lost and regained link as it happens. Events
    are logged one line each (warning for a lost link, info otherwise). ``clock`` defaults to the
    loop's monotonic clock; tests may pass one they move by hand.

    Raises :class:`RadioError` (from ``__aenter__``) when the socket cannot be opened, naming
    the connection string.
    """

    def __init__(self, settings: VehicleLinkSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.tracker = VehicleTracker(
            heartbeat_timeout_s=settings.heartbeat_timeout_s, system_id=settings.system_id
        )
        self._clock: Clock = clock or LoopClock()
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._heartbeat_found = asyncio.Event()

    @property
    def stats(self) -> VehicleLinkStats:
        """The link's counters."""
        return self.tracker.stats

    @property
    def local_address(self) -> tuple[str, int]:
        """The (host, port) our socket is bound to. Raises :class:`RadioError` when closed."""
        if self._transport is None:
            raise RadioError(f"autopilot link {self.settings.connection} is not open")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def state(self) -> VehicleState | None:
        """The vehicle as of now (None until an autopilot HEARTBEAT was heard)."""
        return self.tracker.state(self._clock.now())

    async def wait_for(
        self, predicate: Callable[[VehicleState | None], bool]
    ) -> VehicleState | None:
        """Wait until ``predicate(state)`` holds; return that state. Bound it with a timeout."""
        while True:
            changed = self._changed
            state = self.state()
            if predicate(state):
                return state
            await changed.wait()

    async def __aenter__(self) -> VehicleReader:
        endpoint = self.settings.endpoint
        loop = asyncio.get_running_loop()
        try:
            if endpoint.kind == "udpin":
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=(endpoint.host, endpoint.port)
                )
            else:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), remote_addr=(endpoint.host, endpoint.port)
                )
        except OSError as exc:
            raise RadioError(
                f"autopilot link {self.settings.connection}: cannot open the socket ({exc})"
            ) from exc
        self._transport = transport
        self._tasks.append(asyncio.create_task(self._watch(), name="vehicle-watchdog"))
        if endpoint.kind == "udpout":
            self._tasks.append(asyncio.create_task(self._announce(), name="vehicle-heartbeat"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _datagram(self, data: bytes) -> None:
        had_deadline = self.tracker.link_deadline() is not None
        self._publish(self.tracker.receive_datagram(data, self._clock.now()))
        if not had_deadline and self.tracker.link_deadline() is not None:
            self._heartbeat_found.set()

    def _publish(self, events: list[VehicleEvent]) -> None:
        for event in events:
            level = logging.WARNING if event.kind == "link_lost" else logging.INFO
            log.log(level, "%s", event.line())
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _watch(self) -> None:
        while True:
            deadline = self.tracker.link_deadline()
            if deadline is None:
                self._heartbeat_found.clear()
                await self._heartbeat_found.wait()
                continue
            await self._clock.sleep_until(deadline)
            events = self.tracker.poll(self._clock.now())
            if events:
                self._publish(events)

    async def _announce(self) -> None:
        """Send our HEARTBEAT (an onboard computer) so a udpout far end learns our address."""
        sender = mavlink.MAVLink(None, srcComponent=mavlink.MAV_COMP_ID_ONBOARD_COMPUTER)
        while True:
            # A companion computer shares its vehicle's system id (1 until we know it).
            sender.srcSystem = self.tracker.system_id or self.settings.system_id or 1
            message = sender.heartbeat_encode(
                mavlink.MAV_TYPE_ONBOARD_CONTROLLER,
                mavlink.MAV_AUTOPILOT_INVALID,
                0,
                0,
                mavlink.MAV_STATE_ACTIVE,
            )
            packet = message.pack(sender)
            sender.seq = (sender.seq + 1) % 256
            if self._transport is not None:
                self._transport.sendto(packet)
            await self._clock.sleep_until(self._clock.now() + self.settings.heartbeat_period_s)
