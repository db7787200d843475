"""``swarmfl status``: who is expected, who answered, the table at 80 columns, argument errors."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import SECRET, Mosquitto, require_mosquitto
from rich.console import Console

from swarmfl.cli import main
from swarmfl.core.wire import derive_swarm_key
from swarmfl.field.status_collect import SwarmView, collect_mqtt, collect_udp, view_of
from swarmfl.field.status_table import COLUMNS, render_table, table_rows
from swarmfl.radio.status_port import StatusResponder, status_key
from swarmfl.radio.udp import UdpRadio

NOW = 1_800_000_000.0
KEY = status_key(derive_swarm_key(SECRET, 7))

RUNNING = {
    "drone": 2,
    "swarm": 7,
    "t": NOW - 1.5,
    "state": "running",
    "rounds": 40,
    "counter": 140,
    "accuracy": 0.9123,
    "peers_announced": [0, 1, 3],
    "peers_heard": {"1": 0.4},
    "peers_lost": {"0": 12.0},
    "peers_left": {"3": 30.0},
    "bytes_sent": 1_234_567,
    "bytes_received": 999,
    "frames_rejected": 3,
    "trains": "full",
    "vehicle": {"battery_fraction": 0.87, "lat_deg": 47.397742, "lon_deg": 8.545594},
    "epsilon": 0.25,  # a field the table does not know: left to --json
}


def test_drones_named_by_peers_are_expected_and_silent_ones_say_why() -> None:
    view = view_of("swarm 7", {2: RUNNING}, {0: {"drone 2"}, 1: {"drone 2"}, 3: {"drone 2"}})
    assert view.expected == 4 and view.answered == [2] and view.missing == [0, 1, 3]
    lost, heard, left = view.records[0], view.records[1], view.records[3]
    # A crash or a lost link: no goodbye, last heard when its peer last had a frame of it.
    assert lost["state"] == "offline" and not lost["goodbye"] and not lost["answered"]
    assert lost["t"] == pytest.approx(NOW - 1.5 - 12.0)
    assert heard["state"] == "offline" and heard["t"] == pytest.approx(NOW - 1.5 - 0.4)
    # A clean stop: its mDNS record was withdrawn.
    assert left["state"] == "stopped" and left["goodbye"]
    assert left["t"] == pytest.approx(NOW - 1.5 - 30.0)  # when it said goodbye
    assert (
        view.summary() == "1 of 4 drones answered; missing: 0 (offline), 1 (offline), 3 (stopped)"
    )


def test_a_drone_that_answered_before_is_remembered_across_refreshes() -> None:
    first = view_of("swarm 7", {2: RUNNING, 4: {"drone": 4, "t": NOW - 1.0}}, {})
    second = view_of("swarm 7", {2: RUNNING}, {}, previous=first)
    assert second.records[4]["state"] == "offline"
    assert second.records[4]["t"] == NOW - 1.0
    assert second.missing == [4]


def test_rows_show_what_is_known_including_battery_and_position() -> None:
    view = view_of("swarm 7", {2: RUNNING}, {0: {"drone 2"}})
    rows = table_rows(view.records, NOW)
    headers = [header for header, _, _ in COLUMNS]
    row = dict(zip(headers, rows[1], strict=True))
    assert row["drone"] == "2" and row["state"] == "running" and row["heard"] == "1.5s"
    assert row["acc"] == "0.912" and row["peers"] == "1/3" and row["batt"] == "87%"
    assert row["position"] == "47.39774,8.54559" and row["sent"] == "1.2 MB"
    offline = dict(zip(headers, rows[0], strict=True))
    assert offline["state"] == "offline" and offline["heard"] == "13.5s"
    assert offline["acc"] == "-"


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_table_fits_the_terminal_and_names_what_it_left_out(width: int) -> None:
    view = view_of("swarm 7", {2: RUNNING}, {0: {"drone 2"}, 3: {"drone 2"}})
    out = io.StringIO()
    console = Console(file=out, width=width)
    console.print(render_table(view, NOW, console.width))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    for word in (
        "drone",
        "state",
        "heard",
        "0.912",
        "offline",
        "stopped",
        "1 of 3 drones answered",
    ):
        assert word in text
    assert ("not shown" in text) == (width < 120)


# -- real sockets ----------------------------------------------------------------------------


def agent_radio(record: dict[str, Any], key: bytes = KEY) -> UdpRadio:
    drone = record["drone"]
    return UdpRadio(drone_id=drone, host="127.0.0.1", status=StatusResponder(key, lambda: record))


@pytest.mark.asyncio
@pytest.mark.network
@pytest.mark.timeout(120)
async def test_agents_are_asked_and_peers_they_name_are_expected() -> None:
    mine = {"drone": 4, "swarm": 7, "t": NOW, "peers_announced": [5, 6], "peers_lost": {"6": 40}}
    also = {"drone": 5, "swarm": 7, "t": NOW, "peers_announced": [4]}
    theirs = {"drone": 9, "swarm": 8, "t": NOW}
    other_key = status_key(derive_swarm_key(SECRET, 8))
    async with agent_radio(mine) as a, agent_radio(also) as b, agent_radio(theirs, other_key) as c:
        peers = [("127.0.0.1", r.local_port) for r in (a, b)]
        # Drone 6 is named by drone 4, which lost it 40 s ago; nobody knows its address. Once
        # 4 and 5 have answered there is nothing left to wait for: collection stops early (a
        # 600 s wait limit does not hold up this test, whose own timeout is 120 s).
        view = await collect_udp(7, KEY, peers=peers, interfaces=["127.0.0.1"], wait_s=600)
        assert view.answered == [4, 5] and view.missing == [6]
        assert view.records[6]["state"] == "offline"
        assert view.records[6]["t"] == pytest.approx(NOW - 40)
        assert "drone 4" in view.records[6]["named_by"]
        # An agent of another swarm (another key) never answers: it shows as a silent address.
        address = ("127.0.0.1", c.local_port)
        view = await collect_udp(7, KEY, peers=[address], interfaces=["127.0.0.1"], wait_s=1.0)
        assert view.records == {} and view.silent_addresses == [address]
        assert view.summary() == f"0 of 0 drones answered; no answer from 127.0.0.1:{c.local_port}"
        assert c.counters()["status_refused"] >= 1


@pytest.mark.asyncio
@pytest.mark.network
@pytest.mark.timeout(120)
async def test_a_configured_peer_that_stays_silent_is_a_missing_drone() -> None:
    alive = {"drone": 1, "swarm": 7, "t": NOW, "peers_lost": {"3": 20.0}}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))  # drone 3's port: nobody answers there any more
        dead_address = ("127.0.0.1", dead.getsockname()[1])
        async with agent_radio(alive) as radio:
            known = {("127.0.0.1", radio.local_port): 1, dead_address: 3}
            # Its peer lost it and it was asked a few times: not waited for until the limit.
            view = await collect_udp(None, KEY, known=known, wait_s=600)
    assert view.answered == [1] and view.missing == [3]
    assert view.records[3]["named_by"] == ["config", "drone 1"]
    assert view.records[3]["state"] == "offline"


@pytest.mark.parametrize(
    ("fields", "battery", "position"),
    [
        ({"battery_fraction": 0.5, "lat_deg": 1.0, "lon_deg": 2.0}, "50%", "1.00000,2.00000"),
        ({"vehicle": {"battery_fraction": 0.05, "alt_rel_m": 9}}, "5%", "-"),
        ({"battery": {"remaining": 0.25}, "position": [10.0, 20.4, 30.0]}, "25%", "10,20,30 m"),
        ({"battery": 3.7, "position": "somewhere"}, "-", "-"),  # not a fraction, not metres
    ],
)
def test_battery_and_position_are_read_from_the_forms_agents_report(
    fields: dict[str, Any], battery: str, position: str
) -> None:
    [row] = table_rows({1: {"drone": 1, **fields}}, NOW)
    cells = dict(zip([header for header, _, _ in COLUMNS], row, strict=True))
    assert (cells["batt"], cells["position"]) == (battery, position)


@pytest.mark.asyncio
@pytest.mark.network
@pytest.mark.timeout(300)
async def test_the_cli_table_fits_80_columns_when_piped_and_watch_refreshes() -> None:
    record = {**RUNNING, "t": 0.0, "peers_announced": [], "peers_heard": {}, "peers_lost": {}}
    record["peers_left"] = {}
    async with agent_radio(record) as radio:
        env = dict(os.environ, SWARMFL_SECRET=SECRET, COLUMNS="80")
        base = [sys.executable, "-m", "swarmfl.cli", "status", "--swarm-id", "7"]
        base += ["--interface", "127.0.0.1", "--peer", f"127.0.0.1:{radio.local_port}"]

        async def run(*args: str, **more_env: str) -> tuple[int, str, str]:
            process = await asyncio.create_subprocess_exec(
                *base, *args, env={**env, **more_env}, stdout=-1, stderr=-1, stdin=-3
            )
            out, err = await process.communicate()
            assert process.returncode is not None
            return process.returncode, out.decode(), err.decode()

        code, out, err = await run("--wait-s", "60")
        assert code == 0, err
        assert max(len(line) for line in out.splitlines()) <= 80
        assert "running" in out and "1 of 1 drones answered" in out
        code, out, err = await run(
            "--watch", "--count", "2", "--interval-s", "0.1", "--wait-s", "60"
        )
        assert code == 0, err
        assert out.count("1 of 1 drones answered") == 2
        # In a terminal, --watch redraws one live table in place (rich Live).
        live = ("--watch", "--count", "3", "--interval-s", "0.1", "--wait-s", "60")
        code, out, err = await run(*live, TTY_COMPATIBLE="1")
        assert code == 0, err
        assert "\x1b[" in out and "1 of 1 drones answered" in out
        code, out, err = await run("--json", "--wait-s", "60")
        assert code == 0, err
        [line] = [json.loads(text) for text in out.splitlines()]
        assert line["drone"] == 2 and line["answered"] is True and line["epsilon"] == 0.25
        assert "1 of 1 drones answered" in err


@pytest.mark.asyncio
@pytest.mark.network
@pytest.mark.timeout(120)
async def test_mqtt_status_tells_a_clean_stop_from_a_crash_and_survives_hostile_records(
    tmp_path: Path,
) -> None:
    import aiomqtt

    require_mosquitto()
    broker = Mosquitto(tmp_path).start()
    try:
        root = "swarmfl/7"
        retained: dict[str, Any] = {
            f"{root}/presence/1": {"state": "online"},
            f"{root}/telemetry/1": {
                "drone": 1,
                "t": NOW,
                "state": "running",
                "peers_heard": {"9": 2},
            },
            f"{root}/presence/2": {"state": "offline"},  # its own goodbye, after ...
            f"{root}/telemetry/2": {"drone": 2, "t": NOW - 5, "state": "stopped"},  # ... this
            f"{root}/presence/3": {"state": "offline"},  # its last will: it crashed
            f"{root}/telemetry/3": {"drone": 3, "t": NOW - 9, "state": "running"},
            f"{root}/telemetry/4": b"[" * 20_000 + b"]" * 20_000,  # RecursionError in json
            f"{root}/telemetry/8": b"x" * 1_000_000,  # larger than any status record
            f"{root}/presence/5": b"\xff\xfe not json",
            f"{root}/telemetry/6": {"drone": 7, "state": "lying about its id"},
            f"{root}/presence/x": {"state": "online"},
        }
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            for topic, body in retained.items():
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                await client.publish(topic, payload, qos=1, retain=True)
        url = f"mqtt://127.0.0.1:{broker.port}"
        # Everything is retained, so collection stops early: the 600 s limit does not hold up
        # this test (timeout 120 s).
        view = await collect_mqtt(url, 7, wait_s=600)
    finally:
        broker.stop()
    assert view.answered == [1] and view.missing == [2, 3, 9]
    assert view.records[2]["state"] == "stopped" and view.records[2]["goodbye"] is True
    assert view.records[3]["state"] == "offline" and view.records[3]["goodbye"] is False
    assert view.records[3]["t"] == NOW - 9  # last heard: its last telemetry
    assert view.records[9]["named_by"] == ["drone 1"]
    assert view.records[9]["t"] == pytest.approx(NOW - 2)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["status"], "say which swarm"),
        (["status", "--peer", "nohost"], "expected HOST:PORT"),
        (["status", "--broker", "mqtt://127.0.0.1:1"], "--broker needs --swarm-id"),
        (["status", "--swarm-id", "7", "--secret-env", "NO_SUCH_VAR_X"], "NO_SUCH_VAR_X"),
        (["status", "--swarm-id", "7", "--wait-s", "nan"], "--wait-s"),
        (["status", "--swarm-id", "7", "--count", "0"], "--count"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1


@pytest.mark.network
def test_an_unreachable_broker_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["status", "--broker", "mqtt://127.0.0.1:1", "--swarm-id", "7", "--wait-s", "0.2"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot reach MQTT broker mqtt://127.0.0.1:1" in err and len(err.splitlines()) == 1


@pytest.mark.network
def test_no_answer_is_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)
    args = ["status", "--swarm-id", "7", "--interface", "127.0.0.1", "--peer", "127.0.0.1:9"]
    assert main([*args, "--wait-s", "0.5", "--json"]) == 1
    err = capsys.readouterr().err
    assert "0 of 0 drones answered; no answer from 127.0.0.1:9" in err
    assert "no drone answered" in err


def test_an_empty_view_says_so_without_an_empty_table() -> None:
    assert SwarmView("x").summary() == "0 of 0 drones answered"
    out = io.StringIO()
    Console(file=out, width=80).print(render_table(SwarmView("x"), NOW, 80))
    assert out.getvalue() == "0 of 0 drones answered\n"


def test_suspects_and_epsilon_columns_take_only_well_formed_values() -> None:
    records = {
        1: {"suspects": [4, 9], "epsilon": 2.345},
        2: {"suspects": "4,9", "epsilon": True},
        3: {"suspects": [True, "x", 7], "epsilon": "big"},
        4: {"suspects": list(range(40)), "epsilon": None},
    }
    headers = [header for header, _, _ in COLUMNS]
    cells = [dict(zip(headers, row, strict=True)) for row in table_rows(records, NOW)]
    assert [(c["suspects"], c["eps"]) for c in cells] == [
        ("4,9", "2.35"),
        ("-", "-"),
        ("7", "-"),
        (",".join(map(str, range(16))) + "...", "-"),
    ]
