"""The agent as an unattended service: --version, --check, the state directory, sd_notify, events.

Everything runs as real ``swarmfl`` processes; systemd is stood in for by a unix datagram socket
of the test's own in ``$NOTIFY_SOCKET`` (what systemd hands a ``Type=notify`` service).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _field_helpers import (
    SECRET,
    AgentProcess,
    agent_tables,
    agents,
    free_port,
    read_status,
    unique_swarm_id,
    wait_until,
    write_config,
)

import swarmfl

pytestmark = [pytest.mark.network]

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def swarmfl_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = dict(os.environ, SWARMFL_SECRET=SECRET, OMP_NUM_THREADS="1")
    base.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_version() -> None:
    result = swarmfl_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"swarmfl {swarmfl.__version__}"


def test_check_validates_everything_and_writes_nothing(tmp_path: Path) -> None:
    port, mavlink_port = free_port(), free_port()
    tables = agent_tables(
        tmp_path,
        0,
        unique_swarm_id(),
        shards=2,
        port=port,
        extra={
            "training": {"budget_bytes": "8MiB"},
            "vehicle": {"connection": f"udpin:{LOOPBACK}:{mavlink_port}"},
        },
    )
    del tables["checkpoint"]["dir"], tables["status"]["log"]  # to the state directory
    config = write_config(tmp_path, 0, tables)
    before = tree(tmp_path)
    state = tmp_path / "state"
    result = swarmfl_cli(
        "agent", "--config", str(config), "--check", env={"XDG_STATE_HOME": str(state)}
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "swarm secret: read",
        "data: digits shard 0/2",
        "memory plan:",
        f"radio.udp.port: UDP 127.0.0.1:{port} free",
        f"vehicle.connection: UDP 127.0.0.1:{mavlink_port} free",
        f"{state}/swarmfl/0/checkpoints can be created",
    ):
        assert expected in out
    assert result.stderr == ""
    assert tree(tmp_path) == before  # no state directory, no status line, no checkpoint

    # A port in use: one line naming the file and key, exit 2, still nothing written.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, port))
        for extra in (["--check"], []):
            result = swarmfl_cli(
                "agent", "--config", str(config), *extra, env={"XDG_STATE_HOME": str(state)}
            )
            assert result.returncode == 2
            lines = result.stderr.splitlines()
            assert len(lines) == 1, result.stderr  # no banner before it, no traceback
            assert lines[0].startswith(f"swarmfl: error: {config.resolve()}: key 'radio.udp.port'")
            assert "already in use" in lines[0]
    assert not (state / "swarmfl" / "0" / "checkpoints").exists()

    # No secret: one line, exit 2.
    result = swarmfl_cli("agent", "--config", str(config), "--check", env={"SWARMFL_SECRET": ""})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "swarm.secret_env" in result.stderr


def test_check_refuses_a_checkpoint_of_another_drone(tmp_path: Path) -> None:
    swarm_id = unique_swarm_id()
    first = write_config(tmp_path, 0, agent_tables(tmp_path, 0, swarm_id, shards=2, port=0))
    tables = agent_tables(tmp_path, 1, swarm_id, shards=2, port=0)
    tables["checkpoint"]["dir"] = "ckpt-0"
    second = write_config(tmp_path, 1, tables)
    process = AgentProcess(tmp_path, 0, first)
    with agents([process]):
        process.start()
        wait_until(lambda: list((tmp_path / "ckpt-0").glob("ckpt-*.swfl")), 60, "a checkpoint")
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0
    result = swarmfl_cli("agent", "--config", str(second), "--check")
    assert result.returncode == 2
    assert "key 'checkpoint.dir'" in result.stderr and "drone 0" in result.stderr


@pytest.mark.timeout(150)
def test_the_readme_command_runs_as_a_systemd_service_and_writes_nothing_in_the_tree(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    (source / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "drone.toml", source / "examples" / "drone.toml")
    swarm_id = unique_swarm_id()  # our swarm, so parallel runs do not meet
    # The README's key steps, as written (with our swarm id): the example needs its keys.
    for keys in (
        ("init", "--dir", "examples/keys", "--swarm-id", str(swarm_id)),
        ("issue", "--dir", "examples/keys", "--drone", "0", "--out", "examples/keys/drone0.key"),
    ):
        made = swarmfl_cli("keys", *keys, cwd=source)
        assert made.returncode == 0, made.stderr
    before = tree(source)
    state = tmp_path / "state"
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    env = dict(
        os.environ,
        SWARMFL_SECRET=SECRET,
        OMP_NUM_THREADS="1",
        NOTIFY_SOCKET=str(notify_path),
        WATCHDOG_USEC="1000000",  # WatchdogSec=1: a ping every 0.5 s
        XDG_STATE_HOME=str(state),
    )
    env.pop("WATCHDOG_PID", None)
    err = (tmp_path / "agent.err").open("wb")
    # As the README says (plus a free port and our swarm, so parallel runs do not meet).
    process = subprocess.Popen(
        [
            sys.executable, "-m", "swarmfl.cli", "--log-format", "json", "agent",
            "--config", "examples/drone.toml",
            "--set", "radio.udp.port=0",
            "--set", f"swarm.swarm_id={swarm_id}",
            "--set", "checkpoint.interval_rounds=2",
            "--set", "gossip.period_s=0.3",
            "--set", "run.eval_interval_s=0.5",
        ],
        cwd=source, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
    )  # fmt: skip
    try:
        messages: list[str] = []

        def heard(what: str) -> bool:
            while not any(what in m for m in messages):
                messages.append(notify.recv(4096).decode())
            return True

        heard("READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=drone 0 of swarm" in ready and "started" in ready
        status = state / "swarmfl" / "0" / "status.jsonl"
        wait_until(lambda: (s := read_status(status)) and s[-1]["rounds"] >= 4, 60, "4 rounds")
        while sum(m == "WATCHDOG=1" for m in messages) < 3:
            messages.append(notify.recv(4096).decode())
        process.send_signal(signal.SIGTERM)
        heard("STOPPING=1")
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        err.close()
        notify.close()
    assert tree(source) == before  # nothing written next to the config, nor in the cwd
    assert list((state / "swarmfl" / "0" / "checkpoints").glob("ckpt-*.swfl"))
    assert read_status(state / "swarmfl" / "0" / "status.jsonl")[-1]["state"] == "stopped"
    # Every event a person cares about, one JSON line each.
    records = [json.loads(line) for line in (tmp_path / "agent.err").read_text().splitlines()]
    said = [r["msg"] for r in records if r["level"] == "info"]
    assert any("started" in m and "udp radio on" in m for m in said)
    assert any(m.startswith("drone 0: accuracy ") for m in said)
    assert any(m.startswith("drone 0: checkpoint written: ") for m in said)
    assert any(m.startswith("drone 0: stopping") for m in said)
    assert said[-1].startswith("drone 0: stopped after")


@pytest.mark.timeout(150)
def test_peers_heard_and_lost_are_one_line_each(tmp_path: Path) -> None:
    swarm_id = unique_swarm_id()
    ports = [free_port(), free_port()]
    processes = []
    for drone in (0, 1):
        tables = agent_tables(
            tmp_path,
            drone,
            swarm_id,
            shards=2,
            port=ports[drone],
            extra={
                "discovery": {
                    "kind": "static",
                    "peers": [{"id": 1 - drone, "host": LOOPBACK, "port": ports[1 - drone]}],
                }
            },
        )
        processes.append(AgentProcess(tmp_path, drone, write_config(tmp_path, drone, tables)))
    first, second = processes
    with agents(processes):
        first.start()
        second.start()
        wait_until(lambda: "drone 0: peer 1 heard" in first.stderr(), 60, "peer 1 heard")
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
        wait_until(lambda: "drone 0: peer 1 lost" in first.stderr(), 30, "peer 1 lost")
        second.start()
        wait_until(lambda: "drone 0: peer 1 heard again" in first.stderr(), 60, "heard again")
        text = first.stderr()
        assert text.count("peer 1 lost") == 1
        assert text.count("peer 1 heard\n") == 1
