"""``drone.toml`` (``swarmfl agent``): one field drone's config, validated into a frozen model.

A drone.toml shares its learning sections with scenarios (:mod:`swarmfl.config.sections`):
``[run]`` (seed and evaluation), ``[data]``, ``[model]``, ``[training]``, ``[gossip]``,
``[merge]``, ``[swarm]`` and the link part of ``[radio]`` mean the same in both, with the same
defaults. It adds what only a real drone has: who it is (``[drone]``), where its swarm secret
comes from, which demo shard it holds, its radio kind and sockets, discovery, checkpoints and
status output. As with scenarios, an unknown key, a wrong type or an out-of-range value is a
:class:`~swarmfl.errors.ConfigError` whose one line names the file, the dotted key and the
problem. Relative paths are relative to the config file's folder. Checkpoints and the status
log the file does not place go to the drone's state directory (:func:`state_directory`).

The swarm secret is never read from the config file in plain text by default: it comes from a
file (``swarm.secret_file``) or an environment variable (``swarm.secret_env``, default
``SWARMFL_SECRET``). A ``swarm.secret`` in the file is refused unless
``swarm.allow_secret_in_file = true`` (for demos only: anyone who can read the file can forge
model updates for the swarm).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from swarmfl.config.loader import (
    KeyedValueError,
    apply_overrides,
    read_text_file,
    read_toml,
    resolve_paths,
    validate,
)
from swarmfl.config.sections import (
    ByteSize,
    DataSection,
    GossipSection,
    LinkSection,
    MergeSection,
    ModelSection,
    Probability,
    RunSection,
    Section,
    SwarmSection,
    TrainingSection,
)
from swarmfl.core.wire import derive_swarm_key
from swarmfl.errors import ConfigError

__all__ = [
    "DEFAULT_SECRET_ENV",
    "DroneConfig",
    "IdentitySection",
    "LoadedDroneConfig",
    "VehicleSection",
    "load_drone_config",
    "mqtt_password",
    "parse_drone_config",
    "state_directory",
    "validate_drone_config",
]

log = logging.getLogger(__name__)

DEFAULT_SECRET_ENV = "SWARMFL_SECRET"
"""The environment variable the swarm secret is read from when the config names no source."""

MAX_SECRET_FILE_BYTES = 64 * 1024
"""The largest secret or password file read."""

U32 = Annotated[int, Field(ge=0, lt=2**32)]
Port = Annotated[int, Field(ge=0, le=65535)]


class DroneSection(Section):
    """Who this drone is: its id, unique in the swarm."""

    id: U32


class FieldSwarmSection(SwarmSection):
    """The swarm this drone belongs to, and where the secret its key derives from comes from.

    One of ``secret_file`` (keep it mode 0600), ``secret_env`` (default ``SWARMFL_SECRET``) or
    ``secret`` (refused unless ``allow_secret_in_file``). A secret has at least 16 characters;
    32 random bytes, hex-encoded, are recommended.
    """

    secret_file: str | None = None
    secret_env: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    allow_secret_in_file: bool = False

    @model_validator(mode="after")
    def _one_secret_source(self) -> FieldSwarmSection:
        given = [k for k in ("secret_file", "secret_env", "secret") if getattr(self, k) is not None]
        if len(given) > 1:
            raise KeyedValueError(
                ("swarm", given[1]), f"give one of secret_file, secret_env, secret (got {given})"
            )
        if self.secret is not None and not self.allow_secret_in_file:
            raise KeyedValueError(
                ("swarm", "secret"),
                "a secret in the config file is readable by anyone who can read the file; use "
                "swarm.secret_file or swarm.secret_env (or set swarm.allow_secret_in_file = "
                "true for a demo)",
            )
        return self


class FieldDataSection(DataSection):
    """The drone's local data: its own files, or one shard of a dataset split among the swarm.

    The dataset is split into ``shards`` parts with the run's seed, exactly as the simulator
    splits it among that many drones, and this drone takes part ``shard``. With one shard (the
    default) the drone holds the whole training split of its files.
    """

    shards: Annotated[int, Field(gt=0, le=100_000)] = 1
    shard: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _shard_in_range(self) -> FieldDataSection:
        if self.shard >= self.shards:
            raise KeyedValueError(
                ("data", "shard"), f"shard {self.shard} of {self.shards} (shards count from 0)"
            )
        return self


class FieldTrainingSection(TrainingSection):
    """Local SGD and its memory budget (as in scenarios), plus the companion computer's compute:
    whether to train at all and on how many threads."""

    enabled: bool = True  # false: gossip and merge only (a relay, or a benchmark)
    threads: Annotated[int, Field(gt=0, le=1024)] | None = None  # torch threads (torch's choice)
    # the whole agent's peak RSS may not exceed this (see swarmfl.field.footprint), e.g. "128MiB"
    process_budget_bytes: ByteSize | None = None

    @model_validator(mode="after")
    def _threads_need_torch(self) -> FieldTrainingSection:
        if self.threads is not None and self.backend != "torch":
            raise KeyedValueError(
                ("training", "threads"),
                'sets torch\'s threads: it needs training.backend = "torch" (for the lean '
                "backend set OPENBLAS_NUM_THREADS in the environment)",
            )
        return self


class UdpSection(Section):
    """The UDP radio."""

    host: str = "0.0.0.0"  # address to bind
    port: Port = 47100  # 0: any free port
    advertise_host: str | None = None  # address announced over mDNS (default: see discovery)
    loss: Probability = 0.0  # injected loss of received datagrams (tests; no netem here)
    # Opt-in multicast: each frame goes on the air once, to this group (e.g. "239.255.70.76"),
    # whatever the number of neighbours; every drone of the swarm uses the same group and port.
    multicast: str | None = None
    multicast_port: Annotated[int, Field(ge=1, le=65535)] = 47200
    multicast_interface: str | None = None  # the mesh interface's address (default: the host's)
    multicast_ttl: Annotated[int, Field(ge=1, le=255)] = 1  # 1: this link only
    multicast_loopback: bool = False  # hear multicast sent on this host (tests, several agents)

    @model_validator(mode="after")
    def _multicast_addresses(self) -> UdpSection:
        if self.multicast is not None:
            try:
                group = ipaddress.ip_address(self.multicast)
            except ValueError:
                group = None
            if group is None or group.version != 4 or not group.is_multicast:
                raise KeyedValueError(
                    ("radio", "udp", "multicast"),
                    f"must be an IPv4 multicast address (224.0.0.0/4, e.g. 239.255.70.76), "
                    f"got {self.multicast!r}",
                )
        if self.multicast_interface is not None:
            _check_ip(self.multicast_interface, ("radio", "udp", "multicast_interface"))
        return self


class MqttSection(Section):
    """The MQTT radio: broker URL, credentials and TLS."""

    url: Annotated[str, Field(max_length=2048)] = "mqtt://127.0.0.1:1883"  # or mqtts:// (TLS)
    username: str | None = None
    password_env: str | None = None  # environment variable holding the broker password
    password_file: str | None = None  # or a file holding it
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    topic_prefix: Annotated[str, Field(min_length=1, max_length=256)] = "swarmfl"
    keepalive_s: Annotated[int, Field(ge=1, le=3600)] = 10
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    backoff_initial_s: Annotated[float, Field(gt=0, le=3600)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0

    @model_validator(mode="after")
    def _password_source(self) -> MqttSection:
        if self.password_env is not None and self.password_file is not None:
            raise KeyedValueError(
                ("radio", "mqtt", "password_file"), "give password_env or password_file, not both"
            )
        return self


UDP_MTU_BYTES = 1472
"""A UDP datagram that fills a 1500-byte Ethernet or Wi-Fi frame after the IP and UDP headers."""

MQTT_MTU_BYTES = 65_507
"""One MQTT message's share of a frame: over TCP, fewer and larger messages cost less."""


