"""The field agent: real processes, real sockets, zeroconf and mosquitto on loopback.

The end-to-end tests run whole ``swarmfl agent`` processes in real time and wait on what their
status logs say, with timeouts. In-process tests drive :class:`~swarmfl.field.FieldAgent`
directly where a process would only add start-up time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _field_helpers import (
    SECRET,
    AgentProcess,
    Mosquitto,
    agent_tables,
    agents,
    free_port,
    require_mosquitto,
    static_pair,
    unique_swarm_id,
    wait_until,
    write_config,
)

from swarmfl.config.drone_file import load_drone_config
from swarmfl.core.replay import epoch_of
from swarmfl.core.wire import Frame, FrameKind, derive_swarm_key, encode_frame
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent
from swarmfl.field.checkpoint import CheckpointStore
from swarmfl.radio.fragment import Fragmenter

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)


async def eventually(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` on the event loop until truthy; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def running(agents_: list[FieldAgent], body: Callable[[], Awaitable[None]]) -> None:
    tasks = [asyncio.create_task(agent.run()) for agent in agents_]
    try:
        await body()
    finally:
        for agent in agents_:
            agent.request_stop()
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)


def forged_datagrams(swarm_id: int, signature: bytes, size: int) -> dict[str, list[bytes]]:
    """Whole, well-fragmented frames that must not be accepted, and raw garbage."""
    fragmenter = Fragmenter(77, 1472, first_frame_id=1000)

    def frame(swarm: int, sender: int, seq: int) -> Frame:
        return Frame(
            kind=FrameKind.KEY,
            swarm_id=swarm,
            sender=sender,
            signature=signature,
            seq=seq,
            counter=seq,
            layers=(0,),
            samples=1,
            codec=0,
            block_size=128,
            payload=bytes(size),
        )

    wrong_key = derive_swarm_key("not-the-swarm-secret", swarm_id)
    other_key = derive_swarm_key(SECRET, swarm_id + 1)
    datagrams: dict[str, list[bytes]] = {"garbage": [], "wrong_key": [], "other_swarm": []}
    datagrams["garbage"] = [b"", b"\x00" * 3, b"SF\x01garbage", os.urandom(700), b"SF" * 30]
    for seq in range(5):
        # Claims to be drone 1, with the right swarm id but a key that is not the swarm's.
        datagrams["wrong_key"] += fragmenter.split(
            encode_frame(frame(swarm_id, 1, 10**15 + seq), wrong_key)
        )
        # A genuine frame of another swarm (its own key): foreign here.
        datagrams["other_swarm"] += fragmenter.split(
            encode_frame(frame(swarm_id + 1, 5, seq), other_key)
        )
    return datagrams


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_bad_datagrams_and_frames_are_counted_and_dropped_while_the_agent_learns(
    tmp_path: Path, secret_env: None
) -> None:
    swarm_id = unique_swarm_id()
    paths = static_pair(tmp_path, swarm_id)
    drones = [FieldAgent(load_drone_config(p)) for p in paths]
    target = drones[0]

    async def body() -> None:
        await eventually(lambda: target.node.stats.frames_accepted >= 3, 90, "frames from 1")
        before = target.status()
        bad = forged_datagrams(swarm_id, target.signature, size=40)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for kind in ("garbage", "wrong_key", "other_swarm"):
                for datagram in bad[kind]:
                    attacker.sendto(datagram, (LOOPBACK, target.status()["port"]))
        await eventually(
            lambda: (
                target.status()["frames_forged"] >= 10
                and target.status()["datagrams_malformed"] >= len(bad["garbage"])
            ),
            60,
            "the bad frames to be counted",
        )
        counter_at_attack = target.node.counter
        accepted_at_attack = target.node.stats.frames_accepted
        await eventually(
            lambda: (
                target.node.counter >= counter_at_attack + 5
                and target.node.stats.frames_accepted >= accepted_at_attack + 5
            ),
            90,
            "learning and gossip to go on",
        )
        after = target.status()
        # Refused by their swarm tag in the radio: they never reach the node.
        assert after["frames_forged"] - before["frames_forged"] == 10
        assert after["frames_rejected"] == before["frames_rejected"]
        assert after["datagrams_malformed"] - before["datagrams_malformed"] == 5
        assert after["frames_replayed"] == 0
        assert target.accuracy is not None and target.accuracy > 0.8
        assert set(after["peers_heard"]) == {"1"}

    await running(drones, body)
    lines = [json.loads(line) for line in (tmp_path / "status-0.jsonl").read_text().splitlines()]
    assert lines[0]["state"] == "started"
    assert lines[-1]["state"] == "stopped"


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_a_stopped_agent_resumes_its_model_counter_and_streams(
    tmp_path: Path, secret_env: None
) -> None:
    swarm_id = unique_swarm_id()
    paths = static_pair(tmp_path, swarm_id)
    first = [FieldAgent(load_drone_config(p)) for p in paths]

    async def body() -> None:
        await eventually(lambda: first[0].node.counter >= 6, 90, "six rounds")

    await running(first, body)
    saved = first[0].node.export_state()
    params = first[0].learner.flat_parameters().copy()
    assert first[0].checkpoints.store.checkpoint_paths()

    again = FieldAgent(load_drone_config(paths[0]))
    assert again.resumed_from == saved.counter
    assert again.node.counter == saved.counter
    np.testing.assert_array_equal(again.learner.flat_parameters(), params)
    restarted = again.node.export_state()
    # Each life is a new boot epoch: its numbers are above the previous life's, clock or not.
    assert again.node.epoch == epoch_of(saved.next_seq) + 1
    assert restarted.next_seq > saved.next_seq and restarted.control_seq > saved.control_seq
    # What the previous life heard is still refused: its receive windows came back.
    assert dict((r[0], r[1]) for r in restarted.replay) == dict((r[0], r[1]) for r in saved.replay)
    assert saved.replay

    # A life's epoch reaches the disk once it starts (its radio open, before any frame): here,
    # as if this one had flown. A start refused before that leaves nothing behind.
    again.checkpoints.begin_life()
    fresh = FieldAgent(load_drone_config(paths[0]), resume=False)
    assert fresh.resumed_from is None and fresh.node.counter == 0
    assert not np.array_equal(fresh.learner.flat_parameters(), params)
    # Even without a checkpoint, a new start numbers its frames above the earlier runs'.
    assert fresh.node.epoch == again.node.epoch + 1
    assert fresh.node.export_state().next_seq > restarted.next_seq

    # A torn newest checkpoint (power lost mid-write on a disk without atomic rename, or bit rot)
    # is detected by its checksum: the drone resumes from the previous good one.
    newest, previous = first[0].checkpoints.store.checkpoint_paths()[:2]
    newest.write_bytes(newest.read_bytes()[:-100])
    fallback = FieldAgent(load_drone_config(paths[0]))
    assert fallback.resumed_from == int(previous.name[5:17]) < saved.counter

    other = paths[1].read_text().replace("ckpt-1", "ckpt-0")
    paths[1].write_text(other)
    with pytest.raises(ConfigError) as info:
        FieldAgent(load_drone_config(paths[1]))
    assert info.value.key == "checkpoint.dir"
    assert "drone 0" in str(info.value)


# -- whole processes ------------------------------------------------------------------------


def start_swarm(
    folder: Path,
    n: int,
    *,
    radio: str = "udp",
    broker_port: int | None = None,
    fixed_ports: bool = False,
    **extra: Any,
) -> tuple[int, list[AgentProcess]]:
    """``n`` agent processes of a new swarm; each takes any free UDP port (it announces the one
    it got), or with ``fixed_ports`` one chosen now, which it keeps across restarts, as a
    configured field drone does."""
    swarm_id = unique_swarm_id()
    processes = []
    for drone in range(n):
        tables = agent_tables(
            folder,
            drone,
            swarm_id,
            shards=n,
            radio=radio,
            port=free_port() if fixed_ports else 0,
            broker_port=broker_port,
            # Non-IID: alone, a drone reaches ~0.4 on digits; only gossip gets the swarm to 0.85.
            extra={"data": {"partition": "dirichlet", "alpha": 0.1}, **extra},
        )
        processes.append(AgentProcess(folder, drone, write_config(folder, drone, tables)))
    return swarm_id, processes


def mean_accuracy(processes: list[AgentProcess]) -> float | None:
    lasts = [p.last() for p in processes]
    if any(line is None or line.get("accuracy") is None for line in lasts):
        return None
    return float(np.mean([line["accuracy"] for line in lasts if line is not None]))


def swarm_learned(processes: list[AgentProcess], target: float) -> bool:
    accuracy = mean_accuracy(processes)
    heard = [len((p.last() or {}).get("peers_heard", {})) for p in processes]
    return accuracy is not None and accuracy >= target and min(heard) == len(processes) - 1


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    """``swarmfl status`` in its own process, as a person at the ground station runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, SWARMFL_SECRET=SECRET, COLUMNS="80"),
    )
    assert result.returncode == 0, result.stderr
    return result


