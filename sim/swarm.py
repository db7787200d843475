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
import functools
import random
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch

from swarmfl.agent import Agent
from swarmfl.clock import ChargedCompute, LoopClock
from swarmfl.config import Scenario
from swarmfl.core.merge import MergeRule
from swarmfl.core.node import FrameVerifier, GossipNode, NodeConfig, NodeState
from swarmfl.core.wire import derive_swarm_key
from swarmfl.errors import ConfigError
from swarmfl.fleet import plan_fleet
from swarmfl.learning.data import (
    Dataset,
    load_builtin,
    load_idx,
    load_npz,
    partition_dirichlet,
    partition_iid,
)
from swarmfl.learning.learner import StepResult, TorchLearner, TrainingConfig
from swarmfl.learning.models import build_model, model_signature
from swarmfl.learning.pretrained import load_pretrained
from swarmfl.radio.link import LinkConfig
from swarmfl.sim.faults import Lifecycle
from swarmfl.sim.medium import SimMedium, SimRadio
from swarmfl.sim.metrics import DroneSample
from swarmfl.sim.world import World, build_world


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
        self.world: World = build_world(scenario)
        self.medium = SimMedium(
            self.world,
            seed=seed,
            airtime=scenario.radio.airtime,
            fragments=scenario.radio.fragments,
        )
        # Every drone starts from the same initial weights (the run's seed); building is
        # three times faster than deep-copying the template.
        new_model = functools.partial(
            build_model,
            scenario.model.kind,
            self.dataset.input_shape,
            self.dataset.num_classes,
            hidden=tuple(scenario.model.hidden),
            channels=tuple(scenario.model.channels),
            seed=seed,
        )
        template = new_model()
        signature = model_signature(template)
        if scenario.model.checkpoint is not None:
            load_pretrained(template, scenario.model.checkpoint)  # a pretrained start
        # Every drone plans what it trains within its device class's memory budget.
        self.devices = plan_fleet(scenario, template, self.dataset.input_shape)
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
            model = new_model()
            if scenario.model.checkpoint is not None:
                model.load_state_dict(template.state_dict())
            setup = self.devices[drone_id]
            learner = TorchLearner(
                model,
                self.dataset.x_train[indices],
                self.dataset.y_train[indices],
                training,
                flops_per_sample=setup.flops_per_sample,
                seed=seed * 100_003 + drone_id,
                plan=setup.plan,
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
            radio = self.medium.radio(drone_id, self.link_config(setup.rate_bps))
            agent = Agent(
                drone_id=drone_id,
                learner=learner,
                node=node,
                radio=radio,
                clock=LoopClock(),
                compute=ChargedCompute(setup.flops_per_s),
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
        self._setup_lifecycle()

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

    def link_config(self, rate_bps: float | None = None) -> LinkConfig:
        """A radio's link settings from the scenario's ``[radio]``, at ``rate_bps`` if given."""
        radio = self.scenario.radio
        return LinkConfig(
            rate_bps=rate_bps or radio.rate_bps,
            mtu_bytes=radio.mtu_bytes,
            burst_bytes=radio.burst_bytes,
            queue_frames=radio.queue_frames,
            queue_bytes=radio.queue_bytes,
        )

    # -- lifecycle: start, churn, batteries, crashes, drop-outs (swarmfl.sim.faults) ---------

    def _setup_lifecycle(self) -> None:
        scenario = self.scenario
        faults = scenario.faults
        self._group: asyncio.TaskGroup | None = None
        self._failure: asyncio.Future[None] | None = None
        self.lifecycle = Lifecycle(
            scenario,
            [d.start_offset_s for d in self.drones],
            [d.churn for d in self.drones],
            apply=self._apply,
            crash=self._lose_ram,
            fail=self._fail,
        )
        # A crashed drone without a checkpoint comes back with the model it rejoins with: the
        # swarm's initial model, as flashed before take-off (the same for every drone).
        self._rejoin = self.drones[0].agent.learner.flat_parameters().copy()
        # In-memory checkpoints: (flat parameters, update counter, time), one per drone.
        self._checkpoint_s = faults.checkpoint_interval_s
        self.checkpoints: dict[int, tuple[np.ndarray, int, float]] = {}
        battery = scenario.battery.enabled
        for drone in self.drones:
            if battery or self._checkpoint_s > 0:
                drone.agent.on_round = self._on_round
            if battery:
                drone.radio.on_transmit = functools.partial(
                    self.lifecycle.on_transmit, drone.drone_id
                )

    def _apply(self, drone_id: int, up: bool) -> None:
        """Fly (start the agent, radio on) or stop (cancel it, radio off) a drone."""
        drone = self.drones[drone_id]
        if up:
            assert self._group is not None
            drone.radio.set_up(True)
            self._lives[drone_id] = self._group.create_task(
                drone.agent.run(), name=f"drone-{drone_id}"
            )
        else:
            life = self._lives.pop(drone_id, None)
            if life is not None:
                life.cancel()
            drone.radio.set_up(False)

    def _on_round(self, agent: Agent, step: StepResult) -> None:
        now = asyncio.get_running_loop().time()
        self.lifecycle.on_training(agent.drone_id, step.flops, now)
        if self._checkpoint_s > 0:
            saved = self.checkpoints.get(agent.drone_id)
            if saved is None or now - saved[2] >= self._checkpoint_s:
                params = agent.learner.flat_parameters().copy()
                self.checkpoints[agent.drone_id] = (params, agent.node.counter, now)

    def _lose_ram(self, drone_id: int) -> None:
        """A crash: the drone's RAM is gone.

        Its model comes back from its last (in-memory) checkpoint if it checkpoints, else it is
        the model it rejoins with; its neighbours' replicas are gone; its model stream restarts
        with a keyframe. Sequence numbers continue (a real drone must persist them, or its
        neighbours refuse its frames as replays). The optimizer's momentum is gone too.
        """
        agent = self.drones[drone_id].agent
        agent.learner.reset_optimizer_state()
        params = agent.learner.flat_parameters()
        saved = self.checkpoints.get(drone_id)
        if saved is not None:
            params[:] = saved[0]
            counter = saved[1]
        else:
            params[:] = self._rejoin
            counter = 0
        node = agent.node
        for peer in list(node.known_peers()):
            node.forget(peer)
        state = node.export_state()
        node.import_state(NodeState(counter, state.next_seq, state.control_seq))

    def _fail(self, exc: BaseException) -> None:
        if self._failure is not None and not self._failure.done():
            self._failure.set_exception(exc)

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
        self.lifecycle.stop()
        if supervisor.done():
            supervisor.result()  # re-raise a crash of any drone
            return
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor

    async def _supervise(self) -> None:
        self._failure = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tasks:
            self._group = tasks
            # Keeps the group open while every drone is down, and fails it with any error
            # raised in a lifecycle timer.
            tasks.create_task(self._watch(), name="swarm-watch")
            for removal in self.scenario.faults.removals:
                tasks.create_task(self._remove_at(removal.drone, removal.at_s))
            self.lifecycle.start()
            self._started.set()

    async def _watch(self) -> None:
        assert self._failure is not None
        await self._failure

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
        self.world.remove(drone_id)
        self.lifecycle.remove(drone_id)
        drone.radio.set_up(False)

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
        self.lifecycle.drop(drone_id, for_s)

    def crash(self, drone_id: int, down_s: float) -> None:
        """Crash a drone now: it loses its RAM and reboots for ``down_s`` seconds.

        Raises :class:`ConfigError` for an unknown or removed drone or a negative duration.
        """
        if not 0 <= drone_id < len(self.drones) or self.drones[drone_id].removed:
            raise ConfigError(f"no active drone {drone_id}", key="drone")
        if self._supervisor is None:
            raise ConfigError("use 'async with Swarm(...)' before crash()")
        self.lifecycle.crash(drone_id, down_s)

    @property
    def active(self) -> list[Drone]:
        """Drones that have not been removed."""
        return [d for d in self.drones if not d.removed]

    def sample(self, now: float) -> list[DroneSample]:
        """Measure every drone (accuracy on the held-out set, traffic counters) at ``now``."""
        positions = self.world.positions(now).round(2).tolist() if self.world.metric else None
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
                    wire_bytes_sent=stats.wire_bytes_sent,
                    deliveries_attempted=stats.deliveries_attempted,
                    frames_dropped_queue=stats.frames_dropped_queue,
                    state=self.lifecycle.state(drone.drone_id),
                    battery=self.lifecycle.battery_fraction(drone.drone_id, now),
                    position=None if positions is None else positions[drone.drone_id],
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
