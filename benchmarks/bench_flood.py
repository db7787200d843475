"""Floods against a live field agent on loopback: merges of real peers' frames, CPU and memory.

Three real ``swarmfl agent`` processes gossip over UDP on 127.0.0.1 (zeroconf on 127.0.0.1): two
honest drones that learn (digits, MLP 64-32-10, a round every ``--period-s``), and the target,
a relay (``training.enabled = false``) so that **all** of its CPU time is spent outside
training: receiving, authenticating, merging, publishing, status. Attackers in other processes
(this file with ``--attacker``; ``--attacker-processes`` of them, 3 by default, sharing the rate:
one Python process cannot send 30,000 datagrams/s on a loaded 2-core machine) send at a set
rate to the target's UDP port, each from its own address, cycling through datagrams it built
before the window started:

* ``garbage``: random 100-byte datagrams;
* ``forged``: well-shaped single-datagram frames (right fragment header, wire magic and swarm
  id, a keyframe of a few hundred bytes) authenticated with the wrong key;
* ``bogus_fragments``: 84-byte first fragments that each claim a new 4 MiB frame.

For each attack and rate (``--rates``, packets per second; ``0`` means as fast as the attacker
can), the target is flooded for ``--window-s`` seconds, and one JSON line is printed: the rate
the attacker achieved, the target's accepted frames from its peers per second (``merges``,
read from its status log) against the unflooded rate measured in the same run (before the
floods and again after them; the mean of both), the target's CPU time over the window as a
percentage of one core (psutil on its pid), its RSS growth since before the first flood, the
honest drones' published frames per second over the same window (so that a drop in merges can
be told apart from peers that published less because the flood took their CPU), and the
datagrams per second the kernel dropped for the target's socket (``/proc/net/udp``: its receive
buffer was full, i.e. the target did not read fast enough).
The ``baseline`` line also gives the load average at the end of the run (the machine is shared).
A final ``summary`` line gives, per attack, the lowest rate tried at which merges fell below
50 % of the baseline (or null if none did).

    python benchmarks/bench_flood.py                      # 1k, 5k, 30k, max; 6 s windows
    python benchmarks/bench_flood.py --rates 30000 --attacks forged --attacker-processes 4
    python benchmarks/bench_flood.py --rates 1000 --window-s 4 --attacks garbage
    python benchmarks/bench_flood.py --receive-path 15     # CPU per datagram of the read loop

The attacker shares the machine's cores with the agents: at "max" rate it competes with the
target for CPU, which is part of what a flood does on a small companion computer too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from bench_agent import emit, free_udp_port, read_status, start_agent_process, stop_processes

from swarmfl.core.wire import Frame, FrameKind, derive_swarm_key, encode_frame, frame_tag_check
from swarmfl.radio.fragment import HEADER_SIZE, MAGIC, VERSION, Fragmenter
from swarmfl.radio.guard import SourceGuard
from swarmfl.radio.udp import UdpRadio

SECRET = "bench-flood-secret"
LOOPBACK = "127.0.0.1"
ATTACKS = ("garbage", "forged", "bogus_fragments")
CLAIMED_FRAME_BYTES = 4 * 1024 * 1024
_FRAGMENT_HEADER = struct.Struct("<2sBIIHHI")
#: Datagrams an attacker sends between two looks at the clock.
BATCH = 256


# -- the attacker (a separate process) -------------------------------------------------------


def attack_datagrams(attack: str, swarm_id: int, rng: random.Random) -> list[bytes]:
    """A pool of datagrams for ``attack`` (the attacker cycles through it)."""
    if attack == "garbage":
        return [rng.randbytes(100) for _ in range(256)]
    if attack == "forged":
        wrong_key = derive_swarm_key("not-the-swarm-secret", swarm_id)
        fragmenter = Fragmenter(sender=0, mtu_bytes=1472)
        pool = []
        for seq in range(256):
            frame = Frame(
                kind=FrameKind.KEY,
                swarm_id=swarm_id,
                sender=1 + seq % 2,  # claims to be one of the honest drones
                signature=rng.randbytes(8),
                seq=1_000_000 + seq,
                counter=seq,
                layers=(0,),
                samples=100,
                codec=1,
                block_size=64,
                payload=rng.randbytes(300),
            )
            (datagram,) = fragmenter.split(encode_frame(frame, wrong_key))
            pool.append(datagram)
        return pool
    if attack == "bogus_fragments":
        plen = 65  # the smallest payload with which 65535 fragments can claim 4 MiB
        count = -(-CLAIMED_FRAME_BYTES // plen)
        return [
            _FRAGMENT_HEADER.pack(MAGIC, VERSION, 7, frame_id, 0, count, CLAIMED_FRAME_BYTES)
            + rng.randbytes(plen)
            for frame_id in range(4096)  # a new frame id for each (a new buffer every time)
        ]
    raise SystemExit(f"unknown attack {attack!r}")


def run_attacker(attack: str, port: int, rate: float, duration_s: float, swarm_id: int) -> None:
    """Send ``attack`` datagrams to ``127.0.0.1:port`` at ``rate``/s (0: flat out); print count.

    The pool of datagrams is built once, before a ``ready`` line is printed (the benchmark
    starts its window only then); the socket is connected, so each datagram is one ``send`` of
    a prebuilt bytes object, and the clock is read once per batch of :data:`BATCH` datagrams,
    not per datagram.
    """
    rng = random.Random(7 + os.getpid())
    pool = attack_datagrams(attack, swarm_id, rng)
    assert all(len(d) >= HEADER_SIZE for d in pool)
    n = len(pool)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    sock.connect((LOOPBACK, port))
    send = sock.send
    print(json.dumps({"ready": True}), flush=True)
    sent = 0
    errors = 0
    monotonic = time.monotonic
    started = monotonic()
    end = started + duration_s
    while True:
        now = monotonic()
        if now >= end:
            break
        if rate > 0:
            due = int((now - started) * rate)
            if sent >= due:
                # Sleep until the next batch is due (at least a millisecond's worth of it).
                time.sleep(min(max(BATCH / rate, 0.0005), end - now))
                continue
            todo = min(due - sent, BATCH)
        else:
            todo = BATCH
        stop = sent + todo
        while sent < stop:
            try:
                while sent < stop:
                    send(pool[sent % n])
                    sent += 1
            except OSError:  # the kernel's buffer is full (ENOBUFS) at flat-out rates
                errors += 1
                sent += 1
    elapsed = monotonic() - started
    print(json.dumps({"sent": sent - errors, "elapsed_s": elapsed}), flush=True)


# -- the agents ----------------------------------------------------------------------------


def agent_config(folder: Path, drone: int, swarm_id: int, port: int, period_s: float) -> Path:
    trains = "true" if drone != 0 else "false"
    text = f"""
