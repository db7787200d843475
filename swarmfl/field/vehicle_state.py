"""What the autopilot said, decoded (sans-IO): the vehicle's state, its events, link counters.

:class:`VehicleTracker` takes MAVLink datagrams (as mavlink-router or MAVProxy relay them over
UDP) and the time they arrived, decodes them with pymavlink, and answers a frozen
:class:`VehicleState` at any time: position, battery, armed and landed state, and whether the
link is lost (no HEARTBEAT for ``heartbeat_timeout_s``). Everything on the autopilot link is
untrusted: a datagram that does not decode is counted, logged at debug level and dropped, never
raised. No sockets and no clock here: :mod:`swarmfl.field.vehicle` drives it over asyncio.

Which messages count: the first HEARTBEAT from an autopilot (``autopilot`` other than
MAV_AUTOPILOT_INVALID, so not a ground station, camera or companion) picks the system to follow,
unless ``system_id`` names it; telemetry from other systems is counted as foreign and ignored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from pymavlink.dialects.v20 import common as mavlink

from swarmfl.errors import ConfigError

__all__ = [
    "MAX_DATAGRAM_BYTES",
    "LandedState",
    "VehicleEvent",
    "VehicleLinkStats",
    "VehicleState",
    "VehicleTracker",
]

log = logging.getLogger(__name__)

LandedState = Literal["unknown", "on_ground", "in_air", "taking_off", "landing"]
EventKind = Literal[
    "autopilot_found", "link_lost", "link_regained", "armed", "disarmed", "landed_state"
]

#: A MAVLink 2 packet is at most 280 bytes; routers send one or a few per datagram. Anything
#: larger is not worth parsing.
MAX_DATAGRAM_BYTES = 4096

_LANDED: dict[int, LandedState] = {
    mavlink.MAV_LANDED_STATE_UNDEFINED: "unknown",
    mavlink.MAV_LANDED_STATE_ON_GROUND: "on_ground",
    mavlink.MAV_LANDED_STATE_IN_AIR: "in_air",
    mavlink.MAV_LANDED_STATE_TAKEOFF: "taking_off",
    mavlink.MAV_LANDED_STATE_LANDING: "landing",
}
_AUTOPILOTS = {
    mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA: "ardupilot",
    mavlink.MAV_AUTOPILOT_PX4: "px4",
    mavlink.MAV_AUTOPILOT_GENERIC: "generic",
}
_UINT16_MAX = 0xFFFF


def _enum_name(enum: str, value: int, prefix: str) -> str:
    """``quadrotor`` for MAV_TYPE 2; ``MAV_TYPE_123`` style names for values we do not know."""
    entry = mavlink.enums.get(enum, {}).get(value)
    name = entry.name if entry is not None else f"{prefix}{value}"
    return str(name).removeprefix(prefix).lower()


@dataclass(frozen=True, slots=True)
class VehicleState:
    """What the autopilot last told us, as of ``at_s`` (clock seconds).

    Position: ``lat_deg``/``lon_deg`` (WGS84 degrees), ``alt_msl_m`` (above mean sea level) and
    ``alt_rel_m`` (above home), all None until a GLOBAL_POSITION_INT with a position arrives.
    Battery: ``battery_fraction`` (remaining, 0..1) and ``battery_voltage_v``, None when the
    autopilot does not report them. ``landed`` comes from EXTENDED_SYS_STATE (``"unknown"``
    without it). ``link_lost`` is true once no HEARTBEAT came for the tracker's timeout; every
    other field then keeps its last value.
    """

    system_id: int
    component_id: int
    autopilot: str
    vehicle_type: str
    system_status: str
    armed: bool
    landed: LandedState
    lat_deg: float | None
    lon_deg: float | None
    alt_msl_m: float | None
    alt_rel_m: float | None
    battery_fraction: float | None
    battery_voltage_v: float | None
    last_heartbeat_s: float
    last_message_s: float
    link_lost: bool
    at_s: float

    def status_record(self) -> dict[str, Any]:
        """The state as a flat JSON-ready dict, for the status log and telemetry."""
        return {
            "autopilot": self.autopilot,
            "system_id": self.system_id,
            "vehicle_type": self.vehicle_type,
            "system_status": self.system_status,
            "armed": self.armed,
            "landed": self.landed,
            "lat_deg": self.lat_deg,
            "lon_deg": self.lon_deg,
            "alt_msl_m": self.alt_msl_m,
            "alt_rel_m": self.alt_rel_m,
            "battery_fraction": self.battery_fraction,
            "battery_voltage_v": self.battery_voltage_v,
            "link_lost": self.link_lost,
            "heartbeat_age_s": round(self.at_s - self.last_heartbeat_s, 3),
        }


@dataclass(frozen=True, slots=True)
class VehicleEvent:
    """A change a person cares about: ``kind`` at clock time ``at_s``, ``detail`` for the log."""

    kind: EventKind
    at_s: float
    detail: str

    def line(self) -> str:
        """The event as one log line."""
        subject = "autopilot" if self.kind.startswith(("autopilot", "link")) else "vehicle"
        what = self.kind.removeprefix("autopilot_").replace("_", " ")
        return f"{subject} {what}: {self.detail}" if self.detail else f"{subject} {what}"


@dataclass(slots=True)
class VehicleLinkStats:
    """Counters of the autopilot link (they only grow).

    ``parse_errors`` counts datagrams that held anything undecodable (bad prefix, CRC or
    length, a truncated packet, empty or oversized), once each; their valid packets still count.
    ``foreign_messages`` valid messages from another system or
    from a non-autopilot before one was found; ``unknown_messages`` message ids outside the
    common dialect; ``link_losses``/``link_recoveries`` the transitions of ``link_lost``.
    """

    datagrams: int = 0
    bytes: int = 0
    messages: int = 0
    parse_errors: int = 0
    foreign_messages: int = 0
    unknown_messages: int = 0
    link_losses: int = 0
    link_recoveries: int = 0


class VehicleTracker:
    """Decodes autopilot datagrams into a :class:`VehicleState` (sans-IO: time is passed in).

    ``heartbeat_timeout_s``: the link is lost when no HEARTBEAT came for that long.
    ``system_id``: follow only this MAVLink system (None: the first autopilot heard).

    Raises :class:`ConfigError` for a timeout that is not a finite number > 0 or a system id
    outside 1..255. Nothing a datagram holds raises.
    """

    def __init__(self, *, heartbeat_timeout_s: float = 3.0, system_id: int | None = None) -> None:
        if not math.isfinite(heartbeat_timeout_s) or heartbeat_timeout_s <= 0:
            raise ConfigError(
                f"must be a finite number > 0, got {heartbeat_timeout_s!r}",
                key="heartbeat_timeout_s",
            )
        if system_id is not None and not 1 <= system_id <= 255:
            raise ConfigError(f"must be in 1..255, got {system_id!r}", key="system_id")
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.stats = VehicleLinkStats()
        self._want_system = system_id
        self._system: int | None = None
        self._component = 0
        self._autopilot = "unknown"
        self._vehicle_type = "unknown"
        self._system_status = "unknown"
        self._armed = False
        self._landed: LandedState = "unknown"
        self._lat_deg: float | None = None
        self._lon_deg: float | None = None
        self._alt_msl_m: float | None = None
        self._alt_rel_m: float | None = None
        self._sys_status_battery: tuple[float | None, float | None] = (None, None)
        # BATTERY_STATUS per battery id (bounded: the id is one byte).
        self._batteries: dict[int, tuple[float | None, float | None]] = {}
        self._last_heartbeat_s = -math.inf
        self._last_message_s = -math.inf
        self._lost = False

    @property
    def system_id(self) -> int | None:
        """The MAVLink system followed, once an autopilot was heard."""
        return self._system

    def link_deadline(self) -> float | None:
        """When the link will be declared lost without another HEARTBEAT; None if lost/unknown."""
        if self._system is None or self._lost:
            return None
        return self._last_heartbeat_s + self.heartbeat_timeout_s

    def poll(self, now: float) -> list[VehicleEvent]:
        """Declare the link lost if its HEARTBEAT deadline has passed at ``now``."""
        deadline = self.link_deadline()
        if deadline is None or now < deadline:
            return []
        self._lost = True
        self.stats.link_losses += 1
        age = now - self._last_heartbeat_s
        return [VehicleEvent("link_lost", now, f"no HEARTBEAT for {age:.1f} s")]

    def state(self, now: float) -> VehicleState | None:
        """The snapshot at ``now`` (None before any autopilot HEARTBEAT); see :meth:`poll`."""
        if self._system is None:
            return None
        lost = self._lost or now >= self._last_heartbeat_s + self.heartbeat_timeout_s
        fraction, voltage = self._battery()
        return VehicleState(
            system_id=self._system,
            component_id=self._component,
            autopilot=self._autopilot,
            vehicle_type=self._vehicle_type,
            system_status=self._system_status,
            armed=self._armed,
            landed=self._landed,
            lat_deg=self._lat_deg,
            lon_deg=self._lon_deg,
            alt_msl_m=self._alt_msl_m,
            alt_rel_m=self._alt_rel_m,
            battery_fraction=fraction,
            battery_voltage_v=voltage,
            last_heartbeat_s=self._last_heartbeat_s,
            last_message_s=self._last_message_s,
            link_lost=lost,
            at_s=now,
        )

    def receive_datagram(self, data: bytes, now: float) -> list[VehicleEvent]:
        """Decode one datagram heard at ``now``; return the events it caused. Never raises."""
        self.stats.datagrams += 1
        self.stats.bytes += len(data)
        if not 0 < len(data) <= MAX_DATAGRAM_BYTES:
            self._parse_error(f"datagram of {len(data)} bytes")
            return []
        # A fresh parser per datagram: UDP frames MAVLink packets, so a truncated or hostile
        # datagram can never leave half a packet behind to corrupt the next sender's.
        parser = mavlink.MAVLink(None)
        parser.robust_parsing = True
        try:
            messages = parser.parse_buffer(data) or []
        except Exception as exc:  # pymavlink's parser is not total on hostile bytes
            self._parse_error(f"{type(exc).__name__}: {exc}")
            return []
        bad = [m for m in messages if m.get_type() == "BAD_DATA"]
        if bad or parser.buf_len() > 0:
            reasons = [str(getattr(m, "reason", "bad data")) for m in bad[:3]]
            if parser.buf_len() > 0:
                reasons.append(f"{parser.buf_len()} bytes of a truncated packet")
            self._parse_error("; ".join(reasons))
        events: list[VehicleEvent] = []
        for message in messages:
            if message.get_type() != "BAD_DATA":
                events.extend(self._receive_message(message, now))
        return events

    def _parse_error(self, why: str) -> None:
        self.stats.parse_errors += 1
        log.debug("autopilot link: dropped undecodable data (%s)", why)

    def _receive_message(self, message: Any, now: float) -> list[VehicleEvent]:
        kind = message.get_type()
        if kind.startswith("UNKNOWN"):
            self.stats.unknown_messages += 1
            return []
        system, component = message.get_srcSystem(), message.get_srcComponent()
        events: list[VehicleEvent] = []
        if kind == "HEARTBEAT":
            if message.autopilot == mavlink.MAV_AUTOPILOT_INVALID or not self._follows(
                system, component
            ):
                self.stats.foreign_messages += 1
                return []
            if self._system is None:
                self._system, self._component = system, component
                events.append(VehicleEvent("autopilot_found", now, self._describe(message)))
            events.extend(self._heartbeat(message, now))
        elif system != self._system:
            self.stats.foreign_messages += 1
            return []
        elif kind == "GLOBAL_POSITION_INT":
            self._position(message)
        elif kind == "SYS_STATUS":
            self._sys_status_battery = (
                _percent(message.battery_remaining),
                None if message.voltage_battery == _UINT16_MAX else message.voltage_battery / 1e3,
            )
        elif kind == "BATTERY_STATUS":
            self._battery_status(message)
        elif kind == "EXTENDED_SYS_STATE":
            landed = _LANDED.get(message.landed_state, "unknown")
            if landed != self._landed:
                events.append(VehicleEvent("landed_state", now, f"{self._landed} -> {landed}"))
            self._landed = landed
        self.stats.messages += 1
        self._last_message_s = max(self._last_message_s, now)
        return events

    def _follows(self, system: int, component: int) -> bool:
        if self._system is not None:
            return (system, component) == (self._system, self._component)
        return self._want_system is None or system == self._want_system

    def _describe(self, heartbeat: Any) -> str:
        vehicle = _enum_name("MAV_TYPE", heartbeat.type, "MAV_TYPE_")
        return (
            f"{_autopilot_name(heartbeat.autopilot)} {vehicle}, "
            f"system {self._system} component {self._component}"
        )

    def _heartbeat(self, heartbeat: Any, now: float) -> list[VehicleEvent]:
        events: list[VehicleEvent] = []
        self._autopilot = _autopilot_name(heartbeat.autopilot)
        self._vehicle_type = _enum_name("MAV_TYPE", heartbeat.type, "MAV_TYPE_")
        self._system_status = _enum_name("MAV_STATE", heartbeat.system_status, "MAV_STATE_")
        armed = bool(heartbeat.base_mode & mavlink.MAV_MODE_FLAG_SAFETY_ARMED)
        if armed != self._armed:
            events.append(VehicleEvent("armed" if armed else "disarmed", now, ""))
        self._armed = armed
        if self._lost:
            self._lost = False
            self.stats.link_recoveries += 1
            silent = now - self._last_heartbeat_s
            events.append(VehicleEvent("link_regained", now, f"after {silent:.1f} s"))
        self._last_heartbeat_s = max(self._last_heartbeat_s, now)
        return events

    def _position(self, message: Any) -> None:
        # ArduPilot sends GLOBAL_POSITION_INT with lat = lon = 0 before it has a position
        # estimate; exactly (0, 0) in the Gulf of Guinea is taken as "no position".
        if message.lat == 0 and message.lon == 0:
            return
        self._lat_deg = message.lat / 1e7
        self._lon_deg = message.lon / 1e7
        self._alt_msl_m = message.alt / 1e3
        self._alt_rel_m = message.relative_alt / 1e3

    def _battery_status(self, message: Any) -> None:
        # Cells in mV (UINT16_MAX: no such cell), or the whole pack in cell 0; cells 11-14
        # in voltages_ext (0: none). Their sum is the pack voltage either way.
        cells = [v for v in message.voltages if v != _UINT16_MAX]
        cells += [v for v in getattr(message, "voltages_ext", ()) or () if v]
        voltage = sum(cells) / 1e3 if cells else None
        self._batteries[int(message.id)] = (_percent(message.battery_remaining), voltage)

    def _battery(self) -> tuple[float | None, float | None]:
        """BATTERY_STATUS when heard (the emptiest battery), else SYS_STATUS."""
        known = [b for b in self._batteries.values() if b[0] is not None]
        if known:
            return min(known, key=lambda b: b[0] or 0.0)
        fraction, voltage = self._sys_status_battery
        if voltage is None:
            voltage = next((v for _, v in self._batteries.values() if v is not None), None)
        return fraction, voltage


def _autopilot_name(value: int) -> str:
    """``px4``, ``ardupilot``, ``generic``, or the MAV_AUTOPILOT name in lower case."""
    return _AUTOPILOTS.get(value) or _enum_name("MAV_AUTOPILOT", value, "MAV_AUTOPILOT_")


def _percent(value: int) -> float | None:
    """A MAVLink percentage (-1: unknown) as a fraction in [0, 1]."""
    return None if value < 0 else min(value, 100) / 100.0
