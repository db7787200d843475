"""Replays and restarts with real agent processes: the boot epoch and persisted replay windows.

Two attacks from the field, on loopback UDP with static discovery: frames captured from a live
drone replayed to a neighbour restarted from its checkpoint, and a drone restarted with a fresh
disk (its saved epoch lost, whatever its clock says) that its neighbours must take back.
"""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import (
    AgentProcess,
    agent_tables,
    agents,
    free_port,
    unique_swarm_id,
    wait_until,
    write_config,
)

from swarmfl.radio.fragment import Reassembler

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"


class Sniffer:
    """A UDP socket a drone lists as a static peer: it records every datagram it is sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.datagrams: list[bytes] = []
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


def whole_frames(datagrams: list[bytes]) -> int:
    """How many whole frames the datagrams reassemble into (what a receiver will decode)."""
    reassembler = Reassembler(timeout_s=60.0, max_buffer_bytes=2**26, max_frame_bytes=2**22)
    return sum(reassembler.push(d, "sniffed", 0.0) is not None for d in datagrams)


def static_config(
    folder: Path, drone: int, swarm_id: int, ports: dict[int, int], peers: dict[int, int]
) -> Path:
    tables = agent_tables(
        folder,
        drone,
        swarm_id,
        shards=2,
        port=ports[drone],
        extra={
            "discovery": {
                "kind": "static",
                "peers": [{"id": i, "host": LOOPBACK, "port": p} for i, p in peers.items()],
            }
        },
    )
    return write_config(folder, drone, tables)


def first_line_after(process: AgentProcess, count: int, state: str) -> dict[str, Any] | None:
    return next((line for line in process.lines()[count:] if line["state"] == state), None)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_frames_captured_before_a_restart_are_all_refused_after_it(tmp_path: Path) -> None:
    swarm_id = unique_swarm_id()
    ports = {0: free_port(), 1: free_port()}
    with Sniffer() as sniffer:
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
                    and whole_frames(sniffer.captured()) >= 8
                ),
                90,
                "drone 1 to accept frames of drone 0, and the sniffer to capture them",
            )
            sender.signal(signal.SIGTERM)
            assert sender.wait(30) == 0
            target.signal(signal.SIGTERM)
            assert target.wait(30) == 0
            captured = sniffer.captured()
            frames = whole_frames(captured)
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
                f"the {frames} replayed frames to be counted",
            )
            # Drone 0 is gone: anything accepted now could only be a replay.
            assert last["frames_accepted"] == 0
            assert last["frames_replayed"] == frames
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
