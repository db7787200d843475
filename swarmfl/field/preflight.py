"""``swarmfl agent --check``: everything the agent needs, verified without side effects.

:func:`preflight` reads and validates the config, the swarm secret (and the broker password),
the drone's key and roster (``[identity]``), the ``[vehicle]`` settings, builds the drone's
data shard, model and memory plan exactly as the agent would, inspects the checkpoint folder
(the newest checkpoint must belong to this drone, swarm and model) and whether the state folders
can be created, and test-binds the ports the agent will listen on (then releases them). It
writes nothing: no folder, no file, no status line; every problem is a
:class:`~swarmfl.errors.ConfigError` naming the file and key.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from swarmfl.config.drone_file import LoadedDroneConfig
from swarmfl.drone import DroneAssembly
from swarmfl.errors import CheckpointError, ConfigError
from swarmfl.field.agent import drone_settings, field_device
from swarmfl.field.autopilot import vehicle_settings
from swarmfl.field.checkpoint import CheckpointStore
from swarmfl.field.identity import load_identity
from swarmfl.field.radios import mqtt_settings

__all__ = ["preflight"]


def preflight(loaded: LoadedDroneConfig) -> list[str]:
    """Check what the agent of ``loaded`` needs; return one line per check passed.

    Raises :class:`ConfigError` (one line: file, key, problem) at the first check that fails.
    """
    source = str(loaded.source)
    try:
        return _checks(loaded)
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.problem, source=source, key=exc.key) from None


def _checks(loaded: LoadedDroneConfig) -> list[str]:
    config = loaded.config
    lines = [
        f"config {loaded.source}: drone {config.drone.id} of swarm {config.swarm.swarm_id}, "
        f"{config.radio.kind} radio",
        "swarm secret: read, "
        + ("from the config file" if config.swarm.secret else "from " + _secret_source(loaded)),
    ]
    identity = load_identity(config, source=str(loaded.source))
    if identity is None:
        lines.append(
            'identity: the swarm key alone (identity.mode = "swarm-key"): frames are not bound '
            "to a drone"
        )
    else:
        lines.append(
            f"identity: per-drone key of drone {config.drone.id}, in roster version "
            f"{identity.version}"
        )
    if config.radio.kind == "mqtt":
        settings = mqtt_settings(loaded)
        for key in ("ca_file", "cert_file", "key_file"):
            name = getattr(settings, key)
            if name is not None and not os.access(name, os.R_OK):
                raise ConfigError(f"cannot read {name}", key=f"radio.mqtt.{key}")
        lines.append(f"mqtt broker: {settings.url} (not contacted)")
    if config.vehicle is not None:
        link, policy = vehicle_settings(config.vehicle)
        lines.append(f"autopilot: {link.connection}, trains {policy.train_when}")

    assembly = DroneAssembly(drone_settings(loaded))
    parts = assembly.build(config.drone.id, config.data.shard, field_device(loaded))
    lines.append(
        f"data: {config.data.dataset} shard {config.data.shard}/{config.data.shards}, "
        f"{parts.learner.sample_count} training samples, {len(assembly.y_eval)} held out"
    )
    plan = parts.plan
    lines.append(
        "memory plan: " + (plan.describe() if plan is not None else "no budget: whole model")
    )

    lines.append(_check_checkpoints(loaded, assembly.signature))
    lines.append(_check_writable(Path(config.checkpoint.dir), "checkpoint.dir"))
    if config.status.log:
        lines.append(_check_writable(Path(config.status.log).parent, "status.log"))
    lines += _check_ports(loaded)
    return lines


def _secret_source(loaded: LoadedDroneConfig) -> str:
    swarm = loaded.config.swarm
    if swarm.secret_file is not None:
        return swarm.secret_file
    return "$" + (swarm.secret_env or "SWARMFL_SECRET")


def _check_checkpoints(loaded: LoadedDroneConfig, signature: bytes) -> str:
    config = loaded.config
    folder = Path(config.checkpoint.dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder", key="checkpoint.dir")
    store = CheckpointStore(folder, keep=config.checkpoint.keep)  # reads only, writes nothing
    paths = store.checkpoint_paths()
    bad = 0
    for path in paths:
        try:
            checkpoint = store.load(path)
        except CheckpointError:
            bad += 1  # the agent falls back to an older one, as here
            continue
        meta = checkpoint.meta
        if checkpoint.drone_id != config.drone.id or meta.get("swarm_id") != config.swarm.swarm_id:
            raise ConfigError(
                f"{path} is a checkpoint of drone {checkpoint.drone_id} of swarm "
                f"{meta.get('swarm_id')}, not of this drone (use another checkpoint.dir, or "
                "--no-resume)",
                key="checkpoint.dir",
            )
        if meta.get("signature") != signature.hex():
            raise ConfigError(
                f"{path} holds another model or data shape than the config's (use another "
                "checkpoint.dir, or --no-resume)",
                key="checkpoint.dir",
            )
        skipped = f" ({bad} newer ones corrupt: skipped)" if bad else ""
        return f"checkpoints: resumes from {path.name} in {folder}{skipped}"
    if bad:
        return f"checkpoints: {bad} in {folder}, none readable: the agent starts fresh"
    return f"checkpoints: none yet in {folder}: the agent starts fresh"


def _check_writable(folder: Path, key: str) -> str:
    """The folder exists and is writable, or its nearest existing parent lets us create it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{existing} is not a folder", key=key)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing} is not writable by this user", key=key)
    if existing == folder:
        return f"{key}: {folder} is writable"
    return f"{key}: {folder} can be created (in {existing})"


def _check_ports(loaded: LoadedDroneConfig) -> list[str]:
    config = loaded.config
    lines = []
    if config.radio.kind == "udp":
        udp = config.radio.udp
        lines.append(_bind_test(udp.host, udp.port, "radio.udp.port", "radio.udp.host"))
        if udp.multicast is not None:
            lines.append(_join_test(udp.multicast, udp.multicast_port, udp.multicast_interface))
    vehicle = config.vehicle
    if vehicle is not None:
        link, _ = vehicle_settings(vehicle)
        endpoint = link.endpoint
        if endpoint.kind == "udpin":
            lines.append(
                _bind_test(endpoint.host, endpoint.port, "vehicle.connection", "vehicle.connection")
            )
    return lines


def _bind_test(host: str, port: int, port_key: str, host_key: str) -> str:
    """Bind a UDP socket to (host, port) and release it at once."""
    if port == 0:
        return f"{port_key}: 0 (any free port)"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"UDP port {port} on {host} is already in use (another agent running?)",
                    key=port_key,
                ) from None
            raise ConfigError(
                f"cannot bind UDP {host}:{port}: {exc.strerror}", key=host_key
            ) from None
    return f"{port_key}: UDP {host}:{port} free"


def _join_test(group: str, port: int, interface: str | None) -> str:
    """Join the multicast group on the interface, as the radio will, then leave."""
    where = interface or "the default interface"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((group, port))
            sock.setsockopt(
                socket.IPPROTO_IP,
                socket.IP_ADD_MEMBERSHIP,
                socket.inet_aton(group) + socket.inet_aton(interface or "0.0.0.0"),
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot join multicast group {group}:{port} on {where}: {exc.strerror}",
                key="radio.udp.multicast_interface",
            ) from None
    return f"radio.udp.multicast: group {group}:{port} joined on {where} and left"