def swarmfl_status(*args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run_status("--json", *args).stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_agent_processes_find_each_other_by_zeroconf_and_learn_over_udp(
    tmp_path: Path,
) -> None:
    swarm_id, processes = start_swarm(tmp_path, 4)
    with agents(processes):
        for process in processes:
            process.start()
        wait_until(lambda: swarm_learned(processes, 0.85), 240, "mean accuracy 0.85 over UDP")
        for process in processes:
            last = process.last()
            assert last is not None
            assert last["peers_announced"] == sorted({0, 1, 2, 3} - {process.drone})
            assert last["frames_rejected"] == 0
        where = ("--swarm-id", str(swarm_id), "--interface", LOOPBACK, "--wait-s", "30")
        seen = swarmfl_status(*where)
        assert sorted(r["drone"] for r in seen) == [0, 1, 2, 3]
        assert all(r["swarm"] == swarm_id and r["state"] == "running" for r in seen)
        assert all(r["answered"] for r in seen)

        # A crash and a clean stop: both stop answering, only one said goodbye.
        crashed, stopped = processes[3], processes[2]
        crashed.signal(signal.SIGKILL)
        stopped.signal(signal.SIGTERM)
        crashed.wait(60)
        assert stopped.wait(60) == 0

        def both_gone() -> bool:
            # drone 2's mDNS goodbye has reached the others; drone 3's record stays cached
            return all(
                (p.last() or {}).get("peers_announced") == [q for q in (0, 1, 3) if q != p.drone]
                for p in processes[:2]
            )

        wait_until(both_gone, 120, "drone 2's goodbye to reach its peers")
        result = run_status(*where, "--json")
        states = {r["drone"]: r for r in map(json.loads, result.stdout.splitlines())}
        assert sorted(states) == [0, 1, 2, 3]
        assert [d for d, r in states.items() if r["answered"]] == [0, 1]
        assert states[2]["state"] == "stopped" and states[2]["goodbye"] is True
        assert states[3]["state"] == "offline" and states[3]["goodbye"] is False
        assert states[2]["last_heard_s"] is not None and states[3]["last_heard_s"] is not None
        assert "2 of 4 drones answered; missing: 2 (stopped), 3 (offline)" in result.stderr
        table = run_status(*where).stdout  # piped, COLUMNS=80: the table a person reads
        assert max(len(line) for line in table.splitlines()) <= 80
        for word in ("running", "stopped", "offline", "2 of 4 drones answered"):
            assert word in table
        for process in processes[:2]:
            process.signal(signal.SIGTERM)
        for process in processes:
            if process is not crashed:
                assert process.wait(60) == 0
                last = process.last()
                assert last is not None and last["state"] == "stopped"
                assert list((tmp_path / f"ckpt-{process.drone}").glob("ckpt-*.swfl"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_agent_killed_with_sigkill_resumes_from_its_checkpoint_and_rejoins(
    tmp_path: Path,
) -> None:
    _, processes = start_swarm(tmp_path, 3, fixed_ports=True)
    victim = processes[2]
    checkpoints = tmp_path / "ckpt-2"
    with agents(processes):
        for process in processes:
            process.start()

        def learned_and_saved() -> bool:
            last = victim.last()
            return (
                last is not None
                and last["accuracy"] is not None
                and last["accuracy"] >= 0.6
                and last["counter"] >= 6
                and len(list(checkpoints.glob("ckpt-*.swfl"))) >= 2
            )

        wait_until(learned_and_saved, 240, "drone 2 to learn and checkpoint")
        victim.signal(signal.SIGKILL)
        victim.wait(30)
        # What the kill left on disk (how many rounds it lags the last status line depends on the
        # machine's speed: a save may be skipped while the previous one is still being written).
        saved = CheckpointStore(checkpoints).load_latest()
        assert saved is not None and saved.counter >= 3
        lines_before = len(victim.lines())
        restarted_at = time.monotonic()  # the clock the agents' "mono" field is read from
        victim.start()
        resumed = wait_until(
            lambda: next((line for line in victim.lines()[lines_before:]), None),
            120,
            "the restarted drone's first status line",
        )
        assert resumed["state"] == "resumed"
        # The update counter continues from the newest checkpoint ...
        assert resumed["resumed_from"] == saved.counter
        assert resumed["counter"] == resumed["resumed_from"]
        # ... and the model is the checkpoint's, not a fresh one: it scores what the drone scored
        # when it wrote that checkpoint.
        assert resumed["accuracy"] == pytest.approx(saved.meta["accuracy"], abs=1e-6)

        def rejoined() -> bool:
            # The others merge its new frames (refused as replays, they would go stale) ...
            others = [p.last() or {} for p in processes[:2]]
            hears_victim = all(
                "2" in o.get("peers_heard", {})
                and o["mono"] - o["peers_heard"]["2"] > restarted_at  # heard since the restart
                and o.get("frames_replayed") == 0
                for o in others
            )
            # ... and it hears them.
            now = victim.last() or {}
            return hears_victim and len(now.get("peers_heard", {})) == 2

        wait_until(rejoined, 120, "drone 2 to rejoin")
        after = victim.last()
        assert after is not None and after["counter"] > resumed["counter"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_agent_processes_learn_through_mosquitto_and_a_lost_drone_is_seen_gone_and_back(
    tmp_path: Path,
) -> None:
    require_mosquitto()
    broker = Mosquitto(tmp_path).start()
    try:
        swarm_id, processes = start_swarm(tmp_path, 4, radio="mqtt", broker_port=broker.port)
        with agents(processes):
            for process in processes:
                process.start()
            wait_until(lambda: swarm_learned(processes, 0.85), 240, "mean accuracy 0.85 over MQTT")
            for process in processes:
                last = process.last()
                assert last is not None and last["broker"] == "connected"
                assert last["peers_announced"] == sorted({0, 1, 2, 3} - {process.drone})
            url = f"mqtt://127.0.0.1:{broker.port}"
            seen = swarmfl_status("--broker", url, "--swarm-id", str(swarm_id), "--wait-s", "30")
            assert sorted(r["drone"] for r in seen) == [0, 1, 2, 3]

            lost = processes[3]
            lines_before = len(lost.lines())
            lost.signal(signal.SIGKILL)  # its TCP connection drops without a goodbye
            lost.wait(30)

            def everyone_sees(expected: list[int]) -> bool:
                return all(
                    (p.last() or {}).get("peers_announced") == sorted(set(expected) - {p.drone})
                    for p in processes[:3]
                )

            wait_until(lambda: everyone_sees([0, 1, 2]), 60, "the last will to report drone 3")
            seen = swarmfl_status("--broker", url, "--swarm-id", str(swarm_id), "--wait-s", "30")
            assert {r["drone"]: r["state"] for r in seen}[3] == "offline"
            assert [r["drone"] for r in seen if not r["answered"]] == [3]
            lost.start()
            wait_until(
                lambda: len(lost.lines()) > lines_before and everyone_sees([0, 1, 2, 3]),
                120,
                "drone 3 to be seen again",
            )
            # A clean stop says goodbye: its last telemetry says "stopped", then it goes offline.
            processes[2].signal(signal.SIGTERM)
            assert processes[2].wait(60) == 0
            wait_until(lambda: everyone_sees([0, 1, 3]), 60, "drone 2's goodbye")
            seen = swarmfl_status("--broker", url, "--swarm-id", str(swarm_id), "--wait-s", "30")
            by_drone = {r["drone"]: r for r in seen}
            assert by_drone[2]["state"] == "stopped" and by_drone[2]["goodbye"] is True
            assert by_drone[3]["answered"] is True and by_drone[3]["state"] == "running"
    finally:
        broker.stop()
