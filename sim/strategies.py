"""Baseline learning strategies flown in the same world as gossip: D-PSGD, FedAvg, local-only.

``[learning] strategy`` picks how the drones of a scenario learn together (see
:class:`~swarmfl.config.scenario_file.LearningSection`). Every strategy uses the same drones
(:class:`~swarmfl.drone.DroneAssembly`: learner, gossip node, codec), the same simulated radio,
world, churn, batteries and mobility; only the loop that decides when to train, send and merge
differs:

* :class:`LocalAgent` trains and never sends.
* :class:`DpsgdAgent` runs synchronous rounds with a barrier: train, broadcast, wait until
  every neighbour in range (and up) has sent its model of this round or the round times out,
  then average uniformly with the models of this round it holds.
* :class:`FedAvgClient` and :class:`GroundStation`: the station (an extra node of the world,
  with its own position and radio) broadcasts the global model; a drone that hears it adopts it,
  trains a round and sends its model back; the station averages the models it heard (weighted by
  sample count) once every drone in its range replied or the round times out.

Rounds and barriers wait on events (a frame heard) with virtual-time deadlines, never by polling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from swarmfl.agent import Agent
from swarmfl.config.scenario_file import Scenario
from swarmfl.core.merge import Contribution, merge_into
from swarmfl.core.node import GossipNode
from swarmfl.core.quant import NonFiniteError
from swarmfl.core.verifier import FrameVerifier
from swarmfl.learning.learner import StepResult
from swarmfl.radio.link import LinkConfig
from swarmfl.seeding import churn_rng
from swarmfl.sim.medium import SimMedium, SimRadio
from swarmfl.sim.pathloss import links_from_positions
from swarmfl.sim.world import PartitionWindow, PositionLinks, World, build_world

__all__ = [
    "DpsgdAgent",
    "FedAvgClient",
    "GroundStation",
    "LocalAgent",
    "StationLinks",
    "build_station",
    "strategy_world",
]

log = logging.getLogger(__name__)

Neighbours = Callable[[float], Sequence[int]]
"""The drones in range of a drone (and up) at a virtual time."""


class _HearingAgent(Agent):
    """An agent whose loop can wait until a frame is heard (an event, no polling)."""

    def __init__(self, *, round_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_timeout_s = round_timeout_s
        self._heard = asyncio.Event()

    async def _receive_loop(self) -> None:
        async for heard in self.radio.frames():
            for reply in self.node.receive(heard.data, heard.received_at):
                self.radio.send(reply)
            self._heard.set()

    async def _wait_until(self, ready: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``ready()`` holds (checked after every frame heard) or ``deadline``."""
        while not ready():
            self._heard.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._heard.wait()
            except TimeoutError:
                return ready()
        return True

    def _train_and_publish(self, params: np.ndarray, step: StepResult, now: float) -> None:
        try:
            frames = self.node.publish(params, self.learner.sample_count, now)
        except NonFiniteError:
            self.node.stats.diverged += 1
            self.node.adopt_neighbours(params, now)
            frames = []
        for frame in frames:
            self.radio.send(frame)

    def _end_round(self, step: StepResult) -> None:
        self.rounds += 1
        self.last_step = step
        if self.on_round is not None:
            self.on_round(self, step)


class LocalAgent(Agent):
    """Local training only: trains every period, never sends a frame nor merges."""

    async def _gossip_loop(self) -> None:
        while True:
            started = self.clock.now()
            step = await self.compute.run(self.learner.train_round)
            self.rounds += 1
            self.last_step = step
            if self.on_round is not None:
                self.on_round(self, step)
            await self.clock.sleep_until(started + self.period_s)


