"""A simulated flight controller that speaks MAVLink over real UDP, for tests and bench runs.

:class:`SimulatedAutopilot` stands in for PX4 or ArduPilot behind mavlink-router: built with
pymavlink, it sends HEARTBEAT, GLOBAL_POSITION_INT, SYS_STATUS, BATTERY_STATUS and
EXTENDED_SYS_STATE, one message per datagram, every tick at ``rate_hz``. A test scripts it::

    async with SimulatedAutopilot(("127.0.0.1", port)) as autopilot:
        autopilot.arm()
        autopilot.take_off(20.0)         # climbs at climb_mps, then reports in_air
        autopilot.set_battery(0.12)
        autopilot.drop_link()            # silence, as a pulled cable or a dead router
        autopilot.restore_link()

It ships in the package (not only in tests/) because the field agent's tests, its benchmark
(the MAVLink reader at 10 Hz) and a field team's bench check without a flight controller all
need the same stand-in. With ``target=None`` it waits to be heard and answers the last sender,
as a router's UDP server endpoint does for a ``udpout:`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any, Literal

from pymavlink.dialects.v20 import common as mavlink

from swarmfl.errors import ConfigError, RadioError

__all__ = ["SimulatedAutopilot"]

_LANDED_CODES = {
    "on_ground": mavlink.MAV_LANDED_STATE_ON_GROUND,
    "in_air": mavlink.MAV_LANDED_STATE_IN_AIR,
    "taking_off": mavlink.MAV_LANDED_STATE_TAKEOFF,
    "landing": mavlink.MAV_LANDED_STATE_LANDING,
}
_CELL_EMPTY_V = 3.3
_CELL_FULL_V = 4.2
_MAX_CELLS = 10


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, autopilot: SimulatedAutopilot) -> None:
        self._autopilot = autopilot

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._autopilot._heard(data, (str(addr[0]), int(addr[1])))


class SimulatedAutopilot:
    """A scriptable quadrotor autopilot on a UDP socket; an async context manager.

    ``target``: where to send (None: to whoever last sent us a datagram). ``autopilot``: which
    firmware the HEARTBEAT claims. ``battery_messages``: which of SYS_STATUS / BATTERY_STATUS
    carry the battery. ``extended_sys_state``: send the landed state (False: like a firmware
    that does not). Position starts at PX4 SITL's home (Zurich) on the ground, disarmed.

    Raises :class:`ConfigError` for a rate, cell count, system id or battery fraction out of
    range, and from :meth:`take_off` when disarmed; :class:`RadioError` if the socket cannot be
    opened.
    """

    def __init__(
        self,
        target: tuple[str, int] | None,
        *,
        rate_hz: float = 20.0,
        autopilot: Literal["px4", "ardupilot"] = "px4",
        system_id: int = 1,
        battery_messages: Literal["sys_status", "battery_status", "both"] = "both",
        extended_sys_state: bool = True,
        lat_deg: float = 47.397742,
        lon_deg: float = 8.545594,
        home_alt_msl_m: float = 488.0,
        battery_fraction: float = 1.0,
        cells: int = 4,
        climb_mps: float = 2.0,
        bind_host: str = "127.0.0.1",
    ) -> None:
        if not math.isfinite(rate_hz) or rate_hz <= 0:
            raise ConfigError(f"must be a finite number > 0, got {rate_hz!r}", key="rate_hz")
        if not 1 <= cells <= _MAX_CELLS:
            raise ConfigError(f"must be in 1..{_MAX_CELLS}, got {cells!r}", key="cells")
        if not 1 <= system_id <= 255:
            raise ConfigError(f"must be in 1..255, got {system_id!r}", key="system_id")
        self.target = target
        self._answer_last_sender = target is None
        self.rate_hz = float(rate_hz)
        self.battery_messages = battery_messages
        self.extended_sys_state = extended_sys_state
        self.lat_deg = lat_deg
        self.lon_deg = lon_deg
        self.home_alt_msl_m = home_alt_msl_m
        self.cells = cells
        self.climb_mps = climb_mps
        self.bind_host = bind_host
        self.armed = False
        self.landed: Literal["on_ground", "in_air", "taking_off", "landing"] = "on_ground"
        self.alt_rel_m = 0.0
        self.failsafe = False
        self.link_up = True
        self.sent_datagrams = 0
        self.companion_heartbeats = 0
        self.battery_fraction = 0.0
        self.set_battery(battery_fraction)
        self._autopilot_code = (
            mavlink.MAV_AUTOPILOT_PX4 if autopilot == "px4" else mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA
        )
        self._mav = mavlink.MAVLink(None, srcSystem=system_id, srcComponent=1)
        self._target_alt_m = 0.0
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._boot_s = 0.0

    # --- scripting -------------------------------------------------------------------------

    def arm(self) -> None:
        """Arm the motors (the HEARTBEAT's safety-armed flag)."""
        self.armed = True

    def disarm(self) -> None:
        """Disarm the motors."""
        self.armed = False

    def take_off(self, alt_m: float) -> None:
        """Climb to ``alt_m`` above home at ``climb_mps`` (taking_off, then in_air).

        Raises :class:`ConfigError` when disarmed, as a real autopilot refuses.
        """
        if not self.armed:
            raise ConfigError("the vehicle is disarmed: arm() before take_off()", key="armed")
        self._target_alt_m = alt_m
        self.landed = "taking_off"

    def land(self) -> None:
        """Descend at ``climb_mps`` (landing), then report on_ground."""
        self._target_alt_m = 0.0
        self.landed = "landing"

    def set_battery(self, fraction: float) -> None:
        """Set the remaining charge (0..1); the pack voltage follows a LiPo's 3.3-4.2 V per cell.

        Raises :class:`ConfigError` outside [0, 1].
        """
        if not 0 <= fraction <= 1:
            raise ConfigError(f"must be in [0, 1], got {fraction!r}", key="battery_fraction")
        self.battery_fraction = fraction

    def move_to(self, lat_deg: float, lon_deg: float) -> None:
        """Put the vehicle at (``lat_deg``, ``lon_deg``)."""
        self.lat_deg, self.lon_deg = lat_deg, lon_deg

    def drop_link(self) -> None:
        """Go silent, as a pulled cable or a dead router would."""
        self.link_up = False

    def restore_link(self) -> None:
        """Speak again from the next tick."""
        self.link_up = True

    def send_raw(self, data: bytes) -> None:
        """Send ``data`` as one datagram to the target (garbage, truncated packets...)."""
        self._sendto(data)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the autopilot's socket is bound to. Raises :class:`RadioError`."""
        if self._transport is None:
            raise RadioError("the simulated autopilot is not running")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    # --- running ---------------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedAutopilot:
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self), local_addr=(self.bind_host, 0)
            )
        except OSError as exc:
            raise RadioError(f"simulated autopilot: cannot bind {self.bind_host} ({exc})") from exc
        self._task = asyncio.create_task(self._run(), name="simulated-autopilot")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _run(self) -> None:
        period_s = 1.0 / self.rate_hz
        while True:
            self.tick(period_s)
            await asyncio.sleep(period_s)

    def tick(self, dt_s: float) -> None:
        """Advance the flight by ``dt_s`` seconds, then send one round of telemetry."""
        self._boot_s += dt_s
        self._fly(dt_s)
        if self.link_up:
            for message in self._telemetry():
                packet = message.pack(self._mav)
                self._mav.seq = (self._mav.seq + 1) % 256
                self._sendto(packet)

    def _fly(self, dt_s: float) -> None:
        step_m = self.climb_mps * dt_s
        if self.landed == "taking_off":
            self.alt_rel_m = min(self.alt_rel_m + step_m, self._target_alt_m)
            if self.alt_rel_m >= self._target_alt_m:
                self.landed = "in_air"
        elif self.landed == "landing":
            self.alt_rel_m = max(self.alt_rel_m - step_m, 0.0)
            if self.alt_rel_m <= 0.0:
                self.landed = "on_ground"

    def _telemetry(self) -> list[Any]:
        mav = self._mav
        base_mode = mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
        if self.armed:
            base_mode |= mavlink.MAV_MODE_FLAG_SAFETY_ARMED
        if self.failsafe:
            status = mavlink.MAV_STATE_CRITICAL
        else:
            status = mavlink.MAV_STATE_ACTIVE if self.armed else mavlink.MAV_STATE_STANDBY
        boot_ms = int(self._boot_s * 1e3) & 0xFFFFFFFF
        cell_mv = round(
            (_CELL_EMPTY_V + (_CELL_FULL_V - _CELL_EMPTY_V) * self.battery_fraction) * 1e3
        )
        remaining = round(self.battery_fraction * 100)
        messages = [
            mav.heartbeat_encode(
                mavlink.MAV_TYPE_QUADROTOR, self._autopilot_code, base_mode, 0, status
            ),
            mav.global_position_int_encode(
                boot_ms,
                round(self.lat_deg * 1e7),
                round(self.lon_deg * 1e7),
                round((self.home_alt_msl_m + self.alt_rel_m) * 1e3),
                round(self.alt_rel_m * 1e3),
                0,
                0,
                0,
                0xFFFF,
            ),
        ]
        if self.battery_messages in ("sys_status", "both"):
            messages.append(
                mav.sys_status_encode(
                    0, 0, 0, 0, cell_mv * self.cells, -1, remaining, 0, 0, 0, 0, 0, 0
                )
            )
        if self.battery_messages in ("battery_status", "both"):
            cells = [cell_mv] * self.cells + [0xFFFF] * (_MAX_CELLS - self.cells)
            messages.append(
                mav.battery_status_encode(
                    0,
                    mavlink.MAV_BATTERY_FUNCTION_ALL,
                    mavlink.MAV_BATTERY_TYPE_LIPO,
                    0x7FFF,
                    cells,
                    -1,
                    -1,
                    -1,
                    remaining,
                )
            )
        if self.extended_sys_state:
            messages.append(
                mav.extended_sys_state_encode(
                    mavlink.MAV_VTOL_STATE_UNDEFINED, _LANDED_CODES[self.landed]
                )
            )
        return messages

    def _sendto(self, data: bytes) -> None:
        if self._transport is None or self.target is None:
            return
        self._transport.sendto(data, self.target)
        self.sent_datagrams += 1

    def _heard(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._answer_last_sender:
            self.target = addr
        parser = mavlink.MAVLink(None)
        parser.robust_parsing = True
        with contextlib.suppress(Exception):
            for message in parser.parse_buffer(data) or []:
                if (
                    message.get_type() == "HEARTBEAT"
                    and message.type == mavlink.MAV_TYPE_ONBOARD_CONTROLLER
                ):
                    self.companion_heartbeats += 1
