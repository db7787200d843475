"""Who is around: neighbour discovery over mDNS/DNS-SD (zeroconf), or from a fixed list.

Discovery is a *hint only*. An mDNS announcement is unauthenticated: anyone on the link can claim
any drone id, at any address, or say goodbye for another drone. The agent merges a peer's model
only once that peer's frames authenticate, and a unicast radio sends model frames only where
authenticated frames came from (:mod:`swarmfl.radio.peers`); discovery just says where to probe.
The table of announced peers is bounded (:data:`MAX_PEERS`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, Self, runtime_checkable

from zeroconf import Error as ZeroconfError
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from swarmfl.errors import ConfigError, RadioError

__all__ = [
    "MAX_PEERS",
    "SERVICE_TYPE",
    "TXT_VERSION",
    "Discovery",
    "DiscoveryEvent",
    "PeerDown",
    "PeerInfo",
    "PeerUp",
    "StaticDiscovery",
    "ZeroconfDiscovery",
]

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_swarmfl._udp.local."
TXT_VERSION = "1"
SIGNATURE_BYTES = 8
TRANSPORTS = frozenset({"udp", "mqtt"})
_MAX_TRAINS_CHARS = 64
_MAX_ID = 2**32 - 1
MAX_PEERS = 4096
"""Announced peers a :class:`ZeroconfDiscovery` holds; announcements of more are counted and
ignored (anyone on the link can announce, so the table must be bounded)."""


@dataclass(frozen=True)
class PeerInfo:
    """What a drone announces about itself.

    ``signature`` is the 8-byte model signature (hash of the architecture); ``trains`` a short
    text saying which part of the model it trains (``"full"``, ``"suffix:2"``); ``transport`` the
    radio it gossips on. ``host`` is an address or host name, ``port`` its radio port (0 if the
    transport has none, as with MQTT).

    Raises :class:`~swarmfl.errors.ConfigError` naming the field if a value is out of range.
    """

    drone_id: int
    swarm_id: int
    signature: bytes
    host: str
    port: int
    trains: str
    transport: str

    def __post_init__(self) -> None:
        for name in ("drone_id", "swarm_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
                raise ConfigError(f"must be an int in [0, {_MAX_ID}], got {value!r}", key=name)
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise ConfigError(f"must be {SIGNATURE_BYTES} bytes", key="signature")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("must be a non-empty string", key="host")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError(f"must be an int, got {self.port!r}", key="port")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"must be in [0, 65535], got {self.port}", key="port")
        if (
            not isinstance(self.trains, str)
            or not 0 < len(self.trains) <= _MAX_TRAINS_CHARS
            or not self.trains.isascii()
            or not self.trains.isprintable()
        ):
            raise ConfigError(
                f"must be 1 to {_MAX_TRAINS_CHARS} printable ASCII characters", key="trains"
            )
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                f"must be one of {sorted(TRANSPORTS)}, got {self.transport!r}", key="transport"
            )

    @property
    def service_name(self) -> str:
        """The DNS-SD instance name this peer registers under."""
        return f"swarmfl-{self.swarm_id}-{self.drone_id}.{SERVICE_TYPE}"

    def txt(self) -> dict[str, str]:
        """The TXT record properties announced for this peer."""
        return {
            "id": str(self.drone_id),
            "swarm": str(self.swarm_id),
            "sig": self.signature.hex(),
            "trains": self.trains,
            "transport": self.transport,
            "v": TXT_VERSION,
        }

    @classmethod
    def from_txt(cls, properties: Mapping[str, str | None], *, host: str, port: int) -> PeerInfo:
        """Build a PeerInfo from resolved TXT properties, address and port.

        Raises :class:`ValueError` (a :class:`~swarmfl.errors.ConfigError` for out-of-range
        values) if the TXT record is malformed or of another version.
        """
        version = properties.get("v")
        if version != TXT_VERSION:
            raise ValueError(f"TXT version {version!r}, expected {TXT_VERSION!r}")
        fields = {}
        for key in ("id", "swarm", "sig", "trains", "transport"):
            value = properties.get(key)
            if value is None:
                raise ValueError(f"TXT key {key!r} missing")
            fields[key] = value
        for key in ("id", "swarm"):
            if not fields[key].isdecimal() or not fields[key].isascii():
                raise ValueError(f"TXT key {key!r} is not a decimal number: {fields[key]!r}")
        return cls(
            drone_id=int(fields["id"]),
            swarm_id=int(fields["swarm"]),
            signature=bytes.fromhex(fields["sig"]),
            host=host,
            port=port,
            trains=fields["trains"],
            transport=fields["transport"],
        )


@dataclass(frozen=True)
class PeerUp:
    """A peer appeared, or its announcement changed (then ``peer`` is the new one)."""

    peer: PeerInfo


@dataclass(frozen=True)
class PeerDown:
    """A peer withdrew its announcement (or its record expired)."""

    drone_id: int


DiscoveryEvent = PeerUp | PeerDown
"""What :meth:`Discovery.events` yields."""


@runtime_checkable
class Discovery(Protocol):
    """Who is around: the current peers and a stream of changes.

    A hint only: peers are merged only once their frames authenticate (the node's job).
    """

    def peers(self) -> Mapping[int, PeerInfo]:
        """The peers currently known, by drone id (a read-only snapshot view)."""
        ...

    def events(self) -> AsyncIterator[PeerUp | PeerDown]:
        """Changes in who is around, until the discovery closes."""
        ...

    async def aclose(self) -> None:
        """Stop announcing and browsing; :meth:`events` ends."""
        ...


class _Closed:
    """Queue sentinel: the discovery has closed."""


_CLOSED = _Closed()


class ZeroconfDiscovery:
    """Announce ourselves and find swarm mates over mDNS/DNS-SD with python-zeroconf.

    Use as ``async with ZeroconfDiscovery(me, interfaces=[...]) as d:``. On entry it registers
    ``me`` (instance name ``swarmfl-{swarm}-{id}``, TXT ``id swarm sig trains transport v``) and
    browses :data:`SERVICE_TYPE`; each new service is resolved and, if it belongs to our swarm and
    model signature and is not us, becomes a :class:`PeerUp`; a withdrawn one a :class:`PeerDown`.
    Malformed TXT records and foreign peers are counted and logged at debug level, never raised.

    mDNS is a hint only: an announcement is unauthenticated, so the agent merges a peer only once
    its frames authenticate.

    ``me.host`` must be an IP address literal (it is announced as the A/AAAA record).
    ``interfaces`` are the addresses to run mDNS on (``None`` for all). With ``announce=False``
    it only browses (``me`` then names just the swarm and model to look for, see :meth:`browser`);
    with ``match_signature=False`` peers of any model signature in our swarm are reported.
    A drone that vanishes without a goodbye (crash, out of range) stays in :meth:`peers` until
    its PTR record expires, which python-zeroconf stretches to at least 1,125 s: liveness is the
    node's call, from the frames it hears, not discovery's.

    Raises :class:`~swarmfl.errors.ConfigError` for a bad ``me.host`` or timeout, and
    :class:`~swarmfl.errors.RadioError` if zeroconf fails to start, register or browse (including
    a name conflict, if zeroconf's probe sees another drone announcing the same swarm and id).
    """

    def __init__(
        self,
        me: PeerInfo,
        *,
        interfaces: list[str] | None = None,
        resolve_timeout_s: float = 3.0,
        announce: bool = True,
        match_signature: bool = True,
    ) -> None:
        try:
            ipaddress.ip_address(me.host)
        except ValueError as exc:
            raise ConfigError(
                f"must be an IP address literal, got {me.host!r}", key="host"
            ) from exc
        if not resolve_timeout_s > 0:
            raise ConfigError("must be > 0", key="resolve_timeout_s")
        self.me = me
        self._announce = announce
        self._match_signature = match_signature
        self._interfaces = interfaces
        self._resolve_timeout_ms = int(resolve_timeout_s * 1000)
        self._peers: dict[int, PeerInfo] = {}
        self._name_to_id: dict[str, int] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[PeerUp | PeerDown | _Closed] = asyncio.Queue()
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._closed = False
        self._malformed = 0
        self._foreign = 0
        self._unresolved = 0
        self._overflow = 0

    @classmethod
    def browser(cls, swarm_id: int, *, interfaces: list[str] | None = None) -> ZeroconfDiscovery:
        """A discovery that announces nothing and reports every drone of ``swarm_id``.

        For observers such as ``swarmfl status``: any model signature, no drone id of its own.
        """
        watcher = PeerInfo(0, swarm_id, bytes(SIGNATURE_BYTES), "127.0.0.1", 0, "observer", "udp")
        return cls(watcher, interfaces=interfaces, announce=False, match_signature=False)

    @property
    def malformed_count(self) -> int:
        """Services of our type whose TXT record could not be parsed."""
        return self._malformed

    @property
    def foreign_count(self) -> int:
        """Services ignored because they belong to another swarm or model signature."""
        return self._foreign

    @property
    def overflow_count(self) -> int:
        """Announcements ignored because :data:`MAX_PEERS` peers were held already."""
        return self._overflow

    @property
    def unresolved_count(self) -> int:
        """Services that did not answer resolution within the timeout."""
        return self._unresolved

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Register our service and start browsing. Raises RadioError (see the class)."""
        if self._aiozc is not None or self._closed:
            raise RadioError("zeroconf discovery already started or closed")
        me = self.me
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            me.service_name,
            port=me.port,
            properties=me.txt(),
            server=f"swarmfl-{me.swarm_id}-{me.drone_id}.local.",
            parsed_addresses=[me.host],
        )
        try:
            if self._interfaces is None:
                self._aiozc = AsyncZeroconf()
            else:
                # zeroconf picks the IP version(s) from the addresses listed.
                self._aiozc = AsyncZeroconf(interfaces=self._interfaces)
            if self._announce:
                announced = await self._aiozc.async_register_service(info)
                await announced
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
            )
        except (ZeroconfError, OSError) as exc:
            await self._shutdown()
            raise RadioError(f"zeroconf: cannot announce {me.service_name}: {exc!r}") from exc
        except BaseException:
            await self._shutdown()
            raise

    def peers(self) -> Mapping[int, PeerInfo]:
        """The swarm mates currently announced, by drone id (read-only live view)."""
        return MappingProxyType(self._peers)

    async def events(self) -> AsyncIterator[PeerUp | PeerDown]:
        """PeerUp / PeerDown as services come and go; ends when the discovery closes.

        Meant for one consumer: each event is delivered once.
        """
        while True:
            event = await self._queue.get()
            if isinstance(event, _Closed):
                # Leave the sentinel for any other iterator, so every one of them ends.
                self._queue.put_nowait(event)
                return
            yield event

    def _on_service_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Called by zeroconf on the event loop; must not raise or block.
        if self._closed or (self._announce and name.lower() == self.me.service_name.lower()):
            return
        if state_change is ServiceStateChange.Removed:
            pending = self._resolving.pop(name, None)
            if pending is not None:
                pending.cancel()
            self._drop(name)
            return
        # Added or Updated: (re)resolve; a newer request supersedes a pending one.
        pending = self._resolving.pop(name, None)
        if pending is not None:
            pending.cancel()
        task = asyncio.get_running_loop().create_task(
            self._resolve(zeroconf, service_type, name), name=f"swarmfl-resolve {name}"
        )
        self._resolving[name] = task
        task.add_done_callback(lambda t: self._forget_task(name, t))

    def _forget_task(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]
        if not task.cancelled() and task.exception() is not None:
            logger.warning("resolving %s failed: %r", name, task.exception())

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        try:
            info = AsyncServiceInfo(service_type, name)
            found = await info.async_request(zeroconf, self._resolve_timeout_ms)
        except (ZeroconfError, OSError) as exc:
            self._unresolved += 1
            logger.debug("cannot resolve %s: %r", name, exc)
            return
        if not found or info.port is None:
            self._unresolved += 1
            logger.debug("no answer resolving %s", name)
            return
        addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
        if not addresses:
            self._unresolved += 1
            logger.debug("no address for %s", name)
            return
        try:
            peer = PeerInfo.from_txt(info.decoded_properties, host=addresses[0], port=info.port)
        except ValueError as exc:
            self._malformed += 1
            logger.debug("malformed TXT for %s: %s", name, exc)
            self._drop(name)
            return
        if name.lower() != peer.service_name.lower():
            # Names derive from (swarm, id), so one name is one drone and PeerDown is exact.
            self._malformed += 1
            logger.debug("TXT of %s claims to be %s", name, peer.service_name)
            self._drop(name)
            return
        me = self.me
        if peer.swarm_id != me.swarm_id or (
            self._match_signature and peer.signature != me.signature
        ):
            # Also the way out for a mate that switched models: its update drops it here.
            self._foreign += 1
            logger.debug(
                "ignoring %s: swarm %d, signature %s", name, peer.swarm_id, peer.signature.hex()
            )
            self._drop(name)
            return
        if self._announce and peer.drone_id == me.drone_id:
            return
        self._accept(name, peer)

    def _drop(self, name: str) -> None:
        drone_id = self._name_to_id.pop(name, None)
        if drone_id is not None and self._peers.pop(drone_id, None) is not None:
            self._queue.put_nowait(PeerDown(drone_id))

    def _accept(self, name: str, peer: PeerInfo) -> None:
        if peer.drone_id not in self._peers and len(self._peers) >= MAX_PEERS:
            self._overflow += 1
            logger.debug("ignoring %s: %d peers announced already", name, MAX_PEERS)
            return
        self._name_to_id[name] = peer.drone_id
        if self._peers.get(peer.drone_id) != peer:
            self._peers[peer.drone_id] = peer
            self._queue.put_nowait(PeerUp(peer))

    async def aclose(self) -> None:
        """Withdraw our announcement (goodbye packets), stop browsing and end :meth:`events`.

        Idempotent. Raises :class:`~swarmfl.errors.RadioError` if zeroconf fails to shut down
        (the discovery is closed all the same).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self._shutdown()
        finally:
            self._queue.put_nowait(_CLOSED)

    async def _shutdown(self) -> None:
        tasks = list(self._resolving.values())
        self._resolving.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        aiozc, self._aiozc = self._aiozc, None
        browser, self._browser = self._browser, None
        if aiozc is None:
            return
        try:
            if browser is not None:
                await browser.async_cancel()
            # async_close unregisters every service, which sends the goodbyes peers see as
            # PeerDown, then closes the sockets.
            await aiozc.async_close()
        except (ZeroconfError, OSError) as exc:
            raise RadioError(f"zeroconf: error while closing: {exc!r}") from exc


class StaticDiscovery:
    """A fixed peer list from configuration, for links where multicast is blocked.

    ``events()`` yields a :class:`PeerUp` for each peer, then waits until :meth:`aclose`.
    Raises :class:`~swarmfl.errors.ConfigError` if a key differs from its peer's drone id.
    """

    def __init__(self, peers: Mapping[int, PeerInfo]) -> None:
        for key, peer in peers.items():
            if key != peer.drone_id:
                raise ConfigError(
                    f"key {key} differs from the peer's drone_id {peer.drone_id}", key="peers"
                )
        self._peers = dict(peers)
        self._closed = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def peers(self) -> Mapping[int, PeerInfo]:
        """The configured peers, by drone id (read-only)."""
        return MappingProxyType(self._peers)

    async def events(self) -> AsyncIterator[PeerUp | PeerDown]:
        """A PeerUp for each configured peer, then nothing until closed."""
        for peer in self._peers.values():
            if self._closed.is_set():
                return
            yield PeerUp(peer)
        await self._closed.wait()

    async def aclose(self) -> None:
        """End every :meth:`events` iterator. Idempotent."""
        self._closed.set()
