"""The UDP radio: frames as real datagrams on a real socket, unicast to the peers discovery finds
(:class:`UdpRadio`) or, opt-in, multicast once to every neighbour in range
(:class:`MulticastUdpRadio`: one transmission per datagram on a shared channel).

Queueing, fragmentation, the token bucket at ``rate_bps`` and reassembly are the
:class:`~swarmfl.radio.datagram.DatagramRadio` pump every real radio shares. :class:`UdpRadio`
adds the socket: unicast to every confirmed peer (each extra copy is charged to the
bucket, as airtime is on a unicast mesh), an optional in-process loss injector for tests (this
kernel has no netem), and answers to authenticated ``swarmfl status`` queries
(:mod:`swarmfl.radio.status_port`).

A datagram that is not ours (garbage, truncated, a foreign protocol) is counted, logged at debug
level and dropped; nothing a peer sends can stop the radio. The socket is drained in batches
(:data:`DATAGRAMS_PER_READ` per wake-up) rather than through asyncio's one-callback-per-datagram
transport: under a flood, how cheaply each datagram is read decides how much of the peers'
traffic the kernel drops for a full receive buffer. Whole frames are authenticated later,
by the gossip node.

Discovery only *hints* where a peer may be (:class:`~swarmfl.radio.peers.PeerTable`): model
frames go to a drone's address once an authenticated frame of that drone came from it
(:meth:`UdpRadio.confirm_peer`); hinted addresses get a small HELLO now and then
(:meth:`UdpRadio.probe`), outside the token bucket, which is spent on confirmed peers alone.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Mapping
from typing import Any, NotRequired, Required, TypedDict, Unpack

from swarmfl.errors import ConfigError, RadioError
from swarmfl.radio.datagram import DatagramRadio
from swarmfl.radio.fragment import MAGIC as _FRAGMENT_MAGIC
from swarmfl.radio.fragment import VERSION as _FRAGMENT_VERSION
from swarmfl.radio.guard import SourceGuard
from swarmfl.radio.link import LinkConfig
from swarmfl.radio.peers import PeerTable
from swarmfl.radio.status_port import STATUS_REQUEST, StatusResponder

__all__ = ["RECEIVE_BUFFER_BYTES", "MulticastUdpRadio", "UdpRadio", "UdpRadioOptions"]

log = logging.getLogger(__name__)


#: Datagrams read per wake-up of the socket reader before yielding to the event loop. Draining
#: the socket in a loop costs a fraction of asyncio's one-callback-per-datagram transport, which
#: is what decides how much of a flood an agent can read (and so how little of its peers'
#: traffic the kernel drops for it); the cap keeps other tasks running during a flood.
DATAGRAMS_PER_READ = 256
_MAX_DATAGRAM_BYTES = 65_535
#: The socket receive buffer asked for: room for a few whole frames from every peer, and for a
#: flood's backlog while the agent is busy elsewhere. Linux grants at most twice
#: ``net.core.rmem_max`` (here 4 MiB asked, 8 MiB granted with the common 4 MiB limit; with the
#: default 208 KiB limit, 416 KiB): :attr:`UdpRadio.receive_buffer_bytes` says what it got.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


class UdpRadioOptions(TypedDict, total=False):
    """The keyword arguments of :class:`UdpRadio` (which :class:`MulticastUdpRadio` passes on)."""

    drone_id: Required[int]
    host: NotRequired[str]
    port: NotRequired[int]
    link: NotRequired[LinkConfig | None]
    inbox_frames: NotRequired[int]
    loss: NotRequired[float]
    seed: NotRequired[int]
    status: NotRequired[StatusResponder | None]
    peer_table: NotRequired[PeerTable | None]
    frame_check: NotRequired[Callable[[bytes], bool] | None]
    guard: NotRequired[SourceGuard | None]


class UdpRadio(DatagramRadio):
    """An unreliable, unordered broadcast of frames over UDP to the peers discovery reports.

    No ordering, no delivery guarantee, no duplicate suppression. Use ``async with
    UdpRadio(...) as radio:`` or :meth:`start` / :meth:`aclose`. Each frame is queued, fragmented
    and throttled by the shared :class:`~swarmfl.radio.datagram.DatagramRadio` pump (``link``:
    its settings), then sent to every destination set with :meth:`set_peer` (it is a
    :class:`~swarmfl.radio.base.UnicastRadio`). ``loss`` drops that fraction of the datagrams
    heard, on purpose, seeded by ``seed`` (for tests). ``status`` answers ``swarmfl status``
    queries when given (its counters join :meth:`counters`). ``inbox_frames`` bounds the
    frames heard but not yet read.
    ``peer_table`` holds where it sends (default: a :class:`PeerTable` with its defaults).
    ``frame_check`` (the swarm tag check, :func:`~swarmfl.core.wire.frame_tag_check`) refuses
    forged frames before they are charged to a source's frame budget; ``guard`` (default: a
    :class:`~swarmfl.radio.guard.SourceGuard` with its defaults) budgets the faults of each
    source address and drops the datagrams of an address over its budget as they are read,
    unless the address was vouched for by an authenticated frame (:meth:`confirm_peer`).

    Raises :class:`ConfigError` for a bad ``loss`` or ``drone_id``; :meth:`start` raises
    :class:`ConfigError` if the port is in use or the address cannot be bound, and
    :class:`RadioError` for any other socket failure.
    """

    transport = "udp"

    def __init__(
        self,
        *,
        drone_id: int,
        host: str = "0.0.0.0",
        port: int = 0,
        link: LinkConfig | None = None,
        inbox_frames: int = 256,
        loss: float = 0.0,
        seed: int = 0,
        status: StatusResponder | None = None,
        peer_table: PeerTable | None = None,
        frame_check: Callable[[bytes], bool] | None = None,
        guard: SourceGuard | None = None,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ConfigError(f"must be in [0, 1), got {loss!r}", key="loss")
        super().__init__(
            drone_id=drone_id,
            link=link or LinkConfig(),
            inbox_frames=inbox_frames,
            frame_check=frame_check,
        )
        self.guard = guard if guard is not None else SourceGuard()
        #: The socket receive buffer the kernel granted (0 before :meth:`start`).
        self.receive_buffer_bytes = 0
        self.host = host
        self.port = port
        self._loss = loss
        self._rng = random.Random(seed)
        self._status = status
        self.peer_table = peer_table if peer_table is not None else PeerTable()
        self._sock: socket.socket | None = None
        self._pump_task: asyncio.Task[None] | None = None
        # Each datagram once, however many copies went out: ``bytes_sent`` (every copy: the
        # airtime) / ``unique_bytes_sent`` is the copies per datagram (the number of peers in
        # unicast, 1 in multicast).
        self.unique_datagrams_sent = 0
        self.unique_bytes_sent = 0

    @property
    def local_port(self) -> int:
        """The port actually bound (useful with ``port=0``). Raises RadioError before start."""
        if self._sock is None:
            raise RadioError("the UDP radio is not started")
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        """Bind the socket and start sending. See the class for the errors raised."""
        if self._sock is not None or self._closed:
            raise RadioError("the UDP radio is already started or closed")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
            self.receive_buffer_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"UDP port {self.port} on {self.host} is already in use "
                    "(another agent running? pick another radio.udp.port)",
                    key="radio.udp.port",
                ) from None
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
                raise ConfigError(
                    f"cannot bind UDP {self.host}:{self.port}: {exc.strerror}",
                    key="radio.udp.host",
                ) from None
            raise RadioError(f"cannot open UDP {self.host}:{self.port}: {exc}") from exc
        try:
            loop.add_reader(sock.fileno(), self._read_ready)
        except (OSError, ValueError) as exc:
            sock.close()
            raise RadioError(f"cannot open UDP {self.host}:{self.port}: {exc}") from exc
        self._sock = sock
        log.debug(
            "udp radio on %s:%d: receive buffer %d bytes (asked %d)",
            self.host,
            self.local_port,
            self.receive_buffer_bytes,
            RECEIVE_BUFFER_BYTES,
        )
        self._pump_task = loop.create_task(self._pump(), name=f"udp-radio-{self.drone_id}")

    # -- destinations -------------------------------------------------------------------------

    def set_peer(self, drone_id: int, host: str, port: int) -> None:
        """Discovery says drone ``drone_id`` may be at ``host:port``: a candidate, probed with
        HELLOs, sent model frames only once confirmed (see :meth:`confirm_peer`)."""
        if drone_id != self.drone_id:
            self.peer_table.hint(drone_id, (host, port), asyncio.get_running_loop().time())

    def remove_peer(self, drone_id: int) -> None:
        """Discovery says ``drone_id`` left: drop its candidates. A confirmed peer stays until
        its authenticated frames stop (a goodbye is unauthenticated)."""
        self.peer_table.withdraw(drone_id)

    def confirm_peer(self, drone_id: int, link_sender: object, now: float) -> None:
        """A fresh authenticated frame of ``drone_id`` came from ``link_sender`` (the source
        address :meth:`frames` reported): send model frames to it there, and vouch for the
        address (its forged datagrams are then never penalized unread, see
        :class:`~swarmfl.radio.guard.SourceGuard`)."""
        if drone_id != self.drone_id and isinstance(link_sender, tuple) and len(link_sender) >= 2:
            self.guard.vouch(link_sender, now)
            self.peer_table.confirm(drone_id, (str(link_sender[0]), int(link_sender[1])), now)

    def probe(self, hello: Callable[[int], bytes], now: float) -> int:
        """Send ``hello(drone_id)`` (a small HELLO for that drone) to each candidate due for a
        probe; return how many. Probes bypass the queue and the token bucket (those are for
        confirmed peers); the peer table bounds how many go out per call and how often one
        address is tried."""
        due = self.peer_table.due_probes(now)
        for drone_id, address in due:
            self._send_direct(hello(drone_id), address)
        return len(due)

    def reply(self, frame: bytes, link_sender: object) -> None:
        """Send ``frame`` (a small control frame) straight back to ``link_sender``, the source
        of a frame heard, outside the queue and the bucket: an EPOCH frame for a drone that
        restarted without its epoch, which is no destination until its frames are taken."""
        if isinstance(link_sender, tuple) and len(link_sender) >= 2:
            self._send_direct(frame, (str(link_sender[0]), int(link_sender[1])))

    def _send_direct(self, frame: bytes, address: tuple[str, int]) -> None:
        sock = self._sock
        if sock is None:
            return
        for datagram in self._link.fragmenter.split(frame):
            try:
                sock.sendto(datagram, address)
            except OSError as exc:
                self.stats.send_errors += 1
                log.debug("udp send to %s failed: %r", address, exc)
                return
            self.stats.datagrams_sent += 1
            self.stats.bytes_sent += len(datagram)
            self.unique_datagrams_sent += 1  # one transmission, to one address
            self.unique_bytes_sent += len(datagram)

    def probes_due(self, now: float) -> bool:
        """Whether a candidate is due for a probe (so that a HELLO is worth building)."""
        return self.peer_table.has_due_probes(now)

    @property
    def peers(self) -> Mapping[int, tuple[str, int]]:
        """Current destinations (confirmed peers) by drone id."""
        now = asyncio.get_running_loop().time()
        return self.peer_table.confirmed(now)

    def peer_counters(self) -> dict[str, int]:
        """The peer table's counters: ``peers_confirmed``, ``peer_candidates``,
        ``probes_sent``, ``peer_address_changes``, ``peers_silent_expired``; and the source
        guard's ``datagrams_penalized`` (see :class:`~swarmfl.radio.guard.SourceGuard`)."""
        table = self.peer_table
        return {
            "peers_confirmed": len(table),
            "peer_candidates": table.candidate_count,
            "probes_sent": table.stats.probes_sent,
            "peer_address_changes": table.stats.address_changes,
            "peers_silent_expired": table.stats.silent_expired,
            # The guard's one counter in status lines (a status answer must fit one datagram):
            # the others are on ``guard.counters()``.
            "datagrams_penalized": self.guard.datagrams_penalized,
        }

    async def _close_medium(self) -> None:
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    # -- the medium ---------------------------------------------------------------------------

    async def _transmit(self, datagram: bytes, now: float) -> int | None:
        sock = self._sock
        if sock is None:
            return None
        destinations = self.peer_table.destinations(now)
        if destinations:
            self.unique_datagrams_sent += 1
            self.unique_bytes_sent += len(datagram)
        if len(destinations) > 1:
            # Each extra copy costs airtime too: charge it (the bucket may go into debt, which
            # delays what follows, so the long-run rate holds).
            self._link.bucket.consume(len(datagram) * (len(destinations) - 1), now)
        sent = 0
        for address in destinations:
            try:
                sock.sendto(datagram, address)
            except OSError as exc:  # a full socket buffer, an unresolvable host name
                self.stats.send_errors += 1
                log.debug("udp send to %s failed: %r", address, exc)
                continue
            sent += 1
        return sent

    def _read_ready(self) -> None:
        """Drain up to DATAGRAMS_PER_READ datagrams from the socket (called by the loop).

        The clock is read once per batch (a batch takes well under a millisecond). A datagram
        from a penalized address is dropped right after it is read, with one dict lookup (and
        counted in ``datagrams_penalized``); everything else goes to :meth:`_on_datagram`.
        """
        sock = self._sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        on_datagram = self._on_datagram
        guard = self.guard
        penalized = guard.penalized
        now = asyncio.get_running_loop().time()
        dropped = 0
        try:
            for _ in range(DATAGRAMS_PER_READ):
                try:
                    data, addr = recvfrom(_MAX_DATAGRAM_BYTES)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    # ICMP errors reported on the socket (a peer's port closed): the medium's.
                    self.stats.send_errors += 1
                    log.debug("udp socket error: %r", exc)
                    continue
                if penalized:
                    until = penalized.get(addr)
                    if until is not None:
                        if until > now:
                            dropped += 1
                            continue
                        del penalized[addr]  # the penalty lapsed: heard again
                on_datagram(data, addr, now)
                if self._sock is None:  # closed by what the datagram triggered
                    return
        finally:
            guard.datagrams_penalized += dropped

    def _on_datagram(self, data: bytes, addr: tuple[Any, int], now: float | None = None) -> None:
        if self._closed:
            return
        if data.startswith(STATUS_REQUEST):
            self._answer_status(data, addr)
            return
        if self._loss and self._rng.random() < self._loss:
            self.stats.datagrams_lost_injected += 1
            return
        self._hear(data, addr, now)

    def _fault(self, link_sender: Any, now: float) -> None:
        if self.guard.fault(link_sender, now) and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "udp: %s over its fault budget: its datagrams are dropped unread", link_sender
            )

    def _answer_status(self, data: bytes, addr: tuple[Any, int]) -> None:
        responder, sock = self._status, self._sock
        if responder is None or sock is None:
            return
        reply = responder.answer(data, addr[0], asyncio.get_running_loop().time())
        if reply is not None:
            try:
                sock.sendto(reply, addr)
            except OSError as exc:
                log.debug("status answer to %s failed: %r", addr, exc)

    def counters(self) -> dict[str, int]:
        """The radio's counters, and its status port's when it answers queries."""
        counters = super().counters()
        if self._status is not None:
            counters.update(self._status.counters())
        return counters


