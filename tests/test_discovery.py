"""Discovery: PeerInfo/TXT parsing, the static list, and real zeroconf on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from swarmfl.errors import ConfigError
from swarmfl.radio.discovery import (
    SERVICE_TYPE,
    Discovery,
    PeerDown,
    PeerInfo,
    PeerUp,
    StaticDiscovery,
    ZeroconfDiscovery,
)

SIG = bytes.fromhex("0123456789abcdef")
OTHER_SIG = bytes.fromhex("fedcba9876543210")
LOOPBACK = ["127.0.0.1"]
TIMEOUT_S = 30.0  # generous: mDNS answers come late on a busy machine


def peer(drone_id: int, swarm_id: int = 1, signature: bytes = SIG, **kw: object) -> PeerInfo:
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 9000 + drone_id,
        "trains": "suffix:2",
        "transport": "udp",
    }
    fields.update(kw)
    return PeerInfo(drone_id, swarm_id, signature, **fields)  # type: ignore[arg-type]


@pytest.fixture
def swarm_id() -> int:
    # Random so that parallel runs on one machine (one mDNS link) never see each other's peers.
    return secrets.randbelow(2**31)


async def take(events: AsyncIterator[PeerUp | PeerDown], n: int) -> list[PeerUp | PeerDown]:
    return [await anext(events) for _ in range(n)]


class LogSignal(logging.Handler):
    """Wakes waiters whenever the discovery logs, so tests wait on outcomes without sleeping.

    Counting records per service name (rather than the discoveries' counters) keeps the tests
    exact even when another run on this machine announces services of its own swarm.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.changed = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def count(self, prefix: str, service_name: str) -> int:
        """How many records starting with ``prefix`` were about ``service_name``."""
        return sum(
            1
            for r in self.records
            if r.msg.startswith(prefix) and isinstance(r.args, tuple) and r.args[0] == service_name
        )

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
def log_signal() -> Iterator[LogSignal]:
    logger = logging.getLogger("swarmfl.radio.discovery")
    handler = LogSignal()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# --- PeerInfo and TXT ------------------------------------------------------------------------


def test_txt_round_trip() -> None:
    me = peer(5, swarm_id=77, trains="full", transport="mqtt", port=0)
    txt = me.txt()
    assert txt == {
        "id": "5",
        "swarm": "77",
        "sig": "0123456789abcdef",
        "trains": "full",
        "transport": "mqtt",
        "v": "1",
    }
    assert PeerInfo.from_txt(txt, host="127.0.0.1", port=0) == me
    assert me.service_name == f"swarmfl-77-5.{SERVICE_TYPE}"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"v": "2"}, "version"),
        ({"id": None}, "'id' missing"),
        ({"id": "-3"}, "decimal"),
        ({"swarm": "x"}, "decimal"),
        ({"sig": "nothex!!"}, "hex"),
        ({"sig": "0123"}, "signature"),
        ({"transport": "carrier-pigeon"}, "transport"),
        ({"trains": ""}, "trains"),
    ],
)
def test_malformed_txt_is_refused(change: dict[str, str | None], problem: str) -> None:
    txt: dict[str, str | None] = {**peer(1).txt(), **change}
    with pytest.raises(ValueError, match=problem):
        PeerInfo.from_txt(txt, host="127.0.0.1", port=1)


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"signature": b"short"}, "signature"),
        ({"port": 70000}, "port"),
        ({"host": ""}, "host"),
        ({"transport": "tcp"}, "transport"),
        ({"trains": "x" * 65}, "trains"),
    ],
)
def test_peer_info_validation_names_the_field(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(peer(1), **kw)
    assert info.value.key == key


def test_zeroconf_discovery_needs_an_ip_literal() -> None:
    with pytest.raises(ConfigError, match="IP address"):
        ZeroconfDiscovery(peer(1, host="drone1.local"))


# --- StaticDiscovery -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_static_discovery_announces_its_peers_then_waits_until_closed() -> None:
    peers = {2: peer(2), 3: peer(3)}
    async with StaticDiscovery(peers) as discovery:
        assert isinstance(discovery, Discovery)
        assert dict(discovery.peers()) == peers
        async with contextlib.aclosing(discovery.events()) as events:
            assert await asyncio.wait_for(take(events, 2), TIMEOUT_S) == [
                PeerUp(peers[2]),
                PeerUp(peers[3]),
            ]
            pending = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0)  # one loop turn: the iterator is now parked waiting
            assert not pending.done()
            await discovery.aclose()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(pending, TIMEOUT_S)


def test_static_discovery_refuses_mismatched_keys() -> None:
    with pytest.raises(ConfigError, match="drone_id"):
        StaticDiscovery({4: peer(5)})


