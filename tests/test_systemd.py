"""The service kit: sd_notify over a real unix datagram socket, and the unit file itself."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _manual_clock import ManualClock

from swarmfl.field.systemd import SystemdNotifier

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "swarmfl-agent.service"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound unix datagram socket standing in for systemd's, and its path."""
    folder = tempfile.mkdtemp(prefix="sd-")  # short: unix socket paths are limited to 108 bytes
    path = os.path.join(folder, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(30.0)
        yield server, path
    shutil.rmtree(folder)


def lines(server: socket.socket) -> list[str]:
    return server.recv(4096).decode().split("\n")


@pytest.mark.network
def test_ready_status_watchdog_and_stopping_reach_the_socket(
    notify_socket: tuple[socket.socket, str],
) -> None:
    server, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled and notifier.watchdog_interval_s is None
    assert notifier.ready("drone 3: 4 peers\nround 12")
    assert lines(server) == ["READY=1", "STATUS=drone 3: 4 peers round 12"]
    assert notifier.status("x" * 5000)
    assert lines(server) == ["STATUS=" + "x" * 1024]
    assert notifier.watchdog()
    assert lines(server) == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert lines(server) == ["STOPPING=1"]
    notifier.close()
    assert notifier.notify("EXTEND_TIMEOUT_USEC=5000000")  # reopens after close
    assert lines(server) == ["EXTEND_TIMEOUT_USEC=5000000"]
    notifier.close()


@pytest.mark.network
def test_abstract_namespace_socket() -> None:
    name = f"swarmfl-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(30.0)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert lines(server) == ["READY=1"]
        notifier.close()


def test_outside_systemd_everything_is_a_no_op() -> None:
    for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}):
        notifier = SystemdNotifier(env)
        assert not notifier.enabled
        assert not notifier.ready("up") and not notifier.watchdog() and not notifier.stopping()


def test_a_vanished_socket_is_logged_once_and_never_raised(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notifier.ready()
    assert not notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "the service goes on" in warnings[0].getMessage()
    notifier.close()


@pytest.mark.parametrize(
    ("env", "pid", "interval_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 42, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, 42, None),
        ({"WATCHDOG_USEC": "0"}, 42, None),
        ({"WATCHDOG_USEC": "soon"}, 42, None),
        ({}, 42, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], pid: int, interval_s: float | None
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env}, pid=pid)
    assert notifier.watchdog_interval_s == interval_s


@pytest.mark.network
@pytest.mark.asyncio
async def test_keep_watchdog_pings_while_healthy(
    notify_socket: tuple[socket.socket, str],
) -> None:
    server, path = notify_socket
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    clock = ManualClock()
    healthy = True
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    task = asyncio.create_task(notifier.keep_watchdog(clock, lambda: healthy))
    try:
        async with asyncio.timeout(60.0):
            assert (await loop.sock_recv(server, 4096)) == b"WATCHDOG=1"
            await clock.sleeper()
            clock.advance(4.9)  # not yet: every 5 s
            await clock.sleeper()
            with pytest.raises(BlockingIOError):
                server.recv(4096)
            clock.advance(0.1)
            assert (await loop.sock_recv(server, 4096)) == b"WATCHDOG=1"
            healthy = False
            await clock.sleeper()
            clock.advance(5.0)
            await clock.sleeper()  # a whole turn of the loop went by without a ping
            with pytest.raises(BlockingIOError):
                server.recv(4096)
            healthy = True
            clock.advance(5.0)
            assert (await loop.sock_recv(server, 4096)) == b"WATCHDOG=1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()


@pytest.mark.asyncio
async def test_keep_watchdog_returns_when_there_is_no_watchdog() -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "/run/systemd/notify"})
    async with asyncio.timeout(30.0):
        await notifier.keep_watchdog(ManualClock())


def unit_settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_is_a_hardened_notify_service_running_the_agent() -> None:
    unit = unit_settings()
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["WatchdogSec"] == ["30s"] and unit["User"] == ["swarmfl"]
    assert unit["StateDirectory"] == ["swarmfl"]
    assert unit["ExecStart"][0].endswith(" agent --config /etc/swarmfl/drone.toml")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    families = unit["RestrictAddressFamilies"][0].split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]
    assert "MemoryDenyWriteExecute" not in unit  # torch's JIT kernels need W+X pages
    # The two secrets (the swarm's, the drone's own key) reach the agent as credentials only.
    assert unit["LoadCredential"] == [
        "swarm.secret:/etc/swarmfl/swarm.secret",
        "drone.key:/etc/swarmfl/drone.key",
    ]
    sysusers = (UNIT.parent / "swarmfl.sysusers.conf").read_text().split()
    assert sysusers[:2] == ["u", "swarmfl"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    agent = Path(sys.executable).parent / "swarmfl"
    text = UNIT.read_text().replace("/opt/swarmfl/venv/bin/swarmfl", str(agent))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings
