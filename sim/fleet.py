"""Heterogeneous fleets in the simulator: which device class each drone is.

A scenario may declare device classes (``[[swarm.devices]]``: a memory budget, FLOP/s, a radio
rate and how many drones of each). Every drone plans for itself, with
:meth:`~swarmfl.learning.plan.MemoryPlan.choose`, what it trains within its budget: the whole
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

from swarmfl.config.scenario_file import Scenario
from swarmfl.drone import DeviceProfile
from swarmfl.errors import ConfigError
from swarmfl.learning.trainplan import ReplicaScope

__all__ = ["SimDevice", "assign_devices", "fleet_devices"]


@dataclass(frozen=True)
class SimDevice:
    """One drone's device class in the simulator: its profile (memory budget, radio rate; see
    :class:`~swarmfl.drone.DeviceProfile`) and its compute, ``flops_per_s``, which training time
    is charged from."""

    profile: DeviceProfile
    flops_per_s: float


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


def fleet_devices(scenario: Scenario) -> list[SimDevice]:
    """One :class:`SimDevice` per drone of ``scenario``, in drone order.

    Without ``[[swarm.devices]]`` every drone is of one class with the training section's
    budget (if any) and backend. A class's unset figures are the swarm's (compute), the radio
    section's (rate) and the training section's (budget, replicas, backend). Neighbour replicas
    are budgeted at the whole model's size in a fleet of several classes (a peer may send
    layers this drone keeps frozen, and they are merged), at the trained layers' size in a
    fleet of one class (every peer sends what this drone trains).
    """
    swarm, training = scenario.swarm, scenario.training
    if not swarm.devices:
        default = SimDevice(
            DeviceProfile(
                budget_bytes=training.budget_bytes,
                neighbour_replicas=training.neighbour_replicas,
                backend=training.backend,
            ),
            swarm.flops_per_s,
        )
        return [default] * swarm.drones
    scope: ReplicaScope = "model" if len(swarm.devices) > 1 else "trained"
    classes = [
        SimDevice(
            DeviceProfile(
                name=device.name,
                budget_bytes=(
                    device.budget_bytes
                    if device.budget_bytes is not None
                    else training.budget_bytes
                ),
                neighbour_replicas=(
                    device.neighbour_replicas
                    if device.neighbour_replicas is not None
                    else training.neighbour_replicas
                ),
                replica_scope=scope,
                rate_bps=device.rate_bps,
                budget_key=(
                    f"swarm.devices.{index}.budget_bytes"
                    if device.budget_bytes is not None
                    else "training.budget_bytes"
                ),
                backend=device.backend if device.backend is not None else training.backend,
                backend_key=(
                    f"swarm.devices.{index}.backend"
                    if device.backend is not None
                    else "training.backend"
                ),
            ),
            device.flops_per_s or swarm.flops_per_s,
        )
        for index, device in enumerate(swarm.devices)
    ]
    return [classes[k] for k in assign_devices([d.count for d in swarm.devices])]
