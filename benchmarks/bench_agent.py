"""The field agent's own cost: CPU outside training, memory, and frame latency, on loopback.

One real ``swarmfl agent`` process gossips over UDP at 1 frame/s with three peers (in this
process: a gossip node, a UDP radio and a zeroconf announcement each, publishing an int8 model
stream at 1 frame/s), with its local training paused (``training.enabled = false``), so what it
spends is the agent itself: receiving, authenticating and merging three streams, publishing its
own, zeroconf, status lines and evaluation. Workload: digits, MLP 64-128-10 (workload W's model).

Prints JSON lines:

* ``cpu``: the agent process's CPU time (user + system) over ``--window-s`` seconds of steady
  gossip, as a percentage of one core (target: < 5 %);
* ``rss``: the agent's resident memory next to a bare ``python -c "import torch"`` process
  measured in the same run (the baseline), and the difference;
* ``latency``: frame latency from a peer's send to the agent's receive (the agent reports when it
  last heard each peer on the shared monotonic clock), from receive to merge (merges happen once
  per gossip period, so about half a period on average), and their sum, send to merge;
* ``vehicle``: the same agent again with a ``[vehicle]`` section and a simulated autopilot
  (pymavlink, real UDP) ticking at 10 Hz (HEARTBEAT, GLOBAL_POSITION_INT, SYS_STATUS,
  BATTERY_STATUS, EXTENDED_SYS_STATE each tick): CPU outside training and RSS with and without
  the MAVLink reader (target: still < 5 % of one core);
* ``airtime``: ``--agents`` drones (in this process, real UDP sockets on loopback, training,
  static discovery) in unicast and then multicast mode: bytes put on the air per gossip period
  (every copy counted), distinct bytes, and copies per datagram.

With ``--signatures`` it measures only the first part (``cpu``, ``rss``, ``latency``) twice: with
the swarm-key HMAC alone (``identity.mode = "swarm-key"``, the baseline) and with per-drone
Ed25519 signatures (the field default: an ``[identity]`` with keys for the agent and its peers);
each line says which in ``frames``.

    python benchmarks/bench_agent.py --window-s 30 --agents 8 --airtime-window-s 10
    python benchmarks/bench_agent.py --window-s 30 --signatures  # HMAC, then Ed25519
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmfl.config.drone_file import load_drone_config
from swarmfl.core.identity import (
    DroneIdentity,
    DroneSigner,
    Roster,
    encode_roster,
    private_key_bytes,
    public_key_bytes,
)
from swarmfl.core.merge import MergeRule
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.wire import derive_swarm_key
from swarmfl.field.agent import FieldAgent
from swarmfl.learning.datasets import load_builtin
from swarmfl.learning.learner import flatten_parameters
from swarmfl.learning.models import build_model, model_signature
from swarmfl.radio.discovery import PeerInfo, PeerUp, ZeroconfDiscovery
from swarmfl.radio.link import LinkConfig
from swarmfl.radio.udp import UdpRadio
from swarmfl.testing_autopilot import SimulatedAutopilot

SECRET = "bench-agent-secret"
SEED = 3
HIDDEN = 128
PERIOD_S = 1.0
LOOPBACK = "127.0.0.1"
RATE_BPS = 5_000_000
AUTOPILOT_HZ = 10.0


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


SWARM_KEY_ONLY = '[identity]\nmode = "swarm-key"\n'
"""The swarm key's HMAC alone: the baseline ``--signatures`` compares per-drone signatures to."""


