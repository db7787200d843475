"""Replays and restarts with real agent processes: the boot epoch and persisted replay windows.

Two attacks from the field, on loopback UDP with static discovery: frames captured from a live
drone replayed to a neighbour restarted from its checkpoint, and a drone restarted with a fresh
disk (its saved epoch lost, whatever its clock says) that its neighbours must take back.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import (
    SECRET,
    AgentProcess,
    agent_tables,
    agents,
    drone_signer,
    free_port,
    static_discovery,
    unique_swarm_id,
    wait_until,
    write_config,
)

from swarmfl.core.identity import DroneSigner
from swarmfl.core.wire import (
    Frame,
    FrameKind,
    decode_frame,
    derive_swarm_key,
    encode_frame,
    nack_payload,
)
from swarmfl.radio.fragment import Fragmenter
from swarmfl.radio.reassembly import Reassembler

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"


class Sniffer:
    """A swarm member's UDP socket (drone 9, holding the swarm key and its own key, which signs
    its HELLOs): a drone lists it as a static peer, and once its HELLO confirms it, sends it
    every frame. It records them all."""

    def __init__(self, swarm_id: int, signer: DroneSigner) -> None:
        self.key = derive_swarm_key(SECRET, swarm_id)
        self.signer = signer
        self.swarm_id = swarm_id
        self._fragmenter = Fragmenter(9, 1472)
        self._reassembler = Reassembler(
            timeout_s=60.0, max_buffer_bytes=2**26, max_frame_bytes=2**22
        )
        self._hellos = 0
        self._said_hello_at = -1e9
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.datagrams: list[bytes] = []
        self.sender_port = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams.append(data)
            self._answer(data)

    def _answer(self, datagram: bytes) -> None:
        """Say HELLO as drone 9 to whoever probes or sends to us (every 2 s at most)."""
        frame = self._reassembler.push(datagram, "drone", time.monotonic())
        if frame is None or time.monotonic() - self._said_hello_at < 2.0:
            return
        heard = decode_frame(frame, self.key, swarm_id=self.swarm_id, signature=None)
        self._said_hello_at = time.monotonic()
        self._hellos += 1
        hello = Frame(
            kind=FrameKind.HELLO,
            swarm_id=self.swarm_id,
            sender=9,
            signature=heard.signature,
            seq=self._hellos,
            counter=0,
            layers=(),
            samples=0,
            codec=0,
            block_size=128,
            payload=nack_payload(0),  # a HELLO names the drone it is for
        )
        for part in self._fragmenter.split(encode_frame(hello, self.key, self.signer)):
            self.sock.sendto(part, (LOOPBACK, self.sender_port))

    def __enter__(self) -> Sniffer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def captured(self) -> list[bytes]:
        with self._lock:
            return list(self.datagrams)


def model_frames(datagrams: list[bytes], key: bytes, swarm_id: int) -> int:
    """How many model frames (keyframes, deltas) the datagrams reassemble into."""
    reassembler = Reassembler(timeout_s=60.0, max_buffer_bytes=2**26, max_frame_bytes=2**22)
    frames = [reassembler.push(d, "sniffed", 0.0) for d in datagrams]
    kinds = [
        decode_frame(f, key, swarm_id=swarm_id, signature=None).kind
        for f in frames
        if f is not None
    ]
    return sum(kind in (FrameKind.KEY, FrameKind.DELTA) for kind in kinds)


def static_config(
    folder: Path, drone: int, swarm_id: int, ports: dict[int, int], peers: dict[int, int]
) -> Path:
    tables = agent_tables(
        folder,
        drone,
        swarm_id,
        shards=2,
        port=ports[drone],
        extra={"discovery": static_discovery(peers)},
    )
    return write_config(folder, drone, tables)


def first_line_after(process: AgentProcess, count: int, state: str) -> dict[str, Any] | None:
    return next((line for line in process.lines()[count:] if line["state"] == state), None)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_frames_captured_before_a_restart_are_all_refused_after_it(tmp_path: Path) -> None:
    swarm_id = unique_swarm_id()
    ports = {0: free_port(), 1: free_port()}
    with Sniffer(swarm_id, drone_signer(tmp_path, 9, swarm_id)) as sniffer:
        sniffer.sender_port = ports[0]
        # Drone 0 sends to drone 1 and to the sniffer (an eavesdropper that is on its peer list).
        sender = AgentProcess(
            tmp_path, 0, static_config(tmp_path, 0, swarm_id, ports, {1: ports[1], 9: sniffer.port})
        )
        target = AgentProcess(
            tmp_path, 1, static_config(tmp_path, 1, swarm_id, ports, {0: ports[0]})
        )
        with agents([sender, target]):
            # The target listens before drone 0 sends: it hears every frame the sniffer does.
            target.start()
            wait_until(lambda: first_line_after(target, 0, "running"), 60, "drone 1 to run")
            sender.start()
            wait_until(
                lambda: (
                    (target.last() or {}).get("frames_accepted", 0) >= 8
                    and model_frames(sniffer.captured(), sniffer.key, swarm_id) >= 8
                ),
                90,
                "drone 1 to accept frames of drone 0, and the sniffer to capture them",
            )
            sender.signal(signal.SIGTERM)
            assert sender.wait(30) == 0
            target.signal(signal.SIGTERM)
            assert target.wait(30) == 0
            captured = sniffer.captured()
            frames = model_frames(captured, sniffer.key, swarm_id)
            lines_before = len(target.lines())

            target.start()  # resumes from the checkpoint written at its stop
            resumed = wait_until(
                lambda: first_line_after(target, lines_before, "running"),
                60,
                "the restarted drone to run",
            )
            assert resumed["resumed_from"] is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
                for datagram in captured:
                    attacker.sendto(datagram, (LOOPBACK, ports[1]))
            last = wait_until(
                lambda: next(
                    (
                        line
                        for line in target.lines()[lines_before:]
                        if line["frames_replayed"] >= frames
                    ),
                    None,
                ),
                60,
                f"the {frames} replayed model frames to be refused",
            )
            # Drone 0 is gone: anything accepted now could only be a replay.
            assert last["frames_accepted"] == 0
            assert last["peers_heard"] == {}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_drone_restarted_with_a_fresh_disk_is_taken_back_within_a_few_periods(
    tmp_path: Path,
) -> None:
    swarm_id = unique_swarm_id()
    ports = {0: free_port(), 1: free_port()}
    configs = {
        drone: static_config(tmp_path, drone, swarm_id, ports, {1 - drone: ports[1 - drone]})
        for drone in (0, 1)
    }
    drones = [AgentProcess(tmp_path, drone, configs[drone]) for drone in (0, 1)]
    lonely, neighbour = drones
    with agents(drones):
        for process in drones:
            process.start()
        wait_until(
            lambda: (neighbour.last() or {}).get("frames_accepted", 0) >= 10,
            90,
            "drone 1 to hear drone 0",
        )
        lonely.signal(signal.SIGTERM)
        assert lonely.wait(30) == 0
        first_epoch = lonely.last()["epoch"]  # type: ignore[index]
        # A new card: no checkpoint, no saved epoch; the numbers of its earlier life are lost.
        configs[0].write_text(
            configs[0].read_text().replace('dir = "ckpt-0"', 'dir = "fresh-ckpt-0"')
        )
        lines_before = len(lonely.lines())
        heard_before = neighbour.last()["frames_accepted"]  # type: ignore[index]
        lonely.start()
        started = wait_until(
            lambda: first_line_after(lonely, lines_before, "started"), 60, "drone 0 to restart"
        )
        assert started["resumed_from"] is None and started["epoch"] <= first_epoch

        def taken_back() -> dict[str, Any] | None:
            now = neighbour.last() or {}
            fresh = now.get("peers_heard", {}).get("0", 99) < 1.0
            return now if fresh and now["frames_accepted"] >= heard_before + 5 else None

        # Periods are 0.3 s: "a few periods" is well under the 30 s allowed here.
        wait_until(taken_back, 30, "drone 1 to accept the restarted drone 0's frames")
        after = lonely.last()
        assert after is not None and after["epoch"] > first_epoch
        assert after["epoch_restarts"] >= 1
        # The new epoch was saved before it was used: the next life starts past it.
        saved = int((tmp_path / "fresh-ckpt-0" / "epoch").read_text())
        assert saved >= after["epoch"]
