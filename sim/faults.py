"""Drones going down and coming back: churn, batteries, crashes and drop-outs, in virtual time.

A drone flies its agent only while nothing keeps it down. :class:`Lifecycle` keeps, for every
drone, the set of reasons it is down (:class:`DownReason`) and calls the simulator back whenever
a drone goes up or down; everything is driven by timers on the running (virtual-time) loop, with
one seeded generator per drone and process, so a run is reproducible:

* **start**: each drone starts at a random offset within its first gossip period;
* **churn**: up and down periods with exponential durations (``[churn]``);
* **battery** (``[battery]``): a :class:`~swarmfl.sim.battery.Battery` drained by flight time,
  by the FLOPs of each training round and by every byte sent; the drone lands at the threshold
  (down: it neither trains, sends nor hears), recharges for ``recharge_s`` and takes off again
  with its model intact;
* **crashes** (``[[faults.crashes]]`` and ``faults.crash_mean_interval_s``): the drone loses its
  RAM (the simulator's ``crash`` callback restores it from its last checkpoint, or resets it to
  the model it rejoins with) and is down while it reboots;
* **drop-outs**: :meth:`Lifecycle.drop`, the test kit's ``swarm.drop(drone, for_s)``;
* **removal**: gone for good.

The callbacks run inside timer callbacks; an exception in them is handed to ``fail`` so the
simulation stops with it instead of the loop only logging it.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Callable, Sequence
from typing import Any

from swarmfl.config.scenario_file import Scenario
from swarmfl.errors import ConfigError
from swarmfl.sim.battery import Battery, BatteryModel

__all__ = ["DownReason", "Lifecycle"]


class DownReason(enum.IntFlag):
    """Why a drone is down; it flies only when it has none (and is not removed)."""

    STARTING = 1  # before its start offset
    CHURN = 2  # a churn down period
    BATTERY = 4  # landed to recharge
    CRASH = 8  # rebooting after a crash
    DROPPED = 16  # dropped by the test kit


# The name shown in metrics for a down drone: the first reason in this order.
_STATE_NAMES = (
    (DownReason.CRASH, "crashed"),
    (DownReason.BATTERY, "landed"),
    (DownReason.DROPPED, "dropped"),
    (DownReason.CHURN, "churn"),
    (DownReason.STARTING, "starting"),
)


class Lifecycle:
    """Up/down state of every drone of ``scenario``, driven by timers (see the module docstring).

    ``apply(drone, up)`` is called whenever a drone goes up or down; ``crash(drone)`` when it
    crashes (before it goes down); ``fail(exc)`` if either raises. ``start_offsets`` and
    ``churn_rngs`` are per drone. Nothing happens until :meth:`start`.
    """

    def __init__(
        self,
        scenario: Scenario,
        start_offsets: Sequence[float],
        churn_rngs: Sequence[random.Random],
        *,
        apply: Callable[[int, bool], None],
        crash: Callable[[int], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self.scenario = scenario
        n = scenario.swarm.drones
        seed = scenario.run.seed
        self._apply = apply
        self._crash_callback = crash
        self._fail = fail
        self._offsets = list(start_offsets)
        self._churn = list(churn_rngs)
        self._down = [DownReason.STARTING] * n
        self._up = [False] * n
        self._removed = [False] * n
        self._generation = [0] * n  # of drop() and crash reboots: only the latest one ends
        self.crashes = [0] * n
        self._crash_rngs = [random.Random(f"{seed}/crash/{i}") for i in range(n)]
        self.batteries: list[Battery | None] = [None] * n
        self._battery_handles: list[asyncio.TimerHandle | None] = [None] * n
        self._battery_at = [float("inf")] * n
        battery = scenario.battery
        if battery.enabled:
            model = BatteryModel(
                capacity_j=battery.capacity_j,
                flight_w=battery.flight_w,
                train_j_per_gflop=battery.train_j_per_gflop,
                radio_j_per_byte=battery.radio_j_per_byte,
                land_threshold=battery.land_threshold,
                recharge_s=battery.recharge_s,
                return_level=battery.return_level,
            )
            for i in range(n):
                rng = random.Random(f"{seed}/battery/{i}")
                fraction = rng.uniform(battery.initial_min, 1.0)
                self.batteries[i] = Battery(model, now=0.0, initial_fraction=fraction)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    # -- timers -------------------------------------------------------------------------------

    def _at(self, when: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        assert self._loop is not None, "Lifecycle.start() first"
        return self._loop.call_at(when, self._guarded, callback, args)

    def _guarded(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        if self._stopped:
            return
        try:
            callback(*args)
        except Exception as exc:  # handed to the simulation, not swallowed by the loop
            self._fail(exc)

    def start(self) -> None:
        """Schedule every drone's start, churn, battery and crash events from the loop's now."""
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        faults = self.scenario.faults
        for drone, offset in enumerate(self._offsets):
            self._at(now + offset, self._started, drone)
            if self.batteries[drone] is not None:
                self._schedule_battery(drone, now)
            if faults.crash_mean_interval_s is not None:
                gap = self._crash_rngs[drone].expovariate(1.0 / faults.crash_mean_interval_s)
                self._at(now + gap, self._random_crash, drone)
        for crash in faults.crashes:
            self._at(max(now, crash.at_s), self.crash, crash.drone, crash.down_s)

    def stop(self) -> None:
        """Fire no more events (timers still pending do nothing)."""
        self._stopped = True

    def _started(self, drone: int) -> None:
        self._set(drone, DownReason.STARTING, False)
        churn = self.scenario.churn
        if churn.enabled:
            assert self._loop is not None
            up_s = self._churn[drone].expovariate(1.0 / churn.mean_up_s)
            self._at(self._loop.time() + up_s, self._churn_down, drone)

    def _churn_down(self, drone: int) -> None:
        assert self._loop is not None
        self._set(drone, DownReason.CHURN, True)
        down_s = self._churn[drone].expovariate(1.0 / self.scenario.churn.mean_down_s)
        self._at(self._loop.time() + down_s, self._churn_up, drone)

    def _churn_up(self, drone: int) -> None:
        assert self._loop is not None
        self._set(drone, DownReason.CHURN, False)
        up_s = self._churn[drone].expovariate(1.0 / self.scenario.churn.mean_up_s)
        self._at(self._loop.time() + up_s, self._churn_down, drone)

    # -- state --------------------------------------------------------------------------------

    def _set(self, drone: int, reason: DownReason, down: bool) -> None:
        self._down[drone] = self._down[drone] | reason if down else self._down[drone] & ~reason
        up = not self._down[drone] and not self._removed[drone]
        if up != self._up[drone]:
            self._up[drone] = up
            self._apply(drone, up)

    def is_up(self, drone: int) -> bool:
        """Whether ``drone`` is flying its agent now."""
        return self._up[drone]

    def state(self, drone: int) -> str:
        """``"up"``, ``"removed"``, or why it is down: crashed, landed, dropped, churn, starting."""
        if self._removed[drone]:
            return "removed"
        down = self._down[drone]
        for reason, name in _STATE_NAMES:
            if down & reason:
                return name
        return "up"

    def remove(self, drone: int) -> None:
        """Take ``drone`` down for good."""
        self._removed[drone] = True
        self._set(drone, DownReason(0), False)

    def drop(self, drone: int, for_s: float) -> None:
        """Take ``drone`` down now for ``for_s`` seconds (it keeps its model).

        A later drop of the same drone replaces an earlier one's return time.
        """
        assert self._loop is not None, "Lifecycle.start() first"
        self._generation[drone] += 1
        self._set(drone, DownReason.DROPPED, True)
        self._at(self._loop.time() + for_s, self._undrop, drone, self._generation[drone])

    def _undrop(self, drone: int, generation: int) -> None:
        if generation == self._generation[drone]:
            self._set(drone, DownReason.DROPPED, False)

    # -- crashes ------------------------------------------------------------------------------

    def crash(self, drone: int, down_s: float) -> None:
        """Crash ``drone`` now: it loses its RAM and reboots for ``down_s`` seconds.

        Raises :class:`ConfigError` for a negative ``down_s``.
        """
        if not down_s >= 0:
            raise ConfigError(f"must be >= 0, got {down_s!r}", key="down_s")
        if self._removed[drone]:
            return
        assert self._loop is not None, "Lifecycle.start() first"
        self.crashes[drone] += 1
        self._crash_callback(drone)
        self._generation[drone] += 1
        self._set(drone, DownReason.CRASH, True)
        self._at(self._loop.time() + down_s, self._rebooted, drone, self._generation[drone])

    def _rebooted(self, drone: int, generation: int) -> None:
        if generation == self._generation[drone]:
            self._set(drone, DownReason.CRASH, False)

    def _random_crash(self, drone: int) -> None:
        faults = self.scenario.faults
        assert self._loop is not None and faults.crash_mean_interval_s is not None
        self.crash(drone, faults.crash_down_s)
        gap = self._crash_rngs[drone].expovariate(1.0 / faults.crash_mean_interval_s)
        self._at(self._loop.time() + faults.crash_down_s + gap, self._random_crash, drone)

    # -- batteries ----------------------------------------------------------------------------

    def battery_fraction(self, drone: int, now: float) -> float | None:
        """Charge left as a fraction of capacity at ``now`` (None without batteries)."""
        battery = self.batteries[drone]
        if battery is None:
            return None
        battery.drain_flight(now)
        return battery.fraction

    def landings(self) -> int:
        """Landings so far, over all drones."""
        return sum(b.landings for b in self.batteries if b is not None)

    def on_training(self, drone: int, flops: float, now: float) -> None:
        """Charge a training round of ``flops`` to ``drone``'s battery (if any)."""
        battery = self.batteries[drone]
        if battery is not None:
            battery.drain_training(flops, now=now)
            self._battery_changed(drone, battery, now)

    def on_transmit(self, drone: int, wire_bytes: int, now: float) -> None:
        """Charge ``wire_bytes`` sent to ``drone``'s battery (if any)."""
        battery = self.batteries[drone]
        if battery is not None:
            battery.drain_radio(wire_bytes, now=now)
            self._battery_changed(drone, battery, now)

    def _battery_changed(self, drone: int, battery: Battery, now: float) -> None:
        if battery.state == "landed" and not self._down[drone] & DownReason.BATTERY:
            self._set(drone, DownReason.BATTERY, True)
        self._schedule_battery(drone, now)

    def _schedule_battery(self, drone: int, now: float) -> None:
        battery = self.batteries[drone]
        assert battery is not None
        at = battery.next_event_time(now)
        handle = self._battery_handles[drone]
        if handle is not None:
            if self._battery_at[drone] <= at:
                return  # it fires first and plans again
            handle.cancel()
        self._battery_at[drone] = at
        self._battery_handles[drone] = (
            self._at(at, self._battery_event, drone) if at != float("inf") else None
        )

    def _battery_event(self, drone: int) -> None:
        battery = self.batteries[drone]
        assert battery is not None and self._loop is not None
        self._battery_handles[drone] = None
        self._battery_at[drone] = float("inf")
        now = self._loop.time()
        landed = battery.poll(now) == "landed"
        if landed != bool(self._down[drone] & DownReason.BATTERY):
            self._set(drone, DownReason.BATTERY, landed)
        self._schedule_battery(drone, now)
