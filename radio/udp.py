"""The UDP radio: frames as real datagrams on a real socket, unicast to the peers discovery finds.

Queueing, fragmentation, the token bucket at ``rate_bps`` and reassembly are the
:class:`~swarmfl.radio.datagram.DatagramRadio` pump every real radio shares. :class:`UdpRadio`
adds the socket: unicast to every peer discovery reports (each extra copy is charged to the
bucket, as airtime is on a unicast mesh), an optional in-process loss injector for tests (this
kernel has no netem), and answers to authenticated ``swarmfl status`` queries
(:mod:`swarmfl.radio.status_port`).

A datagram that is not ours (garbage, truncated, a foreign protocol) is counted, logged at debug
level and dropped; nothing a peer sends can stop the radio. Whole frames are authenticated later,
by the gossip node.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from collections.abc import Mapping
from typing import Any

from swarmfl.errors import ConfigError, RadioError
from swarmfl.radio.datagram import DatagramRadio
from swarmfl.radio.link import LinkConfig
from swarmfl.radio.status_port import STATUS_REQUEST, StatusResponder

__all__ = ["UdpRadio"]

log = logging.getLogger(__name__)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, radio: UdpRadio) -> None:
        self._radio = radio

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._radio._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors reported on the socket (a peer's port closed): the medium's business.
        self._radio.stats.send_errors += 1
        log.debug("udp socket error: %r", exc)


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
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ConfigError(f"must be in [0, 1), got {loss!r}", key="loss")
        super().__init__(drone_id=drone_id, link=link or LinkConfig(), inbox_frames=inbox_frames)
        self.host = host
        self.port = port
        self._loss = loss
        self._rng = random.Random(seed)
        self._status = status
        self._peers: dict[int, tuple[str, int]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._pump_task: asyncio.Task[None] | None = None

    @property
    def local_port(self) -> int:
        """The port actually bound (useful with ``port=0``). Raises RadioError before start."""
        if self._transport is None:
            raise RadioError("the UDP radio is not started")
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        """Bind the socket and start sending. See the class for the errors raised."""
        if self._transport is not None or self._closed:
            raise RadioError("the UDP radio is already started or closed")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Room for a few whole frames from every peer while the agent is busy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
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
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        except OSError as exc:
            sock.close()
            raise RadioError(f"cannot open UDP {self.host}:{self.port}: {exc}") from exc
        self._transport = transport
        self._pump_task = loop.create_task(self._pump(), name=f"udp-radio-{self.drone_id}")

    # -- destinations -------------------------------------------------------------------------

    def set_peer(self, drone_id: int, host: str, port: int) -> None:
        """Send to ``host:port`` as drone ``drone_id`` (replaces its previous address)."""
        if drone_id != self.drone_id:
            self._peers[drone_id] = (host, port)

    def remove_peer(self, drone_id: int) -> None:
        """Stop sending to ``drone_id``."""
        self._peers.pop(drone_id, None)

    @property
    def peers(self) -> Mapping[int, tuple[str, int]]:
        """Current destinations by drone id."""
        return dict(self._peers)

    async def _close_medium(self) -> None:
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()

    # -- the medium ---------------------------------------------------------------------------

    async def _transmit(self, datagram: bytes, now: float) -> int | None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        destinations = list(self._peers.values())
        if len(destinations) > 1:
            # Each extra copy costs airtime too: charge it (the bucket may go into debt, which
            # delays what follows, so the long-run rate holds).
            self._link.bucket.consume(len(datagram) * (len(destinations) - 1), now)
        sent = 0
        for address in destinations:
            try:
                transport.sendto(datagram, address)
            except OSError as exc:  # e.g. an unresolvable host name
                self.stats.send_errors += 1
                log.debug("udp send to %s failed: %r", address, exc)
                continue
            sent += 1
        return sent

    def _on_datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        if self._closed:
            return
        if data.startswith(STATUS_REQUEST):
            self._answer_status(data, addr)
            return
        if self._loss and self._rng.random() < self._loss:
            self.stats.datagrams_lost_injected += 1
            return
        self._hear(data, addr)

    def _answer_status(self, data: bytes, addr: tuple[Any, int]) -> None:
        responder, transport = self._status, self._transport
        if responder is None or transport is None:
            return
        reply = responder.answer(data, addr[0], asyncio.get_running_loop().time())
        if reply is not None:
            transport.sendto(reply, addr)

    def counters(self) -> dict[str, int]:
        """The radio's counters, and its status port's when it answers queries."""
        counters = super().counters()
        if self._status is not None:
            counters.update(self._status.counters())
        return counters
