"""Per-drone identity in the field: the default, the opt-out, and a revoked drone.

Per-drone keys are the field default: an agent process without them is refused in one line; one
that opts out (``identity.mode = "swarm-key"``) runs, warns once, and is not heard by drones
that sign. In the revocation test, three agents on real UDP sockets, drone 0 holds the newest
roster (drone 2 revoked); drones 1 and 2 start with the one before (listing all three). Drone 0
refuses drone 2 from the start; drone 1 takes drone 0's roster from its keyframes and refuses
drone 2 from then on.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmfl.config.drone_file import load_drone_config
from swarmfl.core.identity import Roster, encode_roster, private_key_bytes, public_key_bytes
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)


async def eventually(condition: object, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_revoked_drone_is_refused_by_every_drone_the_newer_roster_reaches(
    tmp_path: Path, secret_env: None
) -> None:
    swarm_id = unique_swarm_id()
    authority = Ed25519PrivateKey.generate()
    keys = {d: Ed25519PrivateKey.generate() for d in range(3)}
    roster = Roster(swarm_id, 1)
    for drone, key in keys.items():
        roster = roster.with_drone(drone, public_key_bytes(key))
        (tmp_path / f"drone{drone}.key").write_bytes(private_key_bytes(key))
    (tmp_path / "roster-old.json").write_bytes(encode_roster(roster, authority))
    newer = roster.without_drone(2)
    (tmp_path / "roster-new.json").write_bytes(encode_roster(newer, authority))
    ports = [free_port() for _ in range(3)]
    paths = []
    for drone in range(3):
        identity = {
            "key_file": f"drone{drone}.key",
            "roster_file": "roster-new.json" if drone == 0 else "roster-old.json",
            "authority": public_key_bytes(authority).hex(),
        }
        peers = [{"id": d, "host": LOOPBACK, "port": ports[d]} for d in range(3) if d != drone]
        tables = agent_tables(
            tmp_path,
            drone,
            swarm_id,
            shards=3,
            port=ports[drone],
            extra={"discovery": {"kind": "static", "peers": peers}, "identity": identity},
        )
        paths.append(write_config(tmp_path, drone, tables))
    drones = [FieldAgent(load_drone_config(p)) for p in paths]
    informed, relay, _revoked = drones
    tasks = [asyncio.create_task(d.run()) for d in drones]
    try:
        await eventually(
            lambda: (
                relay.status()["roster_version"] == newer.version
                and relay.status()["rosters_adopted"] >= 1
            ),
            60,
            "drone 1 to adopt drone 0's newer roster",
        )
        rejected = relay.node.stats.frames_rejected
        await eventually(
            lambda: (
                relay.node.stats.frames_rejected >= rejected + 3
                and 2 not in relay.node.known_peers()
                and 0 in relay.node.known_peers()
            ),
            60,
            "drone 1 to refuse drone 2 and go on hearing drone 0",
        )
        assert 2 not in informed.node.known_peers() and 1 in informed.node.known_peers()
        assert informed.node.stats.frames_rejected > 0  # drone 2's frames, from the start
    finally:
        for drone in drones:
            drone.request_stop()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)


def test_a_key_file_the_roster_does_not_list_is_refused_at_start(
    tmp_path: Path, secret_env: None
) -> None:
    authority = Ed25519PrivateKey.generate()
    (tmp_path / "drone0.key").write_bytes(private_key_bytes(Ed25519PrivateKey.generate()))
    (tmp_path / "roster.json").write_bytes(encode_roster(Roster(7, 1), authority))
    identity = {
        "key_file": "drone0.key",
        "roster_file": "roster.json",
        "authority": public_key_bytes(authority).hex(),
    }
    tables = agent_tables(tmp_path, 0, 7, shards=1, extra={"identity": identity})
    with pytest.raises(ConfigError) as info:
        FieldAgent(load_drone_config(write_config(tmp_path, 0, tables)))
    assert info.value.key == "identity.key_file"
    del tables["identity"]["authority"]
    with pytest.raises(ConfigError) as info:
        load_drone_config(write_config(tmp_path, 0, tables))
    assert info.value.key == "identity.authority"


def test_an_agent_process_without_keys_is_refused_in_one_line(tmp_path: Path) -> None:
    tables = agent_tables(tmp_path, 0, unique_swarm_id(), shards=1, extra={"identity": {}})
    config = write_config(tmp_path, 0, tables)
    for check in ([], ["--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(config), *check],
            env={"SWARMFL_SECRET": SECRET, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert result.stdout == ""  # no banner, no "ok" line of --check
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr  # no traceback, no start-up line
        assert lines[0].startswith(f"swarmfl: error: {config}: key 'identity': per-drone keys")
        assert "swarmfl keys issue" in lines[0] and 'identity.mode = "swarm-key"' in lines[0]
    assert not (tmp_path / "ckpt-0").exists() and not (tmp_path / "status-0.jsonl").exists()


def test_an_authority_file_that_holds_no_key_is_one_line(tmp_path: Path, secret_env: None) -> None:
    tables = agent_tables(tmp_path, 0, unique_swarm_id(), shards=1)
    (tmp_path / "not-a-key.pub").write_text("hello\n")
    tables["identity"]["authority_file"] = str(tmp_path / "not-a-key.pub")
    with pytest.raises(ConfigError) as info:
        FieldAgent(load_drone_config(write_config(tmp_path, 0, tables)))
    assert info.value.key == "identity.authority_file"
    assert "64 hex digits" in info.value.problem


@pytest.mark.timeout(240)
def test_drones_with_default_keys_learn_from_each_other_and_not_from_a_swarm_key_drone(
    tmp_path: Path,
) -> None:
    """Drones 0 and 1 take the default (per-drone keys); drone 2 opts out. 0 and 1 accept each
    other's frames, which a signing drone does only when signed by the sender's roster key, and
    refuse drone 2's unsigned ones; drone 2 runs and says once that it is not bound to a drone."""
    swarm_id = unique_swarm_id()
    ports = [free_port() for _ in range(3)]
    processes = []
    for drone in range(3):
        peers = [{"id": d, "host": LOOPBACK, "port": ports[d]} for d in range(3) if d != drone]
        tables = agent_tables(
            tmp_path,
            drone,
            swarm_id,
            shards=3,
            port=ports[drone],
            identity="swarm-key" if drone == 2 else "per-drone",
            extra={"discovery": {"kind": "static", "peers": peers}},
        )
        processes.append(AgentProcess(tmp_path, drone, write_config(tmp_path, drone, tables)))
    signing = processes[:2]
    with agents(processes):
        for process in processes:
            process.start()

        def learning() -> bool:
            lasts = [p.last() or {} for p in signing]
            return all(
                last.get("frames_accepted", 0) >= 6
                and str(1 - p.drone) in last.get("peers_heard", {})
                and last.get("frames_rejected", 0) >= 3  # drone 2's
                and last.get("accuracy") is not None
                for p, last in zip(signing, lasts, strict=True)
            )

        wait_until(learning, 150, "drones 0 and 1 to learn from each other, refusing drone 2")
        for process in signing:
            last = process.last()
            assert last is not None and last["roster_version"] is not None
            assert "2" not in last["peers_heard"]  # unsigned: never heard
            assert "not bound to a drone" not in process.stderr()
        opted_out = processes[2]
        wait_until(lambda: (opted_out.last() or {}).get("rounds", 0) >= 2, 60, "drone 2 runs")
        last = opted_out.last()
        assert last is not None and last["roster_version"] is None
        assert opted_out.stderr().count('identity.mode = "swarm-key": frames are not bound') == 1
