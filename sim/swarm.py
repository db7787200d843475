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
from typing import Any

import numpy as np
import torch

from swarmfl.agent import Agent
from swarmfl.clock import ChargedCompute, LoopClock
from swarmfl.config.scenario_file import SIM_MTU_BYTES, Scenario
from swarmfl.core.node import NodeState
from swarmfl.core.verifier import FrameVerifier
from swarmfl.core.wire import derive_swarm_key
from swarmfl.drone import AssembledDrone, DroneAssembly, SwarmSettings
from swarmfl.errors import ConfigError
from swarmfl.learning.learner import StepResult
from swarmfl.seeding import churn_rng
from swarmfl.sim.faults import Lifecycle
from swarmfl.sim.fleet import SimDevice, fleet_devices
from swarmfl.sim.insiders import Insider, InsiderSpec, assign_attackers, insider_rng
from swarmfl.sim.medium import SimMedium, SimRadio
from swarmfl.sim.metrics import DroneSample
from swarmfl.sim.strategies import (
    DpsgdAgent,
    FedAvgClient,
    GroundStation,
    LocalAgent,
    build_station,
    strategy_world,
)
from swarmfl.sim.timeline import distances_to_mean
from swarmfl.sim.world import World


def swarm_settings(scenario: Scenario) -> SwarmSettings:
    """The learning settings a scenario gives every drone (one shard per drone)."""
    swarm = scenario.swarm
    return SwarmSettings(
        seed=scenario.run.seed,
        swarm_id=swarm.swarm_id,
        key=derive_swarm_key(swarm.secret, swarm.swarm_id),
        shards=swarm.drones,
        data=scenario.data,
        model=scenario.model,
        training=scenario.training,
        gossip=scenario.gossip,
        merge=scenario.merge,
        link=scenario.radio,
        default_mtu=SIM_MTU_BYTES,
        eval_samples=scenario.run.eval_samples,
    )


@dataclass
class Drone:
    """One simulated drone: its parts, agent and radio, and what the simulator knows of it."""

    drone_id: int
    parts: AssembledDrone
    device: SimDevice
    agent: Agent
    radio: SimRadio
    start_offset_s: float
    churn: random.Random
    removed: bool = False


class Swarm:
    """The drones of a scenario, run on the current (virtual-time) event loop.

    Every drone is assembled by :class:`~swarmfl.drone.DroneAssembly`, as a field drone is.
    Raises :class:`ConfigError` for a scenario that cannot be built (bad data files, a
    partition that cannot give every drone a sample, a budget no plan fits, ...).
    """

    def __init__(self, scenario: Scenario) -> None:
        torch.set_num_threads(1)  # tiny models: threads cost more than they give, and add noise
        self.scenario = scenario
        seed = scenario.run.seed
        self.assembly = DroneAssembly(swarm_settings(scenario))
        self.dataset = self.assembly.dataset
        self.x_eval, self.y_eval = self.assembly.x_eval, self.assembly.y_eval
        # With ``[learning] strategy = "fedavg"`` the world has one more node: the station.
        self.world: World = strategy_world(scenario)
        self.medium = SimMedium(
            self.world,
            seed=seed,
            airtime=scenario.radio.airtime,
            fragments=scenario.radio.fragments,
        )
        # Every drone plans what it trains within its device class's memory budget.
        self.devices = fleet_devices(scenario)
        settings = self.assembly.settings
        # Frames in flight at once: about one per drone (deliveries take milliseconds). One
        # verifier for the whole medium: a frame heard by many drones is verified once.
        verifier = FrameVerifier(
            settings.key,
            settings.swarm_id,
            self.assembly.signature,
            cache_frames=max(64, 2 * scenario.swarm.drones),
            share_deltas=True,
        )
        period_s = scenario.gossip.period_s
        rng = random.Random(seed)
        self.drones: list[Drone] = []
        # Insiders ([[attack]]): their agent publishes the attack instead of its model.
        self.insiders: dict[int, InsiderSpec] = assign_attackers(scenario)
        for drone_id, device in enumerate(self.devices):
            parts = self.assembly.build(drone_id, drone_id, device.profile, verifier=verifier)
            radio = self.medium.radio(drone_id, parts.link_config)
            spec = self.insiders.get(drone_id)
            insider = (
                None
                if spec is None
                else Insider(spec, parts.node, parts.learner, insider_rng(seed, drone_id))
            )
            agent = self._agent(
                drone_id,
                learner=parts.learner,
                node=parts.node,
                radio=radio,
                clock=LoopClock(),
                compute=ChargedCompute(device.flops_per_s),
                period_s=period_s,
                publish_values=insider,
            )
            self.drones.append(
                Drone(
                    drone_id,
                    parts,
                    device,
                    agent,
                    radio,
                    rng.uniform(0, period_s),
                    churn_rng(seed, drone_id),
                )
            )
        self.station: GroundStation | None = None
        if scenario.learning.strategy == "fedavg":
            first = self.drones[0]
            self.station = build_station(
                scenario,
                self.medium,
                self.world,
                first.agent.node,
                first.parts.link_config,
                first.agent.learner.flat_parameters(),
                verifier,
                lambda j: self.drones[j].radio.up and not self.drones[j].removed,
            )
        self._lives: dict[int, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._setup_lifecycle()

    def _agent(self, drone_id: int, **parts: Any) -> Agent:
        """The agent of ``drone_id`` for the scenario's learning strategy (same parts for all)."""
        learning = self.scenario.learning
        timeout_s = learning.round_timeout_periods * self.scenario.gossip.period_s
        n = self.scenario.swarm.drones
        if learning.strategy == "local":
            return LocalAgent(drone_id=drone_id, **parts)
        if learning.strategy == "dpsgd":

            def neighbours(now: float) -> list[int]:
                return [
                    j
                    for j in self.world.neighbours(drone_id, now)
                    if j < n and self.drones[j].radio.up and not self.drones[j].removed
                ]

            return DpsgdAgent(
                drone_id=drone_id, neighbours=neighbours, round_timeout_s=timeout_s, **parts
            )
        if learning.strategy == "fedavg":
            return FedAvgClient(drone_id=drone_id, station_id=n, round_timeout_s=timeout_s, **parts)
        return Agent(drone_id=drone_id, **parts)

    @property
    def radios(self) -> list[SimRadio]:
        """Every radio of the run: the drones', then the ground station's if there is one."""
        radios = [d.radio for d in self.drones]
        return radios if self.station is None else [*radios, self.station.radio]

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

    async def __aexit__(self, *exc_info: object) -> None:
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
            if self.station is not None:
                tasks.create_task(self.station.run(), name="ground-station")
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
        active = self.active
        spread = distances_to_mean([d.agent.learner.flat_parameters() for d in active])
        distance = dict(zip((d.drone_id for d in active), spread or (), strict=False))
        groups = self.world.partitions[0].group_of if self.world.partitions else None
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
                    device_class=drone.device.profile.name,
                    group=None if groups is None else groups[drone.drone_id],
                    distance=distance.get(drone.drone_id),
                    attacker=drone.drone_id in self.insiders,
                    replicas_clipped=agent.node.stats.replicas_clipped,
                    suspects=tuple(agent.node.suspects()),
                    epsilon=drone.parts.learner.epsilon,
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
