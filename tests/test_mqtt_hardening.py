"""Hostile broker clients against the MQTT radio, and the shipped mosquitto configuration.

A mosquitto is started on a free loopback port with ``deploy/mosquitto/`` (its password file
made with ``mosquitto_passwd``, its ACL as shipped): anonymous clients are refused, a drone
cannot write another drone's topics, and real agents still learn while an attacker holding a
drone's credentials publishes deeply nested JSON and a 100 MB message. Against an open broker,
the radio itself bounds what 20,000 retained fake presences can do.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import psutil
import pytest
from _field_helpers import (
    MOSQUITTO,
    AgentProcess,
    Mosquitto,
    agent_tables,
    agents,
    require_mosquitto,
    unique_swarm_id,
    wait_until,
    write_config,
)

from swarmfl.radio.broker_records import (
    BrokerRecordError,
    parse_record,
    presence_key,
    presence_payload,
)
from swarmfl.radio.discovery import PeerInfo
from swarmfl.radio.mqtt import MqttRadio, MqttSettings

pytestmark = [pytest.mark.network]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
KEY = b"k" * 32
SIG = bytes.fromhex("0011223344556677")
NESTED = b"[" * 100_000 + b"]" * 100_000  # 200 kB: over every cap, and nested past recursion
NESTED_SMALL = b'{"a":' * 1500 + b"1" + b"}" * 1500  # 7.5 kB: nested past the recursion limit
USERS = ("0", "1", "9", "observer")
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def password(user: str) -> str:
    return f"pw-{user}-0123456789"


class SecureMosquitto(Mosquitto):
    """A mosquitto on a free loopback port with the shipped configuration and ACL."""

    def start(self) -> SecureMosquitto:
        passwd = self.folder / "swarmfl.passwd"
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            pytest.skip("mosquitto_passwd is not installed")
        for i, user in enumerate(USERS):
            flags = ["-c"] if i == 0 else []
            subprocess.run(
                [tool, *flags, "-b", str(passwd), user, password(user)], check=True, timeout=30
            )
        conf = []
        for line in (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8").splitlines():
            key = line.split(" ", 1)[0]
            if key == "listener":
                line = f"listener {self.port} 127.0.0.1"
            elif key == "password_file":
                line = f"password_file {passwd}"
            elif key == "acl_file":
                line = f"acl_file {DEPLOY / 'swarmfl.acl'}"
            elif key in ("persistence", "persistence_location"):
                continue
            conf.append(line)
        path = self.folder / "mosquitto.conf"
        # Run as ourselves: mosquitto started as root would drop to its own user, which cannot
        # read the test's private folder.
        extra = f"\npersistence false\nuser {getpass.getuser()}\n"
        path.write_text("\n".join(conf) + extra, encoding="utf-8")
        log = open(self.folder / "mosquitto.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(path)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        wait_until(self._accepting, 10.0, "mosquitto to accept connections", poll_s=0.02)
        return self


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMosquitto]:
    require_mosquitto()
    broker = SecureMosquitto(tmp_path_factory.mktemp("secure-mosquitto")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    require_mosquitto()
    broker = Mosquitto(tmp_path_factory.mktemp("open-mosquitto")).start()
    try:
        yield broker
    finally:
        broker.stop()


def client(broker: Mosquitto, user: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=password(user) if user is not None else None,
        timeout=5,
    )


def radio(broker: Mosquitto, drone: int, swarm_id: int, **kw: object) -> MqttRadio:
    settings = MqttSettings(
        url=f"mqtt://127.0.0.1:{broker.port}",
        username=str(drone) if isinstance(broker, SecureMosquitto) else None,
        password=password(str(drone)) if isinstance(broker, SecureMosquitto) else None,
        keepalive_s=2,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )
    me = PeerInfo(drone, swarm_id, SIG, "127.0.0.1", 0, "full", "mqtt")
    return MqttRadio(me=me, settings=settings, swarm_key=KEY, **kw)  # type: ignore[arg-type]


async def frames_of(radio: MqttRadio, timeout_s: float = 10.0) -> AsyncIterator[bytes]:
    async with asyncio.timeout(timeout_s):
        async for heard in radio.frames():
            yield heard.data


async def first_frame(
    sender: MqttRadio,
    receiver: MqttRadio,
    data: bytes,
    timeout_s: float = 120.0,
    *,
    skip_others: bool = False,
) -> bytes:
    """The first frame ``receiver`` hears (with ``skip_others``: the first copy of ``data``)
    after ``sender`` sends ``data``, resent every 2 s until one arrives (a busy machine may
    still be subscribing when the first copy goes out)."""

    async def resend() -> None:
        while True:
            sender.send(data)
            await asyncio.sleep(2.0)

    sending = asyncio.create_task(resend())
    try:
        async with asyncio.timeout(timeout_s):
            async for heard in receiver.frames():
                if heard.data == data or not skip_others:
                    return heard.data
    finally:
        sending.cancel()
    raise AssertionError("the receiver's inbox closed")


# -- the total parser (no broker needed) ------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        NESTED,
        NESTED_SMALL,
        b"\xff\xfe",
        b"",
        b"1" * 5000,  # an int over Python's digit limit
        b"[]",
        b'"x"',
        b"{" * 10,
        "not bytes",
        b"x" * 100_000,
    ],
)
def test_the_record_parser_is_total(payload: object) -> None:
    with pytest.raises(BrokerRecordError):
        parse_record(payload, 64 * 1024)


# -- the shipped configuration ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_an_anonymous_client_is_refused(secure_broker: SecureMosquitto) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client(secure_broker):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", secure_broker.port, username="1", password="wrong", timeout=5
        ):
            pass


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_drone_cannot_write_another_drones_topics(secure_broker: SecureMosquitto) -> None:
    swarm_id = unique_swarm_id()
    root = f"swarmfl/{swarm_id}"
    heard: list[str] = []
    async with client(secure_broker, "0") as watcher, client(secure_broker, "1") as drone1:
        await watcher.subscribe(f"{root}/#", qos=1)
        for kind in ("frames", "presence", "telemetry"):
            await drone1.publish(f"{root}/{kind}/0", b"impersonation", qos=1)
            await drone1.publish(f"{root}/{kind}/9", b"impersonation", qos=1)
        await drone1.publish(f"{root}/frames/1", b"own topic", qos=1)  # the last one sent
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                heard.append(message.topic.value)
                if message.topic.value == f"{root}/frames/1":
                    break
    # Delivery from one client is in order: had any write into drone 0's or 9's topics got
    # through, it would have arrived before drone 1's own message.
    assert heard == [f"{root}/frames/1"]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_100_mb_message_is_refused_by_the_broker(secure_broker: SecureMosquitto) -> None:
    swarm_id = unique_swarm_id()
    async with radio(secure_broker, 0, swarm_id) as target, radio(secure_broker, 1, swarm_id) as a:
        assert await target.wait_connected(10) and await a.wait_connected(10)
        rss_before = psutil.Process().memory_info().rss
        # The attacker holds drone 9's credentials and runs in another process.
        attacker = await asyncio.create_subprocess_exec(
            *(MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(secure_broker.port), "-q", "1"),
            *("-u", "9", "-P", password("9"), "-t", f"swarmfl/{swarm_id}/frames/9", "-s"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await attacker.communicate(bytes(100 * 2**20))
        assert attacker.returncode != 0  # the broker cut it off
        # the first frame heard is the honest one
        assert await first_frame(a, target, b"still here") == b"still here"
        assert target.connected and target.counters()["datagrams_malformed"] == 0
        # The radios' process never saw the 100 MB (it used to cost each agent ~228 MiB).
        assert psutil.Process().memory_info().rss - rss_before < 20 * 2**20


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", "status", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_agents_learn_through_the_shipped_broker_despite_hostile_retained_records(
    tmp_path: Path, secure_broker: SecureMosquitto
) -> None:
    """An attacker with drone 9's credentials leaves nested JSON as its retained presence and
    telemetry: the agents (which used to lose their connection task to a RecursionError, for
    good, while reporting "running") keep gossiping, and ``swarmfl status --broker`` reads it."""
    swarm_id = unique_swarm_id()
    root = f"swarmfl/{swarm_id}"

    async def poison() -> None:
        async with client(secure_broker, "9") as attacker:
            for kind in ("presence", "telemetry"):
                await attacker.publish(f"{root}/{kind}/9", NESTED_SMALL, qos=1, retain=True)
                await attacker.publish(f"{root}/{kind}/9", b"[" * 50_000, qos=1, retain=True)
                await attacker.publish(f"{root}/{kind}/9", NESTED_SMALL, qos=1, retain=True)

    asyncio.run(poison())
    processes = []
    for drone in (0, 1):
        secret = tmp_path / f"mqtt-password-{drone}"
        secret.write_text(password(str(drone)), encoding="utf-8")
        os.chmod(secret, 0o600)
        tables = agent_tables(
            tmp_path,
            drone,
            swarm_id,
            shards=2,
            radio="mqtt",
            broker_port=secure_broker.port,
            extra={"radio.mqtt": {"username": str(drone), "password_file": str(secret)}},
        )
        processes.append(AgentProcess(tmp_path, drone, write_config(tmp_path, drone, tables)))
    with agents(processes):
        for process in processes:
            process.start()

        def gossiping() -> bool:
            lasts = [p.last() or {} for p in processes]
            return all(
                last.get("broker") == "connected" and last.get("frames_accepted", 0) >= 5
                for last in lasts
            )

        wait_until(gossiping, 120, "both agents to accept 5 frames through the broker")
        for process in processes:
            last = process.last()
            assert last is not None and last["peers_announced"] == [1 - process.drone]
            assert "Traceback" not in process.stderr()
        result = _status("--config", str(processes[0].config), "--wait-s", "1")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        seen = sorted(json.loads(line)["drone"] for line in result.stdout.splitlines())
        assert seen == [0, 1]


# -- the radio's own bounds (an open broker: anyone may publish anything) -----------------------


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_20000_retained_fake_presences_leave_the_peer_table_bounded(
    open_broker: Mosquitto,
) -> None:
    swarm_id = unique_swarm_id()
    root = f"swarmfl/{swarm_id}/presence"

    def online(i: int) -> dict[str, str]:
        return {"state": "online", **PeerInfo(i, swarm_id, SIG, "h", 0, "full", "mqtt").txt()}

    async with client(open_broker) as attacker:  # 20,000 unsigned or forged, and a nested one
        for i in range(100, 20_100):
            body = online(i)
            forged = presence_payload(body, f"{root}/{i}", b"x" * 32)
            await attacker.publish(
                f"{root}/{i}", json.dumps(body) if i % 2 else forged, qos=0, retain=True
            )
        await attacker.publish(f"{root}/99", NESTED_SMALL, qos=1, retain=True)
    try:
        async with (
            radio(open_broker, 1, swarm_id, max_peers=64) as target,
            radio(open_broker, 2, swarm_id) as honest,
        ):
            assert await target.wait_connected(30)  # subscribed: the retained flood comes
            # The client's bounded queue may drop messages during the flood (frames included):
            # the honest drone sends until one gets through, by then the flood has been read.
            heard = asyncio.get_running_loop().create_future()

            async def first_frame() -> None:
                async for data in frames_of(target, 60):
                    heard.set_result(data)
                    return

            reader = asyncio.create_task(first_frame())
            while not heard.done():
                honest.send(b"a real frame")
                await asyncio.wait([heard], timeout=0.5)
            await reader
            assert heard.result() == b"a real frame"
            assert set(target.peers()) <= {2}  # no fake got in
            assert target.presence_malformed > 0
            assert target.connected and target.task_failures == 0
            key = presence_key(KEY)

            # A captured drone's key signs 300 more presences: the table stays at its bound.
            async with client(open_broker) as captured:
                for i in range(20_100, 20_400):
                    payload = presence_payload(online(i), f"{root}/{i}", key)
                    await captured.publish(f"{root}/{i}", payload, qos=1)
            # Every one of the 300 is either in the table or refused for want of room.
            await asyncio.wait_for(
                _until(lambda: len(target.peers()) + target.peers_refused >= 300), 30
            )
            assert len(target.peers()) == 64
            honest.send(b"another frame")
            async for data in frames_of(target, 60):
                if data == b"another frame":  # (copies of the first may still be queued)
                    break
            assert target.connected and target.task_failures == 0
    finally:
        async with client(open_broker) as cleaner:  # clear the retained junk for other tests
            for i in [99, *range(100, 20_100)]:
                await cleaner.publish(f"{root}/{i}", b"", qos=0, retain=True)


async def _until(condition: object) -> None:
    assert callable(condition)
    while not condition():
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_forged_retained_offline_does_not_drop_a_live_drone(open_broker: Mosquitto) -> None:
    swarm_id = unique_swarm_id()
    root = f"swarmfl/{swarm_id}/presence"
    async with radio(open_broker, 1, swarm_id) as watcher, radio(open_broker, 2, swarm_id):
        await asyncio.wait_for(_until(lambda: 2 in watcher.peers()), 10)
        offline = {"state": "offline", **PeerInfo(2, swarm_id, SIG, "h", 0, "full", "mqtt").txt()}
        async with client(open_broker) as attacker:
            await attacker.publish(f"{root}/2", json.dumps(offline), qos=1, retain=True)
            forged = presence_payload(offline, f"{root}/2", presence_key(b"y" * 32))
            await attacker.publish(f"{root}/2", forged, qos=1, retain=True)
            await attacker.publish(f"{root}/2", NESTED_SMALL, qos=1, retain=True)
        await asyncio.wait_for(_until(lambda: watcher.presence_malformed >= 3), 10)
        assert 2 in watcher.peers()
        assert watcher.connected and watcher.task_failures == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_an_unexpected_failure_of_the_radios_tasks_is_logged_and_reconnected(
    open_broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Any exception in the session's tasks (not only broker errors) ends in a reconnect."""
    swarm_id = unique_swarm_id()
    async with radio(open_broker, 1, swarm_id) as sender, radio(open_broker, 2, swarm_id) as rx:
        assert await sender.wait_connected(10) and await rx.wait_connected(10)
        transmit = sender._transmit
        failures = [RuntimeError("a bug in the pump")]

        async def failing_once(datagram: bytes, now: float) -> int | None:
            if failures:
                raise failures.pop()
            return await transmit(datagram, now)

        sender._transmit = failing_once  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="swarmfl.radio.mqtt"):
            sender.send(b"lost with the session")
            await asyncio.wait_for(_until(lambda: sender.connects >= 2), 20)
        assert sender.task_failures == 1
        assert any("a bug in the pump" in r.getMessage() for r in caplog.records)
        sender.send(b"after the reconnect")
        async for data in frames_of(rx, 20):
            if data == b"after the reconnect":
                break
