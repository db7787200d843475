"""Helpers for the field tests: agent processes, their configs and status logs, a mosquitto.

Agents sign their frames with per-drone keys (the field default) issued by an authority of the
test's own folder, unless a test asks for ``identity="swarm-key"``. Everything runs on loopback:
UDP on 127.0.0.1, zeroconf on 127.0.0.1, a mosquitto the test starts on a free port. Tests wait
on conditions read from the agents' status logs, with timeouts, never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from swarmfl.core.identity import DroneSigner, load_private_key
from swarmfl.field.keys import init_authority, issue_drone_keys

SECRET = "field-test-secret"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def require_mosquitto() -> None:
    """Skip without a mosquitto binary, except in CI, where its absence is a failure."""
    import pytest

    if not os.path.exists(MOSQUITTO):
        if os.environ.get("CI"):
            pytest.fail(f"mosquitto is not installed at {MOSQUITTO} (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_swarm_id() -> int:
    """A swarm id no other test run on this machine uses (one mDNS link for all)."""
    return secrets.randbelow(2**31 - 1000) + 1000


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    """TOML text of ``{"table.sub": {key: value}}``."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def agent_tables(
    folder: Path,
    drone: int,
    swarm_id: int,
    *,
    shards: int,
    radio: str = "udp",
    port: int = 0,
    broker_port: int | None = None,
    period_s: float = 0.3,
    identity: Literal["per-drone", "swarm-key"] = "per-drone",
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """A small, fast agent config: digits shard, tiny MLP, short gossip period.

    ``identity``: per-drone keys (:func:`drone_identity`; the field default) or the shared
    swarm key alone. An ``identity`` table in ``extra`` is used as given instead.
    """
    tables: dict[str, dict[str, Any]] = {
        "drone": {"id": drone},
        "swarm": {"swarm_id": swarm_id},
        "run": {"seed": 3, "eval_interval_s": 0.001},
        "data": {
            "dataset": "digits",
            "partition": "iid",
            "shards": shards,
            "shard": drone % shards,
        },
        "model": {"kind": "mlp", "hidden": [32]},
        "training": {"lr": 0.1, "batch_size": 32, "threads": 1},
        "gossip": {"period_s": period_s, "codec": "int8", "keyframe_interval": 5},
        "radio": {"kind": radio, "rate_bps": 20_000_000},
        "radio.udp": {"host": "127.0.0.1", "port": port},
        "discovery": {"interfaces": ["127.0.0.1"]},
        "checkpoint": {"dir": f"ckpt-{drone}", "interval_rounds": 3},
        "status": {"log": f"status-{drone}.jsonl", "interval_s": 0.2},
    }
    if radio == "mqtt":
        assert broker_port is not None
        tables["radio.mqtt"] = {
            "url": f"mqtt://127.0.0.1:{broker_port}",
            "keepalive_s": 2,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
        }
    if extra is None or "identity" not in extra:
        tables["identity"] = (
            drone_identity(folder, drone, swarm_id)
            if identity == "per-drone"
            else {"mode": "swarm-key"}
        )
    for table, values in (extra or {}).items():
        tables.setdefault(table, {}).update(values)
    return tables


IDENTITY_DRONES = range(8)
"""The drones a test folder's authority issues keys to at once (others get theirs on demand)."""


def drone_identity(folder: Path, drone: int, swarm_id: int) -> dict[str, Any]:
    """The ``[identity]`` table of ``drone`` in swarm ``swarm_id``, its files under ``folder``.

    The first call for a swarm creates its authority (``folder/keys/swarm-<id>``) and issues
    keys to drones 0-7 in one roster, so every agent of a test reads the same roster whenever
    its config is written; a drone beyond those gets its key (and a newer roster) on demand.
    Uses the Python API of ``swarmfl keys`` (no subprocess).
    """
    keys = folder / "keys"
    authority = keys / f"swarm-{swarm_id}"
    key = keys / f"drone{drone}-swarm-{swarm_id}.key"
    if not (authority / "authority.key").exists():
        init_authority(authority, swarm_id)
        drones = sorted({*IDENTITY_DRONES, drone})
        issue_drone_keys(authority, {d: keys / f"drone{d}-swarm-{swarm_id}.key" for d in drones})
    elif not key.exists():
        issue_drone_keys(authority, {drone: key})
    return {
        "key_file": str(key),
        "roster_file": str(authority / "roster.json"),
        "authority_file": str(authority / "authority.pub"),
    }


