"""The datagram pump the real radios share: pacing, yielding, counting, closing; UDP and MQTT alike.

The pump itself is tested in virtual time on an in-memory wire (no sockets, exact times); then
the UDP and the MQTT radio are driven through the same scenarios on loopback and must count and
throttle the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from itertools import pairwise

import pytest
from _field_helpers import Mosquitto, require_mosquitto

from swarmfl.errors import ClosedRadioError
from swarmfl.radio.base import Radio, UnicastRadio
from swarmfl.radio.datagram import DATAGRAMS_PER_YIELD, DatagramRadio
from swarmfl.radio.discovery import PeerInfo
from swarmfl.radio.fragment import HEADER_SIZE, Fragmenter
from swarmfl.radio.link import DEFAULT_SOURCE_FRAMES_PER_S, LinkConfig, SourceRateLimit
from swarmfl.radio.mqtt import MqttRadio, MqttSettings
from swarmfl.radio.udp import UdpRadio
from swarmfl.sim.vtime import run_virtual

LOOPBACK = "127.0.0.1"
KEY = b"k" * 32  # the swarm key MQTT presence is signed with
COUNTERS = {
    "frames_sent",
    "datagrams_sent",
    "bytes_sent",
    "frames_received",
    "datagrams_received",
    "bytes_received",
    "datagrams_malformed",
    "frames_incomplete",
    "frames_dropped_sending",
    "frames_dropped_inbox",
    "datagrams_lost_injected",
    "send_errors",
    "frames_rate_limited",
    "frames_forged",
}
# 100 frame bytes per datagram: a 1,000-byte frame is 10 datagrams, 1,190 bytes on the wire.
SMALL_MTU = LinkConfig(mtu_bytes=100 + HEADER_SIZE)


class WireRadio(DatagramRadio):
    """A DatagramRadio on an in-memory wire: each datagram sent is heard at once by ``listeners``.

    ``copies`` is what each transmission reports; with ``medium_open`` false the medium is gone.
    """

    transport = "wire"

    def __init__(
        self, drone_id: int, link: LinkConfig = SMALL_MTU, inbox_frames: int = 256
    ) -> None:
        super().__init__(drone_id=drone_id, link=link, inbox_frames=inbox_frames)
        self.listeners: list[WireRadio] = []
        self.sent_at: list[float] = []
        self.copies = 1
        self.medium_open = True
        self.closes = 0
        self.pump_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _close_medium(self) -> None:
        self.closes += 1
        if self.pump_task is not None:
            self.pump_task.cancel()
            await asyncio.gather(self.pump_task, return_exceptions=True)

    async def _transmit(self, datagram: bytes, now: float) -> int | None:
        if not self.medium_open:
            return None
        self.sent_at.append(now)
        for radio in self.listeners:
            radio.hear(datagram, self.drone_id)
        return self.copies

    def hear(self, datagram: bytes, sender: int) -> None:
        self._hear(datagram, sender)


def counters(**nonzero: int) -> dict[str, int]:
    """Every counter at zero but ``nonzero``."""
    assert set(nonzero) <= COUNTERS
    return {name: nonzero.get(name, 0) for name in COUNTERS}


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait until ``condition()`` holds (poll); fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def first_frame(radio: Radio, timeout_s: float = 30.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        async for heard in radio.frames():
            return heard.data
    raise AssertionError("the radio closed")


# -- the pump, in virtual time ----------------------------------------------------------------


def test_datagrams_leave_at_the_token_buckets_pace() -> None:
    link = LinkConfig(rate_bps=8 * 1000.0, mtu_bytes=100 + HEADER_SIZE)  # 1 kB/s, one-MTU burst

    async def main() -> tuple[float, list[float], bytes]:
        sender, receiver = WireRadio(1, link), WireRadio(2, link)
        sender.listeners.append(receiver)
        async with sender, receiver:
            started = asyncio.get_running_loop().time()
            sender.send(bytes(range(250)) * 4)
            return started, sender.sent_at, await first_frame(receiver, timeout_s=60)

    started, sent_at, frame = run_virtual(main)
    assert frame == bytes(range(250)) * 4
    # The bucket starts full (one datagram), then refills 119 bytes in 0.119 s per datagram.
    expected = [started + 0.119 * i for i in range(10)]
    assert sent_at == pytest.approx(expected, abs=1e-5)


def test_the_pump_yields_to_other_tasks_every_64_datagrams() -> None:
    fast = LinkConfig(rate_bps=1e12, mtu_bytes=100 + HEADER_SIZE, burst_bytes=10**9)

    async def main() -> list[int]:
        seen: list[int] = []
        async with WireRadio(1, fast) as radio:

            async def watch() -> None:
                while radio.stats.datagrams_sent < 200:
                    seen.append(radio.stats.datagrams_sent)
                    await asyncio.sleep(0)

            watcher = asyncio.get_running_loop().create_task(watch())
            radio.send(bytes(200 * 100))  # 200 datagrams, all covered by the burst
            await watcher
        return seen

    seen = run_virtual(main)
    steps = [b - a for a, b in pairwise([0, *seen, 200])]
    assert max(steps) == DATAGRAMS_PER_YIELD  # never more back to back, and that many at once


def test_both_ends_count_datagrams_bytes_and_frames() -> None:
    async def main() -> tuple[dict[str, int], dict[str, int]]:
        sender, receiver = WireRadio(1), WireRadio(2)
        sender.listeners.append(receiver)
        async with sender, receiver:
            sender.send(bytes(1000))
            await first_frame(receiver)
            return sender.counters(), receiver.counters()

    sent, heard = run_virtual(main)
    assert sent == counters(frames_sent=1, datagrams_sent=10, bytes_sent=1190)
    assert heard == counters(frames_received=1, datagrams_received=10, bytes_received=1190)


def test_every_copy_a_transmission_reports_is_counted() -> None:
    async def main() -> dict[str, int]:
        async with WireRadio(1) as radio:
            radio.copies = 3
            radio.send(bytes(1000))
            await until(lambda: radio.counters()["frames_sent"] == 1)
            return radio.counters()

    assert run_virtual(main) == counters(frames_sent=1, datagrams_sent=30, bytes_sent=3 * 1190)


def test_the_pump_stops_when_the_medium_is_gone() -> None:
    async def main() -> tuple[bool, dict[str, int]]:
        async with WireRadio(1) as radio:
            radio.medium_open = False
            radio.send(b"never sent")
            assert radio.pump_task is not None
            async with asyncio.timeout(10):
                await radio.pump_task
            return radio.pump_task.done(), radio.counters()

    done, after = run_virtual(main)
    assert done
    assert after["datagrams_sent"] == 0 and after["bytes_sent"] == 0


def test_frames_the_reader_has_no_room_for_and_garbage_are_counted() -> None:
    async def main() -> dict[str, int]:
        sender, receiver = WireRadio(1), WireRadio(2, inbox_frames=2)
        sender.listeners.append(receiver)
        async with sender, receiver:
            for i in range(3):
                sender.send(bytes([i]) * 10)
            await until(lambda: receiver.counters()["frames_received"] == 3)
            receiver.hear(b"junk", 7)
            return receiver.counters()

    assert run_virtual(main) == counters(
        frames_received=3,
        frames_dropped_inbox=1,
        datagrams_received=4,
        bytes_received=3 * (10 + HEADER_SIZE) + 4,
        datagrams_malformed=1,
    )


def test_closing_is_idempotent_ends_readers_and_refuses_sends() -> None:
    async def main() -> None:
        radio = WireRadio(1)
        await radio.start()
        reader = asyncio.get_running_loop().create_task(first_frame(radio))
        await asyncio.sleep(0)
        radio.send(b"dropped: still queued at close")
        await radio.aclose()
        await radio.aclose()
        assert radio.closes == 1
        with pytest.raises(AssertionError, match="closed"):
            await reader
        with pytest.raises(ClosedRadioError, match="WIRE radio of drone 1 is closed"):
            radio.send(b"late")
        assert radio.counters()["datagrams_sent"] == 0

    run_virtual(main)


# -- the real radios --------------------------------------------------------------------------


def test_only_the_udp_radio_sends_to_explicit_destinations() -> None:
    me = PeerInfo(1, 7, bytes(8), LOOPBACK, 0, "full", "mqtt")
    udp = UdpRadio(drone_id=1)
    mqtt = MqttRadio(swarm_key=KEY, me=me, settings=MqttSettings(url=f"mqtt://{LOOPBACK}"))
    assert isinstance(udp, DatagramRadio) and isinstance(mqtt, DatagramRadio)
    assert isinstance(udp, UnicastRadio) and isinstance(udp, Radio)
    assert not isinstance(mqtt, UnicastRadio) and isinstance(mqtt, Radio)
    # Named as discovery names them: the agent gives the UDP radio only peers announced on UDP.
    assert udp.transport == "udp" and mqtt.transport == me.transport == "mqtt"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    require_mosquitto()
    mosquitto = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield mosquitto
    mosquitto.stop()


def on_loopback(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Mark an async test that drives the real radios through sockets and a broker on loopback."""
    for mark in (pytest.mark.network, pytest.mark.timeout(180), pytest.mark.asyncio):
        test = mark(test)
    return test


