"""Forged mDNS against real agents: discovery is a hint that cannot cut anyone off or redirect.

Two ``swarmfl agent`` processes find each other with zeroconf on 127.0.0.1. An attacker in the
test process, with its own zeroconf and a UDP socket, then sends what anyone on the link can:
a goodbye on behalf of drone 1, an announcement of drone 1 at the attacker's port, and 2,000
records of drones that do not exist. Drone 0 must keep hearing and feeding drone 1, send no
model frame to the attacker, and send about as many bytes as before.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import (
    SECRET,
    AgentProcess,
    agent_tables,
    agents,
    free_port,
    unique_swarm_id,
    wait_until,
    write_config,
)
from zeroconf import DNSOutgoing, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from swarmfl.core.wire import FrameKind, decode_frame, derive_swarm_key
from swarmfl.radio.discovery import SERVICE_TYPE, PeerInfo, ZeroconfDiscovery
from swarmfl.radio.reassembly import Reassembler

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"
_RESPONSE_FLAGS = 0x8400  # QR (response) | AA (authoritative)


class Catcher:
    """The attacker's UDP socket: what drones send to the addresses it announced."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    def __enter__(self) -> Catcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def kinds(self, key: bytes, swarm_id: int) -> list[FrameKind]:
        reassembler = Reassembler(timeout_s=60.0, max_buffer_bytes=2**26, max_frame_bytes=2**22)
        frames = [reassembler.push(d, "x", 0.0) for d in list(self.datagrams)]
        return [
            decode_frame(f, key, swarm_id=swarm_id, signature=None).kind
            for f in frames
            if f is not None
        ]


def forged(peer: PeerInfo, port: int) -> ServiceInfo:
    """A service record for ``peer`` (any drone id) at the attacker's ``port``."""
    return ServiceInfo(
        SERVICE_TYPE,
        peer.service_name,
        port=port,
        properties=peer.txt(),
        server=f"swarmfl-{peer.swarm_id}-{peer.drone_id}.local.",
        parsed_addresses=[LOOPBACK],
    )


async def send_records(zc: AsyncZeroconf, infos: list[ServiceInfo], ttl: int | None) -> None:
    """Unsolicited mDNS answers for ``infos`` (``ttl=0``: goodbyes), a few per packet."""
    for start in range(0, len(infos), 8):
        out = DNSOutgoing(_RESPONSE_FLAGS)
        for info in infos[start : start + 8]:
            records = [info.dns_pointer(override_ttl=ttl), info.dns_service(override_ttl=ttl)]
            records += [info.dns_text(override_ttl=ttl), *info.dns_addresses(override_ttl=ttl)]
            for record in records:
                out.add_answer_at_time(record, 0)
        zc.zeroconf.async_send(out)
        await asyncio.sleep(0.002)  # let the receivers' sockets drain between packets


def bytes_rate(process: AgentProcess, since_mono: float) -> float:
    """Bytes/s the agent sent over its status lines after ``since_mono`` (its monotonic clock)."""
    lines = [line for line in process.lines() if line.get("mono", 0) >= since_mono]
    assert len(lines) >= 2, "not enough status lines"
    first, last = lines[0], lines[-1]
    return (last["bytes_sent"] - first["bytes_sent"]) / (last["mono"] - first["mono"])


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_forged_goodbyes_hijacks_and_fake_records_change_nothing(tmp_path: Path) -> None:
    swarm_id = unique_swarm_id()
    key = derive_swarm_key(SECRET, swarm_id)
    processes = []
    for drone in (0, 1):
        tables = agent_tables(tmp_path, drone, swarm_id, shards=2, port=free_port())
        processes.append(AgentProcess(tmp_path, drone, write_config(tmp_path, drone, tables)))
    victim, mate = processes

    async def until(condition: Any, timeout_s: float, what: str) -> Any:
        return await asyncio.to_thread(wait_until, condition, timeout_s, what)

    def status(process: AgentProcess) -> dict[str, Any]:
        return process.last() or {}

    def heard_fresh(process: AgentProcess, other: int) -> bool:
        return status(process).get("peers_heard", {}).get(str(other), 99) < 1.0

    with agents(processes), Catcher() as catcher:
        for process in processes:
            process.start()
        await until(
            lambda: heard_fresh(victim, 1) and heard_fresh(mate, 0), 90, "the drones to meet"
        )
        async with ZeroconfDiscovery.browser(swarm_id, interfaces=[LOOPBACK]) as browser:
            await until(lambda: 1 in browser.peers(), 30, "drone 1's announcement")
            real = browser.peers()[1]
        attacker = AsyncZeroconf(interfaces=[LOOPBACK])
        try:
            await attacker.zeroconf.async_wait_for_start()
            # 1. A forged goodbye for drone 1: drone 0's discovery drops it, nothing else does.
            await send_records(attacker, [forged(real, real.port)], ttl=0)
            await until(
                lambda: 1 not in status(victim).get("peers_announced", [1]),
                30,
                "drone 0's discovery to take the goodbye",
            )
            accepted = status(mate)["frames_accepted"]
            await until(
                lambda: status(mate)["frames_accepted"] >= accepted + 10,
                30,
                "drone 1 to go on hearing drone 0 after the goodbye",
            )
            assert heard_fresh(victim, 1) and heard_fresh(mate, 0)

            # 2. Drone 1 announced at the attacker's port: drone 0 keeps sending to drone 1.
            await send_records(attacker, [forged(real, catcher.port)], ttl=None)
            await until(
                lambda: status(victim).get("peer_candidates", 0) >= 1,
                30,
                "drone 0 to take the forged announcement as a candidate",
            )
            accepted = status(mate)["frames_accepted"]
            await until(
                lambda: status(mate)["frames_accepted"] >= accepted + 10,
                30,
                "drone 1 to go on hearing drone 0 after the hijack",
            )
            assert status(victim)["peer_address_changes"] == 0

            # 3. 2,000 drones that do not exist: the bytes drone 0 sends stay those of one peer.
            before_mono = status(victim)["mono"]
            await until(
                lambda: status(victim)["mono"] >= before_mono + 3.0, 30, "3 s of status lines"
            )
            rate_before = bytes_rate(victim, before_mono)
            fakes = [
                forged(
                    PeerInfo(10_000 + i, swarm_id, real.signature, LOOPBACK, 1, "full", "udp"),
                    catcher.port,
                )
                for i in range(2000)
            ]
            await send_records(attacker, fakes, ttl=None)
            await until(
                lambda: status(victim).get("peer_candidates", 0) >= 200,
                60,
                "drone 0 to hear the fake records",
            )
            during_mono = status(victim)["mono"]
            await until(
                lambda: status(victim)["mono"] >= during_mono + 3.0, 30, "3 s of status lines"
            )
            rate_during = bytes_rate(victim, during_mono)
            accepted = status(mate)["frames_accepted"]
            await until(
                lambda: status(mate)["frames_accepted"] >= accepted + 5,
                30,
                "drone 1 to go on hearing drone 0 among the fakes",
            )
        finally:
            await attacker.async_close()
        kinds = catcher.kinds(key, swarm_id)
        last = status(victim)
    # Only small HELLOs reached the attacker's addresses, never a model frame.
    assert kinds and set(kinds) == {FrameKind.HELLO}
    assert last["peer_candidates"] <= 256 and last["peers_confirmed"] == 1
    print(f"bytes/s before {rate_before:.0f}, with 2,000 fake records {rate_during:.0f}")
    assert rate_during < 1.5 * rate_before