[drone]
id = {drone}
[swarm]
swarm_id = {swarm_id}
[run]
seed = 3
eval_interval_s = 30.0
[data]
dataset = "digits"
partition = "iid"
shards = 2
shard = {drone % 2}
[model]
kind = "mlp"
hidden = [32]
[training]
enabled = {trains}
threads = 1
lr = 0.1
batch_size = 32
[gossip]
period_s = {period_s}
codec = "int8"
keyframe_interval = 5
[radio]
kind = "udp"
rate_bps = 20000000
[radio.udp]
host = "{LOOPBACK}"
port = {port}
[discovery]
interfaces = ["{LOOPBACK}"]
[checkpoint]
dir = "ckpt-{drone}"
interval_rounds = 1000
[status]
log = "status-{drone}.jsonl"
interval_s = 0.5
[identity]
mode = "swarm-key"
"""
    path = folder / f"drone{drone}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_flood: timed out waiting for {what}")
        time.sleep(0.2)
    return value


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to ``port`` (its buffer was full)."""
    suffix = f":{port:04X}"
    with open("/proc/net/udp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(suffix):
                return int(fields[-1])
    return 0


class Target:
    """The flooded agent: its process, status log and the measurements of one window."""

    def __init__(
        self, process: subprocess.Popen[bytes], status_path: Path, port: int, peers: list[Path]
    ) -> None:
        self.process = process
        self.ps = psutil.Process(process.pid)
        self.status_path = status_path
        self.port = port
        self.peer_status = peers

    def published(self) -> int:
        """Model frames the honest drones have published so far."""
        total = 0
        for path in self.peer_status:
            lines = read_status(path)
            total += int(lines[-1]["frames_published"]) if lines else 0
        return total

    def accepted(self) -> tuple[float, int]:
        """(monotonic time, frames accepted) of the latest status line."""
        lines = read_status(self.status_path)
        if not lines:
            return time.monotonic(), 0
        return float(lines[-1]["mono"]), int(lines[-1]["frames_accepted"])

    def window(
        self, seconds: float, attackers: list[subprocess.Popen[bytes]] | None
    ) -> dict[str, Any]:
        """Measure merges/s, CPU and RSS over ``seconds`` (while ``attackers`` run, if given)."""
        # Skip the first status interval: the flood has only just started.
        time.sleep(0.6)
        t0, a0 = self.accepted()
        p0, d0 = self.published(), kernel_drops(self.port)
        cpu0 = self.ps.cpu_times()
        c0 = time.monotonic()
        time.sleep(seconds)
        t1, a1 = self.accepted()
        p1, d1 = self.published(), kernel_drops(self.port)
        cpu1 = self.ps.cpu_times()
        c1 = time.monotonic()
        rss = self.ps.memory_info().rss
        result: dict[str, Any] = {
            "merges_per_s": (a1 - a0) / (t1 - t0) if t1 > t0 else 0.0,
            "cpu_percent": 100
            * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system))
            / (c1 - c0),
            "rss": rss,
            "published_per_s": (p1 - p0) / (c1 - c0),
            "kernel_drops_per_s": (d1 - d0) / (c1 - c0),
            "load_average": os.getloadavg()[0],
        }
        if attackers:
            achieved = 0.0
            for attacker in attackers:
                out, _ = attacker.communicate(timeout=60)
                report = json.loads(out.decode().strip().splitlines()[-1])
                achieved += report["sent"] / report["elapsed_s"]
            result["rate_achieved"] = achieved
        return result