class FieldRadioSection(LinkSection):
    """The radio: its kind and sockets, plus the link settings every radio shares."""

    kind: Literal["udp", "mqtt"] = "udp"
    inbox_frames: Annotated[int, Field(gt=0, le=65_536)] = 256  # heard, waiting for the agent
    udp: UdpSection = UdpSection()
    mqtt: MqttSection = MqttSection()

    def default_mtu(self) -> int:
        """The medium's natural datagram: 1472 bytes for UDP, 65,507 for MQTT."""
        return UDP_MTU_BYTES if self.kind == "udp" else MQTT_MTU_BYTES

    @model_validator(mode="after")
    def _burst_holds_a_datagram(self) -> FieldRadioSection:
        mtu = self.mtu_bytes if self.mtu_bytes is not None else self.default_mtu()
        if self.burst_bytes is not None and self.burst_bytes < mtu:
            raise KeyedValueError(("radio", "burst_bytes"), f"must be at least mtu_bytes ({mtu})")
        return self


class StaticPeer(Section):
    """One peer of a fixed list."""

    id: U32
    host: str
    port: Port = 47100


class DiscoverySection(Section):
    """How the drone finds its swarm mates.

    ``auto``: zeroconf for the UDP radio, the broker's presence for the MQTT radio.
    """

    kind: Literal["auto", "zeroconf", "static", "broker"] = "auto"
    interfaces: Annotated[list[str], Field(max_length=64)] | None = None  # mDNS addresses
    peers: Annotated[tuple[StaticPeer, ...], Field(max_length=4096)] = ()  # static

    def resolved_kind(self, radio: str) -> str:
        """The discovery used with radio ``radio`` (``auto`` resolved)."""
        if self.kind != "auto":
            return self.kind
        return "zeroconf" if radio == "udp" else "broker"


