"""The asyncio agent (swarmfl.agent) over fake seams, in virtual time: merge, train, publish;
receive and reply; discovery routed to the radio; relays; diverged models; clean cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from _node_helpers import SwarmSettings

from swarmfl.agent import Agent
from swarmfl.clock import ChargedCompute, LoopClock
from swarmfl.core.merge import MergeRule, staleness_weight
from swarmfl.core.node import GossipNode
from swarmfl.core.wire import FrameKind, derive_swarm_key
from swarmfl.learning.learner import StepResult
from swarmfl.radio.base import ReceivedFrame, UnicastRadio
from swarmfl.radio.discovery import PeerDown, PeerInfo, PeerUp
from swarmfl.sim.vtime import run_virtual

KEY = derive_swarm_key("agent test swarm", 7)
SIG = b"model-01"
OFFSETS = (0, 6, 8)  # two layers, eight values


SWARM = SwarmSettings(swarm_id=7, signature=SIG, key=KEY, layer_offsets=OFFSETS)


def node(drone_id: int) -> GossipNode:
    return SWARM.node(drone_id, trained_layers=(0, 1), period_s=10.0)


class StepLearner:
    """Adds 1.0 to every parameter per round, so a frame shows which rounds it follows."""

    layer_offsets = OFFSETS
    trained_layers = (0, 1)
    sample_count = 4

    def __init__(self, value: float = 0.0) -> None:
        self.x = np.full(OFFSETS[-1], value, np.float32)
        self.rounds = 0

    def flat_parameters(self) -> np.ndarray:
        return self.x

    def train_round(self) -> StepResult:
        self.rounds += 1
        self.x += 1.0
        return StepResult(4, 4e9, 0.5)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> object:
        raise AssertionError("the agent never evaluates")

    def reset_optimizer_state(self) -> None:
        pass


class RecordingRadio:
    """Keeps what is sent; hears what a test pushes in."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.inbox: asyncio.Queue[ReceivedFrame] = asyncio.Queue()

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    async def frames(self) -> AsyncIterator[ReceivedFrame]:
        while True:
            yield await self.inbox.get()

    async def aclose(self) -> None:
        pass


class AddressedRadio(RecordingRadio):
    transport = "udp"

    def __init__(self) -> None:
        super().__init__()
        self.hints: dict[int, tuple[str, int]] = {}
        self.confirmed: dict[int, object] = {}
        self.probes: list[bytes] = []
        self.replies: list[tuple[bytes, object]] = []

    def set_peer(self, drone_id: int, host: str, port: int) -> None:
        self.hints[drone_id] = (host, port)

    def remove_peer(self, drone_id: int) -> None:
        self.hints.pop(drone_id, None)

    def confirm_peer(self, drone_id: int, link_sender: object, now: float) -> None:
        self.confirmed[drone_id] = link_sender

    def probes_due(self, now: float) -> bool:
        return bool(self.hints) and not self.probes

    def probe(self, hello: Callable[[int], bytes], now: float) -> int:
        self.probes += [hello(drone_id) for drone_id in self.hints]
        return len(self.hints)

    def reply(self, frame: bytes, link_sender: object) -> None:
        self.replies.append((frame, link_sender))


class ScriptedDiscovery:
    def __init__(self, script: list[tuple[float, PeerUp | PeerDown]]) -> None:
        self.script = script

    def peers(self) -> dict[int, PeerInfo]:
        return {}

    async def events(self) -> AsyncIterator[PeerUp | PeerDown]:
        for at, event in self.script:
            await asyncio.sleep(at - asyncio.get_running_loop().time())
            yield event
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        pass


def agent(learner: StepLearner, radio: RecordingRadio, drone_id: int = 1, **kw: object) -> Agent:
    return Agent(
        drone_id=drone_id,
        learner=learner,
        node=node(drone_id),
        radio=radio,
        clock=LoopClock(),
        compute=ChargedCompute(1e9),  # a round's 4e9 FLOPs take 4 virtual seconds
        period_s=10.0,
        **kw,  # type: ignore[arg-type]
    )


def values(frame: bytes) -> np.ndarray:
    decoded = SWARM.decode(frame)
    return np.frombuffer(decoded.payload, np.float32)


def test_each_period_the_agent_trains_then_publishes_the_trained_model() -> None:
    async def main() -> tuple[list[float], list[float], int]:
        learner, radio = StepLearner(), RecordingRadio()
        rounds: list[float] = []
        loop = asyncio.get_running_loop()
        on_round = lambda a, step: rounds.append(loop.time())  # noqa: E731
        async with agent(learner, radio, on_round=on_round):
            await asyncio.sleep(25.0)
        return rounds, [float(values(f)[0]) for f in radio.sent], learner.rounds

    rounds, published, trained = run_virtual(main)
    # rounds end after their 4 s of charged compute, every 10 s period
    assert rounds == [4.0, 14.0, 24.0] and trained == 3
    assert published == [1.0, 2.0, 3.0]  # the model after each step, not before


