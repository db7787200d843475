"""Per-drone identity: rosters signed by the authority, drone signatures, revocation, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmfl.core.identity import (
    DroneSigner,
    Roster,
    RosterError,
    RosterVerifier,
    decode_roster,
    encode_roster,
    load_private_key,
    public_key_bytes,
)
from swarmfl.errors import ConfigError

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
