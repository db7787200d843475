"""``swarmfl status``: the live swarm as a table that fits the terminal, or as JSON lines.

Two ways to see a swarm, matching its radio (see :mod:`swarmfl.field.status_collect`):

* **MQTT**: the agents' retained telemetry and presence on the broker.
* **UDP**: the agents found by zeroconf (or ``--peer``, or a config's static peers), asked with
  status queries authenticated with the swarm key: the command needs the swarm secret
  (``--config``, ``SWARMFL_SECRET``, ``--secret-env`` or ``--secret-file``).

Every drone anyone named is shown, answered or not: a silent one as ``offline`` (no goodbye: a
crash or a lost link) or ``stopped`` (it said goodbye), with the time since it was last heard,
and the output says how many drones were expected and how many answered. The table keeps the
most important columns when the terminal is narrow (80 columns, or a pipe) and says which it
left out; ``--json`` prints every field. ``--watch`` refreshes live (``--count N`` stops after N
refreshes). Fields the table does not know are left to ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmfl.errors import ConfigError, RadioError
from swarmfl.field.status_collect import SwarmView, collect_mqtt, collect_udp

__all__ = ["COLUMNS", "render_table", "run_status", "table_rows"]


def _parse_peer(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}", source="--peer")
    return host, int(port)


def _age(record: dict[str, Any], now: float) -> float | None:
    t = record.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float):
        return None
    return max(0.0, now - t)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _bytes(value: object) -> str:
    # A record off the broker may hold any JSON: a 400-digit int would overflow the division.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**18:
        return "-"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return "-"


def _field(record: dict[str, Any], key: str) -> Any:
    """A field of the record, or of its nested ``vehicle`` record."""
    if key in record:
        return record[key]
    vehicle = record.get("vehicle")
    return vehicle.get(key) if isinstance(vehicle, dict) else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _battery(record: dict[str, Any]) -> str:
    fraction = _number(_field(record, "battery_fraction"))
    if fraction is None:
        battery = _field(record, "battery")  # a fraction, or a record with one
        if isinstance(battery, dict):
            battery = battery.get("fraction", battery.get("remaining"))
        fraction = _number(battery)
    return "-" if fraction is None or not 0 <= fraction <= 1 else f"{fraction * 100:.0f}%"


def _position(record: dict[str, Any]) -> str:
    lat, lon = _number(_field(record, "lat_deg")), _number(_field(record, "lon_deg"))
    if lat is not None and lon is not None:
        alt = _number(_field(record, "alt_rel_m"))
        return f"{lat:.5f},{lon:.5f}" + ("" if alt is None else f" {alt:.0f}m")
    position = _field(record, "position")  # metres, as the simulator reports them
    if isinstance(position, list) and 2 <= len(position) <= 3:
        metres = [_number(v) for v in position]
        if all(v is not None for v in metres):
            return ",".join(f"{v:.0f}" for v in metres if v is not None) + " m"
    return "-"


def _peers(record: dict[str, Any]) -> str:
    heard, announced = record.get("peers_heard"), record.get("peers_announced")
    if not isinstance(heard, dict):
        return "-"
    return f"{len(heard)}/{len(announced)}" if isinstance(announced, list) else str(len(heard))


def _text(key: str) -> Callable[[dict[str, Any]], str]:
    def cell(record: dict[str, Any]) -> str:
        value = record.get(key)
        return "-" if value is None or isinstance(value, dict | list) else str(value)

    return cell


def _accuracy(record: dict[str, Any]) -> str:
    accuracy = _number(record.get("accuracy"))
    return "-" if accuracy is None else f"{accuracy:.3f}"


def _suspects(record: dict[str, Any]) -> str:
    """Suspected attackers' ids, comma-separated ("-": none, or not a list of ids)."""
    value = record.get("suspects")
    if not isinstance(value, list) or not value:
        return "-"
    ids = [str(v) for v in value[:16] if isinstance(v, int) and not isinstance(v, bool)]
    return ",".join(ids) + ("..." if len(value) > 16 else "") if ids else "-"


