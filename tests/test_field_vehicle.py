"""The field agent with its autopilot: real agent processes, a simulated autopilot over real UDP.

The autopilot (:class:`~swarmfl.testing_autopilot.SimulatedAutopilot`, built with pymavlink)
runs on this test's event loop; two ``swarmfl agent`` processes (one listening to it) gossip
over UDP on loopback. The test scripts the vehicle and waits on what the status logs say.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import (
    AgentProcess,
    agent_tables,
    agents,
    free_port,
    unique_swarm_id,
    write_config,
)

from swarmfl.config.drone_file import load_drone_config
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent
from swarmfl.testing_autopilot import SimulatedAutopilot

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"


async def eventually(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` without blocking the loop (the autopilot runs on it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def pair_with_vehicle(folder: Path, vehicle: dict[str, Any]) -> list[Path]:
    """Drone 0 listens to an autopilot; drone 1 does not. Static discovery (no zeroconf)."""
    swarm_id = unique_swarm_id()
    ports = [free_port(), free_port()]
    paths = []
    for drone in (0, 1):
        other = 1 - drone
        extra: dict[str, dict[str, Any]] = {
            "discovery": {
                "kind": "static",
                "peers": [{"id": other, "host": LOOPBACK, "port": ports[other]}],
            }
        }
        if drone == 0:
            extra["vehicle"] = vehicle
        tables = agent_tables(folder, drone, swarm_id, shards=2, port=ports[drone], extra=extra)
        paths.append(write_config(folder, drone, tables))
    return paths


def rounds_advance(process: AgentProcess, by: int) -> Callable[[], dict[str, Any] | None]:
    """A condition: the agent has done ``by`` more rounds than now."""
    first = process.last()
    assert first is not None
    start = first["rounds"]

    def done() -> dict[str, Any] | None:
        last = process.last()
        return last if last is not None and last["rounds"] >= start + by else None

    return done


@pytest.mark.asyncio
@pytest.mark.timeout(150)
async def test_the_autopilot_decides_when_the_agent_trains_and_transmits(tmp_path: Path) -> None:
    mavlink_port = free_port()
    vehicle = {
        "connection": f"udpin:{LOOPBACK}:{mavlink_port}",
        "heartbeat_timeout_s": 1.0,
        "train_when": "landed_only",
        "critical_battery_fraction": 0.15,
        "resume_battery_fraction": 0.3,
    }
    paths = pair_with_vehicle(tmp_path, vehicle)
    drone, peer = (AgentProcess(tmp_path, i, paths[i]) for i in (0, 1))
    async with SimulatedAutopilot((LOOPBACK, mavlink_port), rate_hz=10.0) as autopilot:
        autopilot.set_battery(0.9)
        autopilot.move_to(47.5, 8.5)
        with agents([drone, peer]):
            drone.start()
            peer.start()

            def on_ground_training() -> bool:
                last, heard = drone.last(), peer.last()
                return bool(
                    last
                    and heard
                    and last["vehicle"]["link"] == "up"
                    and last["rounds_trained"] >= 3
                    and "0" in heard["peers_heard"]
                )

            await eventually(on_ground_training, 60, "drone 0 hears its autopilot and trains")
            last = drone.last()
            assert last is not None
            seen = last["vehicle"]
            assert seen["landed"] == "on_ground" and seen["armed"] is False
            assert seen["lat_deg"] == pytest.approx(47.5) and seen["lon_deg"] == pytest.approx(8.5)
            assert seen["battery_fraction"] == pytest.approx(0.9, abs=0.01)
            assert seen["train"] is True and seen["transmit"] is True

            # Armed and flying: landed_only stops training; the drone still gossips.
            autopilot.arm()
            autopilot.take_off(10.0)
            await eventually(
                lambda: (s := drone.last()) and s["training"] is False, 20, "training to stop"
            )
            stopped = drone.last()
            assert stopped is not None
            flying = await eventually(rounds_advance(drone, 4), 20, "four more rounds")
            assert flying["rounds_trained"] == stopped["rounds_trained"]
            assert flying["frames_published"] > stopped["frames_published"]
            assert flying["vehicle"]["armed"] is True
            assert flying["vehicle"]["landed"] in ("taking_off", "in_air")

            # Critical battery: radio silent; the peer stops receiving its frames.
            autopilot.set_battery(0.1)
            await eventually(
                lambda: (s := drone.last()) and s["transmitting"] is False,
                20,
                "transmitting to stop",
            )
            silent = drone.last()
            assert silent is not None
            # (a replica not refreshed for the merge cut-off is dropped: then it is not listed)
            deaf = await eventually(
                lambda: (s := peer.last()) and s["peers_heard"].get("0", 99.0) > 3.0 and s,
                30,
                "the peer to stop hearing drone 0",
            )
            quiet = await eventually(rounds_advance(drone, 3), 20, "three more rounds")
            assert quiet["frames_published"] == silent["frames_published"]
            still_deaf = await eventually(rounds_advance(peer, 3), 20, "the peer's rounds")
            assert still_deaf["frames_accepted"] == deaf["frames_accepted"]
            assert quiet["vehicle"]["battery_fraction"] == pytest.approx(0.1, abs=0.01)

            # The autopilot link drops: one line says so; the agent runs on, decision kept.
            autopilot.drop_link()
            lost = await eventually(
                lambda: (
                    (s := drone.last())
                    and s["vehicle"]["link"] == "lost"
                    and "keeping the last decision" in s["vehicle"]["reason"]
                    and s
                ),
                20,
                "the link to be seen lost",
            )
            assert lost["transmitting"] is False and lost["vehicle"]["transmit"] is False
            await eventually(rounds_advance(drone, 3), 20, "rounds after the link loss")
            assert drone.alive()
            said = drone.stderr()  # each decision change is one line with its reason
            assert said.count("vehicle policy: not training: ") == 1  # taking off, armed
            assert said.count("vehicle policy: battery 10% critical") == 1
            assert drone.stderr().count("WARNING swarmfl.field.vehicle: autopilot link lost") == 1

            drone.signal(signal.SIGTERM)
            assert drone.wait(30) == 0
            final = drone.last()
            assert final is not None and final["state"] == "stopped"


@pytest.mark.asyncio
async def test_a_bad_vehicle_section_is_one_line_naming_the_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", "field-test-secret")
    paths = pair_with_vehicle(
        tmp_path, {"connection": "serial:/dev/ttyAMA0:57600", "train_when": "always"}
    )
    with pytest.raises(ConfigError) as caught:
        FieldAgent(load_drone_config(paths[0]))
    assert caught.value.source == str(paths[0].resolve())
    assert caught.value.key == "vehicle.connection"
    paths = pair_with_vehicle(
        tmp_path, {"critical_battery_fraction": 0.4, "resume_battery_fraction": 0.3}
    )
    with pytest.raises(ConfigError) as caught:
        FieldAgent(load_drone_config(paths[0]))
    assert caught.value.key == "vehicle.resume_battery_fraction"
