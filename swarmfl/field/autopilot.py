"""The field agent's autopilot feed: the ``[vehicle]`` section turned into a reader and a policy.

:class:`AutopilotFeed` joins the MAVLink reader (:class:`~swarmfl.field.vehicle.VehicleReader`,
which logs a lost and a regained link in one line each) and the train/transmit policy
(:class:`~swarmfl.field.vehicle_policy.VehiclePolicy`, which logs each change of decision in
one line). The agent calls :meth:`AutopilotFeed.decide` once per gossip period and puts
:meth:`AutopilotFeed.status_record` (position, battery, armed and landed state, link state and
the decision) in its status record, hence in the status log and the MQTT telemetry.

A lost autopilot link keeps the last decision; nothing the autopilot link carries can stop the
agent (the reader counts and drops what does not decode).
"""

from __future__ import annotations

from typing import Any

from swarmfl.config.drone_file import VehicleSection
from swarmfl.errors import ConfigError
from swarmfl.field.vehicle import VehicleLinkSettings, VehicleReader
from swarmfl.field.vehicle_policy import VehicleDecision, VehiclePolicy, VehiclePolicySettings

__all__ = ["AutopilotFeed", "vehicle_settings"]


def vehicle_settings(section: VehicleSection) -> tuple[VehicleLinkSettings, VehiclePolicySettings]:
    """The reader's and the policy's settings from ``[vehicle]``.

    Raises :class:`ConfigError` with the key ``vehicle.<name>`` (a bad connection string, the
    resume level not above the critical one, a training threshold plus hysteresis above 1).
    """
    try:
        link = VehicleLinkSettings(
            connection=section.connection,
            heartbeat_timeout_s=section.heartbeat_timeout_s,
            system_id=section.system_id,
            heartbeat_period_s=section.heartbeat_period_s,
        )
        policy = VehiclePolicySettings(
            train_when=section.train_when,
            train_battery_above_fraction=section.train_battery_above_fraction,
            critical_battery_fraction=section.critical_battery_fraction,
            resume_battery_fraction=section.resume_battery_fraction,
            hysteresis_fraction=section.hysteresis_fraction,
            quiet_in_failsafe=section.quiet_in_failsafe,
        )
    except ConfigError as exc:
        raise ConfigError(exc.problem, key=f"vehicle.{exc.key}") from None
    return link, policy


class AutopilotFeed:
    """The autopilot's state and the policy's decision, for one field agent.

    ``async with AutopilotFeed(section):`` opens the MAVLink socket (see
    :class:`~swarmfl.field.vehicle.VehicleReader` for the errors raised). Raises
    :class:`ConfigError` (keys ``vehicle.*``) from the constructor for bad settings.
    """

    def __init__(self, section: VehicleSection) -> None:
        link, policy = vehicle_settings(section)
        self.reader = VehicleReader(link)
        self.policy = VehiclePolicy(policy)

    @property
    def connection(self) -> str:
        """The connection string (for log lines)."""
        return self.reader.settings.connection

    async def __aenter__(self) -> AutopilotFeed:
        await self.reader.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.reader.__aexit__(*exc_info)

    def decide(self) -> VehicleDecision:
        """The policy's decision for the vehicle as of now (logged when it changes)."""
        state = self.reader.state()
        return self.policy.update(state, state.at_s if state is not None else 0.0)

    def status_record(self) -> dict[str, Any]:
        """The ``vehicle`` entry of the status record: link, position, battery, decision.

        ``link`` is ``waiting`` (no autopilot heard yet), ``up`` or ``lost``.
        """
        state = self.reader.state()
        record: dict[str, Any] = {"connection": self.connection}
        if state is None:
            record["link"] = "waiting"
        else:
            record.update(state.status_record())
            record["link"] = "lost" if state.link_lost else "up"
        decision = self.policy.decision
        if decision is not None:
            record["train"] = decision.train
            record["transmit"] = decision.transmit
            record["reason"] = decision.reason
        stats = self.reader.stats
        record["messages"] = stats.messages
        record["parse_errors"] = stats.parse_errors
        return record
