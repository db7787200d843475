"""Per-drone identity: rosters signed by the authority, drone signatures, revocation, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmfl.core.identity import (
    DroneIdentity,
    DroneSigner,
    Roster,
    RosterError,
    RosterVerifier,
    decode_roster,
    encode_roster,
    load_private_key,
    public_key_bytes,
)
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.wire import (
    Frame,
    FrameKind,
    decode_frame,
    derive_swarm_key,
    encode_frame,
    nack_payload,
)
from swarmfl.errors import ConfigError, FrameDecodeError

AUTHORITY = Ed25519PrivateKey.generate()


def test_a_roster_round_trips_and_only_the_authority_can_sign_one() -> None:
    drone = Ed25519PrivateKey.generate()
    roster = Roster(5, 1).with_drone(3, public_key_bytes(drone))
    data = encode_roster(roster, AUTHORITY)
    assert decode_roster(data, AUTHORITY.public_key(), swarm_id=5) == roster
    with pytest.raises(RosterError, match="not signed"):
        decode_roster(encode_roster(roster, Ed25519PrivateKey.generate()), AUTHORITY.public_key())
    # Any edit breaks the signature: a forged key for drone 3, or a higher version.
    document = json.loads(data)
    document["drones"]["3"] = public_key_bytes(Ed25519PrivateKey.generate()).hex()
    with pytest.raises(RosterError, match="not signed"):
        decode_roster(json.dumps(document).encode(), AUTHORITY.public_key())
    with pytest.raises(RosterError, match="swarm 5, not 6"):
        decode_roster(data, AUTHORITY.public_key(), swarm_id=6)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[]",
        b"{}",
        b"[" * 100_000,
        b'{"format": "swarmfl-roster-1"}',
        b"x" * 5_000_000,
        b'{"format":"swarmfl-roster-1","signature":"zz","drones":{},"revoked":[],"swarm":1,"version":1}',
        b'{"format":"swarmfl-roster-1","signature":"00","drones":{"-1":"00"},"revoked":[],"swarm":1,"version":1}',
        b'{"format":"swarmfl-roster-1","signature":"00","drones":[],"revoked":{},"swarm":1,"version":1}',
    ],
)
def test_a_hostile_roster_raises_only_roster_error(data: bytes) -> None:
    with pytest.raises(RosterError):
        decode_roster(data, AUTHORITY.public_key())


def test_signatures_check_against_the_roster_and_a_newer_roster_revokes() -> None:
    keys = {d: Ed25519PrivateKey.generate() for d in (1, 2)}
    roster = Roster(5, 1)
    for drone, key in keys.items():
        roster = roster.with_drone(drone, public_key_bytes(key))
    verifier = RosterVerifier(roster)
    one, two = DroneSigner(1, keys[1]), DroneSigner(2, keys[2])
    frame = b"a frame of drone 1"
    assert verifier.verify(1, frame, one.sign(frame))
    # A captured drone 2 cannot speak for drone 1, nor can a tampered frame pass.
    assert not verifier.verify(1, frame, two.sign(frame))
    assert not verifier.verify(1, frame + b"!", one.sign(frame))
    assert not verifier.verify(9, frame, one.sign(frame))  # not in the roster
    revoked = roster.without_drone(2)
    assert not verifier.update(roster)  # not newer
    assert verifier.update(revoked)
    assert not verifier.verify(2, frame, two.sign(frame))
    assert verifier.verify(1, frame, one.sign(frame))
    assert not verifier.update(Roster(5, 1))  # an older version
    with pytest.raises(ConfigError, match="revoked"):
        revoked.with_drone(2, public_key_bytes(keys[2]))


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_keys_command_creates_issues_revokes_and_shows(tmp_path: Path) -> None:
    folder = tmp_path / "authority"
    assert keys_cli("init", "--dir", str(folder), "--swarm-id", "7").returncode == 0
    for drone in (1, 2):
        out = keys_cli(
            "issue",
            "--dir",
            str(folder),
            "--drone",
            str(drone),
            "--out",
            str(tmp_path / f"drone{drone}.key"),
        )
        assert out.returncode == 0, out.stderr
    assert keys_cli("revoke", "--dir", str(folder), "--drone", "1").returncode == 0
    shown = keys_cli("show", "--dir", str(folder))
    assert shown.returncode == 0 and "roster version 4" in shown.stdout
    assert "1  revoked" in shown.stdout
    assert (tmp_path / "drone1.key").stat().st_mode & 0o077 == 0
    assert (folder / "authority.key").stat().st_mode & 0o077 == 0
    authority = bytes.fromhex((folder / "authority.pub").read_text().strip())
    roster = decode_roster((folder / "roster.json").read_bytes(), authority, swarm_id=7)
    drone2 = load_private_key((tmp_path / "drone2.key").read_bytes(), source="drone2.key")
    assert roster.drones == {2: public_key_bytes(drone2)} and roster.revoked == {1}
    # Mistakes are one line and exit code 2.
    again = keys_cli("init", "--dir", str(folder), "--swarm-id", "7")
    clobber = keys_cli(
        "issue", "--dir", str(folder), "--drone", "3", "--out", str(tmp_path / "drone2.key")
    )
    (folder / "roster.json").write_text("{}")
    tampered = keys_cli("show", "--dir", str(folder))
    for result in (again, clobber, tampered):
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "roster" in tampered.stderr


def test_the_keys_api_issues_many_drones_in_one_roster_version(tmp_path: Path) -> None:
    from swarmfl.errors import ConfigError
    from swarmfl.field.keys import init_authority, issue_drone_keys, revoke_drone

    folder = tmp_path / "authority"
    public = bytes.fromhex(init_authority(folder, 7))
    outs = {d: tmp_path / f"drone{d}.key" for d in (0, 1, 2)}
    assert issue_drone_keys(folder, outs) == 2  # one version newer for the three
    roster = decode_roster((folder / "roster.json").read_bytes(), public, swarm_id=7)
    for drone, out in outs.items():
        key = load_private_key(out.read_bytes(), source=str(out))
        assert roster.drones[drone] == public_key_bytes(key)
        assert out.stat().st_mode & 0o077 == 0
    assert revoke_drone(folder, 1) == 3
    with pytest.raises(ConfigError, match="revoked"):
        issue_drone_keys(folder, {1: tmp_path / "again.key"})
    with pytest.raises(ConfigError, match="never overwritten"):
        issue_drone_keys(folder, {3: outs[0]})
    assert not (tmp_path / "again.key").exists()  # nothing written by a refused issue
    roster = decode_roster((folder / "roster.json").read_bytes(), public, swarm_id=7)
    assert roster.version == 3 and sorted(roster.drones) == [0, 2] and roster.revoked == {1}


# -- frames signed per drone, checked against the roster, rosters spreading (sans-IO) ----------

SWARM = 5
SECRET_KEY = derive_swarm_key("identity test swarm", SWARM)
SIG = b"model-01"
OFFSETS = (0, 40, 50)


class Swarm:
    """An authority, drone keys and the rosters it signed along the way."""

    def __init__(self, drones: tuple[int, ...]) -> None:
        self.keys = {d: Ed25519PrivateKey.generate() for d in drones}
        self.roster = Roster(SWARM, 1)
        for drone, key in self.keys.items():
            self.roster = self.roster.with_drone(drone, public_key_bytes(key))

    def signed(self) -> bytes:
        return encode_roster(self.roster, AUTHORITY)

    def node(self, drone: int, roster: bytes | None = None) -> GossipNode:
        identity = DroneIdentity(
            DroneSigner(drone, self.keys[drone]),
            public_key_bytes(AUTHORITY),
            roster or self.signed(),
            swarm_id=SWARM,
        )
        return GossipNode(
            NodeConfig(
                drone_id=drone,
                swarm_id=SWARM,
                signature=SIG,
                key=SECRET_KEY,
                layer_offsets=OFFSETS,
                trained_layers=(0, 1),
                codec="int8",
                keyframe_interval=3,
                identity=identity,
            )
        )


def frame_of(sender: int, seq: int = 1) -> Frame:
    return Frame(FrameKind.HELLO, SWARM, sender, SIG, seq, 0, (), 0, 0, 128, nack_payload(2))


class Impostor:
    """Drone 2's key, claiming to be drone 1 (a captured drone speaking for another)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.drone_id = 1
        self._key = key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def test_frames_are_signed_by_their_sender_and_checked_against_the_roster() -> None:
    swarm = Swarm((1, 2))
    senders = RosterVerifier(swarm.roster)
    signed = encode_frame(frame_of(1), SECRET_KEY, DroneSigner(1, swarm.keys[1]))

    def decode(data: bytes) -> Frame:
        return decode_frame(data, SECRET_KEY, swarm_id=SWARM, signature=SIG, senders=senders)

    assert decode(signed).sender == 1
    # The swarm key alone no longer speaks for anyone; a captured drone 2 cannot be drone 1.
    with pytest.raises(FrameDecodeError, match="unsigned"):
        decode(encode_frame(frame_of(1), SECRET_KEY))
    with pytest.raises(FrameDecodeError, match="bad signature"):
        decode(encode_frame(frame_of(1), SECRET_KEY, Impostor(swarm.keys[2])))
    with pytest.raises(ConfigError, match="cannot sign"):
        encode_frame(frame_of(1), SECRET_KEY, DroneSigner(2, swarm.keys[2]))
    # Without the swarm key, nothing is even checked against the roster.
    with pytest.raises(FrameDecodeError, match="bad tag"):
        decode_frame(
            signed,
            derive_swarm_key("x" * 16, SWARM),
            swarm_id=SWARM,
            signature=SIG,
            senders=senders,
        )
    # Revoked: a newer roster without drone 1.
    senders.update(swarm.roster.without_drone(1))
    with pytest.raises(FrameDecodeError, match="bad signature"):
        decode(encode_frame(frame_of(1, 2), SECRET_KEY, DroneSigner(1, swarm.keys[1])))