@pytest.fixture(params=["udp", "mqtt"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which real radio a test drives: each test runs on both."""
    return str(request.param)


@contextlib.asynccontextmanager
async def radio_pair(
    kind: str, link: LinkConfig, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[DatagramRadio, DatagramRadio]]:
    """A sender (drone 1) and a receiver (drone 2) of ``kind``, joined and ready."""
    if kind == "udp":
        async with (
            UdpRadio(drone_id=1, host=LOOPBACK, link=link) as udp_sender,
            UdpRadio(drone_id=2, host=LOOPBACK, link=link) as udp_receiver,
        ):
            udp_sender.confirm_peer(
                2, (LOOPBACK, udp_receiver.local_port), asyncio.get_running_loop().time()
            )
            yield udp_sender, udp_receiver
        return
    port = request.getfixturevalue("broker").port
    swarm = secrets.randbelow(2**31)
    settings = MqttSettings(url=f"mqtt://{LOOPBACK}:{port}", keepalive_s=2)
    radios = [
        MqttRadio(
            swarm_key=KEY,
            me=PeerInfo(d, swarm, bytes(8), LOOPBACK, 0, "full", "mqtt"),
            settings=settings,
            link=link,
        )
        for d in (1, 2)
    ]
    async with radios[0] as mqtt_sender, radios[1] as mqtt_receiver:
        # Subscribed once connected: a datagram published after this is heard.
        assert await mqtt_sender.wait_connected(30) and await mqtt_receiver.wait_connected(30)
        yield mqtt_sender, mqtt_receiver


@on_loopback
async def test_udp_and_mqtt_count_the_same_frame_the_same_way(
    kind: str, request: pytest.FixtureRequest
) -> None:
    link = LinkConfig(mtu_bytes=1472)  # four datagrams for 5,000 bytes, on either medium
    async with radio_pair(kind, link, request) as (sender, receiver):
        frame = secrets.token_bytes(5000)
        sender.send(frame)
        assert await first_frame(receiver) == frame
        await until(lambda: sender.counters()["datagrams_sent"] == 4)
        sent, heard = sender.counters(), receiver.counters()
    wire = 5000 + 4 * HEADER_SIZE
    assert sent == counters(frames_sent=1, datagrams_sent=4, bytes_sent=wire)  # no echo on MQTT
    assert heard == counters(frames_received=1, datagrams_received=4, bytes_received=wire)


@on_loopback
async def test_udp_and_mqtt_hold_back_what_the_burst_does_not_cover(
    kind: str, request: pytest.FixtureRequest
) -> None:
    link = LinkConfig(rate_bps=8.0, mtu_bytes=1472)  # 1 byte/s: one MTU now, the next in 1472 s
    async with radio_pair(kind, link, request) as (sender, receiver):
        sender.send(bytes(3000))  # three datagrams
        await until(lambda: receiver.counters()["datagrams_received"] == 1)
        await until(lambda: sender.counters()["datagrams_sent"] >= 1)
        sent, heard = sender.counters(), receiver.counters()
    assert sent == counters(datagrams_sent=1, bytes_sent=1472)
    assert heard == counters(datagrams_received=1, bytes_received=1472)


def test_a_flood_of_frames_from_one_source_does_not_crowd_out_another() -> None:
    """Forged whole frames from one link sender are capped before the inbox; others get in."""

    async def main() -> tuple[list[object], dict[str, int]]:
        receiver = WireRadio(2, inbox_frames=256)
        async with receiver:
            flood = Fragmenter(sender=66, mtu_bytes=SMALL_MTU.mtu_bytes)
            honest = Fragmenter(sender=1, mtu_bytes=SMALL_MTU.mtu_bytes)
            for i in range(2_000):
                receiver.hear(flood.split(b"forged %d" % i)[0], 66)
                if i % 100 == 0:
                    receiver.hear(honest.split(b"model %d" % i)[0], 1)
            heard = []
            async for frame in receiver.frames():
                heard.append(frame.link_sender)
                if not len(receiver._inbox):  # all that was queued is read
                    break
            return heard, receiver.counters()

    heard, seen = run_virtual(main)
    assert heard.count(1) == 20  # every honest frame reached the reader
    assert heard.count(66) <= DEFAULT_SOURCE_FRAMES_PER_S + 1
    assert seen["frames_rate_limited"] == 2_000 - heard.count(66)
    assert seen["frames_dropped_inbox"] == 0


def test_source_rate_limit_refills_and_stays_bounded() -> None:
    limit = SourceRateLimit(10.0, burst=5, max_sources=3)
    assert [limit.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limit.allow("b", 0.0)  # another source has its own bucket
    assert not limit.allow("a", 0.05)  # half a frame refilled
    assert limit.allow("a", 0.15)
    for source in range(10):
        limit.allow(source, 1.0)
    assert len(limit) == 3
    assert limit.limited == 3
