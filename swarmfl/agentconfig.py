"""The field agent's config file (``drone.toml``): TOML validated into frozen pydantic models.

It reuses the scenario's sections for what the simulator and the field share (model, training,
gossip, merge, data) and adds what only a real drone has: who it is, where its swarm key comes
from, its radio, discovery, checkpoints and status output. As with scenarios, an unknown key, a
wrong type or an out-of-range value is a :class:`~swarmfl.errors.ConfigError` whose one line names
the file, the dotted key and the problem.

The swarm key is never read from the config file in plain text by default: the secret it is
derived from comes from a file (``drone.key_file``) or an environment variable
(``drone.key_env``, default ``SWARMFL_SECRET``). A ``drone.secret`` in the file is refused unless
``drone.allow_secret_in_file = true`` (for demos only: anyone who can read the file can forge
model updates for the swarm). Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from swarmfl.config import (
    ByteSize,
    DataSection,
    GossipSection,
    MergeSection,
    ModelSection,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    Section,
    TrainingSection,
    _config_error,
    _KeyedValueError,
    apply_overrides,
)
from swarmfl.core.wire import derive_swarm_key
from swarmfl.errors import ConfigError

__all__ = [
    "DEFAULT_KEY_ENV",
    "AgentConfig",
    "LoadedAgentConfig",
    "load_agent_config",
    "mqtt_password",
    "parse_agent_config",
    "validate_agent_config",
]

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "SWARMFL_SECRET"
"""The environment variable the swarm secret is read from when the config names no source."""

U32 = Annotated[int, Field(ge=0, lt=2**32)]
Port = Annotated[int, Field(ge=0, le=65535)]


class DroneSection(Section):
    """Who this drone is, and where the swarm's secret comes from."""

    id: U32
    swarm_id: U32 = 1
    key_file: str | None = None  # a file holding the swarm secret (keep it mode 0600)
    key_env: str | None = None  # an environment variable holding it (default SWARMFL_SECRET)
    secret: str | None = None  # refused unless allow_secret_in_file
    allow_secret_in_file: bool = False

    @model_validator(mode="after")
    def _one_secret_source(self) -> DroneSection:
        sources = [k for k in ("key_file", "key_env", "secret") if getattr(self, k) is not None]
        if len(sources) > 1:
            raise _KeyedValueError(
                ("drone", sources[1]), f"give one of key_file, key_env, secret (got {sources})"
            )
        if self.secret is not None and not self.allow_secret_in_file:
            raise _KeyedValueError(
                ("drone", "secret"),
                "a secret in the config file is readable by anyone who can read the file; use "
                "drone.key_file or drone.key_env (or set drone.allow_secret_in_file = true for a "
                "demo)",
            )
        return self


class AgentDataSection(DataSection):
    """The drone's local data: its own files, or one shard of a built-in dataset (demos).

    For ``digits``/``mnist1d`` the dataset is split into ``shards`` parts (``partition``,
    ``alpha``) with ``seed``, which every drone of the swarm shares, and this drone takes part
    ``shard``. ``seed`` also sets the initial weights, so all drones start from the same model.
    """

    shard: Annotated[int, Field(ge=0)] = 0
    shards: PositiveInt = 1
    seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _shard_in_range(self) -> AgentDataSection:
        if self.shard >= self.shards:
            raise _KeyedValueError(
                ("data", "shard"), f"shard {self.shard} of {self.shards} (shards count from 0)"
            )
        return self


class AgentTrainingSection(TrainingSection):
    """Local SGD, plus whether to train at all, on how many threads and within what memory.

    With ``budget_bytes`` the drone plans what it trains within that budget (the whole model, a
    suffix of blocks or biases only; :mod:`swarmfl.learning.memory`), as a simulated device
    class does.
    """

    enabled: bool = True  # false: gossip and merge only (a relay, or a benchmark)
    threads: PositiveInt | None = None  # torch threads (default: torch's choice)
    budget_bytes: ByteSize | None = None  # training memory budget, e.g. "64MiB"; unset: all
    neighbour_replicas: Annotated[int, Field(ge=0)] = 4  # peers' replicas budgeted for


