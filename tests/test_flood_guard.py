"""Floods of forged frames: refused by their swarm tag, budgeted per source address, and never
at the expense of a real peer's frames, even one whose address the flood uses.

Real UDP sockets on 127.0.0.1 (the radio's own read loop), the sans-IO guard on its own, and
two in-process field agents for the spoofed-address case.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import (
    SECRET,
    static_pair,
    unique_swarm_id,
)

from swarmfl.config.drone_file import load_drone_config
from swarmfl.core.wire import (
    Frame,
    FrameKind,
    decode_frame,
    derive_swarm_key,
    encode_frame,
    frame_tag_check,
)
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent
from swarmfl.radio.fragment import Fragmenter
from swarmfl.radio.guard import SourceGuard
from swarmfl.radio.udp import RECEIVE_BUFFER_BYTES, UdpRadio

LOOPBACK = "127.0.0.1"
SWARM = 4242
KEY = derive_swarm_key(SECRET, SWARM)
WRONG_KEY = derive_swarm_key("not-the-swarm-secret", SWARM)


def model_frame(key: bytes, seq: int, *, sender: int = 1, swarm: int = SWARM) -> bytes:
    frame = Frame(
        kind=FrameKind.KEY,
        swarm_id=swarm,
        sender=sender,
        signature=bytes(8),
        seq=seq,
        counter=seq,
        layers=(0,),
        samples=10,
        codec=1,
        block_size=64,
        payload=random.Random(seq).randbytes(300),
    )
    return encode_frame(frame, key)


def datagram(frame: bytes, frame_id: int) -> bytes:
    (only,) = Fragmenter(sender=9, mtu_bytes=1472, first_frame_id=frame_id).split(frame)
    return only


async def until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` on the loop until truthy; fail after ``timeout_s`` (generous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


# -- the tag check ---------------------------------------------------------------------------


def test_the_tag_check_takes_only_frames_of_our_swarm_under_our_key() -> None:
    check = frame_tag_check(KEY, SWARM)
    good = model_frame(KEY, 1)
    assert check(good)
    assert decode_frame(good, KEY, swarm_id=SWARM, signature=None).seq == 1
    assert not check(model_frame(WRONG_KEY, 1))  # forged: the wrong key
    other = derive_swarm_key(SECRET, SWARM + 1)
    assert not check(model_frame(other, 1, swarm=SWARM + 1))  # another swarm's genuine frame
    flipped = bytearray(good)
    flipped[60] ^= 1
    assert not check(bytes(flipped))  # a bit changed in transit or on purpose
    assert not check(good[:-1]) and not check(good[:40]) and not check(b"")
    rng = random.Random(5)
    for size in range(0, 600, 7):  # never raises, whatever the bytes
        assert not check(rng.randbytes(size))
    with pytest.raises(ConfigError):
        frame_tag_check(b"short", SWARM)


# -- the guard, sans-IO -----------------------------------------------------------------------


def test_an_address_over_its_fault_budget_is_penalized_for_a_while_unless_vouched() -> None:
    guard = SourceGuard(faults_per_s=10.0, burst=5, penalty_s=2.0)
    attacker, peer = ("10.0.0.9", 5000), ("10.0.0.2", 5000)
    assert [guard.fault(attacker, 0.0) for _ in range(6)] == [False] * 5 + [True]
    assert guard.penalized == {attacker: 2.0} and guard.penalties == 1
    assert not guard.lapse(attacker, 1.9) and guard.lapse(attacker, 2.0)
    assert attacker not in guard.penalized
    # Refilled at 10 faults/s while penalized: 2 s buy back the whole burst, no more.
    assert [guard.fault(attacker, 2.0) for _ in range(6)] == [False] * 5 + [True]

    guard.vouch(peer, 0.0)  # an authenticated, fresh frame came from the peer's address
    assert not any(guard.fault(peer, 1.0) for _ in range(1000))
    assert peer not in guard.penalized and guard.faults_vouched == 1000
    # A vouched address's penalty is lifted at once.
    guard.vouch(attacker, 3.0)
    assert attacker not in guard.penalized
    # Vouching lapses after vouch_s without authenticated frames.
    assert not guard.vouched(peer, 31.0)


def test_the_guard_stays_bounded_whatever_the_number_of_source_ports() -> None:
    guard = SourceGuard(burst=2, max_sources=100)
    for port in range(100_000):
        address = ("10.0.0.9", port)
        for _ in range(3):
            guard.fault(address, port * 1e-3)
        if port % 7 == 0:
            guard.vouch(("10.0.0.8", port), port * 1e-3)
    assert len(guard.penalized) <= 100
    assert len(guard) <= 300
    assert guard.penalties == 100_000  # every port overspent its own budget, none another's


@pytest.mark.parametrize(
    "settings",
    [{"faults_per_s": 0}, {"burst": -1}, {"penalty_s": float("nan")}, {"max_sources": 0}],
)
def test_bad_guard_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SourceGuard(**settings)


# -- a real socket ---------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_forged_frames_are_refused_and_the_honest_one_in_the_burst_gets_through() -> None:
    async with UdpRadio(
        drone_id=0, host=LOOPBACK, frame_check=frame_tag_check(KEY, SWARM)
    ) as radio:
        target = (LOOPBACK, radio.local_port)
        # Linux grants twice what is asked, up to twice net.core.rmem_max.
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        assert radio.receive_buffer_bytes == 2 * min(RECEIVE_BUFFER_BYTES, rmem_max)
        forged = [datagram(model_frame(WRONG_KEY, 1000 + i), i) for i in range(64)]
        honest = model_frame(KEY, 7)
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
        ):
            attacker.connect(target)
            # 250 fit even a default-sized receive buffer (416 KiB): none lost in the kernel.
            for i in range(250):
                attacker.send(forged[i % 64])
                if i == 125:
                    peer.sendto(datagram(honest, 99), target)
            heard = radio.frames()
            first = await asyncio.wait_for(anext(heard), 60)
            assert first.data == honest
            await until(
                lambda: radio.counters()["frames_forged"] + radio.guard.datagrams_penalized >= 250,
                60,
                "every forged datagram to be read",
            )
        counters = {**radio.counters(), **radio.peer_counters()}
        # The first ones were checked and charged; once over budget, the rest were dropped
        # unread. None reached the node, none spent the frame budget.
        assert counters["frames_forged"] + counters["datagrams_penalized"] == 250
        assert counters["frames_forged"] >= radio.guard._burst
        assert counters["datagrams_penalized"] > 0 and radio.guard.penalties >= 1
        assert counters["frames_rate_limited"] == 0
        assert counters["frames_received"] == counters["frames_forged"] + 1
        assert len(radio._inbox) == 0  # nothing else was queued for the agent


@pytest.mark.network
@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_flood_from_many_source_ports_keeps_the_guard_bounded() -> None:
    # No refill to speak of: each port's third fault penalizes it, however slow the reads.
    guard = SourceGuard(faults_per_s=1e-6, burst=2, max_sources=40)
    async with UdpRadio(drone_id=0, host=LOOPBACK, guard=guard) as radio:
        target = (LOOPBACK, radio.local_port)
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
        try:
            for sock in sockets:  # 400 datagrams: within even a default receive buffer
                for _ in range(4):
                    sock.sendto(os.urandom(60), target)
            await until(
                lambda: radio.counters()["datagrams_malformed"] + guard.datagrams_penalized >= 400,
                60,
                "all garbage to be read",
            )
        finally:
            for sock in sockets:
                sock.close()
        assert len(guard.penalized) <= 40 and len(guard) <= 120
        assert guard.penalties == 100  # each port: 2 faults, then a penalty on the third
        assert guard.datagrams_penalized == 100  # ... and its fourth dropped unread


# -- a real peer whose address the flood uses ----------------------------------------------


@pytest.mark.network
@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_a_peer_whose_own_address_floods_forged_frames_is_still_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)
    swarm_id = unique_swarm_id()
    drones = [FieldAgent(load_drone_config(p)) for p in static_pair(tmp_path, swarm_id)]
    target, peer = drones
    wrong = derive_swarm_key("not-the-swarm-secret", swarm_id)
    forged = [
        datagram(model_frame(wrong, 10**12 + i, sender=1, swarm=swarm_id), i) for i in range(64)
    ]
    stop = threading.Event()
    sent = [0]

    def flood(sock: socket.socket, address: tuple[str, int], rate: float) -> None:
        """Forged frames claiming drone 1, from drone 1's own socket (its address)."""
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            while sent[0] < due:
                sock.sendto(forged[sent[0] % 64], address)
                sent[0] += 1
            time.sleep(0.005)

    tasks = [asyncio.create_task(agent.run()) for agent in drones]
    flooder = None
    try:
        await until(lambda: target.node.stats.frames_accepted >= 3, 120, "frames from drone 1")
        radio, peer_radio = target.radio, peer.radio
        assert isinstance(radio, UdpRadio) and isinstance(peer_radio, UdpRadio)
        assert peer_radio._sock is not None
        address = (LOOPBACK, radio.local_port)
        accepted = target.node.stats.frames_accepted
        rejected = target.node.stats.frames_rejected
        flooder = threading.Thread(target=flood, args=(peer_radio._sock, address, 2000.0))
        flooder.start()
        # The peer's frames keep being merged while its address floods (2,000 forged/s).
        await until(
            lambda: sent[0] >= 4000 and target.node.stats.frames_accepted >= accepted + 6,
            120,
            "drone 1's frames to be merged during the flood",
        )
        counters = {**radio.counters(), **radio.peer_counters()}
        assert counters["frames_forged"] >= 3000  # refused by their tag, in the radio
        assert counters["datagrams_penalized"] == 0  # a vouched address is never dropped unread
        assert counters["frames_rate_limited"] == 0  # forgeries never spent drone 1's budget
        assert target.node.stats.frames_rejected == rejected  # none reached the node
    finally:
        stop.set()
        if flooder is not None:
            flooder.join(30)
        for agent in drones:
            agent.request_stop()
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