class _GroupProtocol(asyncio.DatagramProtocol):
    def __init__(self, radio: MulticastUdpRadio) -> None:
        self._radio = radio

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._radio._on_group_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp multicast socket error: %r", exc)


class MulticastUdpRadio(UdpRadio):
    """The UDP radio in multicast mode: each datagram goes on the air once, to ``group``.

    On a shared radio channel every unicast copy costs airtime; one multicast transmission
    reaches every neighbour in range. Frames are sent from the radio's own socket (bound to
    ``host:port``, which still answers status queries) to ``group:group_port``; a second socket,
    bound to the group and port with ``SO_REUSEADDR`` (several agents on one host may share
    it), joins the group on ``interface`` (an address of the mesh interface; default ``host``,
    or the kernel's choice when ``host`` is a wildcard) and hears the swarm. ``ttl`` bounds the
    hops (1: this link only); ``loopback`` lets agents on this host hear each other (tests).
    Our own datagrams coming back (same sender id in the fragment header) are dropped and
    counted in ``echoes_dropped``. The destinations :meth:`set_peer` records are not used for
    sending: whoever is in range hears. Every other keyword argument is :class:`UdpRadio`'s
    (:class:`UdpRadioOptions`).

    Raises :class:`ConfigError` for a ``group`` that is not an IPv4 multicast address, a bad
    ``ttl`` or ``interface``; :meth:`start` raises :class:`ConfigError` when the group cannot be
    joined on ``interface`` or the port bound, :class:`RadioError` for other socket failures.
    """

    def __init__(
        self,
        *,
        group: str,
        group_port: int,
        interface: str | None = None,
        ttl: int = 1,
        loopback: bool = False,
        **options: Unpack[UdpRadioOptions],
    ) -> None:
        try:
            address = ipaddress.ip_address(group)
        except ValueError:
            address = None
        if address is None or address.version != 4 or not address.is_multicast:
            raise ConfigError(f"must be an IPv4 multicast address, got {group!r}", key="group")
        if not 1 <= group_port <= 65535:
            raise ConfigError(f"must be in 1..65535, got {group_port!r}", key="group_port")
        if not 1 <= ttl <= 255:
            raise ConfigError(f"must be in 1..255, got {ttl!r}", key="ttl")
        super().__init__(**options)
        if interface is None:
            interface = self.host if self.host not in ("", "0.0.0.0") else "0.0.0.0"
        try:
            self._interface_bytes = socket.inet_aton(interface)
        except OSError:
            raise ConfigError(
                f"must be an IPv4 address, got {interface!r}", key="interface"
            ) from None
        self.group = group
        self.group_port = group_port
        self.interface = interface
        self.ttl = ttl
        self.loopback = loopback
        self.echoes_dropped = 0
        self._group_transport: asyncio.DatagramTransport | None = None
        self._own_header = (
            _FRAGMENT_MAGIC + bytes([_FRAGMENT_VERSION]) + self.drone_id.to_bytes(4, "little")
        )

    async def start(self) -> None:
        """Bind the sending socket and join the group. See the class for the errors raised."""
        await super().start()
        try:
            await self._join()
        except BaseException:
            await self.aclose()
            raise

    async def _join(self) -> None:
        sender = self._sock
        assert sender is not None
        group = socket.inet_aton(self.group)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(self.loopback))
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, self._interface_bytes)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind((self.group, self.group_port))
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + self._interface_bytes
            )
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot join multicast group {self.group}:{self.group_port} on interface "
                f"{self.interface}: {exc.strerror}",
                key="radio.udp.multicast_interface",
            ) from None
        loop = asyncio.get_running_loop()
        try:
            self._group_transport, _ = await loop.create_datagram_endpoint(
                lambda: _GroupProtocol(self), sock=sock
            )
        except OSError as exc:
            sock.close()
            raise RadioError(
                f"cannot open multicast {self.group}:{self.group_port}: {exc}"
            ) from exc

    async def _close_medium(self) -> None:
        await super()._close_medium()
        if self._group_transport is not None:
            self._group_transport.close()

    async def _transmit(self, datagram: bytes, now: float) -> int | None:
        sock = self._sock
        if sock is None:
            return None
        # Once, for every neighbour in range: nothing extra is charged to the bucket.
        self.unique_datagrams_sent += 1
        self.unique_bytes_sent += len(datagram)
        try:
            sock.sendto(datagram, (self.group, self.group_port))
        except OSError as exc:
            self.stats.send_errors += 1
            log.debug("udp multicast send failed: %r", exc)
            return 0
        return 1

    def _on_group_datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        if data.startswith(self._own_header):
            self.echoes_dropped += 1  # our own transmission, looped back
            return
        penalized = self.guard.penalized
        if penalized and addr in penalized:
            now = asyncio.get_running_loop().time()
            if penalized[addr] > now:
                self.guard.datagrams_penalized += 1
                return
            del penalized[addr]
        self._on_datagram(data, addr)
