"""Per-drone signatures' cost to the field agent: CPU outside training, memory and frame latency.

The same measurement as ``bench_agent.py``'s first part, run with the swarm-key HMAC (the
baseline) and then with per-drone Ed25519 signatures (``--signatures``).

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
  per gossip period, so about half a period on average), and their sum, send to merge.

    python benchmarks/bench_agent_signatures.py --window-s 30
    python benchmarks/bench_agent_signatures.py --window-s 30 --signatures  # HMAC, then Ed25519
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from bench_agent import (  # the agent measurement both benchmarks share
    SWARM_KEY_ONLY,
    Peer,
    agent_config,
    bare_torch_rss_bytes,
    emit,
    percentiles,
    read_status,
    wait_for,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmfl.core.identity import (
    DroneIdentity,
    DroneSigner,
    Roster,
    encode_roster,
    private_key_bytes,
    public_key_bytes,
)

SECRET = "bench-agent-secret"
SEED = 3
HIDDEN = 128
PERIOD_S = 1.0
LOOPBACK = "127.0.0.1"
RATE_BPS = 5_000_000


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


async def bench(window_s: float, signed: bool) -> None:
    swarm_id = secrets.randbelow(2**31)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        folder = Path(tmp)
        table, peer_identities = identities(folder, swarm_id) if signed else (SWARM_KEY_ONLY, {})
        config = agent_config(folder, swarm_id, identity=table)
        status_path = folder / "status.jsonl"
        agent = subprocess.Popen(
            [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(config)],
            env=dict(os.environ, SWARMFL_SECRET=SECRET, OMP_NUM_THREADS="1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "agent.err", "wb"),  # noqa: SIM115
        )
        peers = [Peer(i, swarm_id, peer_identities.get(i)) for i in (1, 2, 3)]
        tasks = [asyncio.create_task(peer.run()) for peer in peers]
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
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for peer in peers:
                await peer.radio.aclose()

    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    last = lines[-1] if lines else {}
    emit(
        {
            "bench": "cpu",
            "frames": "ed25519 per drone" if signed else "swarm-key hmac",
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
            "samples": len(send_to_receive),
            "send_to_receive_ms": s2r,
            "receive_to_merge_ms_mean": round(receive_to_merge * 1000, 1),
            "send_to_merge_ms_p50": round(s2r.get("p50", float("nan")) + lag_ms, 1),
            "period_ms": PERIOD_S * 1000,
            "rate_bps": RATE_BPS,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=30.0, help="CPU measurement window")
    parser.add_argument(
        "--signatures",
        action="store_true",
        help="run twice: frames with the swarm-key HMAC only (the baseline), then signed with "
        "per-drone Ed25519 keys (drone.toml [identity])",
    )
    args = parser.parse_args()
    for signed in (False, True) if args.signatures else (False,):
        asyncio.run(bench(args.window_s, signed))


if __name__ == "__main__":
    main()
