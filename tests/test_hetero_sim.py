"""Heterogeneous fleets: device classes in scenarios, a plan per drone, a pretrained start, and
a mixed swarm that learns as well as an all-full one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from swarmfl.config.scenario_file import load_scenario, scenario_to_toml, validate_scenario
from swarmfl.drone import DroneAssembly, load_dataset
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.models import build_model, training_flops_per_sample
from swarmfl.learning.plan import MemoryPlan, TrainPlan
from swarmfl.learning.pretrained import save_pretrained
from swarmfl.sim.fleet import assign_devices, fleet_devices
from swarmfl.sim.swarm import Swarm, swarm_settings
from swarmfl.sim.vtime import run_virtual
from swarmfl.testing import scenario

DIGITS = (64,)


def digits_mlp(seed: int = 7) -> nn.Sequential:
    return build_model("mlp", DIGITS, 10, hidden=(128,), seed=seed)


def head_only_budget(codec: str = "fp32", scope: str = "model") -> tuple[int, TrainPlan]:
    """The smallest budget for the quickstart MLP's last block at the whole batch of 16."""
    plans = MemoryPlan.candidates(
        digits_mlp(), DIGITS, 16, 0, neighbour_replicas=4, codec=codec, replica_scope=scope
    )
    head = next(p for p in plans if p.mode == "suffix" and p.micro_batch == 16)
    # no plan training more than the head fits it: the head it is
    assert all(p.predicted.total > head.predicted.total for p in plans if p.mode == "full")
    return head.predicted.total, head


def mixed(budget: int | str, **extra: object) -> dict[str, object]:
    return {
        "swarm.devices": [
            {"name": "jetson", "count": 8, "flops_per_s": 5e9, "rate_bps": 2e6},
            {"name": "micro", "count": 8, "budget_bytes": budget, **extra},
        ]
    }


# -- scenario keys ------------------------------------------------------------------------------


def test_device_classes_parse_byte_sizes_and_round_trip(tmp_path) -> None:
    loaded = scenario("quickstart", mixed("64MiB"))
    micro = loaded.swarm.devices[1]
    assert micro.budget_bytes == 64 * 2**20 and micro.flops_per_s is None
    assert loaded.swarm.devices[0].budget_bytes is None
    path = tmp_path / "resolved.toml"
    path.write_text(scenario_to_toml(loaded))
    assert "[[swarm.devices]]" in path.read_text()
    assert load_scenario(path) == loaded


@pytest.mark.parametrize(
    ("devices", "key", "problem"),
    [
        ([{"name": "a", "count": 3}], "swarm.devices", "sum to 3 but swarm.drones is 16"),
        (
            [{"name": "a", "count": 8}, {"name": "a", "count": 8}],
            "swarm.devices.1.name",
            "appears twice",
        ),
        (
            [{"name": "a", "count": 16, "budget_bytes": "12 parsecs"}],
            "swarm.devices.0.budget_bytes",
            "cannot parse '12 parsecs' as a byte size",
        ),
        ([{"name": "a", "count": 16, "budget_bytes": 0}], "swarm.devices.0.budget_bytes", "0"),
        ([{"name": "a", "count": 16, "memory": 1}], "swarm.devices.0.memory", "unknown key"),
        ([{"name": "", "count": 16}], "swarm.devices.0.name", "at least 1 character"),
    ],
)
def test_bad_device_classes_are_one_line_errors(devices, key, problem) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_scenario({"swarm": {"devices": devices}}, source="s.toml")
    line = caught.value.one_line()
    assert "\n" not in line
    assert f"key '{key}'" in line
    assert problem in line


def test_model_checkpoint_is_relative_to_the_scenario_file_but_set_to_the_cwd(
    tmp_path, monkeypatch
) -> None:
    folder = tmp_path / "scenarios"
    folder.mkdir()
    path = folder / "s.toml"
    path.write_text('[model]\ncheckpoint = "weights/backbone.pt"\n')
    assert load_scenario(path).model.checkpoint == str(folder / "weights" / "backbone.pt")
    monkeypatch.chdir(tmp_path)
    overridden = load_scenario(path, ["model.checkpoint='mine.pt'"])
    assert overridden.model.checkpoint == "mine.pt"
    absolute = load_scenario(path, [f"model.checkpoint='{tmp_path / 'abs.pt'}'"])
    assert absolute.model.checkpoint == str(tmp_path / "abs.pt")


# -- every drone plans for itself ---------------------------------------------------------------


