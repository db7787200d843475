"""One drone, assembled once (swarmfl.drone): a field drone and a simulated drone with the same
settings get the same shard, initial weights, memory plan, node config and link config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _field_helpers import to_toml

from swarmfl.config.drone_file import load_drone_config
from swarmfl.drone import DroneAssembly
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent
from swarmfl.sim.swarm import Swarm, swarm_settings
from swarmfl.testing import scenario

SECRET = "swarmfl-simulation"  # the scenario's default secret
BUDGET = 200_000  # below the whole MLP's working set: the micro class trains a suffix
DRONES = 6


def shared_settings(tmp_path: Path) -> dict[str, Any]:
    """Learning settings written once, used by a scenario and by a drone.toml."""
    return {
        "run": {"seed": 11, "eval_samples": 50},
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
        "model": {"kind": "mlp", "hidden": [48, 24]},
        "training": {"lr": 0.07, "batch_size": 8, "momentum": 0.5},
        "gossip": {"codec": "int8", "block_size": 64, "keyframe_interval": 4},
        "merge": {"alpha": 0.8, "exponent": 0.25, "cutoff": 6.0},
    }


def simulated(tmp_path: Path) -> Swarm:
    settings = shared_settings(tmp_path)
    overrides: dict[str, Any] = {
        f"{section}.{key}": value
        for section, values in settings.items()
        for key, value in values.items()
    }
    overrides["swarm.drones"] = DRONES
    overrides["swarm.devices"] = [
        {"name": "jetson", "count": DRONES // 2},
        {"name": "micro", "count": DRONES // 2, "budget_bytes": BUDGET},
    ]
    return Swarm(scenario("quickstart", overrides))


def field_drone(tmp_path: Path, drone_id: int, *, budget: int | None) -> FieldAgent:
    tables = shared_settings(tmp_path)
    tables["data"] = {**tables["data"], "shards": DRONES, "shard": drone_id}
    if budget is not None:
        tables["training"] = {**tables["training"], "budget_bytes": budget}
    tables |= {
        "drone": {"id": drone_id},
        "swarm": {"swarm_id": 1, "secret": SECRET, "allow_secret_in_file": True},
        "discovery": {"interfaces": ["127.0.0.1"]},
        "status": {"log": ""},
        "identity": {"mode": "swarm-key"},  # as in the simulator, which flies on the swarm key
    }
    path = tmp_path / f"drone{drone_id}.toml"
    path.write_text(to_toml(tables), encoding="utf-8")
    return FieldAgent(load_drone_config(path), resume=False)


@pytest.mark.parametrize("drone_id", [2, 3])  # a jetson (whole model), a micro (a plan)
def test_a_field_drone_and_a_simulated_drone_are_the_same_drone(
    tmp_path: Path, drone_id: int
) -> None:
    swarm = simulated(tmp_path)
    sim = swarm.drones[drone_id].parts
    budget = swarm.devices[drone_id].profile.budget_bytes
    assert (budget is None) == (drone_id % 2 == 0)
    field = field_drone(tmp_path, drone_id, budget=budget).parts

    np.testing.assert_array_equal(field.indices, sim.indices)
    np.testing.assert_array_equal(field.learner.flat_parameters(), sim.learner.flat_parameters())
    assert field.plan == sim.plan
    assert (field.plan is None) == (budget is None)
    assert field.node_config == sim.node_config
    assert field.link_config == sim.link_config
    assert field.flops_per_sample == sim.flops_per_sample
    # the same shuffling too: one round of training from the same start lands in the same place
    field.learner.train_round()
    sim.learner.train_round()
    np.testing.assert_array_equal(field.learner.flat_parameters(), sim.learner.flat_parameters())


def test_field_and_simulator_evaluate_on_the_same_subset(tmp_path: Path) -> None:
    swarm = simulated(tmp_path)
    field = field_drone(tmp_path, 0, budget=None)
    np.testing.assert_array_equal(field.assembly.x_eval, swarm.x_eval)
    np.testing.assert_array_equal(field.assembly.y_eval, swarm.y_eval)
    assert len(swarm.y_eval) == 50


def test_frames_larger_than_the_link_allows_are_refused_at_assembly() -> None:
    small = scenario(
        "quickstart", {"swarm.drones": 2, "radio.max_frame_bytes": 4096, "model.hidden": [64]}
    )
    with pytest.raises(ConfigError) as info:
        DroneAssembly(swarm_settings(small)).build(0, 0)
    assert info.value.key == "radio.max_frame_bytes"
    assert "over the link's limit of 4096" in info.value.problem


def test_a_shard_out_of_range_names_the_key() -> None:
    assembly = DroneAssembly(swarm_settings(scenario("quickstart", {"swarm.drones": 2})))
    with pytest.raises(ConfigError) as info:
        assembly.build(0, 5)
    assert info.value.key == "data.shard"
