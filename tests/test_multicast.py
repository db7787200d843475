"""Multicast mode of the UDP radio: one transmission per datagram, whatever the neighbours.

Real sockets on loopback (multicast loopback enabled, so agents of one host hear each other):
four field agents learn in unicast and in multicast mode; the bytes they put on the air per
datagram are N x in unicast (N = 3 peers) and 1 x in multicast, and both learn.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import SECRET, agent_tables, free_port, unique_swarm_id, write_config

from swarmfl.config.drone_file import load_drone_config
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent
from swarmfl.radio.link import LinkConfig
from swarmfl.radio.udp import MulticastUdpRadio, UdpRadio

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"
AGENTS = 4


def random_group() -> str:
    """A group of the organisation-local scope no other test run picks."""
    return f"239.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


async def eventually(condition: Any, timeout_s: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


@pytest.mark.asyncio
async def test_a_multicast_datagram_reaches_every_member_once_and_our_echo_is_dropped() -> None:
    group, port = random_group(), free_port()
    radios = [
        MulticastUdpRadio(
            group=group,
            group_port=port,
            interface=LOOPBACK,
            loopback=True,
            drone_id=drone,
            host=LOOPBACK,
            link=LinkConfig(mtu_bytes=512),
        )
        for drone in range(3)
    ]
    for radio in radios:
        await radio.start()
    try:
        frame = bytes(range(256)) * 8  # 2 KiB: several fragments
        radios[0].send(frame)
        for radio in radios[1:]:
            async with asyncio.timeout(10):
                heard = await anext(aiter(radio.frames()))
            assert heard.data == frame
        sender = radios[0].counters()
        assert sender["bytes_sent"] == radios[0].unique_bytes_sent > len(frame)
        await eventually(lambda: radios[0].echoes_dropped >= 1, 10, "our own echo")
        assert radios[0].counters()["frames_received"] == 0
    finally:
        for radio in radios:
            await radio.aclose()


def test_a_bad_multicast_group_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        MulticastUdpRadio(group="10.0.0.1", group_port=47200, drone_id=1)
    assert caught.value.key == "group"


def swarm_configs(folder: Path, multicast: str | None, group_port: int) -> list[Path]:
    swarm_id = unique_swarm_id()
    ports = [free_port() for _ in range(AGENTS)]
    paths = []
    for drone in range(AGENTS):
        udp: dict[str, Any] = {"host": LOOPBACK, "port": ports[drone]}
        if multicast is not None:
            udp.update(
                multicast=multicast,
                multicast_port=group_port,
                multicast_interface=LOOPBACK,
                multicast_loopback=True,
            )
        peers = [
            {"id": other, "host": LOOPBACK, "port": ports[other]}
            for other in range(AGENTS)
            if other != drone
        ]
        tables = agent_tables(
            folder,
            drone,
            swarm_id,
            shards=AGENTS,
            port=ports[drone],
            extra={"radio.udp": udp, "discovery": {"kind": "static", "peers": peers}},
        )
        paths.append(write_config(folder, drone, tables))
    return paths


@pytest.mark.asyncio
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["unicast", "multicast"])
async def test_four_agents_put_each_datagram_on_the_air_n_times_in_unicast_once_in_multicast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)
    group = random_group() if mode == "multicast" else None
    paths = swarm_configs(tmp_path, group, free_port())
    swarm = [FieldAgent(load_drone_config(path)) for path in paths]
    tasks = [asyncio.create_task(agent.run()) for agent in swarm]
    start: dict[int, tuple[int, int]] = {}
    try:

        def confirmed() -> bool:
            # Unicast goes only to peers confirmed by an authenticated frame: count copies once
            # every drone sends to every other (before that, a datagram reaches fewer of them).
            return all(
                isinstance(agent.radio, MulticastUdpRadio)
                or (agent.radio is not None and len(agent.radio.peers) == AGENTS - 1)
                for agent in swarm
            )

        await eventually(confirmed, 120, f"every peer confirmed in {mode}")
        for agent in swarm:
            status = agent.status()
            start[agent.drone_id] = (status["bytes_sent"], status["unique_bytes_sent"])

        def learned() -> bool:
            accuracies = [agent.accuracy or 0.0 for agent in swarm]
            return sum(accuracies) / len(accuracies) >= 0.85 and all(
                len(agent.node.known_peers()) == AGENTS - 1 for agent in swarm
            )

        await eventually(learned, 120, f"mean accuracy 0.85 in {mode}")
    finally:
        for agent in swarm:
            agent.request_stop()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    for agent in swarm:
        radio = agent.radio
        assert isinstance(radio, UdpRadio)
        counters = radio.counters()
        assert counters["frames_sent"] >= 3
        assert agent.node.stats.frames_rejected == 0
        status = agent.status()
        assert status["bytes_sent"] == counters["bytes_sent"]
        sent, unique = start[agent.drone_id]
        copies = (status["bytes_sent"] - sent) / (status["unique_bytes_sent"] - unique)
        if mode == "multicast":
            assert isinstance(radio, MulticastUdpRadio)
            assert copies == 1.0  # one transmission per datagram
            assert radio.echoes_dropped > 0
        else:
            assert copies == pytest.approx(AGENTS - 1, rel=0.02)  # one copy per peer