def test_classes_are_spread_evenly_over_the_drone_ids() -> None:
    assert assign_devices([8, 8]) == [0, 1] * 8
    order = assign_devices([5, 2, 9])
    assert [order.count(k) for k in range(3)] == [5, 2, 9]
    for i in range(1, len(order) + 1):  # every prefix holds each class's share, within one
        for k, count in enumerate((5, 2, 9)):
            assert abs(order[:i].count(k) - count * i / 16) < 1
    assert assign_devices([]) == []


def test_no_device_classes_means_every_drone_trains_the_whole_model() -> None:
    quickstart = scenario("quickstart")
    devices = fleet_devices(quickstart)
    assert len(devices) == 16
    assert {(d.profile.budget_bytes, d.flops_per_s, d.profile.rate_bps) for d in devices} == {
        (None, 1e9, None)
    }
    assembly = DroneAssembly(swarm_settings(quickstart))
    assert assembly.plan(devices[0].profile) is None
    assert assembly.flops_per_sample(None) == training_flops_per_sample(digits_mlp(), DIGITS)


def test_a_budget_below_the_smallest_plan_names_the_device_class_and_the_need() -> None:
    plans = MemoryPlan.candidates(digits_mlp(), DIGITS, 16, 0, neighbour_replicas=4)
    need = min(p.predicted.total for p in plans)
    # replicas are sized by the whole model in a mixed fleet: the need is larger still
    small = scenario("quickstart", mixed(need))
    with pytest.raises(PlanError) as caught:
        DroneAssembly(swarm_settings(small)).plan(fleet_devices(small)[1].profile)
    line = caught.value.one_line()
    assert line.startswith("key 'swarm.devices.1.budget_bytes': device class 'micro': budget")
    assert "smallest feasible plan" in line and "bytes)" in line


def test_swarm_builds_each_drone_from_its_device_class() -> None:
    budget, head = head_only_budget()
    swarm = Swarm(scenario("quickstart", mixed(budget)))
    names = [n for n, _ in digits_mlp().named_parameters()]
    for drone in swarm.drones:
        device = swarm.devices[drone.drone_id].profile.name
        learner = drone.agent.learner
        assert device == ("jetson" if drone.drone_id % 2 == 0 else "micro")
        if device == "jetson":
            assert learner.plan is None
            assert learner.trained_layers == tuple(range(len(names)))
            assert drone.agent.compute.flops_per_s == 5e9
            assert drone.radio.link.config.rate_bps == 2e6
        else:
            assert learner.plan is not None
            assert learner.plan.trained_parameters == head.trained_parameters
            assert learner.trained_layers == (2, 3)  # the output layer's weight and bias
            assert drone.agent.compute.flops_per_s == 1e9  # the swarm's default
            assert drone.radio.link.config.rate_bps == 1e6  # the radio section's
            # the frozen first block costs its forward pass only
            assert learner.flops_per_sample < training_flops_per_sample(digits_mlp(), DIGITS) / 2
        assert drone.agent.node.config.trained_layers == learner.trained_layers


def test_pretrained_start_every_drone_begins_from_the_checkpoint(tmp_path) -> None:
    quickstart = scenario("quickstart")
    data = load_dataset(quickstart.data, quickstart.run.seed)
    model = digits_mlp(seed=99)
    x, y = torch.from_numpy(np.array(data.x_train)), torch.from_numpy(np.array(data.y_train))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = tmp_path / "digits.pt"
    save_pretrained(model, path)
    swarm = Swarm(scenario("quickstart", {"model.checkpoint": str(path)}))
    with torch.no_grad():
        expected = float(
            (model(torch.from_numpy(swarm.x_eval)).argmax(1).numpy() == swarm.y_eval).mean()
        )
    assert expected > 0.8
    assert list(swarm.accuracies().values()) == [pytest.approx(expected)] * 16


# -- a mixed swarm learns as well as an all-full one --------------------------------------------


