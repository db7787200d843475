"""A whole swarm in virtual time: the drones, their data, the world and the medium.

:class:`Swarm` is what both ``swarmfl sim`` and the test kit drive::

    async with Swarm(scenario) as swarm:     # on a VirtualTimeLoop
        await swarm.run_for(60.0)
        swarm.remove(3)
        await swarm.run_for(60.0)
        print(swarm.mean_accuracy())

Every drone runs the same :class:`~swarmfl.agent.Agent` a real drone runs; only the clock
(virtual), the compute (charged from the device's FLOP/s) and the radio (simulated) differ.
Drones start at random offsets within a period: there is no round barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch

from swarmfl.agent import Agent
from swarmfl.clock import ChargedCompute, LoopClock
from swarmfl.config import Scenario
from swarmfl.data import (
    Dataset,
    load_builtin,
    load_idx,
    load_npz,
    partition_dirichlet,
    partition_iid,
)
from swarmfl.errors import ConfigError
from swarmfl.learner import TorchLearner, TrainingConfig
from swarmfl.merge import MergeRule
from swarmfl.models import build_model, model_signature, training_flops_per_sample
from swarmfl.node import FrameVerifier, GossipNode, NodeConfig
from swarmfl.radio.simulated import SimMedium, SimRadio
from swarmfl.sim.metrics import DroneSample
from swarmfl.sim.world import StaticWorld, build_topology
from swarmfl.wire import derive_swarm_key


def load_dataset(scenario: Scenario) -> Dataset:
    """The scenario's dataset (built-in, npz or IDX). Raises :class:`ConfigError`."""
    data, seed = scenario.data, scenario.run.seed
    if data.dataset in ("digits", "mnist1d"):
        return load_builtin(
            data.dataset, seed=seed, test_fraction=data.test_fraction, num_samples=data.num_samples
        )
    if data.dataset == "npz":
        assert data.path is not None
        return load_npz(data.path, seed=seed, test_fraction=data.test_fraction)
    assert data.images is not None and data.labels is not None
    return load_idx(data.images, data.labels, seed=seed, test_fraction=data.test_fraction)


def partition(scenario: Scenario, dataset: Dataset) -> list[np.ndarray]:
    """Index arrays, one per drone, split as the scenario says (deterministic per seed)."""
    rng = np.random.default_rng([scenario.run.seed, 0x5A17])
    drones = scenario.swarm.drones
    if scenario.data.partition == "iid":
        return partition_iid(dataset.y_train, drones, rng)
    min_size = 2 if 2 * drones <= dataset.num_train else 1
    return partition_dirichlet(dataset.y_train, drones, scenario.data.alpha, rng, min_size)


@dataclass
class Drone:
    """One simulated drone: its agent and radio, and what the simulator knows of it."""

    drone_id: int
    agent: Agent
    radio: SimRadio
    start_offset_s: float
    churn: random.Random
    removed: bool = False