class CheckpointSection(Section):
    """Where and how often the learning state is saved."""

    dir: str = "checkpoints"  # unset in drone.toml: <state directory>/checkpoints
    interval_rounds: Annotated[int, Field(gt=0, le=10_000_000)] = 10
    keep: Annotated[int, Field(gt=0, le=1000)] = 3


class StatusSection(Section):
    """Live status: the JSON-lines log, MQTT telemetry and answers to ``swarmfl status``."""

    log: str | None = "status.jsonl"  # "" to disable; unset: <state directory>/status.jsonl
    log_max_bytes: Annotated[int, Field(gt=0, le=1 << 34)] = 10_000_000  # rotated to .1 past this
    interval_s: Annotated[float, Field(ge=0.05, le=86_400)] = 2.0
    telemetry: bool = True  # publish on MQTT
    answer_queries: bool = True  # answer status queries over UDP (authenticated, rate-limited)


Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class VehicleSection(Section):
    """The autopilot this drone's companion computer listens to (MAVLink over UDP), and the
    policy deciding from its state when the drone trains and transmits.

    ``connection``: a pymavlink-style string, ``udpin:HOST:PORT`` (listen: mavlink-router or
    MAVProxy sends to us) or ``udpout:HOST:PORT`` (we announce ourselves to a router's server
    endpoint). ``heartbeat_timeout_s``: the autopilot link counts as lost after this long
    without a HEARTBEAT (the drone then keeps its last decision). ``train_when``: ``always``,
    ``landed_only``, ``battery_above`` or ``landed_and_battery_above``. At or below
    ``critical_battery_fraction`` the drone neither trains nor transmits until the battery is
    back at ``resume_battery_fraction``. The connection string and the policy's cross-checks
    are validated when the agent starts (and by ``swarmfl agent --check``).
    """

    connection: Annotated[str, Field(min_length=1, max_length=300)] = "udpin:127.0.0.1:14550"
    heartbeat_timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 3.0
    system_id: Annotated[int, Field(ge=1, le=255)] | None = None
    heartbeat_period_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 1.0
    train_when: Literal["always", "landed_only", "battery_above", "landed_and_battery_above"] = (
        "always"
    )
    train_battery_above_fraction: Fraction = 0.5
    critical_battery_fraction: Fraction = 0.15
    resume_battery_fraction: Fraction = 0.3
    hysteresis_fraction: Fraction = 0.02
    quiet_in_failsafe: bool = True


class IdentitySection(Section):
    """Who vouches for this drone's frames.

    ``mode = "per-drone"`` (the default): the drone signs its frames with its own Ed25519 key
    (``swarmfl keys``), so a captured drone can speak only for itself and can be revoked. It
    needs ``key_file`` (this drone's private key), ``roster_file`` (the signed roster) and the
    swarm authority's public key: ``authority`` (64 hex digits) or ``authority_file`` (the
    ``authority.pub`` ``swarmfl keys init`` writes). The agent refuses to start without them
    (:func:`swarmfl.field.identity.load_identity`); commands that only read the config
    (``swarmfl plan --config``, ``swarmfl status --config``) do not need them.
    ``mode = "swarm-key"``: frames carry the shared swarm key's HMAC alone and are not bound to
    a drone (anyone holding the swarm secret can speak for every drone); the keys are then
    refused. The simulator always uses the swarm key.
    """

    mode: Literal["per-drone", "swarm-key"] = "per-drone"
    key_file: str | None = None
    roster_file: str | None = None
    authority: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    authority_file: str | None = None

    @model_validator(mode="after")
    def _keys_fit_the_mode(self) -> IdentitySection:
        keys = ("key_file", "roster_file", "authority", "authority_file")
        given = [k for k in keys if getattr(self, k)]
        if self.mode == "swarm-key" and given:
            raise KeyedValueError(
                ("identity", given[0]),
                'is not used with identity.mode = "swarm-key" (remove it, or remove identity.mode '
                "to sign frames with this drone's own key)",
            )
        if self.authority and self.authority_file:
            raise KeyedValueError(
                ("identity", "authority_file"), "give authority or authority_file, not both"
            )
        if given:
            for key in ("key_file", "roster_file"):
                if key not in given:
                    raise KeyedValueError(("identity", key), "needed with the other identity keys")
            if not (self.authority or self.authority_file):
                raise KeyedValueError(
                    ("identity", "authority"),
                    "needed with the other identity keys (or authority_file)",
                )
        return self

    def keys_given(self) -> bool:
        """Whether the per-drone keys are set (the model refuses a partial set)."""
        return bool(self.key_file and self.roster_file and (self.authority or self.authority_file))