# --- real zeroconf on loopback ---------------------------------------------------------------


@pytest.mark.network
@pytest.mark.asyncio
async def test_same_swarm_peers_find_each_other_and_foreign_ones_are_ignored(
    swarm_id: int, log_signal: LogSignal
) -> None:
    other_swarm = (swarm_id + 1) % 2**31
    mates = [ZeroconfDiscovery(peer(i, swarm_id), interfaces=LOOPBACK) for i in (1, 2, 3)]
    foreign = [
        ZeroconfDiscovery(peer(4, other_swarm), interfaces=LOOPBACK),
        ZeroconfDiscovery(peer(5, swarm_id, OTHER_SIG), interfaces=LOOPBACK),
    ]
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as tg:
            for d in mates + foreign:
                tg.create_task(stack.enter_async_context(d))
        streams = [await stack.enter_async_context(contextlib.aclosing(d.events())) for d in mates]

        for d, events in zip(mates, streams, strict=True):
            got = await asyncio.wait_for(take(events, 2), TIMEOUT_S)
            others = {i for i in (1, 2, 3) if i != d.me.drone_id}
            assert {e.peer.drone_id for e in got if isinstance(e, PeerUp)} == others
            assert {e.peer for e in got if isinstance(e, PeerUp)} == {
                peer(i, swarm_id) for i in others
            }

        # Both foreign services are resolved and ignored by the three mates and by each other.
        names = [d.me.service_name for d in foreign]
        await asyncio.wait_for(
            log_signal.wait_until(lambda: all(log_signal.count("ignoring", n) >= 4 for n in names)),
            TIMEOUT_S,
        )
        for d in mates:
            assert d.foreign_count >= 2
            assert set(d.peers()) == {1, 2, 3} - {d.me.drone_id}

        # Closing one mate says goodbye: the others see it go, and nothing else.
        await mates[2].aclose()
        for d, events in zip(mates[:2], streams[:2], strict=True):
            assert await asyncio.wait_for(anext(events), TIMEOUT_S) == PeerDown(3)
            assert set(d.peers()) == {1, 2} - {d.me.drone_id}

        # A closed discovery's stream ends.
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(streams[2]), TIMEOUT_S)


def raw_service(info: PeerInfo, txt: dict[str, str]) -> AsyncServiceInfo:
    """A service registered by hand, as a misbehaving or older agent might announce it."""
    return AsyncServiceInfo(
        SERVICE_TYPE,
        info.service_name,
        port=info.port,
        properties=txt,
        server=f"swarmfl-{info.swarm_id}-{info.drone_id}.local.",
        parsed_addresses=[info.host],
    )


@pytest.mark.network
@pytest.mark.asyncio
async def test_malformed_txt_is_counted_and_updates_are_followed(
    swarm_id: int, log_signal: LogSignal
) -> None:
    bad = raw_service(peer(7, swarm_id), {**peer(7, swarm_id).txt(), "sig": "not-hex"})
    mate = peer(8, swarm_id)
    good = raw_service(mate, mate.txt())
    async with contextlib.AsyncExitStack() as stack:
        raw = await stack.enter_async_context(AsyncZeroconf(interfaces=LOOPBACK))
        d1 = ZeroconfDiscovery(peer(1, swarm_id), interfaces=LOOPBACK)

        async def register(info: AsyncServiceInfo) -> None:
            await (await raw.async_register_service(info))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(register(bad))
            tg.create_task(register(good))
            tg.create_task(stack.enter_async_context(d1))
        events = await stack.enter_async_context(contextlib.aclosing(d1.events()))
        assert await asyncio.wait_for(anext(events), TIMEOUT_S) == PeerUp(mate)
        await asyncio.wait_for(
            log_signal.wait_until(lambda: log_signal.count("malformed", bad.name) >= 1), TIMEOUT_S
        )
        assert d1.malformed_count >= 1
        assert set(d1.peers()) == {8}

        # The mate now trains more of the model: the change arrives as a fresh PeerUp.
        retrained = dataclasses.replace(mate, trains="full")
        await (await raw.async_update_service(raw_service(retrained, retrained.txt())))
        assert await asyncio.wait_for(anext(events), TIMEOUT_S) == PeerUp(retrained)
        assert d1.peers()[8] == retrained

        # Then it switches to another model: no longer a mate.
        switched = dataclasses.replace(retrained, signature=OTHER_SIG)
        await (await raw.async_update_service(raw_service(switched, switched.txt())))
        assert await asyncio.wait_for(anext(events), TIMEOUT_S) == PeerDown(8)
        assert dict(d1.peers()) == {}
