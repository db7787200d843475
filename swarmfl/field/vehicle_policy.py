"""When a drone may train and transmit, decided from its autopilot's state (pure, sans-IO).

:func:`decide` maps (the :class:`~swarmfl.field.vehicle.VehicleState` or None, the settings, the
time, the previous decision) to a :class:`VehicleDecision`: ``train``, ``transmit`` and a
``reason`` a person can read in the log. :class:`VehiclePolicy` keeps the previous decision for
you and logs each change in one line.

It mirrors the simulator's battery model (:mod:`swarmfl.sim.battery`): at or below
``critical_battery_fraction`` (the simulator's ``land_threshold``) the drone neither trains nor
transmits, and it comes back at ``resume_battery_fraction`` (``return_level``). In the field the
recharge is not modelled but observed: a swapped or recharged battery reports its level again.
Both battery thresholds have hysteresis, so a pack whose reading sags and recovers around a
threshold under load does not flap. A lost autopilot link keeps the last decision (the link
going quiet says nothing about the vehicle), and the reason says so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Literal, get_args

from swarmfl.errors import ConfigError
from swarmfl.field.vehicle_state import VehicleState

__all__ = ["TrainWhen", "VehicleDecision", "VehiclePolicy", "VehiclePolicySettings", "decide"]

log = logging.getLogger(__name__)

TrainWhen = Literal["always", "landed_only", "battery_above", "landed_and_battery_above"]
_FAILSAFE_STATES = frozenset({"critical", "emergency", "flight_termination"})


@dataclass(frozen=True, slots=True)
class VehiclePolicySettings:
    """The policy's knobs (fractions of a full battery, 0..1).

    * ``train_when``: ``always``; ``landed_only`` (landed state on the ground, or, when the
      autopilot does not send EXTENDED_SYS_STATE, disarmed); ``battery_above`` (battery at or
      above ``train_battery_above_fraction``); ``landed_and_battery_above`` (both).
    * ``train_battery_above_fraction``: the training threshold. Once below it, training resumes
      only at the threshold plus ``hysteresis_fraction``.
    * ``critical_battery_fraction``: at or below it, neither train nor transmit (the
      simulator's ``land_threshold``), until the battery is back at ``resume_battery_fraction``
      (its ``return_level``).
    * ``quiet_in_failsafe``: neither train nor transmit while the autopilot's HEARTBEAT says
      critical, emergency or flight termination (failsafe): the flight controller and its own
      links come first.

    Raises :class:`ConfigError` naming the field: an unknown ``train_when``, a fraction outside
    [0, 1], ``critical_battery_fraction >= resume_battery_fraction``, or a training threshold
    plus hysteresis above 1.
    """

    train_when: TrainWhen = "always"
    train_battery_above_fraction: float = 0.5
    critical_battery_fraction: float = 0.15
    resume_battery_fraction: float = 0.3
    hysteresis_fraction: float = 0.02
    quiet_in_failsafe: bool = True

    def __post_init__(self) -> None:
        if self.train_when not in get_args(TrainWhen):
            raise ConfigError(
                f"must be one of {', '.join(get_args(TrainWhen))}, got {self.train_when!r}",
                key="train_when",
            )
        for name in (
            "train_battery_above_fraction",
            "critical_battery_fraction",
            "resume_battery_fraction",
            "hysteresis_fraction",
        ):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 <= value <= 1
            ):
                raise ConfigError(f"must be a fraction in [0, 1], got {value!r}", key=name)
        if not self.critical_battery_fraction < self.resume_battery_fraction:
            raise ConfigError(
                f"must be above critical_battery_fraction ({self.critical_battery_fraction}), "
                f"got {self.resume_battery_fraction!r}",
                key="resume_battery_fraction",
            )
        if self.train_battery_above_fraction + self.hysteresis_fraction > 1:
            raise ConfigError(
                "train_battery_above_fraction + hysteresis_fraction must be at most 1, got "
                f"{self.train_battery_above_fraction} + {self.hysteresis_fraction}",
                key="hysteresis_fraction",
            )


@dataclass(frozen=True, slots=True)
class VehicleDecision:
    """What the agent may do now, and why.

    ``reason`` is the line to log; ``cause`` is the rule behind it (the same, except while the
    link is lost, when ``reason`` wraps the kept decision's ``cause``). ``battery_critical`` and
    ``battery_low`` record which hysteresis band the battery is in; ``link_lost`` that this
    decision was kept, not made.
    """

    train: bool
    transmit: bool
    reason: str
    cause: str
    battery_critical: bool = False
    battery_low: bool = False
    link_lost: bool = False


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def decide(
    state: VehicleState | None,
    settings: VehiclePolicySettings,
    now: float,
    previous: VehicleDecision | None = None,
) -> VehicleDecision:
    """The decision for ``state`` at ``now``, given the ``previous`` one (for hysteresis).

    Before any autopilot was heard (``state`` None) the drone transmits, and trains only when
    ``train_when`` is ``always`` (nothing else can be known yet). Raises nothing.
    """
    if state is None:
        if previous is not None:
            return previous
        train = settings.train_when == "always"
        cause = "no autopilot heard yet: " + (
            "training" if train else f"not training until {settings.train_when} can be checked"
        )
        return VehicleDecision(train, True, cause, cause)
    if state.link_lost:
        kept = previous
        if kept is None:
            kept = decide(dataclasses.replace(state, link_lost=False), settings, now)
        silent_s = max(now - state.last_heartbeat_s, 0.0)
        return dataclasses.replace(
            kept,
            reason=f"autopilot link lost {silent_s:.0f} s ago, keeping the last decision: "
            f"{kept.cause}",
            link_lost=True,
        )
    return _decide_live(state, settings, previous)


def _decide_live(
    state: VehicleState, settings: VehiclePolicySettings, previous: VehicleDecision | None
) -> VehicleDecision:
    fraction = state.battery_fraction
    was_critical = previous is not None and previous.battery_critical
    if fraction is None:
        critical = was_critical  # a battery that stops reporting is not a recharged one
    else:
        critical = fraction <= settings.critical_battery_fraction or (
            was_critical and fraction < settings.resume_battery_fraction
        )
    if critical:
        level = "unknown" if fraction is None else _pct(fraction)
        cause = (
            f"battery {level} critical (at or below {_pct(settings.critical_battery_fraction)}): "
            f"not training, radio silent until {_pct(settings.resume_battery_fraction)}"
        )
        return VehicleDecision(False, False, cause, cause, battery_critical=True)
    if settings.quiet_in_failsafe and state.system_status in _FAILSAFE_STATES:
        cause = f"autopilot in failsafe ({state.system_status}): not training, radio silent"
        return VehicleDecision(False, False, cause, cause)

    needs_landed = settings.train_when in ("landed_only", "landed_and_battery_above")
    needs_battery = settings.train_when in ("battery_above", "landed_and_battery_above")
    low = False
    why_not: list[str] = []
    why: list[str] = []
    if needs_landed:
        landed = state.landed == "on_ground" or (state.landed == "unknown" and not state.armed)
        where = state.landed if state.landed != "unknown" else "landed state unknown"
        armed = "armed" if state.armed else "disarmed"
        (why if landed else why_not).append(f"{where}, {armed}")
    if needs_battery:
        threshold = settings.train_battery_above_fraction
        if previous is not None and previous.battery_low:
            threshold += settings.hysteresis_fraction
        if fraction is None:
            low = True
            why_not.append("battery level unknown")
        elif fraction < threshold:
            low = True
            why_not.append(f"battery {_pct(fraction)} below {_pct(threshold)}")
        else:
            why.append(f"battery {_pct(fraction)} at or above {_pct(threshold)}")
    if why_not:
        cause = "not training: " + "; ".join(why_not)
        return VehicleDecision(False, True, cause, cause, battery_low=low)
    cause = "training: " + ("; ".join(why) if why else "always")
    return VehicleDecision(True, True, cause, cause)


class VehiclePolicy:
    """:func:`decide` with memory: feeds each decision back as the next one's ``previous``.

    Logs one line (info) whenever ``train`` or ``transmit`` changes, or the link is lost or
    regained.
    """

    def __init__(self, settings: VehiclePolicySettings) -> None:
        self.settings = settings
        self.decision: VehicleDecision | None = None

    def update(self, state: VehicleState | None, now: float) -> VehicleDecision:
        """Decide for ``state`` at ``now``; return the decision (also kept in ``decision``)."""
        previous = self.decision
        decision = decide(state, self.settings, now, previous)
        if previous is None or (previous.train, previous.transmit, previous.link_lost) != (
            decision.train,
            decision.transmit,
            decision.link_lost,
        ):
            log.info("vehicle policy: %s", decision.reason)
        self.decision = decision
        return decision
