"""Per-drone identity in the field: three agents on real UDP sockets, one of them revoked.

Drone 0 holds the newest roster (drone 2 revoked); drones 1 and 2 start with the one before
(listing all three). Drone 0 refuses drone 2 from the start; drone 1 takes drone 0's roster
from its keyframes and refuses drone 2 from then on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _field_helpers import SECRET, agent_tables, free_port, unique_swarm_id, write_config
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
