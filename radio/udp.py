"""The UDP radio: frames as real datagrams on a real socket, unicast to the peers discovery finds.

Queueing, fragmentation, the token bucket at ``rate_bps`` and reassembly are the
:class:`~swarmfl.radio.datagram.DatagramRadio` pump every real radio shares. :class:`UdpRadio`
adds the socket: unicast to every peer discovery reports (each extra copy is charged to the
bucket, as airtime is on a unicast mesh), an optional in-process loss injector for tests (this
kernel has no netem), and answers to ``swarmfl status`` queries (:func:`query_status` asks them).

A datagram that is not ours (garbage, truncated, a foreign protocol) is counted, logged at debug
level and dropped; nothing a peer sends can stop the radio. The socket is drained in batches
(:data:`DATAGRAMS_PER_READ` per wake-up) rather than through asyncio's one-callback-per-datagram
transport: under a flood, how cheaply each datagram is read decides how much of the peers'
traffic the kernel drops for a full receive buffer. Whole frames are authenticated later,
by the gossip node.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import random
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

from swarmfl.errors import ConfigError, RadioError
from swarmfl.radio.datagram import DatagramRadio
from swarmfl.radio.link import LinkConfig

__all__ = [
    "STATUS_REPLY",
    "STATUS_REQUEST",
    "STATUS_REQUEST_BYTES",
    "UdpRadio",
    "parse_status_reply",
    "query_status",
    "status_request",
]

log = logging.getLogger(__name__)

#: A status query: this prefix, an 8-byte nonce, zero padding to STATUS_REQUEST_BYTES.
STATUS_REQUEST = b"SWFL?"
#: A status answer: this prefix, the query's nonce, then the status as UTF-8 JSON.
STATUS_REPLY = b"SWFL="
#: Queries are padded so that an answer is never much larger than the query that caused it
#: (a spoofed query must not turn an agent into a traffic amplifier).
STATUS_REQUEST_BYTES = 512
_STATUS_REPLY_MAX_BYTES = 3 * STATUS_REQUEST_BYTES
_NONCE_BYTES = 8


def status_request(nonce: bytes) -> bytes:
    """The datagram that asks an agent for its status (``nonce``: 8 bytes)."""
    if len(nonce) != _NONCE_BYTES:
        raise ConfigError(f"must be {_NONCE_BYTES} bytes", key="nonce")
    return (STATUS_REQUEST + nonce).ljust(STATUS_REQUEST_BYTES, b"\0")


def parse_status_reply(datagram: bytes, nonce: bytes) -> dict[str, Any] | None:
    """The status in an answer to the query with ``nonce``, or None if it is not one."""
    head = STATUS_REPLY + nonce
    if not datagram.startswith(head):
        return None
    try:
        status = json.loads(datagram[len(head) :].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return status if isinstance(status, dict) else None


StatusProvider = Callable[[], Mapping[str, Any]]


#: Datagrams read per wake-up of the socket reader before yielding to the event loop. Draining
#: the socket in a loop costs a fraction of asyncio's one-callback-per-datagram transport, which
#: is what decides how much of a flood an agent can read (and so how little of its peers'
#: traffic the kernel drops for it); the cap keeps other tasks running during a flood.
DATAGRAMS_PER_READ = 256
_MAX_DATAGRAM_BYTES = 65_535


class UdpRadio(DatagramRadio):
    """An unreliable, unordered broadcast of frames over UDP to the peers discovery reports.

    No ordering, no delivery guarantee, no duplicate suppression. Use ``async with
    UdpRadio(...) as radio:`` or :meth:`start` / :meth:`aclose`. Each frame is queued, fragmented
    and throttled by the shared :class:`~swarmfl.radio.datagram.DatagramRadio` pump (``link``:
    its settings), then sent to every destination set with :meth:`set_peer` (it is a
    :class:`~swarmfl.radio.base.UnicastRadio`). ``loss`` drops that fraction of the datagrams
    heard, on purpose, seeded by ``seed`` (for tests). ``status`` answers ``swarmfl status``
    queries when given. ``inbox_frames`` bounds the frames heard but not yet read.

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
        status: StatusProvider | None = None,
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
        self._sock: socket.socket | None = None
        self._pump_task: asyncio.Task[None] | None = None

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
            loop.add_reader(sock.fileno(), self._read_ready)
        except (OSError, ValueError) as exc:
            sock.close()
            raise RadioError(f"cannot open UDP {self.host}:{self.port}: {exc}") from exc
        self._sock = sock
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
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    # -- the medium ---------------------------------------------------------------------------

    async def _transmit(self, datagram: bytes, now: float) -> int | None:
        sock = self._sock
        if sock is None:
            return None
        destinations = list(self._peers.values())
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
        """Drain up to DATAGRAMS_PER_READ datagrams from the socket (called by the loop)."""
        sock = self._sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        on_datagram = self._on_datagram
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
            on_datagram(data, addr)
            if self._sock is None:  # closed by what the datagram triggered
                return

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
        if self._status is None or self._sock is None:
            return
        if len(data) < STATUS_REQUEST_BYTES:
            log.debug("status query from %s too short (%d bytes)", addr, len(data))
            return
        nonce = data[len(STATUS_REQUEST) : len(STATUS_REQUEST) + _NONCE_BYTES]
        try:
            status = dict(self._status())
            body = json.dumps(status, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            log.warning("cannot encode status: %s", exc)
            return
        head = STATUS_REPLY + nonce
        if len(head) + len(body) > _STATUS_REPLY_MAX_BYTES:
            # Keep the answer small: the per-peer details go first.
            status.pop("peers_heard", None)
            status.pop("peers_announced", None)
            body = json.dumps(status, separators=(",", ":"), allow_nan=False).encode()
            if len(head) + len(body) > _STATUS_REPLY_MAX_BYTES:
                return
        try:
            self._sock.sendto(head + body, addr)
        except OSError as exc:
            log.debug("status answer to %s failed: %r", addr, exc)


async def query_status(
    addresses: list[tuple[str, int]], *, timeout_s: float = 1.0
) -> dict[tuple[str, int], dict[str, Any]]:
    """Ask the agents at ``addresses`` for their status over UDP; wait up to ``timeout_s``.

    Returns the answers received, by address. Agents that do not answer are left out. Raises
    :class:`RadioError` if no UDP socket can be opened.
    """
    loop = asyncio.get_running_loop()
    nonce = secrets.token_bytes(_NONCE_BYTES)
    answers: dict[tuple[str, int], dict[str, Any]] = {}
    done = asyncio.Event()
    wanted = len(set(addresses))

    class _Query(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[Any, int]) -> None:
            status = parse_status_reply(data, nonce)
            if status is not None:
                answers[(str(addr[0]), int(addr[1]))] = status
                if len(answers) >= wanted:
                    done.set()

    try:
        transport, _ = await loop.create_datagram_endpoint(
            _Query, local_addr=("0.0.0.0", 0), family=socket.AF_INET
        )
    except OSError as exc:
        raise RadioError(f"cannot open a UDP socket: {exc}") from exc
    try:
        request = status_request(nonce)
        for address in set(addresses):
            try:
                transport.sendto(request, address)
            except OSError as exc:
                log.debug("status query to %s failed: %r", address, exc)
        if addresses:
            try:
                async with asyncio.timeout(timeout_s):
                    await done.wait()
            except TimeoutError:
                pass
    finally:
        transport.close()
    return answers
