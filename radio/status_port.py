"""The status port: authenticated ``swarmfl status`` queries over UDP, and their answers.

A query is one datagram: :data:`STATUS_REQUEST`, a version byte, a 16-byte nonce and a 16-byte
HMAC-SHA256 tag with the swarm's status key (:func:`status_key`) over all of it and the query's
length, then zero padding up to the size the asker chose (:data:`MIN_REQUEST_BYTES` to
:data:`MAX_REQUEST_BYTES`). An agent's :class:`StatusResponder` answers a query only if

* its source is within its per-source rate (checked first: it is the cheapest check),
* its tag verifies and its nonce is new (no replays of captured queries),
* the agent is within its overall answer rate (a flood from many spoofed sources),

and the answer is never larger than the query that earned it: the record is compacted to fit
(``"truncated": true``), so a spoofed query can never make an agent a traffic amplifier, and
anyone without the key learns nothing. Every query is counted: ``status_answered``,
``status_refused`` (malformed, forged or replayed) and ``status_rate_limited``; refused ones are
logged at debug. Answers carry the nonce and their own tag: the asker (:class:`StatusAsker`)
believes only the agents of its swarm.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from swarmfl.errors import ConfigError, RadioError

__all__ = [
    "DEFAULT_REQUEST_BYTES",
    "MAX_REQUEST_BYTES",
    "MIN_REQUEST_BYTES",
    "STATUS_REPLY",
    "STATUS_REQUEST",
    "StatusAsker",
    "StatusResponder",
    "compact_status",
    "parse_status_reply",
    "query_status",
    "status_key",
    "status_request",
]

log = logging.getLogger(__name__)

STATUS_REQUEST = b"SWFL?"
"""What a status query starts with."""
STATUS_REPLY = b"SWFL="
"""What a status answer starts with."""
_VERSION = b"\x02"
_NONCE_BYTES = 16
_TAG_BYTES = 16
_REQUEST_HEAD = len(STATUS_REQUEST) + 1 + _NONCE_BYTES + _TAG_BYTES
_REPLY_HEAD = len(STATUS_REPLY) + 1 + _NONCE_BYTES + _TAG_BYTES
MIN_REQUEST_BYTES = 256
"""The smallest query answered: room for the minimal record."""
DEFAULT_REQUEST_BYTES = 1400
"""What ``swarmfl status`` asks with first: one datagram on a 1500-byte MTU."""
MAX_REQUEST_BYTES = 8192
"""The largest query answered (and so the largest answer)."""

# What an answer keeps when the whole record does not fit, most important last to go.
_MINIMAL_KEYS = ("v", "t", "drone", "swarm", "state")
_PEER_KEYS = ("peers_announced", "peers_heard", "peers_left", "peers_lost")
_USEFUL_KEYS = (
    "mono",
    "rounds",
    "counter",
    "accuracy",
    "trains",
    "radio",
    "port",
    "uptime_s",
    "bytes_sent",
    "bytes_received",
    "frames_rejected",
    "battery_fraction",
    "lat_deg",
    "lon_deg",
    "alt_rel_m",
    "vehicle",
)


def status_key(swarm_key: bytes) -> bytes:
    """The key status queries and answers are authenticated with, derived from the swarm key.

    A key of its own, so that no status datagram can ever pass for a frame or the reverse.
    """
    return hmac.new(swarm_key, b"swarmfl status key v1", hashlib.sha256).digest()


def _tag(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()[:_TAG_BYTES]


def status_request(key: bytes, nonce: bytes, size: int = DEFAULT_REQUEST_BYTES) -> bytes:
    """The query datagram for ``nonce`` (16 bytes), padded to ``size`` bytes.

    Raises :class:`ConfigError` for a bad nonce or size.
    """
    if len(nonce) != _NONCE_BYTES:
        raise ConfigError(f"must be {_NONCE_BYTES} bytes", key="nonce")
    if not MIN_REQUEST_BYTES <= size <= MAX_REQUEST_BYTES:
        raise ConfigError(
            f"must be in [{MIN_REQUEST_BYTES}, {MAX_REQUEST_BYTES}], got {size}", key="size"
        )
    head = STATUS_REQUEST + _VERSION + nonce
    tag = _tag(key, head, struct.pack("<H", size))
    return (head + tag).ljust(size, b"\0")


def parse_status_reply(key: bytes, datagram: bytes, nonce: bytes) -> dict[str, Any] | None:
    """The status record in an answer to the query with ``nonce``, or None if it is not one.

    None for anything else: another nonce, a bad tag (not of our swarm), malformed JSON.
    """
    head = STATUS_REPLY + _VERSION + nonce
    if not datagram.startswith(head) or len(datagram) < _REPLY_HEAD:
        return None
    tag = datagram[len(head) : _REPLY_HEAD]
    body = datagram[_REPLY_HEAD:]
    if not hmac.compare_digest(tag, _tag(key, b"A", nonce, body)):
        return None
    try:
        status = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return status if isinstance(status, dict) else None


def _encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def compact_status(record: Mapping[str, Any], limit: int) -> bytes | None:
    """``record`` as JSON in at most ``limit`` bytes, or None if not even its id fits.

    What does not fit goes first: every field but the useful ones, then the peer lists, then
    all but the drone's id and state. A compacted record says ``"truncated": true``.
    """
    body = _encode(record)
    if len(body) <= limit:
        return body
    keep = (*_MINIMAL_KEYS, *_PEER_KEYS, *_USEFUL_KEYS)
    for keys in (keep, (*_MINIMAL_KEYS, *_USEFUL_KEYS), _MINIMAL_KEYS):
        smaller = {k: record[k] for k in keys if k in record}
        smaller["truncated"] = True
        body = _encode(smaller)
        if len(body) <= limit:
            return body
    return None


class _Allowance:
    """A count token bucket: ``rate_per_s`` refill, ``burst`` deep, starts full."""

    __slots__ = ("burst", "last_s", "rate_per_s", "tokens")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.last_s = now

    def take(self, now: float) -> bool:
        if now > self.last_s:
            self.tokens = min(self.burst, self.tokens + (now - self.last_s) * self.rate_per_s)
            self.last_s = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class StatusPortStats:
    """What the status port did with the queries it received."""

    answered: int = 0
    refused: int = 0
    rate_limited: int = 0


StatusProvider = Callable[[], Mapping[str, Any]]


class StatusResponder:
    """Answers authenticated status queries with ``provider()``'s record (see the module).

    ``key`` is the status key (:func:`status_key`). Each source (an IP address: a spoofer picks
    its port freely) may send ``source_rate_per_s`` queries a second (bursts of
    ``source_burst``); the agent answers ``overall_rate_per_s`` (bursts of ``overall_burst``)
    in all. ``max_sources`` bounds the per-source table (least recently heard goes first) and
    ``nonce_memory`` the nonces remembered against replays. Never raises for what it receives.
    """

    def __init__(
        self,
        key: bytes,
        provider: StatusProvider,
        *,
        source_rate_per_s: float = 4.0,
        source_burst: int = 8,
        overall_rate_per_s: float = 20.0,
        overall_burst: int = 40,
        max_sources: int = 1024,
        nonce_memory: int = 4096,
    ) -> None:
        if len(key) < 16:
            raise ConfigError("must be at least 16 bytes", key="key")
        self._key = key
        self._provider = provider
        self._source_rate = source_rate_per_s
        self._source_burst = float(source_burst)
        self._overall: _Allowance | None = None
        self._overall_rate = overall_rate_per_s
        self._overall_burst = float(overall_burst)
        self._sources: OrderedDict[Hashable, _Allowance] = OrderedDict()
        self._max_sources = max_sources
        self._nonces: OrderedDict[bytes, None] = OrderedDict()
        self._nonce_memory = nonce_memory
        self.stats = StatusPortStats()

    def counters(self) -> dict[str, int]:
        """``status_answered``, ``status_refused``, ``status_rate_limited`` (status records)."""
        stats = self.stats
        return {
            "status_answered": stats.answered,
            "status_refused": stats.refused,
            "status_rate_limited": stats.rate_limited,
        }

    def _source_allows(self, source: Hashable, now: float) -> bool:
        allowance = self._sources.get(source)
        if allowance is None:
            allowance = _Allowance(self._source_rate, self._source_burst, now)
            self._sources[source] = allowance
            if len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        return allowance.take(now)

    def _refuse(self, source: Hashable, why: str) -> None:
        self.stats.refused += 1
        log.debug("status query from %s refused: %s", source, why)

    def answer(self, data: bytes, source: Hashable, now: float) -> bytes | None:
        """The answer to the datagram ``data`` from ``source`` at ``now`` (s), or None."""
        if not self._source_allows(source, now):
            self.stats.rate_limited += 1
            return None
        size = len(data)
        if not MIN_REQUEST_BYTES <= size <= MAX_REQUEST_BYTES:
            self._refuse(source, f"{size} bytes")
            return None
        head = data[: _REQUEST_HEAD - _TAG_BYTES]
        if not head.startswith(STATUS_REQUEST + _VERSION):
            self._refuse(source, "not a query of this version")
            return None
        tag = data[_REQUEST_HEAD - _TAG_BYTES : _REQUEST_HEAD]
        if not hmac.compare_digest(tag, _tag(self._key, head, struct.pack("<H", size))):
            self._refuse(source, "bad tag")
            return None
        nonce = head[-_NONCE_BYTES:]
        if nonce in self._nonces:
            self._refuse(source, "replayed")
            return None
        self._nonces[nonce] = None
        if len(self._nonces) > self._nonce_memory:
            self._nonces.popitem(last=False)
        if self._overall is None:
            self._overall = _Allowance(self._overall_rate, self._overall_burst, now)
        if not self._overall.take(now):
            self.stats.rate_limited += 1
            return None
        try:
            body = compact_status(dict(self._provider()), size - _REPLY_HEAD)
        except (TypeError, ValueError) as exc:
            log.warning("cannot encode the status record: %s", exc)
            return None
        if body is None:
            self._refuse(source, "record does not fit")
            return None
        self.stats.answered += 1
        return STATUS_REPLY + _VERSION + nonce + _tag(self._key, b"A", nonce, body) + body


class StatusAsker:
    """Asks agents for their status over one UDP socket; answers arrive in :attr:`answers`.

    ``async with StatusAsker(key) as asker:`` then :meth:`ask` any address at any time; each
    verified answer is put on :attr:`answers` as ``((host, port), record)``. Answers that do not
    verify (another swarm's key, a stale nonce, garbage) are dropped. Raises
    :class:`RadioError` if no UDP socket can be opened.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._nonces: dict[bytes, tuple[str, int]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.answers: asyncio.Queue[tuple[tuple[str, int], dict[str, Any]]] = asyncio.Queue()

    async def __aenter__(self) -> StatusAsker:
        asker = self

        class _Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[Any, int]) -> None:
                asker._on_datagram(data)

        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                _Protocol, local_addr=("0.0.0.0", 0), family=socket.AF_INET
            )
        except OSError as exc:
            raise RadioError(f"cannot open a UDP socket: {exc}") from exc
        self._transport = transport
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def ask(self, address: tuple[str, int], size: int = DEFAULT_REQUEST_BYTES) -> None:
        """Send one query of ``size`` bytes to ``address`` (a send failure is logged only)."""
        if self._transport is None:
            raise RadioError("the status asker is not open")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        self._nonces[nonce] = address
        try:
            self._transport.sendto(status_request(self._key, nonce, size), address)
        except OSError as exc:
            log.debug("status query to %s failed: %r", address, exc)

    def _on_datagram(self, data: bytes) -> None:
        start = len(STATUS_REPLY) + 1
        nonce = data[start : start + _NONCE_BYTES]
        address = self._nonces.get(nonce)
        if address is None:
            return
        record = parse_status_reply(self._key, data, nonce)
        if record is not None:
            del self._nonces[nonce]
            self.answers.put_nowait((address, record))


async def query_status(
    key: bytes,
    addresses: Iterable[tuple[str, int]],
    *,
    timeout_s: float = 1.0,
    size: int = DEFAULT_REQUEST_BYTES,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Ask each of ``addresses`` once; the verified answers received within ``timeout_s``.

    Agents that do not answer are left out. Raises :class:`RadioError` if no UDP socket can be
    opened.
    """
    wanted = set(addresses)
    answers: dict[tuple[str, int], dict[str, Any]] = {}
    async with StatusAsker(key) as asker:
        for address in wanted:
            asker.ask(address, size)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(answers) < len(wanted):
            try:
                async with asyncio.timeout_at(deadline):
                    address, record = await asker.answers.get()
            except TimeoutError:
                break
            answers[address] = record
    return answers