class DroneConfig(Section):
    """A whole ``drone.toml``."""

    drone: DroneSection
    swarm: FieldSwarmSection = FieldSwarmSection()
    run: RunSection = RunSection()
    data: FieldDataSection = FieldDataSection()
    model: ModelSection = ModelSection()
    training: FieldTrainingSection = FieldTrainingSection()
    gossip: GossipSection = GossipSection()
    merge: MergeSection = MergeSection()
    radio: FieldRadioSection = FieldRadioSection()
    discovery: DiscoverySection = DiscoverySection()
    checkpoint: CheckpointSection = CheckpointSection()
    status: StatusSection = StatusSection()
    vehicle: VehicleSection | None = None  # no [vehicle]: no autopilot, always train and send
    identity: IdentitySection = IdentitySection()  # per-drone keys unless mode = "swarm-key"

    @model_validator(mode="after")
    def _cross_checks(self) -> DroneConfig:
        kind = self.discovery.resolved_kind(self.radio.kind)
        if kind == "broker" and self.radio.kind != "mqtt":
            raise KeyedValueError(
                ("discovery", "kind"), "'broker' discovery needs radio.kind = 'mqtt'"
            )
        if kind == "static" and not self.discovery.peers:
            raise KeyedValueError(("discovery", "peers"), "static discovery needs peers")
        for index, peer in enumerate(self.discovery.peers):
            if peer.id == self.drone.id:
                raise KeyedValueError(
                    ("discovery", "peers", index, "id"), f"drone {peer.id} is this drone"
                )
        for index, address in enumerate(self.discovery.interfaces or []):
            _check_ip(address, ("discovery", "interfaces", index))
        if self.radio.udp.advertise_host is not None:
            _check_ip(self.radio.udp.advertise_host, ("radio", "udp", "advertise_host"))
        if kind == "zeroconf" and self.radio.kind == "udp" and self.advertised_host() is None:
            raise KeyedValueError(
                ("radio", "udp", "advertise_host"),
                "zeroconf must announce an address: set radio.udp.advertise_host, a specific "
                "radio.udp.host, or discovery.interfaces",
            )
        return self

    def advertised_host(self) -> str | None:
        """The address announced over mDNS: explicit, else the bound one, else an interface."""
        udp = self.radio.udp
        if udp.advertise_host:
            return udp.advertise_host
        if udp.host not in ("0.0.0.0", "::", ""):
            return udp.host
        if self.discovery.interfaces:
            return self.discovery.interfaces[0]
        return None


def _check_ip(text: str, loc: tuple[str | int, ...]) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise KeyedValueError(loc, f"must be an IP address, got {text!r}") from None


DRONE_PATH_KEYS: list[tuple[str, ...]] = [
    ("swarm", "secret_file"),
    ("data", "path"),
    ("data", "images"),
    ("data", "labels"),
    ("model", "checkpoint"),
    ("radio", "mqtt", "password_file"),
    ("radio", "mqtt", "ca_file"),
    ("radio", "mqtt", "cert_file"),
    ("radio", "mqtt", "key_file"),
    ("checkpoint", "dir"),
    ("status", "log"),
    ("identity", "key_file"),
    ("identity", "roster_file"),
    ("identity", "authority_file"),
]
"""Keys holding paths: relative ones written in drone.toml are taken from its folder."""


@dataclass(frozen=True)
class LoadedDroneConfig:
    """A validated drone.toml with what it points to read: the 32-byte swarm ``key`` and the
    broker password (``mqtt_password``, or None). Every path in ``config`` is absolute."""

    config: DroneConfig
    source: Path
    key: bytes
    mqtt_password: str | None


