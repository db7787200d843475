"""A drone battery: flight, training and radio drain; land at a threshold, recharge, fly again.

Sans-IO: the battery never reads a clock. The simulator passes the virtual time ``now`` in, and
the battery accounts constant flight power over the time since its last update. A drone lands the
moment its charge reaches ``land_threshold`` of capacity (it stops flying, so flight drain stops),
sits on its charger for ``recharge_s`` and takes off again at ``return_level`` of capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from swarmfl.errors import ConfigError

__all__ = ["Battery", "BatteryModel", "BatteryState"]

BatteryState = Literal["flying", "landed"]


@dataclass(frozen=True, slots=True)
class BatteryModel:
    """The energy budget of one drone.

    ``capacity_j`` is the usable energy; ``flight_w`` the average power to stay airborne;
    ``train_j_per_gflop`` the energy per 10^9 floating-point operations of training on the
    companion computer; ``radio_j_per_byte`` the energy per byte sent; ``land_threshold`` and
    ``return_level`` are fractions of capacity (land at or below the first, take off at the
    second); ``recharge_s`` is the time on the ground.

    Raises :class:`ConfigError` (naming the field) unless ``capacity_j > 0``, the powers and
    per-unit energies and ``recharge_s`` are >= 0, ``0 <= land_threshold < return_level <= 1``
    and all are finite.
    """

    capacity_j: float
    flight_w: float
    train_j_per_gflop: float
    radio_j_per_byte: float
    land_threshold: float
    recharge_s: float
    return_level: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.capacity_j) or self.capacity_j <= 0:
            raise ConfigError(
                f"must be a finite number > 0, got {self.capacity_j!r}", key="capacity_j"
            )
        for name in ("flight_w", "train_j_per_gflop", "radio_j_per_byte", "recharge_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"must be a finite number >= 0, got {value!r}", key=name)
        if not 0 <= self.land_threshold < 1:
            raise ConfigError(
                f"must be a fraction in [0, 1), got {self.land_threshold!r}", key="land_threshold"
            )
        if not self.land_threshold < self.return_level <= 1:
            raise ConfigError(
                f"must be above land_threshold ({self.land_threshold}) and at most 1, "
                f"got {self.return_level!r}",
                key="return_level",
            )


class Battery:
    """The charge and flight state of one drone's battery (sans-IO: time is passed in).

    Starts ``flying`` at ``initial_fraction`` of capacity at time ``now``. Every method that
    takes ``now`` first brings the battery up to ``now``: flight power drains while flying, a
    crossing of the threshold lands the drone at the exact crossing time, and ``recharge_s``
    after landing it is flying again at ``return_level`` (possibly several cycles in one call).

    Training and radio drains are charged at the battery's last update time; pass ``now`` (or
    call :meth:`drain_flight` first) so that time is current. While landed the drone runs off
    its charger, so training and radio drain nothing. Charge never goes below 0.

    Raises :class:`ConfigError` if ``now`` goes backwards or is not finite, for a negative drain,
    or an ``initial_fraction`` not above ``land_threshold`` and at most 1.
    """

    def __init__(self, model: BatteryModel, *, now: float = 0.0, initial_fraction: float = 1.0):
        if not model.land_threshold < initial_fraction <= 1:
            raise ConfigError(
                f"must be above land_threshold ({model.land_threshold}) and at most 1, "
                f"got {initial_fraction!r}",
                key="initial_fraction",
            )
        self.model = model
        self._now = _check_now(now, -math.inf)
        self._charge_j = initial_fraction * model.capacity_j
        self._state: BatteryState = "flying"
        self._landed_at: float | None = None
        self._threshold_j = model.land_threshold * model.capacity_j
        self.landings = 0
        self.flight_used_j = 0.0
        self.training_used_j = 0.0
        self.radio_used_j = 0.0

    @property
    def charge_j(self) -> float:
        """Energy left, in joules, as of the last update."""
        return self._charge_j

    @property
    def fraction(self) -> float:
        """Energy left as a fraction of capacity, as of the last update."""
        return self._charge_j / self.model.capacity_j

    @property
    def state(self) -> BatteryState:
        """``"flying"`` or ``"landed"``, as of the last update."""
        return self._state

    @property
    def landed_at(self) -> float | None:
        """When the drone last landed, or None if it is flying."""
        return self._landed_at

    @property
    def updated_at(self) -> float:
        """The time the battery was last brought up to."""
        return self._now

    def _time_to_land_s(self) -> float:
        if self.model.flight_w == 0:
            return math.inf
        return max(self._charge_j - self._threshold_j, 0.0) / self.model.flight_w

    def _land(self, at: float) -> None:
        self._state = "landed"
        self._landed_at = at
        self.landings += 1

    def _advance(self, now: float) -> None:
        now = _check_now(now, self._now)
        while True:
            if self._state == "flying":
                land_at = self._now + self._time_to_land_s()
                if land_at > now:
                    used = self.model.flight_w * (now - self._now)
                    self._charge_j -= used
                    self.flight_used_j += used
                    self._now = now
                    return
                used = max(self._charge_j - self._threshold_j, 0.0)
                self._charge_j -= used
                self.flight_used_j += used
                self._now = land_at
                self._land(land_at)
            else:
                assert self._landed_at is not None
                back_at = self._landed_at + self.model.recharge_s
                if back_at > now:
                    self._now = now
                    return
                self._charge_j = self.model.return_level * self.model.capacity_j
                self._state = "flying"
                self._landed_at = None
                self._now = back_at

    def _drain(self, energy_j: float) -> float:
        used = min(energy_j, self._charge_j)
        self._charge_j -= used
        if self._charge_j <= self._threshold_j:
            self._land(self._now)
        return used

    def drain_flight(self, now: float) -> None:
        """Account flight power from the last update to ``now`` (landing and returning on the way).

        Raises :class:`ConfigError` if ``now`` is before the last update or not finite.
        """
        self._advance(now)

    def drain_training(self, flops: float, *, now: float | None = None) -> None:
        """Charge ``flops`` floating-point operations of training (nothing while landed).

        With ``now``, the battery is first brought up to ``now``. Training that takes the charge
        to the threshold lands the drone at that time. Raises :class:`ConfigError` for negative
        or non-finite ``flops`` or a backwards ``now``.
        """
        if now is not None:
            self._advance(now)
        if not math.isfinite(flops) or flops < 0:
            raise ConfigError(f"must be a finite number >= 0, got {flops!r}", key="flops")
        if self._state == "flying":
            self.training_used_j += self._drain(flops / 1e9 * self.model.train_j_per_gflop)

    def drain_radio(self, nbytes: int, *, now: float | None = None) -> None:
        """Charge sending ``nbytes`` bytes (nothing while landed).

        With ``now``, the battery is first brought up to ``now``. Radio use that takes the charge
        to the threshold lands the drone at that time. Raises :class:`ConfigError` for a negative
        ``nbytes`` or a backwards ``now``.
        """
        if now is not None:
            self._advance(now)
        if nbytes < 0:
            raise ConfigError(f"must be >= 0, got {nbytes!r}", key="nbytes")
        if self._state == "flying":
            self.radio_used_j += self._drain(nbytes * self.model.radio_j_per_byte)

    def poll(self, now: float) -> BatteryState:
        """Bring the battery up to ``now`` and return its state.

        Raises :class:`ConfigError` if ``now`` is before the last update or not finite.
        """
        self._advance(now)
        return self._state

    def next_event_time(self, now: float) -> float:
        """Bring the battery up to ``now``; return when it next lands or takes off.

        While flying this is when the charge reaches the threshold at flight power alone
        (ignoring future training and radio use), ``math.inf`` if ``flight_w`` is 0; while
        landed, when it takes off. Raises :class:`ConfigError` for a backwards ``now``.
        """
        self._advance(now)
        if self._state == "flying":
            return self._now + self._time_to_land_s()
        assert self._landed_at is not None
        return self._landed_at + self.model.recharge_s


def _check_now(now: float, last: float) -> float:
    now = float(now)
    if not math.isfinite(now):
        raise ConfigError(f"must be a finite time in seconds, got {now!r}", key="now")
    if now < last:
        raise ConfigError(f"time went backwards: {now} is before {last}", key="now")
    return now
