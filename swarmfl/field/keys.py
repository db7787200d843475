"""``swarmfl keys``: the swarm authority's folder, drone keys, revocations and the roster.

The folder (``--dir``, kept off the drones) holds ``authority.key`` (the authority's Ed25519
private key, mode 0600), ``authority.pub`` (its 32-byte public key, hex: what every drone is
configured with) and ``roster.json`` (the signed roster, see :mod:`swarmfl.core.identity`).
``issue`` writes a drone's private key to ``--out`` (mode 0600) and a roster one version newer;
``revoke`` writes a roster one version newer without the drone; ``show`` verifies the roster
and prints it. Every file is written atomically (temporary file, fsync, rename).
:func:`init_authority`, :func:`issue_drone_keys` and :func:`revoke_drone` are the same actions
as a Python API (provisioning scripts, tests).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmfl.errors import ConfigError
from swarmfl.field.atomic import write_atomically

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarmfl.core.identity import Roster

__all__ = ["add_keys_parser", "init_authority", "issue_drone_keys", "revoke_drone", "run_keys"]

_MAX_KEY_FILE_BYTES = 64 * 1024


def add_keys_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``swarmfl keys {init,issue,revoke,show}`` to the CLI's subcommands."""
    keys = commands.add_parser("keys", help="swarm authority, drone keys, roster")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    init = actions.add_parser("init", help="create the authority and an empty roster")
    init.add_argument("--swarm-id", type=int, required=True)
    issue = actions.add_parser("issue", help="create a drone's key and list it in the roster")
    issue.add_argument("--drone", type=int, required=True)
    issue.add_argument("--out", type=Path, required=True, help="the drone's private key file")
    revoke = actions.add_parser("revoke", help="revoke a drone (a newer roster without it)")
    revoke.add_argument("--drone", type=int, required=True)
    actions.add_parser("show", help="verify and print the roster")
    for parser in (init, issue, revoke, actions.choices["show"]):
        parser.add_argument("--dir", type=Path, required=True, help="the authority's folder")
        parser.set_defaults(handler=run_keys)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    try:
        write_atomically(path, data, mode=mode)
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror or exc}", source=str(path)) from None


def _read(path: Path, limit: int) -> bytes:
    try:
        if not path.is_file():
            raise ConfigError("missing or not a regular file", source=str(path))
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    if len(data) > limit:
        raise ConfigError(f"larger than {limit} bytes", source=str(path))
    return data


def _authority(folder: Path) -> Ed25519PrivateKey:
    from swarmfl.core.identity import load_private_key

    path = folder / "authority.key"
    return load_private_key(_read(path, _MAX_KEY_FILE_BYTES), source=str(path))


def _roster(folder: Path, authority: Ed25519PrivateKey) -> Roster:
    from swarmfl.core.identity import MAX_ROSTER_BYTES, RosterError, decode_roster

    path = folder / "roster.json"
    try:
        return decode_roster(_read(path, MAX_ROSTER_BYTES), authority.public_key())
    except RosterError as exc:
        raise ConfigError(str(exc), source=str(path)) from None


def _check_drone(value: int) -> int:
    if not 0 <= value < 2**32:
        raise ConfigError(f"must be in [0, 2**32), got {value}", key="--drone")
    return value


def init_authority(folder: Path, swarm_id: int) -> str:
    """Create swarm ``swarm_id``'s authority in ``folder``; return its public key (64 hex digits).

    Writes ``authority.key`` (0600), ``authority.pub`` and an empty ``roster.json`` (version 1).
    Raises :class:`ConfigError` for a swarm id out of range, a folder that already holds an
    authority, or one that cannot be created or written.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarmfl.core.identity import Roster, encode_roster, private_key_bytes, public_key_bytes

    if not 0 <= swarm_id < 2**32:
        raise ConfigError(f"must be in [0, 2**32), got {swarm_id}", key="--swarm-id")
    if (folder / "authority.key").exists():
        raise ConfigError("already holds an authority.key", source=str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create: {exc.strerror}", source=str(folder)) from None
    authority = Ed25519PrivateKey.generate()
    _write_atomically(folder / "authority.key", private_key_bytes(authority), 0o600)
    public_hex = public_key_bytes(authority).hex()
    _write_atomically(folder / "authority.pub", (public_hex + "\n").encode(), 0o644)
    _write_atomically(folder / "roster.json", encode_roster(Roster(swarm_id, 1), authority), 0o644)
    return public_hex


def issue_drone_keys(folder: Path, outs: dict[int, Path]) -> int:
    """Create a key for each drone of ``outs`` (drone id -> private key file, written 0600) and
    list them all in one roster, one version newer; return that version.

    Raises :class:`ConfigError` for a drone id out of range or revoked, a key file that already
    exists (a drone key is never overwritten), or a file that cannot be read or written.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarmfl.core.identity import Roster, encode_roster, private_key_bytes, public_key_bytes

    authority = _authority(folder)
    roster = _roster(folder, authority)
    keys = {}
    for drone, out in outs.items():
        _check_drone(drone)
        if out.exists():
            raise ConfigError("already exists (a drone key is never overwritten)", key="--out")
        keys[drone] = Ed25519PrivateKey.generate()
    newer = roster
    for drone, key in keys.items():
        newer = newer.with_drone(drone, public_key_bytes(key))  # refuses a revoked drone
    if keys:  # one version newer, however many drones were added
        newer = Roster(roster.swarm_id, roster.version + 1, newer.drones, newer.revoked)
    for drone, key in keys.items():
        _write_atomically(outs[drone], private_key_bytes(key), 0o600)
    _write_atomically(folder / "roster.json", encode_roster(newer, authority), 0o644)
    return newer.version


def revoke_drone(folder: Path, drone: int) -> int:
    """Write a roster one version newer without ``drone`` (revoked); return that version.

    Raises :class:`ConfigError` for a drone id out of range or a file that cannot be read or
    written.
    """
    from swarmfl.core.identity import encode_roster

    authority = _authority(folder)
    newer = _roster(folder, authority).without_drone(_check_drone(drone))
    _write_atomically(folder / "roster.json", encode_roster(newer, authority), 0o644)
    return newer.version


def run_keys(args: argparse.Namespace) -> int:
    """Run one ``swarmfl keys`` action; return the exit code. Raises :class:`ConfigError`."""
    folder: Path = args.dir
    action = args.keys_action
    if action == "init":
        public_hex = init_authority(folder, args.swarm_id)
        print(f"authority of swarm {args.swarm_id}: public key {public_hex}")
        return 0
    if action == "issue":
        version = issue_drone_keys(folder, {args.drone: args.out})
        print(f"drone {args.drone}: key {args.out}, roster version {version}")
        return 0
    if action == "revoke":
        version = revoke_drone(folder, args.drone)
        print(f"drone {args.drone} revoked: roster version {version}")
        return 0
    roster = _roster(folder, _authority(folder))
    print(f"swarm {roster.swarm_id}, roster version {roster.version} (signature verified)")
    for drone, public in sorted(roster.drones.items()):
        print(f"  drone {drone:>10}  {public.hex()}")
    for drone in sorted(roster.revoked):
        print(f"  drone {drone:>10}  revoked")
    return 0