def _epsilon(record: dict[str, Any]) -> str:
    value = _number(record.get("epsilon"))
    return "-" if value is None else f"{value:.2f}"


# (header, cell, right-justified), most important first: narrow terminals keep a prefix.
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str], bool], ...] = (
    ("drone", _text("drone"), True),
    ("state", _text("state"), False),
    ("heard", lambda r: "-", True),  # filled in with the age (needs ``now``)
    ("acc", _accuracy, True),
    ("peers", _peers, True),
    ("update", _text("counter"), True),
    ("batt", _battery, True),
    ("rounds", _text("rounds"), True),
    ("sent", lambda r: _bytes(r.get("bytes_sent")), True),
    ("recv", lambda r: _bytes(r.get("bytes_received")), True),
    ("rej", _text("frames_rejected"), True),
    ("suspects", _suspects, False),
    ("eps", _epsilon, True),
    ("position", _position, False),
    ("plan", _text("trains"), False),
)
"""The table's columns: header, how a record fills its cell, right-justified or not."""


def table_rows(records: dict[int, dict[str, Any]], now: float) -> list[list[str]]:
    """Every column's cells, one row per drone in id order (``heard``: time since last heard)."""
    rows = []
    for drone in sorted(records):
        record = records[drone]
        row = [cell(record) for _, cell, _ in COLUMNS]
        row[2] = _duration(_age(record, now))
        rows.append(row)
    return rows


def render_table(view: SwarmView, now: float, width: int) -> Any:
    """The view as a rich renderable that fits ``width`` columns: a table of the most important
    columns that fit, then a line saying how many drones answered of those expected, which are
    missing, and which columns did not fit."""
    from rich import box
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

    if not view.records:
        return Text(view.summary())
    rows = table_rows(view.records, now)
    measure = Console(width=10_000, file=io.StringIO())

    def build(count: int) -> Table:
        table = Table(title=view.title, box=box.SIMPLE_HEAD, pad_edge=False)
        for header, _, right in COLUMNS[:count]:
            table.add_column(header, justify="right" if right else "left", no_wrap=True)
        for row in rows:
            table.add_row(*row[:count])
        return table

    count = len(COLUMNS)
    while count > 3 and measure.measure(build(count)).maximum > width:
        count -= 1
    lines = [Text(view.summary())]
    left_out = [header for header, _, _ in COLUMNS[count:]]
    if left_out:
        lines.append(Text(f"not shown (narrow terminal; see --json): {', '.join(left_out)}"))
    return Group(build(count), *lines)


def _secret_key(args: argparse.Namespace, swarm_id: int) -> bytes:
    """The status key for ``swarm_id`` from ``--secret-file`` or ``--secret-env``."""
    from swarmfl.config.drone_file import MAX_SECRET_FILE_BYTES
    from swarmfl.config.loader import read_text_file
    from swarmfl.core.wire import derive_swarm_key
    from swarmfl.radio.status_port import status_key

    if args.secret_file is not None:
        secret = read_text_file(
            Path(args.secret_file),
            max_bytes=MAX_SECRET_FILE_BYTES,
            source="--secret-file",
            key="--secret-file",
        ).strip()
    else:
        secret = os.environ.get(args.secret_env, "")
        if not secret:
            raise ConfigError(
                f"asking agents over UDP needs the swarm secret: set {args.secret_env}, or "
                "use --secret-file or --config",
                source="argument",
            )
    if len(secret) < 16:
        raise ConfigError("the swarm secret has fewer than 16 characters", source="argument")
    return status_key(derive_swarm_key(secret, swarm_id))