def digits_split_and_backbone(folder) -> tuple[str, str]:
    """A third of the digit images pretrain a backbone; the swarm never sees them.

    The drone case: a backbone pretrained on other data, shared by every drone. The images are
    split into a pretraining third, and the swarm's train and test sets (an npz file); the
    quickstart MLP is trained centrally on the third, and its first block (the backbone) is
    saved without the output layer, which the swarm learns from its seeded initialisation.
    Returns the npz path and the backbone checkpoint path.
    """
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    pretrain, rest = order[: len(y) // 3], order[len(y) // 3 :]
    test, train = rest[: len(rest) // 5], rest[len(rest) // 5 :]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    data = folder / "digits-split.npz"
    np.savez(
        data,
        x_train=(x[train] - mean) / std,
        y_train=y[train],
        x_test=(x[test] - mean) / std,
        y_test=y[test],
    )
    xp = torch.from_numpy((x[pretrain] - mean) / std)
    yp = torch.from_numpy(y[pretrain])
    model = digits_mlp(seed=123)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        shuffled = torch.randperm(len(yp), generator=generator)
        for start in range(0, len(yp), 32):
            index = shuffled[start : start + 32]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xp[index]), yp[index]).backward()
            optimizer.step()
    backbone = folder / "backbone.pt"
    save_pretrained(model, backbone, first_blocks=1)
    return str(data), str(backbone)


async def run_and_measure(overrides: dict[str, object], seconds: float) -> dict[str, object]:
    async with Swarm(scenario("quickstart", overrides)) as swarm:
        frozen_at_start = {
            d.drone_id: d.agent.learner.flat_parameters()[: 64 * 128].copy() for d in swarm.drones
        }
        await swarm.run_for(seconds)
        by_device: dict[str, list[float]] = {}
        accuracies = swarm.accuracies()
        for drone in swarm.drones:
            by_device.setdefault(swarm.devices[drone.drone_id].profile.name, []).append(
                accuracies[drone.drone_id]
            )
        frame_bytes = {
            device: float(
                np.mean(
                    [
                        d.radio.stats.bytes_sent / d.radio.stats.frames_sent
                        for d in swarm.drones
                        if swarm.devices[d.drone_id].profile.name == device
                    ]
                )
            )
            for device in by_device
        }
        backbone_moved = {
            d.drone_id: not np.array_equal(
                d.agent.learner.flat_parameters()[: 64 * 128], frozen_at_start[d.drone_id]
            )
            for d in swarm.drones
        }
        return {
            "mean": swarm.mean_accuracy(),
            "by_device": {k: float(np.mean(v)) for k, v in by_device.items()},
            "frame_bytes": frame_bytes,
            "backbone_moved": backbone_moved,
        }


@pytest.mark.slow
def test_half_the_drones_on_the_last_block_only_within_2_points_of_all_full(tmp_path) -> None:
    """Why it works: a drone that trains only the output layer still merges every layer it
    hears, so its frozen first block follows its full-model neighbours' (random 4-regular
    graph: drones hear several full-model drones); and every drone starts from a shared
    backbone pretrained on other images, so the output layer has useful features to learn on
    from the first period, and the full-model drones, which alone adapt the backbone, need
    not move it far. Measured gaps (points, seeds 7, 1, 2, 3): 1.0, 0.3, 1.0, 0.0. From a
    random start they are 2.8, 1.6, 1.1, -0.4: only half the data then shapes the backbone.
    In a ring, where both neighbours of a drone are of the other class, full-model drones
    never hear each other's backbone: 4.5, 4.1, 3.6, 2.9."""
    data, backbone = digits_split_and_backbone(tmp_path)
    base = {
        "data.dataset": "npz",
        "data.path": data,
        "model.checkpoint": backbone,
        "topology.kind": "random_regular",
        "topology.degree": 4,
    }
    budget, _ = head_only_budget()
    seconds = 180.0
    full = run_virtual(run_and_measure(base, seconds))
    mixed_fleet = run_virtual(run_and_measure({**base, **mixed(budget, flops_per_s=1e9)}, seconds))
    assert full["mean"] >= 0.95
    assert mixed_fleet["mean"] >= full["mean"] - 0.02
    # both halves of the mixed fleet learn, not only the full-model one
    assert min(mixed_fleet["by_device"].values()) >= full["mean"] - 0.03
    # a micro drone's frames carry only the output layer (1,290 of 9,610 values)
    sizes = mixed_fleet["frame_bytes"]
    assert sizes["micro"] < 0.25 * sizes["jetson"]
    # every drone's first block moved: the micro drones' by merging it from full-model peers
    assert all(mixed_fleet["backbone_moved"].values())


def test_bundled_mixed_fleet_scenario_plans_the_output_layer_for_micro_drones() -> None:
    swarm = Swarm(scenario("mixed_fleet"))
    plans = {swarm.devices[d.drone_id].profile.name: d.agent.learner.plan for d in swarm.drones}
    assert plans["jetson"] is None
    micro = plans["micro"]
    assert micro is not None
    assert (micro.mode, micro.first_trained_block, micro.micro_batch) == ("suffix", 1, 16)
    assert micro.predicted.total <= 256 * 1024
