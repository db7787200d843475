"""The learner backend is a config key: torch and lean drones start alike, speak one wire format,
learn together in one simulated fleet, and a setting one backend lacks is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from swarmfl.config.drone_file import validate_drone_config
from swarmfl.drone import DeviceProfile, DroneAssembly
from swarmfl.errors import ConfigError
from swarmfl.learning.lean import LeanLearner
from swarmfl.learning.learner import TorchLearner
from swarmfl.learning.spec import model_spec
from swarmfl.sim.swarm import Swarm, swarm_settings
from swarmfl.sim.vtime import run_virtual
from swarmfl.testing import scenario

TORCH = DeviceProfile(name="big", backend="torch")
LEAN = DeviceProfile(name="small", backend="lean")


def two_classes(torch_count: int, lean_count: int, **extra: object) -> dict[str, object]:
    return {
        "swarm.drones": torch_count + lean_count,
        "swarm.devices": [
            {"name": "big", "count": torch_count, "backend": "torch"},
            {"name": "small", "count": lean_count, "backend": "lean", **extra},
        ],
    }


def test_torch_and_lean_drones_start_from_the_same_weights_in_the_same_layout() -> None:
    assembly = DroneAssembly(swarm_settings(scenario("quickstart", {"swarm.drones": 2})))
    big, small = assembly.build(0, 0, TORCH), assembly.build(1, 1, LEAN)
    assert isinstance(big.learner, TorchLearner) and isinstance(small.learner, LeanLearner)
    assert (big.backend, small.backend) == ("torch", "lean")
    assert big.learner.layer_offsets == small.learner.layer_offsets
    np.testing.assert_array_equal(big.learner.flat_parameters(), small.learner.flat_parameters())
    # each trains its own copy: training one leaves the other (and the shared start) alone
    start = assembly.initial_parameters.copy()
    small.learner.train_round()
    np.testing.assert_array_equal(big.learner.flat_parameters(), start)
    np.testing.assert_array_equal(assembly.initial_parameters, start)
    assert big.node_config.signature == small.node_config.signature == assembly.signature


def test_a_torch_drone_and_a_lean_drone_accept_and_merge_each_others_frames() -> None:
    assembly = DroneAssembly(swarm_settings(scenario("quickstart", {"swarm.drones": 2})))
    big, small = assembly.build(0, 0, TORCH), assembly.build(1, 1, LEAN)
    big.learner.train_round()
    small.learner.train_round()
    now = 1.0
    for sender, receiver in ((big, small), (small, big)):
        for frame in sender.node.publish(sender.learner.flat_parameters(), 100, now):
            receiver.node.receive(frame, now)
        assert receiver.node.stats.frames_accepted == 1
        before = receiver.learner.flat_parameters().copy()
        assert receiver.node.mix(receiver.learner.flat_parameters(), now) == 1
        theirs = sender.learner.flat_parameters()
        after = receiver.learner.flat_parameters()
        # the merge moved the receiver's live weights towards the sender's
        assert np.abs(after - theirs).sum() < np.abs(before - theirs).sum()


def test_a_fleet_mixing_torch_and_lean_drones_learns_in_the_simulator() -> None:
    overrides = {**two_classes(4, 4), "run.duration_s": 40.0}

    async def run() -> tuple[dict[str, float], float]:
        async with Swarm(scenario("quickstart", overrides)) as swarm:
            start = swarm.mean_accuracy()
            await swarm.run_for(40.0)
            accuracies = swarm.accuracies()
            by_backend: dict[str, list[float]] = {}
            for drone in swarm.drones:
                backend = drone.parts.backend
                by_backend.setdefault(backend, []).append(accuracies[drone.drone_id])
            return {k: float(np.mean(v)) for k, v in by_backend.items()}, start

    by_backend, start = run_virtual(run())
    assert start < 0.3
    assert set(by_backend) == {"torch", "lean"}
    assert min(by_backend.values()) >= 0.8, by_backend


def test_the_lean_planner_weighs_the_torch_planners_candidates_with_its_own_activations() -> None:
    from swarmfl.learning.lean_plan import lean_candidates, lean_plan_flops_per_sample
    from swarmfl.learning.models import build_model
    from swarmfl.learning.plan import MemoryPlan, plan_flops_per_sample

    args = ("cnn", (1, 8, 8), 10)
    spec = model_spec(*args, channels=(16, 32), seed=0)
    model = build_model(*args, channels=(16, 32), seed=0)
    kw = {"neighbour_replicas": 4, "codec": "int8", "optimizer": "sgd_momentum"}
    lean = lean_candidates(spec, 16, 1 << 20, **kw)  # type: ignore[arg-type]
    torch_ = MemoryPlan.candidates(model, (1, 8, 8), 16, 1 << 20, **kw)  # type: ignore[arg-type]
    assert [(p.mode, p.trained_parameters, p.micro_batch) for p in lean] == [
        (p.mode, p.trained_parameters, p.micro_batch) for p in torch_
    ]
    for a, b in zip(lean, torch_, strict=True):
        assert a.predicted.total - a.predicted.activations == (
            b.predicted.total - b.predicted.activations
        )
        assert lean_plan_flops_per_sample(spec, a) == plan_flops_per_sample(model, (1, 8, 8), b)
    # numpy keeps less for backward than autograd on the first blocks, never more
    assert all(
        a.predicted.activations <= b.predicted.activations
        for a, b in zip(lean, torch_, strict=True)
    )
    assert lean[0].predicted.activations > 0


def test_a_lean_drone_with_a_memory_budget_trains_its_plan_and_only_its_plan() -> None:
    assembly = DroneAssembly(swarm_settings(scenario("quickstart", {"swarm.drones": 2})))
    small = DeviceProfile(name="small", backend="lean", budget_bytes=100_000)
    drone = assembly.build(1, 1, small)
    assert drone.plan is not None and drone.plan.mode != "full"
    assert drone.plan.predicted.total <= 100_000
    learner = drone.learner
    assert isinstance(learner, LeanLearner) and learner.plan is drone.plan
    before = learner.flat_parameters().copy()
    learner.train_round()
    offsets = learner.layer_offsets
    for index in range(len(offsets) - 1):
        moved = not np.array_equal(
            learner.flat_parameters()[offsets[index] : offsets[index + 1]],
            before[offsets[index] : offsets[index + 1]],
        )
        assert moved == (index in learner.trained_layers)
    # what it measured keeping for backward is what its plan predicted for that micro-batch
    assert learner.peak_saved_activation_bytes == drone.plan.predicted.activations
    assert drone.trains.startswith("layers:")


def test_a_lean_drone_refuses_a_torch_checkpoint(tmp_path) -> None:
    from swarmfl.learning.models import build_model
    from swarmfl.learning.pretrained import save_pretrained

    path = tmp_path / "backbone.pt"
    save_pretrained(build_model("mlp", (1, 8, 8), 10, hidden=(128,), seed=1), path)
    overrides = {**two_classes(8, 8), "model.checkpoint": str(path)}
    with pytest.raises(ConfigError) as caught:
        Swarm(scenario("quickstart", overrides))
    assert caught.value.key == "model.checkpoint"
    assert 'needs swarm.devices.1.backend = "torch"' in caught.value.problem


def test_drone_toml_refuses_torch_threads_on_the_lean_backend() -> None:
    base = {
        "drone": {"id": 0},
        "swarm": {"secret": "x" * 16, "allow_secret_in_file": True},
        "training": {"backend": "lean", "threads": 2},
    }
    with pytest.raises(ConfigError) as caught:
        validate_drone_config(base, source="drone.toml")
    assert caught.value.key == "training.threads"
    assert 'needs training.backend = "torch"' in caught.value.problem


def test_backend_keys_round_trip_through_a_resolved_scenario(tmp_path) -> None:
    from swarmfl.config.scenario_file import load_scenario, scenario_to_toml

    loaded = scenario("quickstart", {**two_classes(8, 8), "training.backend": "lean"})
    assert [d.backend for d in loaded.swarm.devices] == ["torch", "lean"]
    path = tmp_path / "resolved.toml"
    path.write_text(scenario_to_toml(loaded))
    assert load_scenario(path) == loaded
    with pytest.raises(ConfigError) as caught:
        scenario("quickstart", {"training.backend": "jax"})
    assert caught.value.key == "training.backend"
