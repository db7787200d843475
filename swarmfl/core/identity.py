"""Per-drone identity: Ed25519 drone keys and the authority-signed roster that names them.

A swarm authority (an Ed25519 key kept off the drones) signs a *roster*: the swarm id, a version
number, each drone's public key, and the drones revoked. A drone signs what it sends with its
own key; a receiver checks the signature against the roster entry of the claimed sender, so a
captured drone can speak only for itself, and once revoked, for no one (to every drone holding
the newer roster). A roster with a higher version supersedes an older one; one that is not
signed by the authority, or is of another swarm, is refused.

The roster's wire form is canonical JSON (sorted keys, no spaces) with the authority's signature
over every other field, hex-encoded; :func:`decode_roster` is total (only :class:`RosterError`
escapes) and caps the size before parsing. Signatures come from ``cryptography`` (OpenSSL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from swarmfl.errors import ConfigError, PeerError

__all__ = [
    "MAX_ROSTER_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "DroneIdentity",
    "DroneSigner",
    "Roster",
    "RosterError",
    "RosterVerifier",
    "decode_roster",
    "encode_roster",
    "load_private_key",
    "private_key_bytes",
    "public_key_bytes",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_ROSTER_BYTES = 4 * 1024 * 1024
_MAX_ID = 2**32 - 1
_FORMAT = "swarmfl-roster-1"


class RosterError(PeerError):
    """A roster that is malformed, of another swarm, or not signed by the authority."""


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key (of a private key's public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The PEM (PKCS#8, unencrypted) form of a private key, for a file only its owner reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes, *, source: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM bytes. Raises :class:`ConfigError` naming ``source``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM private key ({exc})", source=source) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("not an Ed25519 private key", source=source)
    return key


def _check_id(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise ConfigError(f"must be an int in [0, {_MAX_ID}], got {value!r}", key=key)
    return value


@dataclass(frozen=True)
class Roster:
    """Who is who in swarm ``swarm_id``, as of ``version``: drone id -> 32-byte public key, and
    the revoked drone ids (a revoked drone is never in ``drones``).

    Raises :class:`ConfigError` naming the field for out-of-range values.
    """

    swarm_id: int
    version: int
    drones: dict[int, bytes] = field(default_factory=dict)
    revoked: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        _check_id(self.swarm_id, "swarm_id")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ConfigError(f"must be an int, got {self.version!r}", key="version")
        if not 0 <= self.version < 2**63:
            raise ConfigError(f"must be in [0, 2**63), got {self.version}", key="version")
        for drone, key in self.drones.items():
            _check_id(drone, "drones")
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
                raise ConfigError(f"drone {drone}: a public key is 32 bytes", key="drones")
        for drone in self.revoked:
            _check_id(drone, "revoked")
        both = set(self.drones) & set(self.revoked)
        if both:
            raise ConfigError(f"drones {sorted(both)} are both listed and revoked", key="revoked")

    def with_drone(self, drone_id: int, public_key: bytes) -> Roster:
        """The next version, with ``drone_id``'s key set. Raises ConfigError if it is revoked."""
        if drone_id in self.revoked:
            raise ConfigError(f"drone {drone_id} is revoked; issue another id", key="drone")
        return Roster(
            self.swarm_id, self.version + 1, {**self.drones, drone_id: public_key}, self.revoked
        )

    def without_drone(self, drone_id: int) -> Roster:
        """The next version, with ``drone_id`` revoked (its key removed)."""
        drones = {d: k for d, k in self.drones.items() if d != drone_id}
        return Roster(self.swarm_id, self.version + 1, drones, self.revoked | {drone_id})

    def body(self) -> bytes:
        """The canonical bytes the authority signs."""
        document = {
            "format": _FORMAT,
            "swarm": self.swarm_id,
            "version": self.version,
            "drones": {str(d): k.hex() for d, k in sorted(self.drones.items())},
            "revoked": sorted(self.revoked),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def encode_roster(roster: Roster, authority: Ed25519PrivateKey) -> bytes:
    """The signed wire/file form of ``roster`` (JSON with a ``signature`` field)."""
    body = roster.body()
    document = json.loads(body)
    document["signature"] = authority.sign(body).hex()
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_roster(
    data: bytes, authority: Ed25519PublicKey | bytes, *, swarm_id: int | None = None
) -> Roster:
    """The roster in ``data`` if the authority signed it (and it is of ``swarm_id``).

    Raises :class:`RosterError` (and nothing else) for anything else: too large, not JSON,
    fields missing or out of range, a bad signature, another swarm.
    """
    try:
        public = (
            Ed25519PublicKey.from_public_bytes(authority)
            if isinstance(authority, bytes)
            else authority
        )
    except ValueError as exc:
        raise ConfigError("the authority's public key is 32 bytes", key="authority") from exc
    if not isinstance(data, bytes) or len(data) > MAX_ROSTER_BYTES:
        raise RosterError("roster too large or not bytes")
    try:
        document = json.loads(data.decode("utf-8"))
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise RosterError("not a swarmfl roster")
        signature = bytes.fromhex(document.pop("signature"))
        drones = document["drones"]
        revoked = document["revoked"]
        if not isinstance(drones, dict) or not isinstance(revoked, list):
            raise RosterError("malformed roster: drones or revoked")
        roster = Roster(
            swarm_id=document["swarm"],
            version=document["version"],
            drones={_decimal(d): bytes.fromhex(k) for d, k in drones.items()},
            revoked=frozenset(revoked),
        )
    except RosterError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise RosterError(f"malformed roster: {type(exc).__name__}") from None
    try:
        public.verify(signature, roster.body())
    except InvalidSignature:
        raise RosterError("roster not signed by the swarm authority") from None
    if swarm_id is not None and roster.swarm_id != swarm_id:
        raise RosterError(f"roster of swarm {roster.swarm_id}, not {swarm_id}")
    return roster


def _decimal(text: object) -> int:
    if not isinstance(text, str) or not text.isdecimal() or not text.isascii() or len(text) > 10:
        raise ValueError(f"drone id {text!r}")
    return int(text)


class DroneSigner:
    """Signs what drone ``drone_id`` sends with its Ed25519 key (64-byte signatures)."""

    def __init__(self, drone_id: int, key: Ed25519PrivateKey) -> None:
        self.drone_id = _check_id(drone_id, "drone_id")
        self._key = key

    @property
    def public_key(self) -> bytes:
        """The drone's 32-byte public key (what the roster must list)."""
        return public_key_bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)