def drone_signer(folder: Path, drone: int, swarm_id: int) -> DroneSigner:
    """What signs as ``drone`` (its key from :func:`drone_identity`): for a test's own node."""
    key_file = Path(drone_identity(folder, drone, swarm_id)["key_file"])
    return DroneSigner(drone, load_private_key(key_file.read_bytes(), source=str(key_file)))


def write_config(folder: Path, drone: int, tables: dict[str, dict[str, Any]]) -> Path:
    path = folder / f"drone{drone}.toml"
    path.write_text(to_toml(tables), encoding="utf-8")
    return path


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if the process does not go within 60 s (test teardown)."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def static_discovery(peers: dict[int, int]) -> dict[str, Any]:
    """A ``[discovery]`` table naming each peer's UDP port on loopback (no zeroconf)."""
    return {
        "kind": "static",
        "peers": [{"id": i, "host": "127.0.0.1", "port": p} for i, p in peers.items()],
    }


def static_pair(folder: Path, swarm_id: int, **extra: dict[str, Any]) -> list[Path]:
    """Two drones that know each other's UDP port (no zeroconf: faster in-process tests)."""
    ports = [free_port(), free_port()]
    paths = []
    for drone in (0, 1):
        other = 1 - drone
        tables = agent_tables(
            folder,
            drone,
            swarm_id,
            shards=2,
            port=ports[drone],
            extra={"discovery": static_discovery({other: ports[other]}), **extra},
        )
        paths.append(write_config(folder, drone, tables))
    return paths


def read_status(path: Path) -> list[dict[str, Any]]:
    """Every complete status line written so far."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def wait_until(
    condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


class AgentProcess:
    """One ``swarmfl agent`` process and its status log."""

    def __init__(self, folder: Path, drone: int, config: Path) -> None:
        self.folder = folder
        self.drone = drone
        self.config = config
        self.status_path = folder / f"status-{drone}.jsonl"
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    def start(self, *args: str) -> AgentProcess:
        env = dict(os.environ, SWARMFL_SECRET=SECRET, OMP_NUM_THREADS="1")
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = open(self.folder / f"agent-{self.drone}.err", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(self.config), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        return self

    def lines(self) -> list[dict[str, Any]]:
        return read_status(self.status_path)

    def last(self) -> dict[str, Any] | None:
        lines = self.lines()
        return lines[-1] if lines else None

    def stderr(self) -> str:
        return (self.folder / f"agent-{self.drone}.err").read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go within 60 s (test teardown)."""
        terminate(self.process)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


@contextlib.contextmanager
def agents(processes: list[AgentProcess]) -> Iterator[list[AgentProcess]]:
    """Stop every agent at the end, whatever happens; show their stderr on failure."""
    try:
        yield processes
    except BaseException:
        for process in processes:
            with contextlib.suppress(OSError):
                sys.stderr.write(
                    f"--- agent {process.drone} stderr ---\n{process.stderr()[-3000:]}"
                )
        raise
    finally:
        for process in processes:
            process.stop()


class Mosquitto:
    """A mosquitto broker of our own on a free loopback port (no persistence, anonymous)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port(socket.SOCK_STREAM)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        conf = self.folder / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n",
            encoding="utf-8",
        )
        log = open(self.folder / "mosquitto.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        wait_until(self._accepting, 60.0, "mosquitto to accept connections", poll_s=0.02)
        return self

    def _accepting(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                "mosquitto exited: " + (self.folder / "mosquitto.log").read_text(errors="replace")
            )
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
