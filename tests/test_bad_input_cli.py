"""Bad input on the command line and in config files: exit 2, one line naming what is wrong.

One table of the malformed inputs of issue 11, each run through the real CLI entry point:
never a traceback, never a hang (pytest-timeout bounds each), never a start-up banner before
the error line, and the right key named.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import agent_tables, to_toml

from swarmfl.cli import main

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
QUICKSTART = str(SCENARIOS / "quickstart.toml")
SECRET = "bad-input-test-secret"


def _drone_config(tmp: Path, **tables: dict[str, Any]) -> str:
    """A valid drone.toml with ``tables`` merged in; returns its path."""
    config = agent_tables(tmp, 0, 4242, shards=2)
    for table, values in tables.items():
        config.setdefault(table, {}).update(values)
    path = tmp / "drone.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return str(path)


def _binary(tmp: Path) -> list[str]:
    (tmp / "bin.toml").write_bytes(bytes(range(256)) * 4)
    return ["sim", str(tmp / "bin.toml")]


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "fifo.toml")
    return ["sim", str(tmp / "fifo.toml")]


def _out_under_a_file(tmp: Path) -> list[str]:
    (tmp / "file").write_text("x")
    return ["sim", QUICKSTART, "--no-progress", "--out", str(tmp / "file" / "run")]


def _checkpoint_dir_is_a_file(tmp: Path) -> list[str]:
    (tmp / "ckpt").write_text("x")
    return ["agent", "--config", _drone_config(tmp, checkpoint={"dir": str(tmp / "ckpt")})]


def _sim(*sets: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        args = ["sim", QUICKSTART, "--no-progress", "--out", str(tmp / "run")]
        for item in sets:
            args += ["--set", item]
        return args

    return build


def _agent(**tables: dict[str, Any]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["agent", "--config", _drone_config(tmp, **tables)]


def _plan(*extra: str) -> Callable[[Path], list[str]]:
    base = ["plan", "--model", "mlp", "--input", "64", "--batch", "32", "--budget", "64MiB"]
    return lambda tmp: [*base, *extra]


CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("binary scenario", _binary, "not UTF-8"),
    ("/dev/zero as a scenario", lambda tmp: ["sim", "/dev/zero"], "not a regular file"),
    ("a FIFO as a scenario", _fifo, "not a regular file"),
    ("unwritable --out", _out_under_a_file, "key '--out'"),
    ("huge layer widths", _sim("model.hidden=[65536, 65536]"), "key 'model.hidden'"),
    ("a width over the cap", _sim("model.hidden=[1000000000]"), "key 'model.hidden.0'"),
    ("duration 1e12", _sim("run.duration_s=1e12"), "key 'run.duration_s'"),
    ("period 1e-300", _sim("gossip.period_s=1e-300"), "key 'gossip.period_s'"),
    ("eval interval 1e-9", _sim("run.eval_interval_s=1e-9"), "key 'run.eval_interval_s'"),
    ("local epochs 1e9", _sim("training.local_epochs=1000000000"), "key 'training.local_epochs'"),
    ("drones 10**9", _sim("swarm.drones=1000000000"), "key 'swarm.drones'"),
    ("checkpoint.dir is a file", _checkpoint_dir_is_a_file, "key 'checkpoint.dir'"),
    ("status interval 1e-9", _agent(status={"interval_s": 1e-9}), "key 'status.interval_s'"),
    ("NaN period in drone.toml", _agent(gossip={"period_s": float("nan")}), "gossip.period_s"),
    ("plan --batch 10**12", _plan("--batch", str(10**12)), "key 'batch'"),
    ("plan --block-size 7", _plan("--codec", "int8", "--block-size", "7"), "key 'block-size'"),
    ("plan huge widths", _plan("--hidden", "65536,65536,65536"), "key 'hidden'"),
    ("plan huge input", _plan("--input", "100000x100000"), "key 'input'"),
    ("status --wait-s -1", lambda tmp: ["status", "--swarm-id", "5", "--wait-s", "-1"], "wait-s"),
    ("status --wait-s nan", lambda tmp: ["status", "--swarm-id", "5", "--wait-s", "nan"], "wait-s"),
    ("status --wait-s inf", lambda tmp: ["status", "--swarm-id", "5", "--wait-s", "inf"], "wait-s"),
]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(
    argv: Callable[[Path], list[str]],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    assert _run(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err  # one line: no banner before it, nothing after
    assert "error" in err and expected in err


@pytest.mark.timeout(60)
def test_a_one_byte_secret_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", "x")
    monkeypatch.chdir(tmp_path)
    assert _run(["agent", "--config", _drone_config(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 16" in err and "swarm.secret_env" in err


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_port_in_use_is_one_line_and_no_banner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = _drone_config(tmp_path, **{"radio.udp": {"port": port}})
        assert _run(["agent", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err  # the banner used to come first
    assert "key 'radio.udp.port'" in err and "already in use" in err
