"""``swarmfl status``: the table, answers from a real UDP agent, and argument errors."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from swarmfl.cli import main
from swarmfl.field.status_table import collect_udp, render_table, table_rows
from swarmfl.radio.udp import UdpRadio

NOW = 1_800_000_000.0

RECORDS = {
    2: {
        "drone": 2,
        "t": NOW - 1.5,
        "state": "running",
        "rounds": 40,
        "counter": 140,
        "accuracy": 0.9123,
        "peers_heard": {"0": 0.2, "1": 0.4},
        "bytes_sent": 1_234_567,
        "bytes_received": 999,
        "frames_rejected": 3,
        "trains": "full",
    },
    0: {"drone": 0, "state": "offline"},
}


def test_rows_show_each_drone_in_id_order_with_what_is_known() -> None:
    rows = table_rows(RECORDS, NOW)
    assert rows[0] == ["0", "offline", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert rows[1] == [
        "2",
        "running",
        "1.5 s",
        "40",
        "140",
        "0.912",
        "2",
        "1.2 MB",
        "999 B",
        "3",
        "full",
        "-",
        "-",
    ]


def test_the_table_renders_every_column() -> None:
    out = io.StringIO()
    Console(file=out, width=140).print(render_table(RECORDS, "swarm 7", NOW))
    text = out.getvalue()
    for word in ("drone", "last heard", "accuracy", "plan", "swarm 7", "0.912", "offline"):
        assert word in text


@pytest.mark.asyncio
@pytest.mark.network
@pytest.mark.timeout(30)
async def test_agents_are_asked_over_udp_and_foreign_swarms_left_out() -> None:
    mine = {"drone": 4, "swarm": 7, "t": NOW}
    theirs = {"drone": 5, "swarm": 8, "t": NOW}
    async with (
        UdpRadio(drone_id=4, host="127.0.0.1", status=lambda: mine) as a,
        UdpRadio(drone_id=5, host="127.0.0.1", status=lambda: theirs) as b,
    ):
        peers = [("127.0.0.1", a.local_port), ("127.0.0.1", b.local_port)]
        assert await collect_udp(None, peers=peers, wait_s=2.0) == {4: mine, 5: theirs}
        # With a swarm id, answers of other swarms are dropped (zeroconf finds nobody here).
        found = await collect_udp(7, peers=peers, interfaces=["127.0.0.1"], wait_s=0.5)
        assert found == {4: mine}


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["status"], "say which swarm"),
        (["status", "--peer", "nohost"], "expected HOST:PORT"),
        (["status", "--broker", "mqtt://127.0.0.1:1"], "--broker needs --swarm-id"),
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
def test_no_answer_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--peer", "127.0.0.1:9", "--wait-s", "0.2", "--json"]) == 1
    assert "no drone answered" in capsys.readouterr().err


def test_suspects_and_epsilon_columns_take_only_well_formed_values() -> None:
    records = {
        1: {"suspects": [4, 9], "epsilon": 2.345},
        2: {"suspects": "4,9", "epsilon": True},
        3: {"suspects": [True, "x", 7], "epsilon": "big"},
        4: {"suspects": list(range(40)), "epsilon": None},
    }
    rows = table_rows(records, NOW)
    assert [row[-2:] for row in rows] == [
        ["4,9", "2.35"],
        ["-", "-"],
        ["7", "-"],
        [",".join(map(str, range(16))) + "...", "-"],
    ]