def test_a_relay_merges_and_publishes_without_training() -> None:
    async def main() -> tuple[int, list[float]]:
        learner, radio = StepLearner(5.0), RecordingRadio()
        async with agent(learner, radio, trains=False):
            await asyncio.sleep(15.0)
        return learner.rounds, [float(values(f)[0]) for f in radio.sent]

    trained, published = run_virtual(main)
    assert trained == 0
    assert published == [5.0, 5.0]


def test_heard_frames_are_merged_before_the_next_step() -> None:
    async def main() -> list[float]:
        learner, radio = StepLearner(), RecordingRadio()
        peer = node(2)
        async with agent(learner, radio):
            await asyncio.sleep(5.0)  # round 1 done: x = 1
            (frame,) = peer.publish(np.full(OFFSETS[-1], 11.0, np.float32), 4, 5.0)
            await radio.inbox.put(ReceivedFrame(frame, "peer", 5.0))
            await asyncio.sleep(10.0)
        return [float(values(f)[0]) for f in radio.sent]

    # period 2 (at 10 s) merges the replica heard half a period earlier, then trains (+1)
    w = staleness_weight(0.5, MergeRule())
    first, second = run_virtual(main)
    assert first == 1.0
    assert second == pytest.approx((1.0 + w * 11.0) / (1.0 + w) + 1.0, rel=1e-6)


def test_a_diverged_model_is_never_sent_and_adopts_its_neighbours() -> None:
    class Diverging(StepLearner):
        def train_round(self) -> StepResult:
            self.x[:] = np.nan
            return StepResult(4, 4e9, float("nan"))

    async def main() -> tuple[int, np.ndarray, int]:
        learner, radio = Diverging(), RecordingRadio()
        peer = node(2)
        (frame,) = peer.publish(np.full(OFFSETS[-1], 3.0, np.float32), 4, 0.0)
        await radio.inbox.put(ReceivedFrame(frame, "peer", 0.0))
        drone = agent(learner, radio)
        async with drone:
            await asyncio.sleep(5.0)
        return len(radio.sent), learner.x.copy(), drone.node.stats.diverged

    sent, x, diverged = run_virtual(main)
    assert sent == 0 and diverged == 1
    np.testing.assert_allclose(x, np.full(OFFSETS[-1], 3.0, np.float32), rtol=1e-6)


def test_discovery_hints_a_unicast_radio_and_authenticated_frames_confirm_peers() -> None:
    mate = PeerInfo(2, 7, SIG, "127.0.0.1", 47102, "full", "udp")
    broker_peer = PeerInfo(3, 7, SIG, "broker", 0, "full", "mqtt")
    script: list[tuple[float, PeerUp | PeerDown]] = [
        (1.0, PeerUp(mate)),
        (1.0, PeerUp(broker_peer)),
        (8.0, PeerDown(2)),
    ]

    radio = AddressedRadio()

    async def main() -> tuple[dict[int, tuple[str, int]], dict[int, tuple[str, int]], set[int]]:
        learner = StepLearner()
        assert isinstance(radio, UnicastRadio)
        peer = node(2)
        drone = agent(learner, radio, discovery=ScriptedDiscovery(script))
        async with drone:
            await asyncio.sleep(2.0)
            assert radio.confirmed == {}  # a hint is not a destination
            (frame,) = peer.publish(np.ones(OFFSETS[-1], np.float32), 4, 2.0)
            await radio.inbox.put(ReceivedFrame(frame, ("127.0.0.1", 47999), 2.0))
            # A replay of it from elsewhere confirms nothing.
            await radio.inbox.put(ReceivedFrame(frame, ("10.6.6.6", 666), 2.1))
            await asyncio.sleep(3.0)
            during = dict(radio.hints)
            await asyncio.sleep(5.0)
        return during, dict(radio.hints), set(drone.node.known_peers())

    during, after, heard = run_virtual(main)
    assert during == {2: ("127.0.0.1", 47102)}  # the MQTT peer is not a UDP destination
    assert after == {}
    # The authenticated frame's source address is where the drone is, whatever was announced;
    # the goodbye (unauthenticated) removed only the hint.
    assert radio.confirmed == {2: ("127.0.0.1", 47999)}
    # The hinted address was sent a HELLO of ours, so the drone there can confirm us.
    (hello,) = radio.probes
    assert SWARM.decode(hello).kind == FrameKind.HELLO
    # A goodbye is unauthenticated: the replica stays until the merge cut-off ages it out.
    assert heard == {2}


def test_cancelling_the_agent_stops_every_task() -> None:
    async def main() -> set[str]:
        learner, radio = StepLearner(), RecordingRadio()
        script: list[tuple[float, PeerUp | PeerDown]] = []
        async with agent(learner, radio, discovery=ScriptedDiscovery(script)):
            await asyncio.sleep(3.0)
        await asyncio.sleep(0)
        me = asyncio.current_task()
        return {t.get_name() for t in asyncio.all_tasks() if t is not me}

    assert run_virtual(main) == set()