def start_attackers(
    attack: str, port: int, rate: float, duration_s: float, swarm_id: int, processes: int
) -> list[subprocess.Popen[bytes]]:
    """Start ``processes`` attacker processes sharing ``rate`` (0: each flat out); return once
    each has built its datagrams and starts sending."""
    attackers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--attacker",
                attack,
                "--port",
                str(port),
                "--rate",
                str(rate / processes),
                "--duration-s",
                str(duration_s),
                "--swarm-id",
                str(swarm_id),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    for attacker in attackers:
        assert attacker.stdout is not None
        if not json.loads(attacker.stdout.readline() or b"{}").get("ready"):
            stop_processes(attackers)
            raise SystemExit("bench_flood: an attacker process failed to start")
    return attackers


def bench(
    attacks: list[str],
    rates: list[float],
    window_s: float,
    period_s: float,
    attacker_processes: int,
) -> None:
    swarm_id = secrets.randbelow(2**31 - 1000) + 1000
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        folder = Path(tmp)
        port = free_udp_port()
        processes = []
        try:
            for drone in (0, 1, 2):
                config = agent_config(folder, drone, swarm_id, port if drone == 0 else 0, period_s)
                processes.append(
                    start_agent_process(config, folder / f"agent-{drone}.err", SECRET, cwd=folder)
                )
            target = Target(
                processes[0],
                folder / "status-0.jsonl",
                port,
                [folder / "status-1.jsonl", folder / "status-2.jsonl"],
            )

            def hears_both() -> bool:
                lines = read_status(target.status_path)
                return bool(lines) and len(lines[-1].get("peers_heard", {})) == 2

            wait_for(hears_both, 180, "the target to hear both honest drones")
            time.sleep(3 * period_s)  # start-up work (imports, first evaluation) settles
            before = target.window(window_s, None)
            rss0 = before["rss"]
            floods = []
            for attack in attacks:
                for rate in rates:
                    attackers = start_attackers(
                        attack, port, rate, window_s + 0.8, swarm_id, attacker_processes
                    )
                    floods.append((attack, rate, target.window(window_s, attackers)))
                    # Let the flood's backlog drain before the next window.
                    time.sleep(1.0)
            after = target.window(window_s, None)
            if target.process.poll() is not None:
                raise SystemExit("bench_flood: the target agent died during the floods")
        finally:
            stop_processes(processes)

    baseline = (before["merges_per_s"] + after["merges_per_s"]) / 2
    emit(
        {
            "bench": "baseline",
            "merges_per_s_before": round(before["merges_per_s"], 2),
            "merges_per_s_after": round(after["merges_per_s"], 2),
            "peers_published_per_s": round(
                (before["published_per_s"] + after["published_per_s"]) / 2, 2
            ),
            "cpu_percent": round((before["cpu_percent"] + after["cpu_percent"]) / 2, 1),
            "window_s": window_s,
            "attacker_processes": attacker_processes,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "period_s": period_s,
        }
    )
    below_half: dict[str, float | None] = {attack: None for attack in attacks}
    for attack, rate, result in floods:
        ratio = result["merges_per_s"] / baseline if baseline > 0 else 0.0
        if ratio < 0.5 and below_half[attack] is None:
            below_half[attack] = round(result["rate_achieved"])
        emit(
            {
                "bench": "flood",
                "attack": attack,
                "rate_asked": "max" if rate == 0 else rate,
                "rate_achieved": round(result["rate_achieved"]),
                "merges_per_s": round(result["merges_per_s"], 2),
                "merges_vs_baseline": round(ratio, 3),
                "peers_published_per_s": round(result["published_per_s"], 2),
                "kernel_drops_per_s": round(result["kernel_drops_per_s"]),
                "cpu_percent": round(result["cpu_percent"], 1),
                "rss_growth_mb": round((result["rss"] - rss0) / 2**20, 1),
                "load_average": round(result["load_average"], 1),
            }
        )
    emit(
        {
            "bench": "summary",
            "merges_below_half_at_rate": below_half,
            "targets": {
                "merges_vs_baseline_min": 0.9,
                "at": {"garbage": 30_000, "forged": 30_000, "bogus_fragments": 5_000},
                "cpu_percent_max": 50.0,
                "rss_growth_mb_max": 20.0,
            },
        }
    )


