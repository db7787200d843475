"""``swarmfl status``: the live swarm as a table.

Two ways to see a swarm, matching its radio:

* **MQTT**: every agent publishes its status record, retained, on
  ``{prefix}/{swarm}/telemetry/{drone}`` and its presence on ``.../presence/{drone}``; the
  command subscribes to both for ``--wait-s`` seconds (retained messages arrive at once).
* **UDP**: the command finds the swarm's agents by zeroconf (or takes ``--peer HOST:PORT``) and
  asks each for its status record with a status query datagram.

The records are those of the agents' JSON-lines status logs
(see :meth:`swarmfl.field.FieldAgent.status`). Telemetry and status answers are not
authenticated: they are for people watching, and the agents never act on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from swarmfl.errors import ConfigError, RadioError

__all__ = ["collect_mqtt", "collect_udp", "render_table", "run_status", "table_rows"]


def _parse_peer(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}", source="--peer")
    return host, int(port)


async def collect_mqtt(
    url: str,
    swarm_id: int,
    *,
    prefix: str = "swarmfl",
    username: str | None = None,
    password: str | None = None,
    wait_s: float = 2.0,
) -> dict[int, dict[str, Any]]:
    """Status records of swarm ``swarm_id`` from its MQTT telemetry, by drone id.

    A drone whose presence is offline (its last will, or a clean goodbye) gets
    ``state = "offline"``. Raises :class:`RadioError` if the broker cannot be reached and
    :class:`ConfigError` for a bad URL.
    """
    import aiomqtt

    from swarmfl.radio.mqtt import MqttSettings, telemetry_topic, topic_root

    settings = MqttSettings(url=url, username=username, password=password, topic_prefix=prefix)
    root = topic_root(prefix, swarm_id)
    records: dict[int, dict[str, Any]] = {}
    offline: set[int] = set()
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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    async for message in client.messages:
                        _take_message(message.topic.value, message.payload, records, offline)
    except aiomqtt.MqttError as exc:
        raise RadioError(f"cannot reach MQTT broker {url}: {exc}") from None
    for drone in offline:
        records.setdefault(drone, {"drone": drone})["state"] = "offline"
    return records


def _take_message(
    topic: str, payload: object, records: dict[int, dict[str, Any]], offline: set[int]
) -> None:
    name = topic.rsplit("/", 1)[-1]
    if not name.isdecimal() or not isinstance(payload, bytes | bytearray) or not payload:
        return
    drone = int(name)
    try:
        body = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return
    if not isinstance(body, dict):
        return
    if "/presence/" in topic:
        if body.get("state") == "offline":
            offline.add(drone)
        else:
            offline.discard(drone)
    elif "/telemetry/" in topic and body.get("drone") == drone:
        records[drone] = body


async def collect_udp(
    swarm_id: int | None,
    *,
    peers: Iterable[tuple[str, int]] = (),
    interfaces: list[str] | None = None,
    wait_s: float = 2.0,
) -> dict[int, dict[str, Any]]:
    """Status records from agents asked over UDP, by drone id.

    The agents are ``peers``, plus, with a ``swarm_id``, those of that swarm found by zeroconf
    within ``wait_s``. Raises :class:`RadioError` if zeroconf or a UDP socket fails.
    """
    from swarmfl.radio.discovery import ZeroconfDiscovery
    from swarmfl.radio.udp import query_status

    addresses = set(peers)
    if swarm_id is not None:
        async with ZeroconfDiscovery.browser(swarm_id, interfaces=interfaces) as browser:
            await asyncio.sleep(wait_s)  # mDNS answers trickle in: listen for a while
            addresses |= {(p.host, p.port) for p in browser.peers().values() if p.port}
    answers = await query_status(sorted(addresses), timeout_s=max(wait_s, 0.5))
    records = {}
    for status in answers.values():
        drone = status.get("drone")
        if isinstance(drone, int) and (swarm_id is None or status.get("swarm") == swarm_id):
            records[drone] = status
    return records


def _age(record: dict[str, Any], now: float) -> float | None:
    t = record.get("t")
    return max(0.0, now - t) if isinstance(t, int | float) else None


def _bytes(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000  # type: ignore[assignment]
    return "-"


def table_rows(records: dict[int, dict[str, Any]], now: float) -> list[list[str]]:
    """The table's rows, one per drone in id order (see :func:`render_table` for the columns)."""
    rows = []
    for drone in sorted(records):
        r = records[drone]
        age = _age(r, now)
        accuracy = r.get("accuracy")
        heard = r.get("peers_heard")
        rows.append(
            [
                str(drone),
                str(r.get("state", "-")),
                "-" if age is None else f"{age:.1f} s",
                str(r.get("rounds", "-")),
                str(r.get("counter", "-")),
                f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-",
                str(len(heard)) if isinstance(heard, dict) else "-",
                _bytes(r.get("bytes_sent")),
                _bytes(r.get("bytes_received")),
                str(r.get("frames_rejected", "-")),
                str(r.get("trains", "-")),
                _suspects(r.get("suspects")),
                _epsilon(r.get("epsilon")),
            ]
        )
    return rows