def test_a_newer_roster_spreads_with_keyframes_and_a_revoked_drone_is_then_refused() -> None:
    swarm = Swarm((1, 2, 3))
    old_roster = swarm.signed()
    informed, uninformed, captured = swarm.node(1), swarm.node(2, old_roster), swarm.node(3)
    swarm.roster = swarm.roster.without_drone(3)
    informed.config.identity.offer(swarm.signed())  # type: ignore[union-attr]
    x = np.linspace(-1, 1, OFFSETS[-1]).astype(np.float32)

    def deliver(frames: list[bytes], to: GossipNode, now: float) -> None:
        for frame in frames:
            to.receive(frame, now)

    deliver(captured.publish(x, 5, 0.0), uninformed, 0.0)
    assert uninformed.stats.frames_accepted == 1  # drone 2 still has the roster listing 3
    deliver(captured.publish(x, 5, 1.0), informed, 1.0)
    assert informed.stats.frames_accepted == 0 and informed.stats.frames_rejected == 1
    # Drone 1's keyframe carries its roster: drone 2 adopts it and refuses drone 3 from then on.
    deliver(informed.publish(x, 5, 2.0), uninformed, 2.0)
    assert uninformed.stats.rosters_adopted == 1
    assert uninformed.config.identity.version == swarm.roster.version  # type: ignore[union-attr]
    rejected = uninformed.stats.frames_rejected
    deliver(captured.publish(x, 5, 3.0), uninformed, 3.0)
    assert uninformed.stats.frames_rejected == rejected + 1
    # The captured drone cannot bring the old roster back (an older version is ignored), nor
    # forge one (not signed by the authority).
    deliver(captured.publish(x, 5, 4.0)[:1], uninformed, 4.0)
    assert uninformed.config.identity.version == swarm.roster.version  # type: ignore[union-attr]
    forged = Roster(SWARM, 99, {3: public_key_bytes(swarm.keys[3])})
    bogus = encode_roster(forged, Ed25519PrivateKey.generate())
    hello = Frame(FrameKind.ROSTER, SWARM, 3, SIG, 10**6, 0, (), 0, 0, 128, bogus)
    uninformed.receive(encode_frame(hello, SECRET_KEY, DroneSigner(3, swarm.keys[3])), 5.0)
    assert uninformed.stats.rosters_refused == 1
    assert uninformed.config.identity.version == swarm.roster.version  # type: ignore[union-attr]
