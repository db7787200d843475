"""The UDP radio on real sockets on 127.0.0.1: fragments, rate, loss, garbage."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from swarmfl.errors import ClosedRadioError, ConfigError
from swarmfl.radio.base import Radio
from swarmfl.radio.link import LinkConfig
from swarmfl.radio.udp import UdpRadio

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

LOOPBACK = "127.0.0.1"


async def take(radio: UdpRadio, n: int, timeout_s: float = 30.0) -> list[bytes]:
    frames: list[bytes] = []
    async with asyncio.timeout(timeout_s):
        async for heard in radio.frames():
            frames.append(heard.data)
            if len(frames) == n:
                return frames
    return frames


@contextlib.asynccontextmanager
async def pair(**kw: object) -> AsyncIterator[tuple[UdpRadio, UdpRadio]]:
    a = UdpRadio(drone_id=1, host=LOOPBACK, **kw)  # type: ignore[arg-type]
    b = UdpRadio(drone_id=2, host=LOOPBACK)
    async with a, b:
        a.confirm_peer(2, (LOOPBACK, b.local_port), asyncio.get_running_loop().time())
        b.confirm_peer(1, (LOOPBACK, a.local_port), asyncio.get_running_loop().time())
        yield a, b


@pytest.mark.asyncio
async def test_frames_larger_than_the_mtu_arrive_whole_both_ways() -> None:
    async with pair() as (a, b):
        assert isinstance(a, Radio)
        big = bytes(range(256)) * 400  # 102,400 bytes: 70 datagrams of 1472
        a.send(big)
        b.send(b"small")
        assert await take(b, 1) == [big]
        assert await take(a, 1) == [b"small"]
        counters = a.counters()
        assert counters["frames_sent"] == 1
        assert counters["datagrams_sent"] == -(-len(big) // (1472 - 19))
        assert b.counters()["frames_received"] == 1
        assert b.counters()["bytes_received"] == counters["bytes_sent"]


@pytest.mark.asyncio
async def test_the_token_bucket_paces_what_leaves_and_charges_every_copy() -> None:
    link = LinkConfig(rate_bps=8 * 200_000, mtu_bytes=1472)  # 200 kB/s, one-MTU bursts
    receivers = [UdpRadio(drone_id=i, host=LOOPBACK) for i in (2, 3)]
    async with UdpRadio(drone_id=1, host=LOOPBACK, link=link) as sender:
        for r in receivers:
            await r.start()
        try:
            loop = asyncio.get_running_loop()
            sender.confirm_peer(
                2, (LOOPBACK, receivers[0].local_port), asyncio.get_running_loop().time()
            )
            started = loop.time()
            sender.send(b"x" * 40_000)
            await take(receivers[0], 1)
            one_copy_s = loop.time() - started
            sender.confirm_peer(
                3, (LOOPBACK, receivers[1].local_port), asyncio.get_running_loop().time()
            )
            started = loop.time()
            sender.send(b"y" * 40_000)
            await asyncio.gather(take(receivers[0], 1), take(receivers[1], 1))
            two_copies_s = loop.time() - started
        finally:
            for r in receivers:
                await r.aclose()
    # 40 kB at 200 kB/s is 0.2 s for one destination (less the one-MTU burst); two copies take
    # twice the air. Only lower bounds: a busy machine can make either slower, never faster.
    burst_s = 1472 / 200_000
    assert one_copy_s >= 0.2 - burst_s
    assert two_copies_s >= 0.4 - burst_s


@pytest.mark.asyncio
async def test_the_loss_injector_drops_datagrams_and_counts_them() -> None:
    async with (
        UdpRadio(drone_id=1, host=LOOPBACK, link=LinkConfig(queue_frames=100)) as a,
        UdpRadio(drone_id=2, host=LOOPBACK, loss=0.5, seed=4) as b,
    ):
        a.confirm_peer(2, (LOOPBACK, b.local_port), asyncio.get_running_loop().time())
        for i in range(60):
            a.send(i.to_bytes(4, "little"))
        got: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0  # generous: a busy machine delivers late, not never

        def accounted() -> int:
            c = b.counters()
            return c["frames_received"] + c["datagrams_lost_injected"]

        while accounted() < 60 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        while len(got) < b.counters()["frames_received"]:
            got += await take(b, 1)
    lost = b.counters()["datagrams_lost_injected"]
    assert accounted() == 60
    assert 15 < lost < 45
    assert len(got) == 60 - lost


@pytest.mark.asyncio
async def test_garbage_datagrams_are_counted_and_dropped_and_the_radio_goes_on() -> None:
    async with pair() as (a, b):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for payload in (b"", b"\x00", b"SF", b"junk" * 100, b"SF\x01" + b"\xff" * 40):
                attacker.sendto(payload, (LOOPBACK, b.local_port))
        a.send(b"still works")
        assert await take(b, 1) == [b"still works"]
        assert b.counters()["datagrams_malformed"] == 5


@pytest.mark.asyncio
async def test_a_port_in_use_is_a_config_error_naming_the_key() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        port = taken.getsockname()[1]
        radio = UdpRadio(drone_id=1, host=LOOPBACK, port=port)
        with pytest.raises(ConfigError) as info:
            await radio.start()
    assert info.value.key == "radio.udp.port"
    assert f"UDP port {port}" in str(info.value)
    assert "in use" in str(info.value)


@pytest.mark.asyncio
async def test_sending_after_close_raises_and_readers_end() -> None:
    radio = UdpRadio(drone_id=1, host=LOOPBACK)
    await radio.start()
    reader = asyncio.create_task(take(radio, 1))
    await asyncio.sleep(0)
    await radio.aclose()
    assert await reader == []
    with pytest.raises(ClosedRadioError):
        radio.send(b"late")


def test_a_bad_loss_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        UdpRadio(drone_id=1, loss=1.0)
    assert info.value.key == "loss"
