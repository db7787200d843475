"""What ``swarmfl status`` knows of a live swarm: who exists, who answered, who went silent.

A drone is *expected* as soon as any source names it: an mDNS answer, the peer lists
(``peers_announced``, ``peers_heard``, ``peers_left``, ``peers_lost``) of an agent that
answered, the broker's presence or telemetry, ``--peer`` or a config's static peers.
Collection goes on while new drones keep appearing, up to the wait limit, and stops early once
every drone named by anyone has answered and nothing new appeared for a moment. A drone that
was expected and did not answer is kept in the view, never dropped: ``answered: false``,
``state`` ``"stopped"`` if it said goodbye (its mDNS goodbye heard by a peer, or its last
telemetry said "stopped" before its offline presence) or ``"offline"`` if it went silent
without one (a crash, a lost link), and ``t`` the last time anyone heard it.

* **UDP** (:func:`collect_udp`): browse mDNS and ask every agent found with authenticated status
  queries (:mod:`swarmfl.radio.status_port`), re-asking the silent ones.
* **MQTT** (:func:`collect_mqtt`): the retained telemetry and presence of the swarm.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmfl.errors import RadioError
from swarmfl.radio.broker_records import MAX_TELEMETRY_BYTES, BrokerRecordError, parse_record

__all__ = ["SwarmView", "collect_mqtt", "collect_udp", "view_of"]

_RETRY_S = 0.5  # re-ask a silent agent this often (a datagram can be lost)
_TICK_S = 0.05
_GIVE_UP_ASKS = 3  # asked this often, a drone its peers report gone is not waited for
_PEER_LISTS = ("peers_announced", "peers_heard", "peers_left", "peers_lost")
_MAX_PEER_IDS = 10_000  # what one answer may name (a hostile record cannot grow the view more)


@dataclass
class SwarmView:
    """The swarm as ``swarmfl status`` saw it: one record per expected drone, by id.

    Every record has ``drone``, ``state`` and ``answered``; answered ones are the agent's own
    status record, the others say what is known: ``t`` (last heard, wall-clock s, or absent),
    ``goodbye`` and ``named_by``.
    """

    title: str
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    silent_addresses: list[tuple[str, int]] = field(default_factory=list)
    """Addresses asked (``--peer``, mDNS) that never answered."""

    @property
    def expected(self) -> int:
        """How many drones someone named."""
        return len(self.records)

    @property
    def answered(self) -> list[int]:
        """The drones that answered, in id order."""
        return sorted(d for d, r in self.records.items() if r.get("answered"))

    @property
    def missing(self) -> list[int]:
        """The drones named by someone that did not answer, in id order."""
        return sorted(d for d, r in self.records.items() if not r.get("answered"))

    def summary(self) -> str:
        """One line: expected, answered, and each missing drone with its state."""
        line = f"{len(self.answered)} of {self.expected} drones answered"
        missing = [f"{d} ({self.records[d].get('state', 'offline')})" for d in self.missing]
        if missing:
            line += f"; missing: {', '.join(missing)}"
        if self.silent_addresses:
            silent = ", ".join(f"{host}:{port}" for host, port in self.silent_addresses)
            line += f"; no answer from {silent}"
        return line


def _drone_id(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 2**32:
        return value
    if isinstance(value, str) and value.isdecimal() and value.isascii() and len(value) <= 10:
        return _drone_id(int(value))
    return None


def named_peers(record: Mapping[str, Any]) -> set[int]:
    """The drone ids a status record names in its peer lists (bounded, malformed ones skipped)."""
    named: set[int] = set()
    for key in _PEER_LISTS:
        peers = record.get(key)
        if isinstance(peers, list | dict):
            for value in list(peers)[:_MAX_PEER_IDS]:
                drone = _drone_id(value)
                if drone is not None:
                    named.add(drone)
    return named


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _peer_hints(
    answered: Iterable[Mapping[str, Any]], drone: int
) -> tuple[float | None, float | None]:
    """When the answering agents last heard ``drone`` and when it said goodbye (wall s)."""
    heard_at = left_at = None
    for record in answered:
        t = _number(record.get("t"))
        if t is None:
            continue
        for key in ("peers_heard", "peers_lost", "peers_left"):
            table = record.get(key)
            age = _number(table.get(str(drone))) if isinstance(table, dict) else None
            if age is None:
                continue
            at = t - age
            if key != "peers_left":
                heard_at = at if heard_at is None else max(heard_at, at)
            else:
                left_at = at if left_at is None else max(left_at, at)
    return heard_at, left_at


def _peer_ids(record: Mapping[str, Any], key: str) -> set[int]:
    table = record.get(key)
    if not isinstance(table, dict):
        return set()
    ids = (_drone_id(value) for value in list(table)[:_MAX_PEER_IDS])
    return {drone for drone in ids if drone is not None}


def view_of(
    title: str,
    answers: Mapping[int, Mapping[str, Any]],
    named_by: Mapping[int, Iterable[str]],
    previous: SwarmView | None = None,
) -> SwarmView:
    """The view from the records that answered and who named which drone.

    A drone named but silent gets a record from the hints: the answering agents' peer lists,
    and ``previous`` (the last refresh of ``--watch``), whose records are remembered.
    """
    view = SwarmView(title)
    for drone, record in answers.items():
        view.records[drone] = {**record, "answered": True}
    silent = set(named_by) | (set(previous.records) if previous is not None else set())
    for drone in sorted(silent - set(answers)):
        heard_at, left_at = _peer_hints(answers.values(), drone)
        before = previous.records.get(drone) if previous is not None else None
        if before is not None:
            t = _number(before.get("t"))
            if t is not None:
                heard_at = t if heard_at is None else max(heard_at, t)
            if before.get("goodbye") or before.get("state") == "stopped":
                left_at = left_at if left_at is not None else t
        goodbye = left_at is not None and (heard_at is None or left_at >= heard_at - 1.0)
        if goodbye and left_at is not None:
            # its goodbye is the last thing heard of it
            heard_at = left_at if heard_at is None else max(heard_at, left_at)
        silent_record: dict[str, Any] = {
            "drone": drone,
            "state": "stopped" if goodbye else "offline",
            "answered": False,
            "goodbye": goodbye,
            "named_by": sorted(set(named_by.get(drone, ())) or {"an earlier refresh"}),
        }
        if heard_at is not None:
            silent_record["t"] = round(heard_at, 3)
        view.records[drone] = silent_record
    return view


async def collect_udp(
    swarm_id: int | None,
    key: bytes,
    *,
    peers: Iterable[tuple[str, int]] = (),
    known: Mapping[tuple[str, int], int] | None = None,
    interfaces: list[str] | None = None,
    wait_s: float = 5.0,
    settle_s: float = 0.5,
    title: str = "agents (UDP)",
    previous: SwarmView | None = None,
) -> SwarmView:
    """Ask the swarm's agents for their status over UDP; the view after at most ``wait_s``.

    The agents are ``peers`` plus, with a ``swarm_id``, those found by zeroconf while
    collecting; ``known`` names the drone at some of those addresses (a static peer list), so
    that a silent one is shown as a missing drone. Queries are authenticated with ``key`` (the
    status key); answers of another swarm are dropped. Stops early when every drone named by
    anyone has answered and nothing new appeared for ``settle_s``. Raises :class:`RadioError`
    if zeroconf or a UDP socket fails.
    """
    from swarmfl.radio.discovery import ZeroconfDiscovery
    from swarmfl.radio.status_port import (
        DEFAULT_REQUEST_BYTES,
        MAX_REQUEST_BYTES,
        StatusAsker,
    )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    named_by: dict[int, set[str]] = {}
    addresses: dict[tuple[str, int], str] = {address: "--peer" for address in peers}
    asked_at: dict[tuple[str, int], float] = {}
    asks: dict[tuple[str, int], int] = {}
    drone_at: dict[tuple[str, int], int] = dict(known or {})  # the drone said to be there
    for configured, drone_id in drone_at.items():
        addresses.setdefault(configured, "config")
        named_by.setdefault(drone_id, set()).add("config")
    enlarged: set[tuple[str, int]] = set()  # re-asked with a larger query for a whole record
    done: set[tuple[str, int]] = set()
    heard_from: set[tuple[str, int]] = set()
    answers: dict[int, dict[str, Any]] = {}
    heard_live: set[int] = set()  # drones some answering agent holds a live replica of
    reported_gone: set[int] = set()  # ... or reports lost or gone
    last_change = loop.time()
    async with contextlib.AsyncExitStack() as stack:
        asker = await stack.enter_async_context(StatusAsker(key))
        browser = None
        if swarm_id is not None:
            browser = await stack.enter_async_context(
                ZeroconfDiscovery.browser(swarm_id, interfaces=interfaces)
            )
        while True:
            now = loop.time()
            if browser is not None:
                for peer in list(browser.peers().values()):
                    if peer.drone_id not in named_by:
                        last_change = now
                    named_by.setdefault(peer.drone_id, set()).add("mDNS")
                    if peer.port and (peer.host, peer.port) not in addresses:
                        addresses[(peer.host, peer.port)] = "mDNS"
                        drone_at[(peer.host, peer.port)] = peer.drone_id
                        last_change = now
            for address in addresses:
                if address not in done and now - asked_at.get(address, -_RETRY_S) >= _RETRY_S:
                    asked_at[address] = now
                    asks[address] = asks.get(address, 0) + 1
                    asker.ask(
                        address,
                        MAX_REQUEST_BYTES if address in enlarged else DEFAULT_REQUEST_BYTES,
                    )
            # A drone its answering peers report gone (a goodbye, or no live replica of it),
            # asked a few times if we know where, is not worth waiting for.
            gone = reported_gone - heard_live - set(answers)
            settled = {
                a for a, d in drone_at.items() if d in gone and asks.get(a, 0) >= _GIVE_UP_ASKS
            }
            unsettled = {d for a, d in drone_at.items() if a not in settled}
            waiting = [
                d for d in named_by if d not in answers and (d not in gone or d in unsettled)
            ]
            pending = [
                a
                for a in addresses
                if a not in done and a not in settled and drone_at.get(a) not in answers
            ]
            if answers and not waiting and not pending and now - last_change >= settle_s:
                break
            if now >= deadline:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_TICK_S, max(0.0, deadline - now))):
                    address, record = await asker.answers.get()
                    heard_from.add(address)
                    drone = _drone_id(record.get("drone"))
                    if drone is None or (swarm_id is not None and record.get("swarm") != swarm_id):
                        done.add(address)
                        continue
                    if record.get("truncated") and address not in enlarged:
                        enlarged.add(address)
                        asked_at.pop(address, None)  # ask again at once, for the whole record
                    else:
                        done.add(address)
                    if drone not in answers:
                        last_change = loop.time()
                    answers[drone] = record
                    drone_at[address] = drone
                    heard_live |= _peer_ids(record, "peers_heard")
                    reported_gone |= _peer_ids(record, "peers_lost") | _peer_ids(
                        record, "peers_left"
                    )
                    named_by.setdefault(drone, set()).add(f"{addresses[address]} answer")
                    for mate in named_peers(record) - {drone}:
                        if mate not in named_by:
                            last_change = loop.time()
                        named_by.setdefault(mate, set()).add(f"drone {drone}")
    view = view_of(title, answers, named_by, previous)
    view.silent_addresses = sorted(set(addresses) - heard_from)
    return view


async def collect_mqtt(
    url: str,
    swarm_id: int,
    *,
    prefix: str = "swarmfl",
    username: str | None = None,
    password: str | None = None,
    wait_s: float = 5.0,
    settle_s: float = 0.3,
    previous: SwarmView | None = None,
) -> SwarmView:
    """The swarm from its MQTT telemetry and presence (retained), after at most ``wait_s``.

    Stops early once every drone with a presence has telemetry and nothing new arrived for
    ``settle_s``. A drone whose presence is offline did not answer: ``stopped`` if its last
    telemetry said so (a clean stop), else ``offline`` (its last will: a crash or a lost link).
    Raises :class:`RadioError` if the broker cannot be reached and
    :class:`~swarmfl.errors.ConfigError` for a bad URL.
    """
    import aiomqtt

    from swarmfl.radio.mqtt import MqttSettings, telemetry_topic, topic_root

    settings = MqttSettings(url=url, username=username, password=password, topic_prefix=prefix)
    root = topic_root(prefix, swarm_id)
    telemetry: dict[int, dict[str, Any]] = {}
    presence: dict[int, str] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    last_change = loop.time()
    try:
        async with aiomqtt.Client(
            settings.host,
            settings.port,
            username=username,
            password=password,
            tls_context=settings.tls_context(),
            timeout=settings.connect_timeout_s,
        ) as client:
            await client.subscribe(telemetry_topic(prefix, swarm_id, "+"))
            await client.subscribe(f"{root}/presence/+")
            messages = aiter(client.messages)
            while True:
                now = loop.time()
                # an online drone's retained telemetry may still be on its way; an offline one
                # without any has nothing more to send
                waiting = [d for d, on in presence.items() if on == "online" and d not in telemetry]
                if (telemetry or presence) and not waiting and now - last_change >= settle_s:
                    break
                if now >= deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(_TICK_S, deadline - now)):
                        message = await anext(messages)
                        if _take_message(message.topic.value, message.payload, telemetry, presence):
                            last_change = loop.time()
    except aiomqtt.MqttError as exc:
        raise RadioError(f"cannot reach MQTT broker {url}: {exc}") from None
    answers = {d: r for d, r in telemetry.items() if presence.get(d) != "offline"}
    for drone, state in presence.items():
        if state == "online" and drone not in telemetry:  # an agent without telemetry
            answers[drone] = {"drone": drone, "state": "online"}
    named_by: dict[int, set[str]] = {d: {"presence"} for d in presence}
    for drone, record in telemetry.items():
        named_by.setdefault(drone, set()).add("telemetry")
        for peer in named_peers(record) - {drone}:
            named_by.setdefault(peer, set()).add(f"drone {drone}")
    view = view_of(f"swarm {swarm_id} (MQTT {url})", answers, named_by, previous)
    for drone in view.missing:
        last = telemetry.get(drone)
        if last is None:
            continue
        goodbye = last.get("state") == "stopped"
        view.records[drone] = {
            **last,
            "state": "stopped" if goodbye else "offline",
            "answered": False,
            "goodbye": goodbye,
            "named_by": sorted(named_by.get(drone, ())),
        }
    return view


#: Drones read from a broker at most (retained fakes by the thousand must not eat the memory).
MAX_BROKER_RECORDS = 4096


def _take_message(
    topic: str, payload: object, telemetry: dict[int, dict[str, Any]], presence: dict[int, str]
) -> bool:
    """Take one broker message; True if it told something new. Never raises on bad input."""
    drone = _drone_id(topic.rsplit("/", 1)[-1])
    if drone is None or not isinstance(payload, bytes | bytearray) or not payload:
        return False
    try:
        body = parse_record(payload, MAX_TELEMETRY_BYTES)  # total: size cap, depth, encoding
    except BrokerRecordError:
        return False
    if (
        drone not in presence
        and drone not in telemetry
        and (len(presence) + len(telemetry) >= 2 * MAX_BROKER_RECORDS)
    ):
        return False  # retained fakes by the thousand must not eat the memory
    if "/presence/" in topic:
        state = "offline" if body.get("state") == "offline" else "online"
        new = presence.get(drone) != state
        presence[drone] = state
        return new
    if "/telemetry/" in topic and body.get("drone") == drone:
        new = drone not in telemetry
        telemetry[drone] = body
        return new
    return False