def receive_path(rounds: int, burst: int = 2000) -> None:
    """CPU per datagram of the UDP radio's read loop on each attack, in this process.

    A real socket on loopback: ``burst`` datagrams are sent (within the receive buffer), then
    read by the radio's own reader, timed in process CPU time; ``rounds`` times. Three set-ups:
    ``rate_limit_only`` (no tag check, a guard that never trips: what the radio did before the
    guard), ``penalized`` (the agent's set-up, the flooding address unknown to it), and
    ``vouched`` (the flood uses the address of a peer that authenticated: every forgery takes
    the full path, tag check included, so that the peer's frames are still found).
    """

    async def one(attack: str, setup: str) -> dict[str, Any]:
        swarm_id = 4242
        pool = attack_datagrams(attack, swarm_id, random.Random(7))
        key = derive_swarm_key(SECRET, swarm_id)
        check = None if setup == "rate_limit_only" else frame_tag_check(key, swarm_id)
        guard = SourceGuard(burst=10**9) if setup == "rate_limit_only" else SourceGuard()
        radio = UdpRadio(drone_id=0, host=LOOPBACK, frame_check=check, guard=guard)
        await radio.start()
        sock = radio._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())  # read by hand below, timed
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.connect((LOOPBACK, radio.local_port))
            if setup == "vouched":
                guard.vouch(tx.getsockname(), loop.time())
            cpu = 0.0
            for _ in range(rounds):
                for i in range(burst):
                    tx.send(pool[i % len(pool)])
                start = time.process_time()
                for _ in range(burst // 256 + 2):
                    radio._read_ready()
                cpu += time.process_time() - start
                radio._inbox._frames.clear()
        counters = {**radio.counters(), **radio.peer_counters()}
        await radio.aclose()
        read = counters["datagrams_received"] + counters["datagrams_penalized"]
        return {
            "bench": "receive_path",
            "attack": attack,
            "setup": setup,
            "datagrams": read,
            "us_per_datagram": round(1e6 * cpu / max(1, read), 2),
            "dropped_unread": counters["datagrams_penalized"],
            "frames_forged": counters["frames_forged"],
            "frames_rate_limited": counters["frames_rate_limited"],
            "load_average": round(os.getloadavg()[0], 1),
        }

    async def run() -> None:
        for attack in ATTACKS:
            for setup in ("rate_limit_only", "penalized", "vouched"):
                emit(await one(attack, setup))

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument(
        "--rates",
        nargs="+",
        type=float,
        default=[1_000, 5_000, 30_000, 0],
        help="packets per second; 0 = as fast as the attacker can",
    )
    parser.add_argument("--window-s", type=float, default=6.0, help="measurement window")
    parser.add_argument("--period-s", type=float, default=0.25, help="honest drones' period")
    parser.add_argument(
        "--attacker-processes",
        type=int,
        default=3,
        help="attacker processes sharing each rate (one cannot send 30,000/s on a loaded box)",
    )
    parser.add_argument(
        "--receive-path",
        type=int,
        metavar="ROUNDS",
        help="only time the UDP radio's read loop per datagram (ROUNDS bursts of 2,000)",
    )
    parser.add_argument("--attacker", choices=ATTACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--duration-s", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--swarm-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker:
        run_attacker(args.attacker, args.port, args.rate, args.duration_s, args.swarm_id)
        return
    if args.receive_path:
        receive_path(args.receive_path)
        return
    bench(args.attacks, args.rates, args.window_s, args.period_s, args.attacker_processes)


if __name__ == "__main__":
    main()