async def _collect(args: argparse.Namespace, previous: SwarmView | None) -> SwarmView:
    broker = args.broker
    swarm_id = args.swarm_id
    prefix = args.topic_prefix or "swarmfl"
    interfaces = args.interfaces
    peers = [_parse_peer(text) for text in args.peers]
    username = password = None
    if args.config is not None:
        from swarmfl.config.drone_file import load_drone_config, mqtt_password, parse_drone_config
        from swarmfl.radio.status_port import status_key

        config = parse_drone_config(args.config)
        swarm_id = config.swarm.swarm_id if swarm_id is None else swarm_id
        if config.radio.kind == "mqtt" and broker is None:
            broker = config.radio.mqtt.url
            prefix = args.topic_prefix or config.radio.mqtt.topic_prefix
            username = config.radio.mqtt.username
            password = mqtt_password(config, args.config)
        elif config.radio.kind == "udp":
            key = status_key(load_drone_config(args.config).key)
            browse: int | None = swarm_id
            known: dict[tuple[str, int], int] = {}
            if config.discovery.resolved_kind("udp") == "static":
                known = {(p.host, p.port): p.id for p in config.discovery.peers}
                me = (config.advertised_host() or "127.0.0.1", config.radio.udp.port)
                known[me] = config.drone.id
                browse = None
            else:
                interfaces = interfaces or config.discovery.interfaces
            return await collect_udp(
                browse,
                key,
                peers=peers,
                known=known,
                interfaces=interfaces,
                wait_s=args.wait_s,
                title=f"swarm {swarm_id} (UDP)",
                previous=previous,
            )
    if broker is not None:
        if swarm_id is None:
            raise ConfigError("--broker needs --swarm-id (or --config)", source="argument")
        return await collect_mqtt(
            broker,
            swarm_id,
            prefix=prefix,
            username=username,
            password=password,
            wait_s=args.wait_s,
            previous=previous,
        )
    if swarm_id is None:
        raise ConfigError(
            "say which swarm: --config FILE, --broker URL --swarm-id N, or --swarm-id N "
            "(zeroconf, and --peer HOST:PORT)",
            source="argument",
        )
    return await collect_udp(
        swarm_id,
        _secret_key(args, swarm_id),
        peers=peers,
        interfaces=interfaces,
        wait_s=args.wait_s,
        title=f"swarm {swarm_id} (UDP)",
        previous=previous,
    )


def _json_lines(view: SwarmView, now: float) -> str:
    lines = []
    for drone in sorted(view.records):
        record = dict(view.records[drone])
        age = _age(record, now)
        record["last_heard_s"] = None if age is None else round(age, 3)
        lines.append(json.dumps(record, separators=(",", ":")))
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    """The ``swarmfl status`` command; returns the exit code (1 if no drone answered).

    Raises :class:`ConfigError` for bad arguments or config (the CLI prints one line, exit 2).
    """
    from rich.console import Console
    from rich.live import Live

    for name in ("wait_s", "interval_s"):
        value = getattr(args, name)
        if not 0 < value <= 3600:
            raise ConfigError(f"must be in (0, 3600] s, got {value}", key=f"--{name[:-2]}-s")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"must be at least 1, got {args.count}", key="--count")
    console = Console()
    refreshes = args.count if args.count is not None else (None if args.watch else 1)
    live = Live(console=console, auto_refresh=False) if args.watch and console.is_terminal else None
    view: SwarmView | None = None
    done = 0
    try:
        if live is not None:
            live.start()
        while refreshes is None or done < refreshes:
            if done:
                time.sleep(args.interval_s)
            try:
                view = asyncio.run(_collect(args, view))
            except RadioError as exc:
                print(f"swarmfl: {exc}", file=sys.stderr)
                return 1
            done += 1
            now = time.time()
            if args.json:
                if view.records:
                    print(_json_lines(view, now), flush=True)
                print(f"swarmfl status: {view.summary()}", file=sys.stderr, flush=True)
            elif live is not None:
                live.update(render_table(view, now, console.width), refresh=True)
            else:
                console.print(render_table(view, now, console.width))
    finally:
        if live is not None:
            live.stop()
    if view is None or not view.answered:
        wait = args.wait_s
        print(f"swarmfl: no drone answered within {wait} s", file=sys.stderr)
        return 1
    return 0