class RosterVerifier:
    """Checks drones' signatures against the newest roster it was given.

    :meth:`update` takes a newer roster (a higher version, signed by the authority) and ignores
    an older or equal one. :meth:`verify` is True only for a drone listed (so never a revoked
    one) whose signature matches.
    """

    def __init__(self, roster: Roster) -> None:
        self.roster = roster
        self._keys = self._load(roster)

    @staticmethod
    def _load(roster: Roster) -> dict[int, Ed25519PublicKey]:
        return {d: Ed25519PublicKey.from_public_bytes(k) for d, k in roster.drones.items()}

    def update(self, roster: Roster) -> bool:
        """Adopt ``roster`` if it is newer (same swarm); return whether it was adopted."""
        if roster.swarm_id != self.roster.swarm_id or roster.version <= self.roster.version:
            return False
        self._keys = self._load(roster)
        self.roster = roster
        return True

    def verify(self, drone_id: int, message: bytes | memoryview, signature: bytes) -> bool:
        """Whether ``signature`` is ``drone_id``'s (per the roster) over ``message``."""
        key = self._keys.get(drone_id)
        if key is None or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class DroneIdentity:
    """What a drone needs to speak and listen with per-drone keys: its signer, the roster's keys
    (:class:`RosterVerifier`), the authority's public key and the roster as signed bytes (what
    it passes on, so newer rosters spread).

    Raises :class:`RosterError` if ``roster_bytes`` is not a roster of ``swarm_id`` signed by
    ``authority``.
    """

    def __init__(
        self, signer: DroneSigner, authority: bytes, roster_bytes: bytes, *, swarm_id: int
    ) -> None:
        self.signer = signer
        self.authority = authority
        self.swarm_id = swarm_id
        self.roster_bytes = roster_bytes
        self.senders = RosterVerifier(decode_roster(roster_bytes, authority, swarm_id=swarm_id))

    @property
    def version(self) -> int:
        """The version of the roster held."""
        return self.senders.roster.version

    def offer(self, roster_bytes: bytes) -> bool:
        """Adopt the roster in ``roster_bytes`` if it is newer and the authority's; return
        whether it was adopted. Raises :class:`RosterError` if it is not a valid roster."""
        if roster_bytes == self.roster_bytes:
            return False
        roster = decode_roster(roster_bytes, self.authority, swarm_id=self.swarm_id)
        if not self.senders.update(roster):
            return False
        self.roster_bytes = roster_bytes
        return True