class DpsgdAgent(_HearingAgent):
    """Synchronous D-PSGD: train, broadcast, barrier on the neighbours' models, average.

    The barrier holds until every drone ``neighbours(now)`` names has been heard since this
    round began, or ``round_timeout_s`` after the round began; the average is uniform over this
    drone's model and the models of this round it holds (whoever made the barrier). A round
    lasts at least one gossip period.
    """

    def __init__(self, *, neighbours: Neighbours, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.neighbours = neighbours
        self.barrier_timeouts = 0

    async def _gossip_loop(self) -> None:
        while True:
            started = self.clock.now()
            params = self.learner.flat_parameters()
            step = await self.compute.run(self.learner.train_round)
            self._train_and_publish(params, step, self.clock.now())

            def everyone_heard(started: float = started) -> bool:
                heard = self.node.known_peers()
                now = self.clock.now()
                return all(heard.get(j, -math.inf) >= started for j in self.neighbours(now))

            if not await self._wait_until(everyone_heard, started + self.round_timeout_s):
                self.barrier_timeouts += 1
            now = self.clock.now()
            fresh = {j for j, at in self.node.known_peers().items() if at >= started}
            contributions = [
                Contribution(c.layers, c.values, 1.0)
                for j, c in self.node.live_replicas(now).items()
                if j in fresh
            ]
            merge_into(params, self.node.config.layer_offsets, contributions)
            self._end_round(step)
            await self.clock.sleep_until(started + self.period_s)


class FedAvgClient(_HearingAgent):
    """A FedAvg drone: adopt the station's global model when heard, train, send it back.

    Each round waits (up to ``round_timeout_s``) for a global model newer than the last one
    adopted; a drone that does not hear the station keeps training its own model.
    """

    def __init__(self, *, station_id: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.station_id = station_id
        self.adopted_at = -math.inf
        self.globals_adopted = 0

    async def _gossip_loop(self) -> None:
        while True:
            started = self.clock.now()

            def new_global() -> bool:
                at = self.node.known_peers().get(self.station_id, -math.inf)
                return at > self.adopted_at

            await self._wait_until(new_global, started + self.round_timeout_s)
            params = self.learner.flat_parameters()
            now = self.clock.now()
            if new_global():
                station = self.node.live_replicas(now).get(self.station_id)
                if station is not None:
                    _assign_layers(params, self.node.config.layer_offsets, station)
                    self.adopted_at = self.node.known_peers()[self.station_id]
                    self.globals_adopted += 1
            step = await self.compute.run(self.learner.train_round)
            self._train_and_publish(params, step, self.clock.now())
            self._end_round(step)
            await self.clock.sleep_until(started + self.period_s)


class GroundStation:
    """The FedAvg server: broadcasts the global model, averages what the drones send back.

    ``expected(now)`` names the drones in its range and up. With ``churn`` (mean up and down
    seconds) its radio goes down and up as a drone's does, from its own random stream.
    """

    def __init__(
        self,
        *,
        node: GossipNode,
        radio: SimRadio,
        initial: np.ndarray,
        period_s: float,
        round_timeout_s: float,
        expected: Neighbours,
        churn: tuple[float, float] | None = None,
        churn_random: random.Random | None = None,
    ) -> None:
        self.node = node
        self.radio = radio
        self.model = initial.copy()
        self.period_s = period_s
        self.round_timeout_s = round_timeout_s
        self.expected = expected
        self.churn = churn
        self.churn_random = churn_random or random.Random(0)
        self.rounds = 0
        self.replies = 0
        self._heard = asyncio.Event()

    async def run(self) -> None:
        """Serve rounds until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive_loop(), name="station-receive")
            tasks.create_task(self._round_loop(), name="station-rounds")
            if self.churn is not None:
                tasks.create_task(self._churn_loop(), name="station-churn")

    async def _receive_loop(self) -> None:
        async for heard in self.radio.frames():
            for reply in self.node.receive(heard.data, heard.received_at):
                self.radio.send(reply)
            self._heard.set()

    async def _churn_loop(self) -> None:
        assert self.churn is not None
        mean_up, mean_down = self.churn
        while True:
            await asyncio.sleep(self.churn_random.expovariate(1.0 / mean_up))
            self.radio.set_up(False)
            await asyncio.sleep(self.churn_random.expovariate(1.0 / mean_down))
            self.radio.set_up(True)

    async def _round_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            for frame in self.node.publish(self.model, 0, started):
                self.radio.send(frame)
            deadline = started + self.round_timeout_s

            def replied(started: float = started) -> bool:
                heard = self.node.known_peers()
                return all(heard.get(j, -math.inf) > started for j in self.expected(loop.time()))

            while not replied():
                self._heard.clear()
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._heard.wait()
                except TimeoutError:
                    break
            now = loop.time()
            fresh = {j for j, at in self.node.known_peers().items() if at > started}
            live = self.node.live_replicas(now)
            contributions = [
                Contribution(c.layers, c.values, float(max(1, self.node.peer_samples(j))))
                for j, c in live.items()
                if j in fresh
            ]
            if contributions:
                self.replies += len(contributions)
                weighted_average_into(self.model, self.node.config.layer_offsets, contributions)
            self.rounds += 1
            await asyncio.sleep(max(0.0, started + self.period_s - loop.time()))


def _assign_layers(x: np.ndarray, offsets: Sequence[int], replica: Contribution) -> None:
    """Copy the layers ``replica`` carries into ``x``."""
    position = 0
    for layer in replica.layers:
        size = offsets[layer + 1] - offsets[layer]
        x[offsets[layer] : offsets[layer + 1]] = replica.values[position : position + size]
        position += size


def weighted_average_into(
    x: np.ndarray, offsets: Sequence[int], contributions: Sequence[Contribution]
) -> None:
    """Each layer of ``x`` becomes the weighted mean of the contributions carrying it.

    Layers no contribution carries keep their value (FedAvg: the old global model is replaced,
    not mixed in, wherever a drone sent something).
    """
    layers = len(offsets) - 1
    total = np.zeros(offsets[-1], dtype=np.float64)
    weight = np.zeros(layers)
    for contribution in contributions:
        position = 0
        for layer in contribution.layers:
            a, b = offsets[layer], offsets[layer + 1]
            total[a:b] += contribution.weight * contribution.values[position : position + b - a]
            weight[layer] += contribution.weight
            position += b - a
    for layer in range(layers):
        if weight[layer] > 0:
            a, b = offsets[layer], offsets[layer + 1]
            x[a:b] = (total[a:b] / weight[layer]).astype(np.float32)


class StationLinks:
    """The drones' links plus one more node, the ground station, at a fixed position.

    With positions (metres) the station's links come from the same path-loss model as the
    drones' (range and loss by distance); with a fixed graph the station hears, and is heard
    by, every drone, with the graph's per-datagram loss.
    """

    def __init__(self, drones: Any, position: Sequence[float], datagram_loss: float) -> None:
        self.drones = drones
        self.n = drones.n + 1
        self.metric = drones.metric
        self.station = np.asarray(position, dtype=float).reshape(1, 3)
        self._loss = float(datagram_loss)

    def positions(self, t: float) -> np.ndarray:
        """The drones' positions, then the station's."""
        return np.vstack([self.drones.positions(t), self.station])

    def window(self, t: float) -> tuple[float, float]:
        """The drones' links change when theirs do; the station never moves."""
        start, end = self.drones.window(t)
        return float(start), float(end)

    def links(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every directed link: the drones', and the station's to and from each drone."""
        if isinstance(self.drones, PositionLinks):
            tick = self.drones._tick_start(t)
            positions = np.vstack([self.drones.mobility.positions(tick), self.station])
            src, dst, _, loss = links_from_positions(positions, self.drones.link_model)
            return src, dst, loss
        src, dst, loss = self.drones.links(t)
        n = self.drones.n
        others = np.arange(n)
        station = np.full(n, n)
        src = np.concatenate([src, station, others])
        dst = np.concatenate([dst, others, station])
        loss = np.concatenate([loss, np.full(2 * n, self._loss)])
        order = np.lexsort((dst, src))
        return src[order], dst[order], loss[order]


def strategy_world(scenario: Scenario) -> World:
    """The scenario's world, with the ground station as node ``drones`` for ``fedavg``."""
    world = build_world(scenario)
    if scenario.learning.strategy != "fedavg":
        return world
    source = StationLinks(
        world.source, scenario.ground_station.position, scenario.radio.datagram_loss
    )
    # The station belongs to the first group of a partition (it stays on the ground).
    partitions = [
        PartitionWindow(p.start_s, p.end_s, (*p.group_of, p.group_of[0])) for p in world.partitions
    ]
    return World(
        source,
        latency_s=world.latency_s,
        frame_loss=world.frame_loss,
        partitions=partitions,
    )


def build_station(
    scenario: Scenario,
    medium: SimMedium,
    world: World,
    template: GossipNode,
    link_config: LinkConfig,
    initial: np.ndarray,
    verifier: FrameVerifier,
    up: Callable[[int], bool],
) -> GroundStation:
    """The ground station of a ``fedavg`` scenario: node id ``drones``, every layer carried."""
    station_id = scenario.swarm.drones
    layers = tuple(range(len(template.config.layer_offsets) - 1))
    config = dataclasses.replace(template.config, drone_id=station_id, trained_layers=layers)
    node = GossipNode(config, verifier)
    radio = medium.radio(station_id, link_config)
    churn = scenario.churn
    return GroundStation(
        node=node,
        radio=radio,
        initial=initial,
        period_s=scenario.gossip.period_s,
        round_timeout_s=scenario.learning.round_timeout_periods * scenario.gossip.period_s,
        expected=lambda now: [j for j in world.neighbours(station_id, now) if up(j)],
        churn=(churn.mean_up_s, churn.mean_down_s) if churn.enabled else None,
        churn_random=churn_rng(scenario.run.seed, station_id),
    )