class UdpSection(Section):
    """The UDP radio."""

    host: str = "0.0.0.0"  # address to bind
    port: Port = 47100  # 0: any free port
    advertise_host: str | None = None  # address announced over mDNS (default: see discovery)
    loss: Probability = 0.0  # injected loss of received datagrams (tests; no netem here)


class MqttSection(Section):
    """The MQTT radio: broker URL, credentials and TLS."""

    url: str = "mqtt://127.0.0.1:1883"  # mqtt://host[:port] or mqtts://host[:port] (TLS)
    username: str | None = None
    password_env: str | None = None  # environment variable holding the broker password
    password_file: str | None = None  # or a file holding it
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    topic_prefix: str = "swarmfl"
    keepalive_s: Annotated[int, Field(ge=1, le=3600)] = 10
    connect_timeout_s: PositiveFloat = 5.0
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _password_source(self) -> MqttSection:
        if self.password_env is not None and self.password_file is not None:
            raise _KeyedValueError(
                ("radio", "mqtt", "password_file"), "give password_env or password_file, not both"
            )
        return self


class RadioSection(Section):
    """The radio: its kind, and the link limits every kind shares."""

    kind: Literal["udp", "mqtt"] = "udp"
    rate_bps: PositiveFloat = 5_000_000.0  # what this drone may send, all copies included
    burst_bytes: PositiveInt = 64 * 1024  # token bucket depth (at least one datagram)
    mtu_bytes: Annotated[int, Field(ge=64, le=65_507)] | None = None  # udp 1472, mqtt 65507
    queue_frames: PositiveInt = 16  # send queue bounds (a keyframe supersedes older frames)
    queue_bytes: PositiveInt = 8 * 1024 * 1024
    inbox_frames: PositiveInt = 256  # frames heard, waiting for the agent
    max_frame_bytes: PositiveInt = 4 * 1024 * 1024
    reassembly_timeout_s: PositiveFloat = 5.0  # a partly received frame is dropped after this
    udp: UdpSection = UdpSection()
    mqtt: MqttSection = MqttSection()


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
    interfaces: list[str] | None = None  # addresses to run mDNS on (default: all)
    peers: tuple[StaticPeer, ...] = ()  # static

    def resolved_kind(self, radio: str) -> str:
        """The discovery used with radio ``radio`` (``auto`` resolved)."""
        if self.kind != "auto":
            return self.kind
        return "zeroconf" if radio == "udp" else "broker"


class CheckpointSection(Section):
    """Where and how often the learning state is saved."""

    dir: str = "checkpoints"
    interval_rounds: PositiveInt = 10
    keep: PositiveInt = 3


class StatusSection(Section):
    """Live status: the JSON-lines log, MQTT telemetry and answers to ``swarmfl status``."""

    log: str | None = "status.jsonl"  # "" to disable
    log_max_bytes: PositiveInt = 10_000_000  # rotated to .1 past this
    interval_s: PositiveFloat = 2.0
    eval_interval_s: NonNegativeFloat = 10.0  # 0: after every round
    eval_samples: PositiveInt | None = 500
    telemetry: bool = True  # publish on MQTT
    answer_queries: bool = True  # answer status queries over UDP


