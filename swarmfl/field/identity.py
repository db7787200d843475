"""A field drone's identity from its drone.toml ``[identity]``: its key file and the roster.

Per-drone signatures are the field default: a drone.toml without the ``[identity]`` keys is
refused unless it opts out with ``identity.mode = "swarm-key"`` (frames then carry the shared
swarm key's HMAC alone). :func:`load_identity` reads the drone's Ed25519 private key (PEM, from
``swarmfl keys issue``), the roster file (``roster.json``, signed by the authority) and the
authority's public key, and checks that they fit together: the roster is the authority's and of
this swarm, and lists this drone with this key. Any problem is a
:class:`~swarmfl.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from swarmfl.config.drone_file import DroneConfig
from swarmfl.core.identity import (
    MAX_ROSTER_BYTES,
    DroneIdentity,
    DroneSigner,
    RosterError,
    load_private_key,
)
from swarmfl.errors import ConfigError

__all__ = ["NO_IDENTITY_PROBLEM", "SWARM_KEY_WARNING", "load_identity"]

NO_IDENTITY_PROBLEM = (
    "per-drone keys are the field default and none are set: run `swarmfl keys init` and "
    "`swarmfl keys issue`, then set identity.key_file, identity.roster_file and "
    'identity.authority_file; or set identity.mode = "swarm-key" to fly on the shared swarm key '
    "alone"
)
"""Why an agent without ``[identity]`` keys is refused (the key named is ``identity``)."""

SWARM_KEY_WARNING = (
    'drone %d: identity.mode = "swarm-key": frames are not bound to a drone (anyone holding the '
    "swarm secret can speak for every drone, and no drone can be revoked)"
)
"""The one warning an agent that opted out of per-drone keys logs at start."""

log = logging.getLogger(__name__)

_MAX_KEY_FILE_BYTES = 64 * 1024


def _read(path: Path, limit: int, *, source: str, key: str) -> bytes:
    try:
        if not path.is_file():
            raise ConfigError(f"{path} is missing or not a regular file", source=source, key=key)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", source=source, key=key) from None
    if len(data) > limit:
        raise ConfigError(f"{path} is larger than {limit} bytes", source=source, key=key)
    return data


def _authority_key(text: str | None, path: str | None, *, source: str) -> bytes:
    if text is None:
        assert path is not None  # the model refuses neither
        raw = _read(Path(path), 1024, source=source, key="identity.authority_file")
        text = raw.decode("ascii", errors="replace").strip()
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise ConfigError(
                f"{path} does not hold a public key (64 hex digits, as in the authority.pub "
                "`swarmfl keys init` writes)",
                source=source,
                key="identity.authority_file",
            )
    return bytes.fromhex(text)


def load_identity(config: DroneConfig, *, source: str) -> DroneIdentity | None:
    """The drone's identity, or None with ``identity.mode = "swarm-key"``.

    Raises :class:`ConfigError` naming ``source`` and the key: ``identity`` when per-drone mode
    (the default) has no keys set, ``identity.key_file`` / ``identity.roster_file`` when a file
    cannot be read, is not a key or roster, or does not list this drone with this key.
    """
    section = config.identity
    if section.mode == "swarm-key":
        return None
    if section.key_file is None or section.roster_file is None or not section.keys_given():
        raise ConfigError(NO_IDENTITY_PROBLEM, source=source, key="identity")
    authority = _authority_key(section.authority, section.authority_file, source=source)
    key_path = Path(section.key_file)
    key = load_private_key(
        _read(key_path, _MAX_KEY_FILE_BYTES, source=source, key="identity.key_file"),
        source=str(key_path),
    )
    if key_path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users (chmod 600 it)", key_path)
    drone_id = config.drone.id
    signer = DroneSigner(drone_id, key)
    roster_bytes = _read(
        Path(section.roster_file), MAX_ROSTER_BYTES, source=source, key="identity.roster_file"
    )
    try:
        identity = DroneIdentity(
            signer,
            authority,
            roster_bytes,
            swarm_id=config.swarm.swarm_id,
        )
    except RosterError as exc:
        raise ConfigError(str(exc), source=source, key="identity.roster_file") from None
    if identity.senders.roster.drones.get(drone_id) != signer.public_key:
        raise ConfigError(
            f"the roster does not list drone {drone_id} with this key (revoked, or another "
            "drone's key file?)",
            source=source,
            key="identity.key_file",
        )
    return identity