class Swarm:
    """The drones of a scenario, run on the current (virtual-time) event loop.

    Raises :class:`ConfigError` for a scenario that cannot be built (bad data files, a
    partition that cannot give every drone a sample, ...).
    """

    def __init__(self, scenario: Scenario) -> None:
        torch.set_num_threads(1)  # tiny models: threads cost more than they give, and add noise
        self.scenario = scenario
        seed = scenario.run.seed
        self.dataset = load_dataset(scenario)
        parts = partition(scenario, self.dataset)
        self.x_eval, self.y_eval = self._eval_set()
        self.world = StaticWorld(
            build_topology(scenario.topology, scenario.swarm.drones, seed), scenario.radio
        )
        self.medium = SimMedium(self.world.neighbours, self.world.link, seed=seed)
        template = build_model(
            scenario.model.kind,
            self.dataset.input_shape,
            self.dataset.num_classes,
            hidden=tuple(scenario.model.hidden),
            channels=tuple(scenario.model.channels),
            seed=seed,
        )
        signature = model_signature(template)
        flops = training_flops_per_sample(template, self.dataset.input_shape)
        key = derive_swarm_key(scenario.swarm.secret, scenario.swarm.swarm_id)
        # Frames in flight at once: about one per drone (deliveries take milliseconds).
        verifier = FrameVerifier(
            key, scenario.swarm.swarm_id, signature, cache_frames=max(64, 2 * scenario.swarm.drones)
        )
        gossip, merge = scenario.gossip, scenario.merge
        training = TrainingConfig(**scenario.training.model_dump())
        rng = random.Random(seed)
        self.drones: list[Drone] = []
        for drone_id, indices in enumerate(parts):
            # Every drone starts from the same initial weights (the run's seed); building is
            # three times faster than deep-copying the template.
            model = build_model(
                scenario.model.kind,
                self.dataset.input_shape,
                self.dataset.num_classes,
                hidden=tuple(scenario.model.hidden),
                channels=tuple(scenario.model.channels),
                seed=seed,
            )
            learner = TorchLearner(
                model,
                self.dataset.x_train[indices],
                self.dataset.y_train[indices],
                training,
                flops_per_sample=flops,
                seed=seed * 100_003 + drone_id,
            )
            node = GossipNode(
                NodeConfig(
                    drone_id=drone_id,
                    swarm_id=scenario.swarm.swarm_id,
                    signature=signature,
                    key=key,
                    layer_offsets=learner.layer_offsets,
                    trained_layers=learner.trained_layers,
                    period_s=gossip.period_s,
                    codec=gossip.codec,
                    block_size=gossip.block_size,
                    keyframe_interval=gossip.keyframe_interval,
                    delta_density=gossip.delta_density,
                    merge=MergeRule(merge.alpha, merge.exponent, merge.cutoff),
                ),
                verifier,
            )
            radio = self.medium.radio(drone_id)
            agent = Agent(
                drone_id=drone_id,
                learner=learner,
                node=node,
                radio=radio,
                clock=LoopClock(),
                compute=ChargedCompute(scenario.swarm.flops_per_s),
                period_s=gossip.period_s,
            )
            self.drones.append(
                Drone(
                    drone_id,
                    agent,
                    radio,
                    rng.uniform(0, gossip.period_s),
                    random.Random(f"{seed}/churn/{drone_id}"),
                )
            )
        self._lives: dict[int, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    def _eval_set(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.dataset.x_test, self.dataset.y_test
        limit = self.scenario.run.eval_samples
        if limit is not None and limit < len(y):
            pick = np.random.default_rng([self.scenario.run.seed, 0xE7A1]).choice(
                len(y), limit, replace=False
            )
            pick.sort()
            x, y = x[pick], y[pick]
        # Own, writable copies: torch refuses to wrap the read-only cached arrays.
        return np.array(x, dtype=np.float32), np.array(y, dtype=np.int64)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Swarm:
        self._supervisor = asyncio.create_task(self._supervise(), name="swarm")
        await self._started.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        stray = [t for t in self._lives.values() if t.get_name().endswith("-dropout")]
        for task in stray:
            task.cancel()
        for task in stray:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if supervisor.done():
            supervisor.result()  # re-raise a crash of any drone
            return
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor

    async def _supervise(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for drone in self.drones:
                self._lives[drone.drone_id] = tasks.create_task(
                    self._life(drone), name=f"drone-{drone.drone_id}-life"
                )
            for removal in self.scenario.faults.removals:
                tasks.create_task(self._remove_at(removal.drone, removal.at_s))
            self._started.set()

    async def _life(self, drone: Drone) -> None:
        await asyncio.sleep(drone.start_offset_s)
        churn = self.scenario.churn
        if not churn.enabled:
            await drone.agent.run()
            return
        while True:
            try:
                async with asyncio.timeout(drone.churn.expovariate(1.0 / churn.mean_up_s)):
                    await drone.agent.run()
            except TimeoutError:
                pass
            drone.radio.set_up(False)
            await asyncio.sleep(drone.churn.expovariate(1.0 / churn.mean_down_s))
            drone.radio.set_up(True)

    async def _remove_at(self, drone_id: int, at_s: float) -> None:
        await asyncio.sleep(max(0.0, at_s - asyncio.get_running_loop().time()))
        self.remove(drone_id)

    # -- control and measurement --------------------------------------------------------------

    async def run_for(self, seconds: float) -> None:
        """Let the swarm run for ``seconds`` of (virtual) time."""
        if self._supervisor is None:
            raise ConfigError("use 'async with Swarm(...)' before run_for()")
        await asyncio.sleep(seconds)

    def remove(self, drone_id: int) -> None:
        """Take a drone out for good, mid-run: it stops, and nobody hears it any more."""
        drone = self.drones[drone_id]
        drone.removed = True
        drone.radio.set_up(False)
        self.world.remove(drone_id)
        life = self._lives.get(drone_id)
        if life is not None:
            life.cancel()

    def drop(self, drone_id: int, for_s: float) -> None:
        """Take a drone down now for ``for_s`` seconds (it keeps its model and comes back).

        Raises :class:`ConfigError` for an unknown or removed drone or a negative duration.
        """
        if not 0 <= drone_id < len(self.drones) or self.drones[drone_id].removed:
            raise ConfigError(f"no active drone {drone_id}", key="drone")
        if not for_s >= 0:
            raise ConfigError(f"must be >= 0, got {for_s!r}", key="for_s")
        if self._supervisor is None:
            raise ConfigError("use 'async with Swarm(...)' before drop()")
        drone = self.drones[drone_id]
        life = self._lives.get(drone_id)
        if life is not None:
            life.cancel()
        drone.radio.set_up(False)
        self._lives[drone_id] = asyncio.get_running_loop().create_task(
            self._return_after(drone, for_s), name=f"drone-{drone_id}-dropout"
        )

    async def _return_after(self, drone: Drone, for_s: float) -> None:
        await asyncio.sleep(for_s)
        if drone.removed:
            return
        drone.radio.set_up(True)
        drone.start_offset_s = 0.0
        await self._life(drone)

    @property
    def active(self) -> list[Drone]:
        """Drones that have not been removed."""
        return [d for d in self.drones if not d.removed]

    def sample(self, now: float) -> list[DroneSample]:
        """Measure every drone (accuracy on the held-out set, traffic counters) at ``now``."""
        samples = []
        for drone in self.drones:
            agent, stats = drone.agent, drone.radio.stats
            evaluation = agent.learner.evaluate(self.x_eval, self.y_eval)
            samples.append(
                DroneSample(
                    t=now,
                    drone=drone.drone_id,
                    up=drone.radio.up and not drone.removed,
                    accuracy=evaluation.accuracy,
                    loss=evaluation.loss,
                    rounds=agent.rounds,
                    bytes_sent=stats.bytes_sent,
                    frames_sent=stats.frames_sent,
                    frames_lost=stats.frames_lost,
                    frames_received=stats.frames_received,
                    frames_rejected=agent.node.stats.frames_rejected,
                    peers=len(agent.node.known_peers()),
                )
            )
        return samples

    def accuracies(self) -> dict[int, float]:
        """Test accuracy of every drone that has not been removed."""
        return {
            d.drone_id: d.agent.learner.evaluate(self.x_eval, self.y_eval).accuracy
            for d in self.active
        }

    def mean_accuracy(self) -> float:
        """Mean test accuracy over the drones that have not been removed."""
        values = list(self.accuracies().values())
        return float(np.mean(values)) if values else 0.0
