"""The field drone's radio and discovery, opened from its ``drone.toml``.

``[radio] kind`` chooses the UDP radio (a mesh, unicast to the peers discovery finds, or
multicast once to all with ``[radio.udp] multicast``) or the
MQTT radio (a broker relays; its retained presence is the discovery). ``[discovery] kind``
chooses zeroconf, a static list or the broker. Both are opened here and handed to the
:class:`~swarmfl.agent.Agent` as its Radio and Discovery seams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from swarmfl.config.drone_file import LoadedDroneConfig
from swarmfl.core.wire import frame_tag_check
from swarmfl.radio.discovery import Discovery, PeerInfo, StaticDiscovery, ZeroconfDiscovery
from swarmfl.radio.link import LinkConfig
from swarmfl.radio.mqtt import MqttRadio, MqttSettings
from swarmfl.radio.peers import PeerTable
from swarmfl.radio.status_port import StatusResponder, status_key
from swarmfl.radio.udp import MulticastUdpRadio, UdpRadio
from swarmfl.seeding import radio_seed

__all__ = ["FieldRadio", "announcement", "mqtt_settings", "open_discovery", "open_radio"]

FieldRadio: TypeAlias = UdpRadio | MqttRadio
"""The radios a field drone flies with."""


def announcement(
    loaded: LoadedDroneConfig, signature: bytes, trains: str, host: str, port: int
) -> PeerInfo:
    """What this drone announces about itself (over mDNS, or as its MQTT presence)."""
    config = loaded.config
    return PeerInfo(
        drone_id=config.drone.id,
        swarm_id=config.swarm.swarm_id,
        signature=signature,
        host=host,
        port=port,
        trains=trains,
        transport=config.radio.kind,
    )


def mqtt_settings(loaded: LoadedDroneConfig) -> MqttSettings:
    """The MQTT radio's settings from ``[radio.mqtt]`` (raises :class:`ConfigError` for bad TLS
    files or values, naming the key)."""
    mqtt = loaded.config.radio.mqtt
    return MqttSettings(
        url=mqtt.url,
        username=mqtt.username,
        password=loaded.mqtt_password,
        ca_file=mqtt.ca_file,
        cert_file=mqtt.cert_file,
        key_file=mqtt.key_file,
        tls_insecure=mqtt.tls_insecure,
        topic_prefix=mqtt.topic_prefix,
        keepalive_s=mqtt.keepalive_s,
        connect_timeout_s=mqtt.connect_timeout_s,
        backoff_initial_s=mqtt.backoff_initial_s,
        backoff_max_s=mqtt.backoff_max_s,
    )


async def open_radio(
    loaded: LoadedDroneConfig,
    link: LinkConfig,
    *,
    signature: bytes,
    trains: str,
    status: Callable[[], Mapping[str, Any]] | None,
) -> FieldRadio:
    """Open the radio the config names, started (UDP: bound; MQTT: connecting).

    ``status`` gives the record that answers ``swarmfl status`` queries over UDP (queries
    authenticated with the swarm key, see :mod:`swarmfl.radio.status_port`). Raises
    :class:`~swarmfl.errors.ConfigError` for a port in use or bad TLS files and
    :class:`~swarmfl.errors.RadioError` for other socket failures.
    """
    config = loaded.config
    if config.radio.kind == "udp":
        udp = config.radio.udp
        responder = None
        if status is not None and config.status.answer_queries:
            responder = StatusResponder(status_key(loaded.key), status)
        common: dict[str, Any] = {
            "drone_id": config.drone.id,
            "host": udp.host,
            "port": udp.port,
            "link": link,
            "inbox_frames": config.radio.inbox_frames,
            "loss": udp.loss,
            "seed": radio_seed(config.run.seed, config.drone.id),
            "status": responder,
            # Forged frames are refused by their swarm tag before they spend a source's frame
            # budget, and charged to their address (see swarmfl.radio.guard).
            "frame_check": frame_tag_check(loaded.key, config.swarm.swarm_id),
            # A peer stops being a destination when its authenticated frames stop for as long
            # as the merge keeps its replica (never less than 10 s: a slow trainer sends late).
            "peer_table": PeerTable(
                silence_s=max(config.merge.cutoff * config.gossip.period_s, 10.0),
                probe_interval_s=config.gossip.period_s,
            ),
        }
        udp_radio: UdpRadio
        if udp.multicast is not None:
            udp_radio = MulticastUdpRadio(
                group=udp.multicast,
                group_port=udp.multicast_port,
                interface=udp.multicast_interface,
                ttl=udp.multicast_ttl,
                loopback=udp.multicast_loopback,
                **common,
            )
        else:
            udp_radio = UdpRadio(**common)
        await udp_radio.start()
        return udp_radio
    settings = mqtt_settings(loaded)
    mqtt_radio = MqttRadio(
        me=announcement(loaded, signature, trains, settings.host, 0),
        settings=settings,
        swarm_key=loaded.key,
        link=link,
        inbox_frames=config.radio.inbox_frames,
    )
    await mqtt_radio.start()
    return mqtt_radio


async def open_discovery(
    loaded: LoadedDroneConfig, radio: FieldRadio, *, signature: bytes, trains: str
) -> Discovery:
    """Start the discovery the config names: zeroconf, a static list, or the broker's presence
    (the MQTT radio itself). Raises :class:`~swarmfl.errors.ConfigError` or
    :class:`~swarmfl.errors.RadioError` if zeroconf cannot start."""
    config = loaded.config
    kind = config.discovery.resolved_kind(config.radio.kind)
    if kind == "broker":
        assert isinstance(radio, MqttRadio)  # the config's cross-checks guarantee it
        return radio
    if kind == "static":
        peers = {
            peer.id: PeerInfo(
                peer.id,
                config.swarm.swarm_id,
                signature,
                peer.host,
                peer.port,
                "full",
                config.radio.kind,
            )
            for peer in config.discovery.peers
        }
        return StaticDiscovery(peers)
    port = radio.local_port if isinstance(radio, UdpRadio) else 0
    host = config.advertised_host() or "127.0.0.1"
    zeroconf = ZeroconfDiscovery(
        announcement(loaded, signature, trains, host, port),
        interfaces=config.discovery.interfaces,
    )
    await zeroconf.start()
    return zeroconf