class AgentConfig(Section):
    """A whole ``drone.toml``."""

    drone: DroneSection
    data: AgentDataSection = AgentDataSection()
    model: ModelSection = ModelSection()
    training: AgentTrainingSection = AgentTrainingSection()
    gossip: GossipSection = GossipSection()
    merge: MergeSection = MergeSection()
    radio: RadioSection = RadioSection()
    discovery: DiscoverySection = DiscoverySection()
    checkpoint: CheckpointSection = CheckpointSection()
    status: StatusSection = StatusSection()

    @model_validator(mode="after")
    def _cross_checks(self) -> AgentConfig:
        kind = self.discovery.resolved_kind(self.radio.kind)
        if kind == "broker" and self.radio.kind != "mqtt":
            raise _KeyedValueError(
                ("discovery", "kind"), "'broker' discovery needs radio.kind = 'mqtt'"
            )
        if kind == "static" and not self.discovery.peers:
            raise _KeyedValueError(("discovery", "peers"), "static discovery needs peers")
        for index, peer in enumerate(self.discovery.peers):
            if peer.id == self.drone.id:
                raise _KeyedValueError(
                    ("discovery", "peers", index, "id"), f"drone {peer.id} is this drone"
                )
        for index, address in enumerate(self.discovery.interfaces or []):
            _check_ip(address, ("discovery", "interfaces", index))
        if self.radio.udp.advertise_host is not None:
            _check_ip(self.radio.udp.advertise_host, ("radio", "udp", "advertise_host"))
        if kind == "zeroconf" and self.radio.kind == "udp" and self.advertised_host() is None:
            raise _KeyedValueError(
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

    def mtu_bytes(self) -> int:
        """The datagram size: as configured, else 1472 for UDP and 65,507 for MQTT.

        1472 bytes fill a 1500-byte Ethernet or Wi-Fi frame after the IP and UDP headers; over
        MQTT (TCP) fewer, larger messages cost less.
        """
        if self.radio.mtu_bytes is not None:
            return self.radio.mtu_bytes
        return 1472 if self.radio.kind == "udp" else 65_507


def _check_ip(text: str, loc: tuple[str | int, ...]) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise _KeyedValueError(loc, f"must be an IP address, got {text!r}") from None


@dataclass(frozen=True)
class LoadedAgentConfig:
    """A validated config with what it points to resolved.

    ``key`` is the 32-byte swarm key; ``mqtt_password`` the broker password (or None); paths are
    absolute (relative ones are taken from the config file's folder).
    """

    config: AgentConfig
    source: Path
    key: bytes
    mqtt_password: str | None

    def path(self, relative: str) -> Path:
        """``relative`` resolved against the config file's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.source.parent / path


def validate_agent_config(raw: dict[str, Any], *, source: str) -> AgentConfig:
    """Validate an agent config dict; raises :class:`ConfigError` naming ``source`` and the key."""
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, source) from None


def _read_secret_file(path: Path, *, source: str, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}", source=source, key=key) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", source=source, key=key) from None
    if not text:
        raise ConfigError(f"{path} is empty", source=source, key=key)
    if mode & 0o077:
        log.warning("%s is readable by other users (chmod 600 it)", path)
    return text


def _read_env(name: str, *, source: str, key: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set", source=source, key=key)
    return value


def parse_agent_config(path: str | Path, overrides: list[str] | None = None) -> AgentConfig:
    """Read, override and validate ``drone.toml`` without reading any secret.

    Raises :class:`ConfigError` (one line: file, key, problem) for a missing or unreadable file,
    invalid TOML or an invalid key.
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", source=source) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None
    return validate_agent_config(apply_overrides(raw, overrides or []), source=source)


def mqtt_password(config: AgentConfig, config_path: str | Path) -> str | None:
    """The broker password the config points to (a file or an environment variable), or None.

    Raises :class:`ConfigError` naming the key if it cannot be read.
    """
    mqtt = config.radio.mqtt
    source = str(config_path)
    if mqtt.password_file is not None:
        path = _resolve(Path(config_path).resolve().parent, mqtt.password_file)
        return _read_secret_file(path, source=source, key="radio.mqtt.password_file")
    if mqtt.password_env is not None:
        return _read_env(mqtt.password_env, source=source, key="radio.mqtt.password_env")
    return None


def load_agent_config(path: str | Path, overrides: list[str] | None = None) -> LoadedAgentConfig:
    """Read, override and validate ``drone.toml``; read the swarm secret and broker password.

    Raises :class:`ConfigError` (one line: file, key, problem) for a missing or unreadable file,
    invalid TOML, an invalid key, or a secret that cannot be read.
    """
    path = Path(path)
    source = str(path)
    config = parse_agent_config(path, overrides)
    base = path.resolve().parent
    drone = config.drone
    if drone.secret is not None:
        secret = drone.secret
    elif drone.key_file is not None:
        secret = _read_secret_file(
            _resolve(base, drone.key_file), source=source, key="drone.key_file"
        )
    else:
        secret = _read_env(drone.key_env or DEFAULT_KEY_ENV, source=source, key="drone.key_env")
    key = derive_swarm_key(secret, drone.swarm_id)
    password = mqtt_password(config, path) if config.radio.kind == "mqtt" else None
    return LoadedAgentConfig(config, path.resolve(), key, password)


def _resolve(base: Path, relative: str) -> Path:
    path = Path(relative).expanduser()
    return path if path.is_absolute() else base / path
