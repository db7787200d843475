"""The asyncio agent: the same code flies on a drone and runs in the simulator.

An :class:`Agent` owns two tasks in one :class:`asyncio.TaskGroup`:

* the *train/gossip* task: merge the neighbours' replicas heard during the last period, train
  a local round (through the :class:`~swarmfl.clock.Compute` seam), publish the trained model,
  wait for the next period;
* the *receive* task: feed every frame heard on the radio to the sans-IO
  :class:`~swarmfl.core.node.GossipNode` and send its replies.

Only the seams change between the simulator and the field: the clock (virtual or real), the
compute (charged to the virtual clock or run in a worker thread), the radio (simulated, UDP,
MQTT) and the discovery. With a :class:`~swarmfl.radio.discovery.Discovery` (zeroconf, a static
list or the MQTT broker's presence) a third task tells a radio that sends to explicit
destinations (:class:`~swarmfl.radio.base.UnicastRadio`) where its peers are. In the simulator
the medium is the discovery (whoever is in range hears you), so none is given. Cancelling
:meth:`Agent.run` cancels every task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

import numpy as np

from swarmfl.clock import Clock, Compute
from swarmfl.core.node import GossipNode
from swarmfl.core.quant import NonFiniteError
from swarmfl.learning.seam import Learner, StepResult
from swarmfl.radio.base import Radio, UnicastRadio
from swarmfl.radio.discovery import Discovery, PeerDown, PeerUp

log = logging.getLogger(__name__)


class Agent:
    """One drone: a learner, a gossip node and a radio, driven by a clock.

    Use ``await agent.run()`` (runs until cancelled) or ``async with agent:`` (runs in the
    background while the block executes). ``on_round`` is called after every local round with
    the step result, for metrics and checkpoints. With ``trains=False`` the drone only merges
    and gossips (a relay): no training step runs and its round reports no samples.
    ``publish_values(model, now)``, if given, is what the drone publishes instead of its model
    (a simulated insider, :mod:`swarmfl.sim.attacks`); its frames are signed and streamed as
    anyone's.
    ``trains`` and ``transmits`` may change between rounds: ``before_round`` (called at the
    start of every period) is where a caller applies a policy. With ``transmits=False`` the
    drone stays radio silent: it neither publishes nor answers, but still hears and merges.
    """

    def __init__(
        self,
        *,
        drone_id: int,
        learner: Learner,
        node: GossipNode,
        radio: Radio,
        clock: Clock,
        compute: Compute,
        period_s: float,
        discovery: Discovery | None = None,
        on_round: Callable[[Agent, StepResult], None] | None = None,
        trains: bool = True,
        publish_values: Callable[[np.ndarray, float], np.ndarray] | None = None,
        before_round: Callable[[Agent], None] | None = None,
    ) -> None:
        self.drone_id = drone_id
        self.learner = learner
        self.node = node
        self.radio = radio
        self.clock = clock
        self.compute = compute
        self.period_s = period_s
        self.discovery = discovery
        self.on_round = on_round
        self.trains = trains
        self.publish_values = publish_values
        self.transmits = True
        self.before_round = before_round
        self.rounds = 0
        self.last_step: StepResult | None = None
        self._task: asyncio.Task[None] | None = None
        # Decided once: the simulator's radio is not unicast, and its receive path stays lean.
        self._unicast: UnicastRadio | None = radio if isinstance(radio, UnicastRadio) else None

    async def run(self) -> None:
        """Train, gossip and receive until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive_loop(), name=f"drone-{self.drone_id}-receive")
            tasks.create_task(self._gossip_loop(), name=f"drone-{self.drone_id}-gossip")
            if self.discovery is not None:
                tasks.create_task(self._discovery_loop(), name=f"drone-{self.drone_id}-peers")

    async def _gossip_loop(self) -> None:
        while True:
            started = self.clock.now()
            if self.before_round is not None:
                self.before_round(self)
            params = self.learner.flat_parameters()
            # Merge what was heard during the last period *before* training, then publish the
            # trained model. Publishing the freshly trained (not the merged) model lets
            # neighbours receive this drone's whole gradient step, and merging just before the
            # next step uses a full period's worth of their fresh frames (CHOCO's order). On
            # workload W at N = 100 this order reaches 0.82 where train-merge-publish reached
            # 0.55 (see benchmarks/bench_swarm.py).
            self.node.mix(params, started)
            if self.trains:
                step = await self.compute.run(self.learner.train_round)
            else:
                step = StepResult(0, 0.0, math.nan)
            now = self.clock.now()
            sent = params if self.publish_values is None else self.publish_values(params, now)
            try:
                frames = (
                    self.node.publish(sent, self.learner.sample_count, now)
                    if self.transmits
                    else []
                )
            except NonFiniteError:
                # A diverged model is never sent; start again from what the neighbours hold.
                self.node.stats.diverged += 1
                adopted = self.node.adopt_neighbours(params, now)
                log.warning(
                    "drone %d: model diverged (NaN/inf); adopted the merge of %d neighbours",
                    self.drone_id,
                    adopted,
                )
                frames = []
            for frame in frames:
                self.radio.send(frame)
            unicast = self._unicast
            if unicast is not None and unicast.probes_due(now):
                unicast.probe(self.node.hello, now)
            self.rounds += 1
            self.last_step = step
            if self.on_round is not None:
                self.on_round(self, step)
            await self.clock.sleep_until(started + self.period_s)

    async def _discovery_loop(self) -> None:
        assert self.discovery is not None
        radio = self.radio
        async for event in self.discovery.events():
            # Discovery is a hint: it says where a peer may be heard, never whom to merge (the
            # node merges only frames that authenticate) nor where model frames go (a unicast
            # radio sends those where authenticated frames came from), and a peer that vanished
            # is aged out by silence rather than forgotten on an unauthenticated goodbye.
            if not isinstance(radio, UnicastRadio):
                continue
            if isinstance(event, PeerUp):
                peer = event.peer
                if peer.transport == radio.transport:
                    radio.set_peer(peer.drone_id, peer.host, peer.port)
            elif isinstance(event, PeerDown):
                radio.remove_peer(event.drone_id)

    async def _receive_loop(self) -> None:
        unicast = self._unicast
        if unicast is None:
            async for heard in self.radio.frames():
                for reply in self.node.receive(heard.data, heard.received_at):
                    if self.transmits:
                        self.radio.send(reply)
            return
        async for heard in unicast.frames():
            sender, replies = self.node.receive_from(heard.data, heard.received_at)
            if sender is not None:
                unicast.confirm_peer(sender, heard.link_sender, heard.received_at)
                for reply in replies:
                    if self.transmits:
                        unicast.send(reply)
            else:
                # A refused frame's answer (an EPOCH frame, at most one a period per sender)
                # goes back where it came from: its sender may be no destination of ours yet.
                for reply in replies:
                    if self.transmits:
                        unicast.reply(reply, heard.link_sender)

    async def __aenter__(self) -> Agent:
        self._task = asyncio.create_task(self.run(), name=f"drone-{self.drone_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            task.result()  # surface a crash of the agent's tasks
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