def agent_config(
    folder: Path, swarm_id: int, mavlink_port: int | None = None, identity: str = SWARM_KEY_ONLY
) -> Path:
    text = f"""
[drone]
id = 0
[swarm]
swarm_id = {swarm_id}
[run]
seed = {SEED}
[data]
dataset = "digits"
partition = "iid"
shards = 4
shard = 0
[model]
kind = "mlp"
hidden = [{HIDDEN}]
[training]
enabled = false
threads = 1
[gossip]
period_s = {PERIOD_S}
codec = "int8"
[radio]
kind = "udp"
[radio.udp]
host = "{LOOPBACK}"
port = 0
[discovery]
interfaces = ["{LOOPBACK}"]
[checkpoint]
dir = "ckpt"
[status]
log = "status.jsonl"
interval_s = 1.0
"""
    if mavlink_port is not None:
        text += f"""
[vehicle]
connection = "udpin:{LOOPBACK}:{mavlink_port}"
train_when = "landed_only"
"""
    text += identity  # [identity]: the swarm key alone, or per-drone keys (signatures bench)
    path = folder / "drone0.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Peer:
    """A light drone: a gossip node and a UDP radio publishing a drifting model once a second."""

    def __init__(self, drone_id: int, swarm_id: int, identity: DroneIdentity | None = None) -> None:
        dataset = load_builtin("digits", seed=SEED)
        model = build_model("mlp", dataset.input_shape, 10, hidden=(HIDDEN,), seed=SEED)
        flat, offsets = flatten_parameters(model)
        self.x = flat.numpy().copy()
        self.signature = model_signature(model)
        self.node = GossipNode(
            NodeConfig(
                drone_id=drone_id,
                swarm_id=swarm_id,
                signature=self.signature,
                key=derive_swarm_key(SECRET, swarm_id),
                layer_offsets=offsets,
                trained_layers=tuple(range(len(offsets) - 1)),
                period_s=PERIOD_S,
                codec="int8",
                merge=MergeRule(),
                identity=identity,
            )
        )
        self.drone_id = drone_id
        self.swarm_id = swarm_id
        # The agent's default link: 5 Mbit/s, 64 KiB bursts, 1472-byte datagrams.
        link = LinkConfig(rate_bps=RATE_BPS, mtu_bytes=1472, burst_bytes=64 * 1024)
        self.radio = UdpRadio(drone_id=drone_id, host=LOOPBACK, link=link)
        self.sent_at: list[float] = []  # monotonic send times of our model frames
        self.rng = np.random.default_rng(drone_id)

    async def run(self) -> None:
        await self.radio.start()
        me = PeerInfo(
            self.drone_id,
            self.swarm_id,
            self.signature,
            LOOPBACK,
            self.radio.local_port,
            "full",
            "udp",
        )
        async with (
            ZeroconfDiscovery(me, interfaces=[LOOPBACK]) as discovery,
            asyncio.TaskGroup() as tasks,
        ):
            tasks.create_task(self._follow(discovery))
            tasks.create_task(self._receive())
            tasks.create_task(self._publish())

    async def _follow(self, discovery: ZeroconfDiscovery) -> None:
        async for event in discovery.events():
            if isinstance(event, PeerUp):
                self.radio.set_peer(event.peer.drone_id, event.peer.host, event.peer.port)

    async def _receive(self) -> None:
        # As the agent does: authenticated frames say where a peer is (discovery only hints).
        async for heard in self.radio.frames():
            sender, replies = self.node.receive_from(heard.data, heard.received_at)
            if sender is not None:
                self.radio.confirm_peer(sender, heard.link_sender, heard.received_at)
            for reply in replies:
                self.radio.send(reply)

    async def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        # Peers publish at phases spread over the period, as drones that started at different
        # times do; the wait until the agent's next merge then averages over phases.
        next_at = loop.time() + PERIOD_S * (self.drone_id - 1) / 3
        while True:
            self.x += self.rng.normal(0, 1e-3, self.x.shape).astype(np.float32)
            now = loop.time()
            for frame in self.node.publish(self.x, 100, now):
                self.radio.send(frame)
            if self.radio.probes_due(now):
                self.radio.probe(self.node.hello, now)
            self.sent_at.append(now)
            next_at += PERIOD_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def start_agent_process(
    config: Path, stderr_path: Path, secret: str, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``swarmfl agent --config config`` (secret ``secret``, one BLAS thread), its
    stderr to ``stderr_path``, in ``cwd`` (default: this process's)."""
    with open(stderr_path, "wb") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(config)],
            cwd=cwd,
            env=dict(os.environ, SWARMFL_SECRET=secret, OMP_NUM_THREADS="1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """Terminate ``processes`` (all at once), then wait for each, killing what outlives
    ``timeout_s``."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bare_torch_rss_bytes() -> int:
    """RSS of a process that only imported torch (the baseline)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys, torch; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        return int(psutil.Process(process.pid).memory_info().rss)
    finally:
        process.kill()
        process.wait()


def read_status(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


async def wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_agent: timed out waiting for {what}")
        await asyncio.sleep(0.2)
    return value


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50": round(statistics.median(ordered) * 1000, 3),
        "p95": round(pick(0.95) * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


def identities(folder: Path, swarm_id: int) -> tuple[str, dict[int, DroneIdentity]]:
    """Per-drone keys for drones 0-3: the agent's [identity] table and the peers' identities."""
    authority = Ed25519PrivateKey.generate()
    keys = {d: Ed25519PrivateKey.generate() for d in range(4)}
    roster = Roster(swarm_id, 1)
    for drone, key in keys.items():
        roster = roster.with_drone(drone, public_key_bytes(key))
    signed = encode_roster(roster, authority)
    (folder / "roster.json").write_bytes(signed)
    (folder / "drone0.key").write_bytes(private_key_bytes(keys[0]))
    table = (
        f'[identity]\nkey_file = "drone0.key"\nroster_file = "roster.json"\n'
        f'authority = "{public_key_bytes(authority).hex()}"\n'
    )
    peers = {
        d: DroneIdentity(
            DroneSigner(d, keys[d]), public_key_bytes(authority), signed, swarm_id=swarm_id
        )
        for d in (1, 2, 3)
    }
    return table, peers


async def measure(
    window_s: float, *, autopilot_hz: float | None, signed: bool = False
) -> dict[str, Any]:
    """Run the agent with three peers (and, with ``autopilot_hz``, a simulated autopilot
    feeding its MAVLink reader; with ``signed``, per-drone keys for all four); measure CPU and
    RSS over ``window_s`` of steady gossip."""
    swarm_id = secrets.randbelow(2**31)
    mavlink_port = free_udp_port() if autopilot_hz is not None else None
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        folder = Path(tmp)
        table, peer_identities = identities(folder, swarm_id) if signed else (SWARM_KEY_ONLY, {})
        config = agent_config(folder, swarm_id, mavlink_port, identity=table)
        status_path = folder / "status.jsonl"
        agent = start_agent_process(config, folder / "agent.err", SECRET)
        peers = [Peer(i, swarm_id, peer_identities.get(i)) for i in (1, 2, 3)]
        tasks = [asyncio.create_task(peer.run()) for peer in peers]
        autopilot = None
        if mavlink_port is not None and autopilot_hz is not None:
            autopilot = SimulatedAutopilot((LOOPBACK, mavlink_port), rate_hz=autopilot_hz)
            await autopilot.__aenter__()
        try:
            process = psutil.Process(agent.pid)

            def hears_all() -> bool:
                lines = read_status(status_path)
                return bool(lines) and len(lines[-1].get("peers_heard", {})) == 3

            await wait_for(hears_all, 120, "the agent to hear its three peers")
            await asyncio.sleep(3 * PERIOD_S)  # let start-up work (imports, first eval) settle
            lines_before = len(read_status(status_path))
            cpu0 = process.cpu_times()
            t0 = time.monotonic()
            await asyncio.sleep(window_s)
            cpu1 = process.cpu_times()
            elapsed = time.monotonic() - t0
            rss = process.memory_info().rss
            lines = read_status(status_path)[lines_before:]
        finally:
            stop_processes([agent])
            if autopilot is not None:
                await autopilot.__aexit__(None, None, None)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for peer in peers:
                await peer.radio.aclose()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    messages_per_s = None
    if autopilot is not None and len(lines) >= 2:
        first, last = lines[0]["vehicle"], lines[-1]["vehicle"]
        span_s = lines[-1]["mono"] - lines[0]["mono"]
        messages_per_s = round((last["messages"] - first["messages"]) / span_s, 1)
    return {
        "elapsed": elapsed,
        "cpu_s": cpu_s,
        "rss": rss,
        "lines": lines,
        "peers": peers,
        "messages_per_s": messages_per_s,
    }


def emit_agent_figures(result: dict[str, Any], frames: str | None = None) -> None:
    """Print the ``cpu``, ``rss`` and ``latency`` lines of one :func:`measure` result (with
    ``frames`` naming how its frames were authenticated, when runs are compared)."""
    elapsed, cpu_s, rss, lines, peers = (
        result["elapsed"],
        result["cpu_s"],
        result["rss"],
        result["lines"],
        result["peers"],
    )
    label = {} if frames is None else {"frames": frames}
    last = lines[-1] if lines else {}
    emit(
        {
            "bench": "cpu",
            **label,
            "window_s": round(elapsed, 2),
            "agent_cpu_s": round(cpu_s, 3),
            "percent_of_one_core": round(100 * cpu_s / elapsed, 2),
            "target_percent": 5.0,
            "frames_accepted": last.get("frames_accepted"),
            "frames_published": last.get("frames_published"),
            "peers": 3,
            "period_s": PERIOD_S,
        }
    )
    baseline = bare_torch_rss_bytes()
    emit(
        {
            "bench": "rss",
            **label,
            "agent_rss_mb": round(rss / 2**20, 1),
            "bare_import_torch_rss_mb": round(baseline / 2**20, 1),
            "agent_minus_baseline_mb": round((rss - baseline) / 2**20, 1),
            "ratio": round(rss / baseline, 2),
        }
    )
    # Send -> receive: the agent reports, on the shared monotonic clock, when it last heard each
    # peer; the frame it heard is the peer's latest one sent before then.
    send_to_receive = []
    seen = set()
    for line in lines:
        for peer_id, age in line.get("peers_heard", {}).items():
            heard_at = line["mono"] - age
            key = (peer_id, round(heard_at, 6))
            if key in seen:
                continue
            seen.add(key)
            sent = peers[int(peer_id) - 1].sent_at
            index = bisect.bisect_right(sent, heard_at) - 1
            if index >= 0:
                send_to_receive.append(heard_at - sent[index])
    lags = [line["merge_lag_s"] for line in lines if line.get("merge_lag_s") is not None]
    receive_to_merge = statistics.mean(lags) if lags else float("nan")
    lag_ms = receive_to_merge * 1000
    s2r = percentiles(send_to_receive) if send_to_receive else {}
    emit(
        {
            "bench": "latency",
            **label,
            "samples": len(send_to_receive),
            "send_to_receive_ms": s2r,
            "receive_to_merge_ms_mean": round(receive_to_merge * 1000, 1),
            "send_to_merge_ms_p50": round(s2r.get("p50", float("nan")) + lag_ms, 1),
            "period_ms": PERIOD_S * 1000,
            "rate_bps": RATE_BPS,
        }
    )


async def bench(window_s: float, agents: int, airtime_window_s: float) -> None:
    plain = await measure(window_s, autopilot_hz=None)
    emit_agent_figures(plain)
    elapsed, cpu_s, rss = plain["elapsed"], plain["cpu_s"], plain["rss"]

    # The MAVLink reader's cost: the same agent, now with an autopilot at 10 Hz.
    with_vehicle = await measure(window_s, autopilot_hz=AUTOPILOT_HZ)
    emit(
        {
            "bench": "vehicle",
            "autopilot_rate_hz": AUTOPILOT_HZ,
            "autopilot_messages_per_s": with_vehicle["messages_per_s"],
            "cpu_percent_without": round(100 * cpu_s / elapsed, 2),
            "cpu_percent_with": round(100 * with_vehicle["cpu_s"] / with_vehicle["elapsed"], 2),
            "target_percent": 5.0,
            "rss_mb_without": round(rss / 2**20, 1),
            "rss_mb_with": round(with_vehicle["rss"] / 2**20, 1),
        }
    )
    for mode in ("unicast", "multicast"):
        emit(await airtime(mode, agents, airtime_window_s))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def swarm_config(
    folder: Path, drone: int, swarm_id: int, ports: list[int], group: tuple[str, int] | None
) -> Path:
    """One of ``len(ports)`` drones (static discovery); multicast to ``group`` when given."""
    peers = ", ".join(
        f'{{ id = {i}, host = "{LOOPBACK}", port = {port} }}'
        for i, port in enumerate(ports)
        if i != drone
    )
    multicast = ""
    if group is not None:
        multicast = (
            f'multicast = "{group[0]}"\nmulticast_port = {group[1]}\n'
            f'multicast_interface = "{LOOPBACK}"\nmulticast_loopback = true\n'
        )
    text = f"""
[drone]
id = {drone}
[swarm]
swarm_id = {swarm_id}
[run]
seed = {SEED}
eval_interval_s = 5.0
[data]
dataset = "digits"
partition = "iid"
shards = {len(ports)}
shard = {drone}
[model]
kind = "mlp"
hidden = [{HIDDEN}]
[training]
threads = 1
[gossip]
period_s = {PERIOD_S}
codec = "int8"
[radio]
kind = "udp"
rate_bps = {RATE_BPS}
[radio.udp]
host = "{LOOPBACK}"
port = {ports[drone]}
{multicast}
[discovery]
kind = "static"
peers = [{peers}]
[checkpoint]
dir = "ckpt-{drone}"
[status]
log = ""
[identity]
mode = "swarm-key"
"""
    path = folder / f"drone{drone}.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def airtime(mode: str, agents: int, window_s: float) -> dict[str, Any]:
    """Bytes put on the air per gossip period by ``agents`` drones (in this process, real
    sockets on loopback), in unicast (one copy per peer) or multicast (one per datagram)."""
    swarm_id = secrets.randbelow(2**31)
    os.environ.setdefault("SWARMFL_SECRET", SECRET)
    group = None
    if mode == "multicast":
        group = (f"239.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.7", free_udp_port())
    ports = [free_udp_port() for _ in range(agents)]
    with tempfile.TemporaryDirectory(prefix="bench-airtime-") as tmp:
        folder = Path(tmp)
        swarm = [
            FieldAgent(load_drone_config(swarm_config(folder, i, swarm_id, ports, group)))
            for i in range(agents)
        ]
        tasks = [asyncio.create_task(agent.run()) for agent in swarm]
        try:
            await wait_for(
                lambda: all(len(a.node.known_peers()) == agents - 1 for a in swarm),
                120,
                f"every drone to hear the {agents - 1} others ({mode})",
            )

            def totals() -> tuple[int, int, int]:
                air = unique = rounds = 0
                for agent in swarm:
                    radio = agent.radio
                    assert isinstance(radio, UdpRadio)
                    air += radio.stats.bytes_sent
                    unique += radio.unique_bytes_sent
                    rounds += agent.rounds_total
                return air, unique, rounds

            air0, unique0, rounds0 = totals()
            await asyncio.sleep(window_s)
            air1, unique1, rounds1 = totals()
        finally:
            for agent in swarm:
                agent.request_stop()
            await asyncio.gather(*tasks, return_exceptions=True)
    periods = (rounds1 - rounds0) / agents  # gossip periods each drone went through
    return {
        "bench": "airtime",
        "mode": mode,
        "agents": agents,
        "window_s": window_s,
        "periods": round(periods, 1),
        "air_bytes_per_period": round((air1 - air0) / periods),
        "air_bytes_per_drone_per_period": round((air1 - air0) / periods / agents),
        "distinct_bytes_per_period": round((unique1 - unique0) / periods),
        "copies_per_datagram": round((air1 - air0) / (unique1 - unique0), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=30.0, help="CPU measurement window")
    parser.add_argument("--agents", type=int, default=8, help="drones in the airtime runs")
    parser.add_argument(
        "--airtime-window-s", type=float, default=10.0, help="airtime measurement window"
    )
    parser.add_argument(
        "--signatures",
        action="store_true",
        help="only the agent's own cost, twice: frames with the swarm-key HMAC only (the "
        "baseline), then signed with per-drone Ed25519 keys (drone.toml [identity])",
    )
    args = parser.parse_args()
    if args.signatures:
        for signed, frames in ((False, "swarm-key hmac"), (True, "ed25519 per drone")):
            emit_agent_figures(
                asyncio.run(measure(args.window_s, autopilot_hz=None, signed=signed)), frames
            )
        return
    asyncio.run(bench(args.window_s, args.agents, args.airtime_window_s))


if __name__ == "__main__":
    main()
