"""The MQTT radio: frames through a broker, with the swarm's presence and a last will (aiomqtt).

The broker is only a medium. It relays datagrams between the drones of a swarm and keeps each
drone's presence; it aggregates nothing and coordinates nothing, and frames stay authenticated
end to end with the swarm key (the broker cannot forge or alter a model update).

Topics, under ``{prefix}/{swarm_id}/`` (``prefix`` defaults to ``swarmfl``):

* ``frames/{drone_id}``: the drone's datagrams (QoS 0: loss is the protocol's business);
* ``presence/{drone_id}``: retained JSON ``{"state": "online", ...}`` published on connect, and
  ``{"state": "offline"}`` set as the connection's *last will*, so a drone that vanishes (power
  loss, out of range, killed) is reported gone by the broker itself. Both are signed with the
  swarm key (:mod:`swarmfl.radio.broker_records`): unsigned or forged presence is ignored, so a
  broker client without the key can neither add a drone nor take a live one offline;
* ``telemetry/{drone_id}``: retained JSON status lines (what ``swarmfl status`` shows).

A dropped connection is retried forever with exponential backoff and jitter; each failure is
logged as one line, never a traceback. The connection task is supervised: *any* failure of the
session's tasks (not only the broker's errors) is logged and followed by a reconnect, and every
message from the broker goes through a total parser with a size cap (counted, logged at debug
level, dropped), so nothing a broker client publishes can stop the radio. The peer table is
bounded (``max_peers``). Frames sent while disconnected wait in the bounded send
queue, where a newer keyframe supersedes older frames of our stream. Queueing, fragmentation,
the token bucket and reassembly are the :class:`~swarmfl.radio.datagram.DatagramRadio` pump
every real radio shares; this module adds the broker connection, the topics and presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from swarmfl.errors import ClosedRadioError, ConfigError
from swarmfl.radio.broker_records import (
    BrokerRecordError,
    presence_key,
    presence_payload,
    read_presence,
)
from swarmfl.radio.datagram import DatagramRadio
from swarmfl.radio.discovery import PeerDown, PeerInfo, PeerUp
from swarmfl.radio.link import LinkConfig

__all__ = ["MqttRadio", "MqttSettings", "broker_address", "telemetry_topic", "topic_root"]

log = logging.getLogger(__name__)
# paho-mqtt logs a lost connection at ERROR level; the radio reports it itself, in one line with
# the broker and the next retry, so paho's own messages are kept for debugging only.
_PAHO_LOG = logging.getLogger(f"{__name__}.paho")
_PAHO_LOG.setLevel(logging.CRITICAL)

_SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}


def broker_address(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a broker URL: ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

    Raises :class:`ConfigError` (key ``radio.mqtt.url``) for anything else.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"not a broker URL: {exc}", key="radio.mqtt.url") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ConfigError(
            f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}",
            key="radio.mqtt.url",
        )
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        raise ConfigError(
            "only scheme, host and port belong in the URL (credentials go in radio.mqtt.username "
            "and password_env / password_file)",
            key="radio.mqtt.url",
        )
    default_port, tls = _SCHEMES[parts.scheme]
    return parts.hostname, port or default_port, tls


def topic_root(prefix: str, swarm_id: int) -> str:
    """The topic under which swarm ``swarm_id`` lives."""
    return f"{prefix}/{swarm_id}"


def telemetry_topic(prefix: str, swarm_id: int, drone_id: int | str) -> str:
    """The retained telemetry topic of one drone (``+`` for all)."""
    return f"{topic_root(prefix, swarm_id)}/telemetry/{drone_id}"


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where the broker is and how to talk to it. Raises :class:`ConfigError` naming the key.

    ``password`` is the resolved secret (the config reads it from a file or an environment
    variable). TLS is on for ``mqtts://`` URLs; ``ca_file`` (else the system store),
    ``cert_file``/``key_file`` (client certificate) and ``tls_insecure`` (skip host name
    verification) tune it.
    """

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    topic_prefix: str = "swarmfl"
    keepalive_s: int = 10
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        broker_address(self.url)
        prefix = self.topic_prefix
        if not prefix or any(c in prefix for c in "#+\0") or prefix.startswith("$"):
            raise ConfigError(
                f"must be a topic without wildcards, got {prefix!r}", key="radio.mqtt.topic_prefix"
            )
        if self.keepalive_s < 1:
            raise ConfigError("must be >= 1", key="radio.mqtt.keepalive_s")
        for name in ("connect_timeout_s", "backoff_initial_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ConfigError("must be > 0", key=f"radio.mqtt.{name}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("must be >= backoff_initial_s", key="radio.mqtt.backoff_max_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("give both cert_file and key_file, or neither", key="radio.mqtt")

    @property
    def host(self) -> str:
        """The broker's host name or address."""
        return broker_address(self.url)[0]

    @property
    def port(self) -> int:
        """The broker's port."""
        return broker_address(self.url)[1]

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for an ``mqtts://`` URL, or None.

        Raises :class:`ConfigError` naming the key if a certificate or key file cannot be read.
        """
        if not broker_address(self.url)[2]:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file: {exc}", key="radio.mqtt.ca_file") from None
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load client certificate: {exc}", key="radio.mqtt.cert_file"
                ) from None
        if self.tls_insecure:
            context.check_hostname = False
        return context


class _Closed:
    """Queue sentinel: the radio has closed."""


_CLOSED = _Closed()


class MqttRadio(DatagramRadio):
    """An unreliable, unordered broadcast of frames to the swarm through an MQTT broker.

    It is also the swarm's presence (the :class:`~swarmfl.radio.discovery.Discovery` protocol):
    :meth:`peers` and :meth:`events` follow the retained presence messages, so a drone whose
    connection drops is reported by :class:`PeerDown` (its last will) and comes back with a
    :class:`PeerUp`. ``me`` is what we announce, signed with a key derived from ``swarm_key``;
    presence not signed with it is ignored, and at most ``max_peers`` peers are kept.

    Use ``async with MqttRadio(...) as radio:`` or :meth:`start` / :meth:`aclose`. Neither
    raises when the broker is unreachable: the radio keeps retrying with backoff, logs each
    failure as one line and reports :attr:`connected`; :meth:`aclose` announces the offline
    presence itself (a clean disconnect does not fire the last will) and never raises. Raises
    :class:`ConfigError` for bad TLS files (from :meth:`start`).
    """

    transport = "mqtt"

    def __init__(
        self,
        *,
        me: PeerInfo,
        settings: MqttSettings,
        link: LinkConfig | None = None,
        swarm_key: bytes,
        inbox_frames: int = 256,
        seed: int | None = None,
        max_peers: int = 256,
    ) -> None:
        # One MQTT message carries up to 64 KiB of a frame: fewer, larger messages over TCP.
        super().__init__(
            drone_id=me.drone_id,
            link=link or LinkConfig(mtu_bytes=65_507, burst_bytes=256 * 1024),
            inbox_frames=inbox_frames,
        )
        if len(swarm_key) < 16:
            raise ConfigError("must be at least 16 bytes", key="swarm_key")
        if max_peers < 1:
            raise ConfigError(f"must be >= 1, got {max_peers}", key="max_peers")
        self.me = me
        self.settings = settings
        self._presence_key = presence_key(swarm_key)
        self.max_peers = max_peers
        root = topic_root(settings.topic_prefix, me.swarm_id)
        self._root = root
        self._frames_topic = f"{root}/frames/{me.drone_id}"
        self._presence_topic = f"{root}/presence/{me.drone_id}"
        self._telemetry_topic = telemetry_topic(settings.topic_prefix, me.swarm_id, me.drone_id)
        self._rng = random.Random(seed)
        self._peers: dict[int, PeerInfo] = {}
        self._events: asyncio.Queue[PeerUp | PeerDown | _Closed] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._telemetry_tasks: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None
        self.connects = 0
        self.connect_failures = 0
        #: Presence records refused: unreadable, unsigned, forged or inconsistent.
        self.presence_malformed = 0
        #: New peers ignored because the table held ``max_peers`` already.
        self.peers_refused = 0
        #: Messages whose handling failed unexpectedly (counted and dropped, never fatal).
        self.messages_dropped = 0
        #: Sessions ended by an unexpected error in the radio's own tasks (then reconnected).
        self.task_failures = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""
        return self._client is not None

    def _payload(self, state: str) -> bytes:
        body: dict[str, Any] = {"state": state, **self.me.txt()}
        return presence_payload(body, self._presence_topic, self._presence_key)

    async def start(self) -> None:
        """Start connecting (in the background). Raises ConfigError for bad TLS files."""
        if self._task is not None or self._closed:
            raise ClosedRadioError("the MQTT radio is already started or closed")
        self._tls = self.settings.tls_context()
        self._task = asyncio.get_running_loop().create_task(
            self._connection_loop(), name=f"mqtt-radio-{self.me.drone_id}"
        )
        self._task.add_done_callback(self._connection_ended)

    def _connection_ended(self, task: asyncio.Task[None]) -> None:
        # The loop only ends when the radio closes; if it ever ends otherwise, say so loudly
        # (the agent's status then shows the broker disconnected, never a silent "running").
        if self._closed or task.cancelled():
            return
        exc = task.exception()
        self.last_error = repr(exc) if exc is not None else "connection task ended"
        log.error(
            "drone %d: MQTT radio stopped: %s", self.me.drone_id, self.last_error, exc_info=exc
        )

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the broker connection is up; False after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._up.wait()
        return self.connected

    # -- the connection -----------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        settings = self.settings
        backoff = settings.backoff_initial_s
        while not self._closed:
            failed: str | None = None
            crashed: str | None = None
            try:
                await self._session()
                backoff = settings.backoff_initial_s  # it was up: start over gently
            except asyncio.CancelledError:
                raise
            except aiomqtt.MqttError as exc:
                self.connect_failures += 1
                self.last_error = failed = str(exc) or type(exc).__name__
            except Exception as exc:
                # A bug or hostile input our parsers missed: never die silently, reconnect.
                self.task_failures += 1
                while isinstance(exc, ExceptionGroup) and exc.exceptions:
                    exc = exc.exceptions[0]  # the task group's: name the failure itself
                self.last_error = crashed = f"{type(exc).__name__}: {exc}"[:200]
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("MQTT session failure", exc_info=True)
            if self._closed:
                return
            # Full jitter keeps a swarm that lost the broker together from reconnecting in step.
            delay_s = backoff * (0.5 + 0.5 * self._rng.random())
            # One line per attempt, with the delay actually waited.
            if failed is not None:
                # Nothing is wrong with us: the broker is unreachable or dropped us.
                log.warning(
                    "drone %d: MQTT broker %s: %s; retrying in %.1f s",
                    self.me.drone_id,
                    settings.url,
                    failed,
                    delay_s,
                )
            elif crashed is not None:
                log.error(
                    "drone %d: MQTT radio session failed (%s); reconnecting in %.1f s",
                    self.me.drone_id,
                    crashed,
                    delay_s,
                )
            await asyncio.sleep(delay_s)
            backoff = min(backoff * 2.0, settings.backoff_max_s)

    async def _session(self) -> None:
        settings = self.settings
        me = self.me
        will = aiomqtt.Will(self._presence_topic, self._payload("offline"), qos=1, retain=True)
        async with aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=f"swarmfl-{me.swarm_id}-{me.drone_id}-{secrets.token_hex(3)}",
            will=will,
            keepalive=settings.keepalive_s,
            timeout=settings.connect_timeout_s,
            tls_context=self._tls,
            clean_session=True,
            max_queued_incoming_messages=4096,
            logger=_PAHO_LOG,
        ) as client:
            # Announce first, subscribe to presence last: the retained presence of the whole
            # swarm (or thousands of fakes) arrives right after that SUBACK, and an
            # acknowledgement queued behind it could time out and fail every session.
            await client.publish(self._presence_topic, self._payload("online"), qos=1, retain=True)
            await client.subscribe(f"{self._root}/frames/+", qos=0)
            await client.subscribe(f"{self._root}/presence/+", qos=1)
            self._client = client
            self.connects += 1
            log.info("drone %d: connected to MQTT broker %s", me.drone_id, settings.url)
            self._up.set()
            self._wake.set()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._read(client))
                    tasks.create_task(self._pump())
            except* aiomqtt.MqttError as group:
                raise group.exceptions[0] from None
            finally:
                self._client = None
                self._up.clear()

    async def _read(self, client: aiomqtt.Client) -> None:
        frames = f"{self._root}/frames/"
        presence = f"{self._root}/presence/"
        mtu = self.link_config.mtu_bytes
        async for message in client.messages:
            try:
                topic = message.topic.value
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    continue
                if topic.startswith(frames):
                    if len(payload) > mtu:
                        self._refuse_oversize(len(payload), topic)  # never copied, never parsed
                        continue
                    self._on_datagram(topic, bytes(payload))
                elif topic.startswith(presence):
                    self._on_presence(topic, payload)
            except Exception as exc:  # hostile input must never stop the reader
                self.messages_dropped += 1
                log.debug("dropped a broker message: %r", exc)

    async def _transmit(self, datagram: bytes, now: float) -> int | None:
        client = self._client
        if client is None:  # the session is over (the pump runs inside it)
            return None
        await client.publish(self._frames_topic, datagram, qos=0)
        return 1

    # -- what we hear -------------------------------------------------------------------------

    def _on_datagram(self, topic: str, data: bytes) -> None:
        sender = topic.rsplit("/", 1)[-1]
        if sender == str(self.me.drone_id):
            return  # the broker echoes our own messages
        self._hear(data, sender)

    def _on_presence(self, topic: str, data: bytes | bytearray) -> None:
        name = topic.rsplit("/", 1)[-1]
        if name == str(self.me.drone_id) or not data:
            return
        try:
            body = read_presence(data, topic, self._presence_key)
            state = body.get("state")
            props: dict[str, str | None] = dict(body)
            peer = PeerInfo.from_txt(props, host=self.settings.host, port=0)
            if str(peer.drone_id) != name or state not in ("online", "offline"):
                raise ValueError(f"presence of {name} says id {peer.drone_id}, state {state!r}")
        except (BrokerRecordError, ValueError) as exc:
            self.presence_malformed += 1
            log.debug("refused presence on %s: %s", topic, exc)
            return
        if peer.swarm_id != self.me.swarm_id or peer.signature != self.me.signature:
            log.debug("ignoring presence of %s: another swarm or model", topic)
            return
        if state == "online":
            if peer.drone_id not in self._peers and len(self._peers) >= self.max_peers:
                self.peers_refused += 1
                log.debug("peer table full (%d): ignoring drone %s", self.max_peers, name)
                return
            if self._peers.get(peer.drone_id) != peer:
                self._peers[peer.drone_id] = peer
                self._events.put_nowait(PeerUp(peer))
        elif self._peers.pop(peer.drone_id, None) is not None:
            self._events.put_nowait(PeerDown(peer.drone_id))

    # -- the Discovery protocol --------------------------------------------------------------

    def peers(self) -> Mapping[int, PeerInfo]:
        """Swarm mates whose presence is online, by drone id (read-only live view)."""
        return MappingProxyType(self._peers)

    async def events(self) -> AsyncIterator[PeerUp | PeerDown]:
        """PeerUp / PeerDown as presence changes; ends when the radio closes. One consumer."""
        while True:
            event = await self._events.get()
            if isinstance(event, _Closed):
                self._events.put_nowait(event)
                return
            yield event

    def publish_telemetry(self, status: Mapping[str, Any]) -> bool:
        """Publish ``status`` (retained) on our telemetry topic; False if not connected now."""
        client = self._client
        if client is None:
            return False
        try:
            body = json.dumps(dict(status), separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            log.warning("cannot encode telemetry: %s", exc)
            return False
        task = asyncio.get_running_loop().create_task(self._publish_quietly(client, body))
        self._telemetry_tasks.add(task)
        task.add_done_callback(self._telemetry_tasks.discard)
        return True

    async def _publish_quietly(self, client: aiomqtt.Client, body: bytes) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self._telemetry_topic, body, qos=0, retain=True, timeout=2.0)

    async def _close_medium(self) -> None:
        # Say goodbye (offline presence), disconnect and stop; never raises.
        if self._telemetry_tasks:  # the last status ("stopped") goes out before the goodbye
            await asyncio.gather(*self._telemetry_tasks, return_exceptions=True)
        client = self._client
        if client is not None:
            # A clean disconnect does not fire the last will: announce it ourselves.
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(
                    self._presence_topic, self._payload("offline"), qos=1, retain=True, timeout=2.0
                )
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._client = None
        self._events.put_nowait(_CLOSED)