def _suspects(value: object) -> str:
    """Suspected attackers' ids, comma-separated ("-": none, or not a list of ids)."""
    if not isinstance(value, list) or not value:
        return "-"
    ids = [str(v) for v in value[:16] if isinstance(v, int) and not isinstance(v, bool)]
    return ",".join(ids) + ("..." if len(value) > 16 else "") if ids else "-"


def _epsilon(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.2f}"
    return "-"


_COLUMNS = (
    "drone",
    "state",
    "last heard",
    "rounds",
    "update",
    "accuracy",
    "peers",
    "sent",
    "received",
    "rejected",
    "plan",
    "suspects",
    "epsilon",
)


def render_table(records: dict[int, dict[str, Any]], title: str, now: float) -> Any:
    """A rich Table of the drones: state, last heard, rounds, accuracy, peers, bytes, plan."""
    from rich.table import Table

    table = Table(title=title)
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("state", "plan") else "right")
    for row in table_rows(records, now):
        table.add_row(*row)
    return table


async def _collect(args: argparse.Namespace) -> tuple[dict[int, dict[str, Any]], str]:
    broker = args.broker
    swarm_id = args.swarm_id
    prefix = args.topic_prefix or "swarmfl"
    interfaces = args.interfaces
    peers = [_parse_peer(text) for text in args.peers]
    username = password = None
    if args.config is not None:
        from swarmfl.config.drone_file import mqtt_password, parse_drone_config

        config = parse_drone_config(args.config)
        swarm_id = config.swarm.swarm_id if swarm_id is None else swarm_id
        if config.radio.kind == "mqtt" and broker is None:
            broker = config.radio.mqtt.url
            prefix = args.topic_prefix or config.radio.mqtt.topic_prefix
            username = config.radio.mqtt.username
            password = mqtt_password(config, args.config)
        elif config.radio.kind == "udp":
            if config.discovery.resolved_kind("udp") == "static":
                peers += [(p.host, p.port) for p in config.discovery.peers]
                host = config.advertised_host() or "127.0.0.1"
                peers.append((host, config.radio.udp.port))
                swarm_id_for_browse = None
            else:
                swarm_id_for_browse = swarm_id
                interfaces = interfaces or config.discovery.interfaces
            records = await collect_udp(
                swarm_id_for_browse, peers=peers, interfaces=interfaces, wait_s=args.wait_s
            )
            return records, f"swarm {swarm_id} (UDP)"
    if broker is not None:
        if swarm_id is None:
            raise ConfigError("--broker needs --swarm-id (or --config)", source="argument")
        records = await collect_mqtt(
            broker,
            swarm_id,
            prefix=prefix,
            username=username,
            password=password,
            wait_s=args.wait_s,
        )
        return records, f"swarm {swarm_id} (MQTT {broker})"
    if swarm_id is None and not peers:
        raise ConfigError(
            "say which swarm: --config FILE, --broker URL --swarm-id N, --swarm-id N "
            "(zeroconf) or --peer HOST:PORT",
            source="argument",
        )
    records = await collect_udp(swarm_id, peers=peers, interfaces=interfaces, wait_s=args.wait_s)
    return records, f"swarm {swarm_id} (UDP)" if swarm_id is not None else "agents (UDP)"


def run_status(args: argparse.Namespace) -> int:
    """The ``swarmfl status`` command; returns the exit code (1 if no drone answered).

    Raises :class:`ConfigError` for bad arguments or config (the CLI prints one line, exit 2).
    """
    from rich.console import Console

    console = Console()
    while True:
        try:
            records, title = asyncio.run(_collect(args))
        except RadioError as exc:
            print(f"swarmfl: {exc}", file=sys.stderr)
            return 1
        now = time.time()
        if args.json:
            for drone in sorted(records):
                record = dict(records[drone])
                age = _age(record, now)
                record["last_heard_s"] = None if age is None else round(age, 3)
                print(json.dumps(record, separators=(",", ":")), flush=True)
        else:
            if args.watch:
                console.clear()
            console.print(render_table(records, title, now))
        if not args.watch:
            if not records:
                print(f"swarmfl: no drone answered within {args.wait_s} s", file=sys.stderr)
                return 1
            return 0