def validate_drone_config(raw: dict[str, Any], *, source: str) -> DroneConfig:
    """Validate a drone.toml dict; raises :class:`ConfigError` naming ``source`` and the key."""
    return validate(DroneConfig, raw, source=source)


def _read_secret_file(path: Path, *, source: str, key: str) -> str:
    text = read_text_file(path, max_bytes=MAX_SECRET_FILE_BYTES, source=source, key=key).strip()
    if not text:
        raise ConfigError(f"{path} is empty", source=source, key=key)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", source=source, key=key) from None
    if mode & 0o077:
        log.warning("%s is readable by other users (chmod 600 it)", path)
    return text


def _read_env(name: str, *, source: str, key: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set", source=source, key=key)
    return value


def parse_drone_config(path: str | Path, overrides: list[str] | None = None) -> DroneConfig:
    """Read, override and validate ``drone.toml`` without reading any secret.

    Relative paths in the file are made absolute against its folder. Raises
    :class:`ConfigError` (one line: file, key, problem) for a missing, unreadable or oversized
    file, invalid TOML or an invalid key.
    """
    path = Path(path)
    raw = read_toml(path)
    resolve_paths(raw, DRONE_PATH_KEYS, path.resolve().parent)
    raw = apply_overrides(raw, overrides or [])
    drone = raw.get("drone")
    drone_id = drone.get("id") if isinstance(drone, dict) else None
    if isinstance(drone_id, int) and not isinstance(drone_id, bool) and drone_id >= 0:
        # State the file does not place goes to the state directory, never next to the file
        # (which may be a source tree or a read-only /etc).
        state = state_directory(drone_id)
        for section, key, default in (
            ("checkpoint", "dir", state / "checkpoints"),
            ("status", "log", state / "status.jsonl"),
        ):
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                table.setdefault(key, str(default))
    return validate_drone_config(raw, source=str(path))


def state_directory(drone_id: int, environ: Mapping[str, str] | None = None) -> Path:
    """Where a drone keeps its checkpoints and status log when its config names no folder.

    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``; the first one if several),
    else ``$XDG_STATE_HOME/swarmfl/<drone id>``, with ``~/.local/state`` when
    ``$XDG_STATE_HOME`` is unset or not absolute (the XDG base directory rules). Nothing is
    created here: the agent creates the folders when it first writes.
    """
    env = os.environ if environ is None else environ
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = env.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "swarmfl" / str(drone_id)


def mqtt_password(config: DroneConfig, config_path: str | Path) -> str | None:
    """The broker password the config points to (a file or an environment variable), or None.

    Raises :class:`ConfigError` naming the key if it cannot be read.
    """
    mqtt = config.radio.mqtt
    source = str(config_path)
    if mqtt.password_file is not None:
        return _read_secret_file(
            Path(mqtt.password_file), source=source, key="radio.mqtt.password_file"
        )
    if mqtt.password_env is not None:
        return _read_env(mqtt.password_env, source=source, key="radio.mqtt.password_env")
    return None


def load_drone_config(path: str | Path, overrides: list[str] | None = None) -> LoadedDroneConfig:
    """Read, override and validate ``drone.toml``; read the swarm secret and broker password.

    Raises :class:`ConfigError` (one line: file, key, problem) for a missing or unreadable file,
    invalid TOML, an invalid key, or a secret that cannot be read or is shorter than 16
    characters.
    """
    path = Path(path)
    source = str(path)
    config = parse_drone_config(path, overrides)
    swarm = config.swarm
    if swarm.secret is not None:
        secret, key_name = swarm.secret, "swarm.secret"
    elif swarm.secret_file is not None:
        secret = _read_secret_file(Path(swarm.secret_file), source=source, key="swarm.secret_file")
        key_name = "swarm.secret_file"
    else:
        env = swarm.secret_env or DEFAULT_SECRET_ENV
        secret, key_name = _read_env(env, source=source, key="swarm.secret_env"), "swarm.secret_env"
    if len(secret) < 16:
        raise ConfigError(
            f"the swarm secret has {len(secret)} characters; at least 16 are needed (32 random "
            "bytes, hex-encoded, are recommended)",
            source=source,
            key=key_name,
        )
    key = derive_swarm_key(secret, swarm.swarm_id)
    password = mqtt_password(config, path) if config.radio.kind == "mqtt" else None
    return LoadedDroneConfig(config, path.resolve(), key, password)
