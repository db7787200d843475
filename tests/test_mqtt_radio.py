"""The MQTT radio through a real mosquitto on a free loopback port: frames, presence, last will."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from _field_helpers import Mosquitto, free_port, require_mosquitto

from swarmfl.errors import ConfigError
from swarmfl.radio.broker_records import presence_key, presence_payload
from swarmfl.radio.discovery import PeerDown, PeerInfo, PeerUp
from swarmfl.radio.mqtt import MqttRadio, MqttSettings, broker_address

pytestmark = [pytest.mark.network, pytest.mark.timeout(180)]

SIG = bytes.fromhex("0011223344556677")
KEY = b"k" * 32  # the swarm key presence is signed with


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    require_mosquitto()
    mosquitto = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


@pytest.fixture
def swarm_id() -> int:
    return secrets.randbelow(2**31)


def me(drone: int, swarm_id: int, signature: bytes = SIG) -> PeerInfo:
    return PeerInfo(drone, swarm_id, signature, "127.0.0.1", 0, "full", "mqtt")


def signed(topic: str, body: dict[str, str], key: bytes = KEY) -> bytes:
    """A presence record as a drone holding ``key`` signs it."""
    return presence_payload(body, topic, presence_key(key))


def settings(port: int, **kw: object) -> MqttSettings:
    fields: dict[str, object] = {
        "url": f"mqtt://127.0.0.1:{port}",
        "keepalive_s": 2,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
    }
    fields.update(kw)
    return MqttSettings(**fields)  # type: ignore[arg-type]


async def next_event(
    events: AsyncIterator[PeerUp | PeerDown], timeout_s: float = 30.0
) -> PeerUp | PeerDown:
    async with asyncio.timeout(timeout_s):
        return await anext(events)


async def next_frame(radio: MqttRadio, timeout_s: float = 30.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        async for heard in radio.frames():
            return heard.data
    raise AssertionError("radio closed")


class TcpProxy:
    """Relays TCP between a radio and the broker; :meth:`cut` resets every relayed connection
    and stops listening (the broker sees a client vanish, as when a drone flies out of range)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port(socket.SOCK_STREAM)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.append(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def cut(self) -> None:
        """Stop listening and reset every relayed connection (SO_LINGER 0: no goodbye)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        self._writers.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)


@pytest.mark.asyncio
async def test_frames_cross_the_broker_and_presence_announces_peers(
    broker: Mosquitto, swarm_id: int
) -> None:
    async with (
        MqttRadio(swarm_key=KEY, me=me(1, swarm_id), settings=settings(broker.port)) as a,
        MqttRadio(swarm_key=KEY, me=me(2, swarm_id), settings=settings(broker.port)) as b,
    ):
        assert await a.wait_connected(30) and await b.wait_connected(30)
        up = await next_event(b.events())
        assert isinstance(up, PeerUp) and up.peer.drone_id == 1
        assert set(b.peers()) == {1}
        big = secrets.token_bytes(200_000)  # several MQTT messages of at most 64 KiB
        a.send(big)
        assert await next_frame(b) == big
        b.send(b"reply")
        assert await next_frame(a) == b"reply"
        assert a.counters()["frames_received"] == 1  # its own frames are not echoed back


@pytest.mark.asyncio
async def test_a_dropped_connection_fires_the_last_will_and_the_drone_comes_back(
    broker: Mosquitto, swarm_id: int
) -> None:
    proxy = TcpProxy(broker.port)
    await proxy.start()
    async with (
        MqttRadio(swarm_key=KEY, me=me(1, swarm_id), settings=settings(proxy.port)) as flaky,
        MqttRadio(swarm_key=KEY, me=me(2, swarm_id), settings=settings(broker.port)) as watcher,
    ):
        events = watcher.events()
        assert isinstance(await next_event(events), PeerUp)
        await proxy.cut()
        gone = await next_event(events)  # the broker publishes flaky's last will
        assert gone == PeerDown(1)
        assert 1 not in watcher.peers()
        await proxy.start()  # the link comes back: flaky reconnects with backoff
        back = await next_event(events)
        assert isinstance(back, PeerUp) and back.peer.drone_id == 1
        assert await flaky.wait_connected(30)
        assert flaky.connects == 2
        flaky.send(b"after the outage")
        assert await next_frame(watcher) == b"after the outage"
    await proxy.cut()


@pytest.mark.asyncio
async def test_an_unreachable_broker_is_retried_with_backoff_and_reported_without_traceback(
    tmp_path: Path, swarm_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    require_mosquitto()
    late = Mosquitto(tmp_path)  # its port is chosen, nothing listens there yet
    caplog.set_level(logging.WARNING, logger="swarmfl.radio.mqtt")
    async with MqttRadio(swarm_key=KEY, me=me(1, swarm_id), settings=settings(late.port)) as radio:
        radio.send(b"queued while offline")
        async with asyncio.timeout(30):
            while radio.connect_failures < 3:
                await asyncio.sleep(0.05)
        assert not radio.connected
        failures = [r for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(failures) >= 3
        assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failures)
        assert f"127.0.0.1:{late.port}" in failures[0].getMessage()
        await asyncio.to_thread(late.start)
        try:
            assert await radio.wait_connected(30)
            async with MqttRadio(
                swarm_key=KEY, me=me(2, swarm_id), settings=settings(late.port)
            ) as peer:
                assert await peer.wait_connected(30)
                radio.send(b"now online")
                assert await next_frame(peer) == b"now online"
        finally:
            late.stop()


@pytest.mark.asyncio
async def test_foreign_and_malformed_presence_is_ignored(broker: Mosquitto, swarm_id: int) -> None:
    async with MqttRadio(
        swarm_key=KEY, me=me(1, swarm_id), settings=settings(broker.port)
    ) as radio:
        assert await radio.wait_connected(30)
        root = f"swarmfl/{swarm_id}/presence"
        other_model = {"state": "online", **me(5, swarm_id, b"\xff" * 8).txt()}
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.publish(f"{root}/3", b"not json", qos=1)
            await client.publish(f"{root}/4", signed(f"{root}/4", {"state": "online", "id": "9"}))
            await client.publish(f"{root}/5", signed(f"{root}/5", other_model), qos=1)
            good = {"state": "online", **me(6, swarm_id).txt()}
            unsigned = {"state": "online", **me(7, swarm_id).txt()}
            await client.publish(f"{root}/7", json.dumps(unsigned), qos=1)
            forged = signed(f"{root}/8", {"state": "online", **me(8, swarm_id).txt()}, b"x" * 32)
            await client.publish(f"{root}/8", forged, qos=1)
            await client.publish(f"{root}/6", signed(f"{root}/6", good), qos=1)
        event = await next_event(radio.events())
        assert isinstance(event, PeerUp) and event.peer.drone_id == 6
        assert set(radio.peers()) == {6}
        assert radio.presence_malformed == 4


@pytest.mark.asyncio
async def test_a_clean_close_says_goodbye(broker: Mosquitto, swarm_id: int) -> None:
    async with MqttRadio(
        swarm_key=KEY, me=me(2, swarm_id), settings=settings(broker.port)
    ) as watcher:
        events = watcher.events()
        leaving = MqttRadio(swarm_key=KEY, me=me(1, swarm_id), settings=settings(broker.port))
        await leaving.start()
        assert isinstance(await next_event(events), PeerUp)
        await leaving.aclose()
        assert await next_event(events) == PeerDown(1)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://host", "expected mqtt://"),
        ("mqtt://", "expected mqtt://"),
        ("mqtt://user:pw@host", "credentials go in"),
        ("mqtt://host:99999", "not a broker URL"),
    ],
)
def test_bad_broker_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        broker_address(url)
    assert info.value.key == "radio.mqtt.url"
    assert problem in str(info.value)


def test_broker_urls_default_their_ports() -> None:
    assert broker_address("mqtt://b.local") == ("b.local", 1883, False)
    assert broker_address("mqtts://b.local") == ("b.local", 8883, True)
    assert broker_address("mqtt://10.0.0.1:1999") == ("10.0.0.1", 1999, False)


def test_tls_files_that_do_not_exist_name_the_key(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError) as info:
        MqttSettings(url="mqtts://127.0.0.1", ca_file=missing).tls_context()
    assert info.value.key == "radio.mqtt.ca_file"
    assert MqttSettings(url="mqtt://127.0.0.1").tls_context() is None
    assert MqttSettings(url="mqtts://127.0.0.1").tls_context() is not None
