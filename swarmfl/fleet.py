"""Heterogeneous fleets: which device class each drone is, and what it trains.

A scenario may declare device classes (``[[swarm.devices]]``: a memory budget, FLOP/s, a radio
rate and how many drones of each). Every drone plans for itself, with
:meth:`~swarmfl.learning.memory.MemoryPlan.choose`, what it trains within its budget: the whole
model, a suffix of blocks or biases only. Its frames then carry only the layers it trains, and a
merge averages a layer only over the peers that carry it (:mod:`swarmfl.core.merge`).

Why a fleet of mixed plans learns nearly as well as a fleet of full-model drones: a drone that
trains only the last blocks still *merges* every layer it hears, so its frozen blocks follow
the full-model peers that train them, and its own trained layers are averaged with theirs. Its
frozen prefix is then close to the swarm's, and what it trains fits on top of it. Two limits:
only the full-model drones' data shapes the frozen blocks, and where no neighbour trains them
(a whole fleet of small devices, or a drone among small ones) they stay where the model
started. Both are why such fleets start from a backbone pretrained on other data
(``model.checkpoint``). Classes are spread evenly over the drone ids (:func:`assign_devices`):
in a ring that puts the full-model drones two hops apart, so they never hear each other's
frozen blocks; random or grid topologies mix better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from swarmfl.config import DeviceClass, Scenario
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.memory import MemoryPlan, OptimizerName, TrainPlan, plan_flops_per_sample
from swarmfl.learning.models import training_flops_per_sample

__all__ = ["DeviceSetup", "assign_devices", "plan_fleet", "planner_optimizer"]


@dataclass(frozen=True)
class DeviceSetup:
    """What one drone is and runs.

    ``device`` is its device class name (``"default"`` when the scenario declares none);
    ``plan`` what it trains (``None``: the whole model at whole batches, no budget);
    ``flops_per_s`` its compute, ``rate_bps`` its radio's bit rate (``None``: the radio
    section's), ``flops_per_sample`` what one training sample costs it under its plan.
    """

    device: str
    plan: TrainPlan | None
    flops_per_s: float
    rate_bps: float | None
    flops_per_sample: float


def assign_devices(counts: Sequence[int]) -> list[int]:
    """The device class index of each drone, every class spread evenly over the drone ids.

    Drone ``i`` takes the class furthest behind its share ``count * (i + 1) / total`` (ties to
    the earlier class), so with counts ``[8, 8]`` the classes alternate and in a ring or grid
    every class has neighbours of the other. Deterministic; raises :class:`ConfigError` for a
    negative count.
    """
    if any(c < 0 for c in counts):
        raise ConfigError(f"counts must be >= 0, got {list(counts)}", key="count")
    total = sum(counts)
    given = [0] * len(counts)
    order: list[int] = []
    for i in range(total):
        # compare deficits exactly, in integers: count * (i + 1) / total - given
        behind = [c * (i + 1) - g * total for c, g in zip(counts, given, strict=True)]
        pick = max(range(len(counts)), key=lambda k: (behind[k], -k))
        given[pick] += 1
        order.append(pick)
    return order


def planner_optimizer(momentum: float) -> OptimizerName:
    """What the learner's SGD keeps, as the planner names it: a momentum buffer or nothing."""
    return "sgd_momentum" if momentum > 0 else "sgd"


def plan_fleet(
    scenario: Scenario, model: nn.Sequential, input_shape: tuple[int, ...]
) -> list[DeviceSetup]:
    """One :class:`DeviceSetup` per drone of ``scenario``, in drone order.

    ``model`` is the swarm's model (any weights; the planner probes shapes and activations, and
    leaves it as it was). Drones of a class have the same model, batch and budget, so the plan
    is made once per class. Neighbour replicas are budgeted at the whole model's size in a fleet
    of several classes (a peer may send layers this drone keeps frozen, and they are merged),
    at the trained layers' size in a fleet of one class (every peer sends what this drone
    trains).

    Raises :class:`PlanError` (a :class:`ConfigError`) naming the device class whose budget is
    below its smallest feasible plan, with that plan's need.
    """
    swarm = scenario.swarm
    full_flops = float(training_flops_per_sample(model, input_shape))
    if not swarm.devices:
        default = DeviceSetup("default", None, swarm.flops_per_s, None, full_flops)
        return [default] * swarm.drones
    classes = [
        _setup(scenario, index, device, model, input_shape, full_flops)
        for index, device in enumerate(swarm.devices)
    ]
    return [classes[k] for k in assign_devices([d.count for d in swarm.devices])]


def _setup(
    scenario: Scenario,
    index: int,
    device: DeviceClass,
    model: nn.Sequential,
    input_shape: tuple[int, ...],
    full_flops: float,
) -> DeviceSetup:
    flops_per_s = device.flops_per_s or scenario.swarm.flops_per_s
    if device.budget_bytes is None:
        return DeviceSetup(device.name, None, flops_per_s, device.rate_bps, full_flops)
    codec = scenario.gossip.codec
    try:
        plan = MemoryPlan.choose(
            model,
            input_shape,
            scenario.training.batch_size,
            device.budget_bytes,
            optimizer=planner_optimizer(scenario.training.momentum),
            neighbour_replicas=device.neighbour_replicas,
            codec=codec,
            block_size=scenario.gossip.block_size,
            replica_scope="model" if len(scenario.swarm.devices) > 1 else "trained",
        )
    except PlanError as exc:
        raise PlanError(
            f"device class {device.name!r}: {exc.problem}",
            key=f"swarm.devices.{index}.budget_bytes",
        ) from None
    return DeviceSetup(
        device.name,
        plan,
        flops_per_s,
        device.rate_bps,
        plan_flops_per_sample(model, input_shape, plan),
    )
