"""Real field agents per backend: peak RSS (predicted and measured), CPU, round time, accuracy.

For each model (``mlp``: digits 64-128-10; ``cnn``: digits, channels 16 and 32) and each
backend (torch, lean), four real ``swarmfl agent`` processes gossip over UDP on loopback
(zeroconf on 127.0.0.1), each holding a non-IID quarter of digits (Dirichlet 0.5), int8 frames
every 0.3 s, until every drone has trained ``--rounds`` local rounds; then SIGTERM. Each
process's figures come from the kernel: its peak RSS is ``VmHWM`` of ``/proc/PID/status``, read
until it exits; its CPU time ``ru_utime + ru_stime`` when it is reaped (``os.wait4``). Prints
JSON lines:

* ``agent``: per model and backend, the mean over the four processes of the measured peak RSS,
  the predicted peak RSS (:func:`swarmfl.field.footprint.process_plan`, what the agent prints at
  start-up) and their ratio; seconds per local round (``train_round`` on drone 0's shard in this
  process, median of ``--repeats``, one thread); CPU outside training (the process's CPU time
  minus rounds x seconds per round, per wall second of its life, in % of a core); and the
  swarm's final mean accuracy. Every process runs one BLAS thread (``OMP_NUM_THREADS=1``,
  ``OPENBLAS_NUM_THREADS=1``) and torch one thread (``training.threads = 1``);
* ``ratio``: lean / torch seconds per round and peak RSS, per model (baseline: torch, measured in
  the same run);
* ``copies``: first, in this process, the peak allocation (tracemalloc) of each step a model
  takes from one lean drone to another (encode, fragment, reassemble, decode) on a 64-1024-1024-10
  MLP, in copies of the model, for fp32 and int8 frames (``--copies``: only these).

``--calibrate`` measures :data:`~swarmfl.field.footprint.RUNTIME_BASELINE_BYTES` instead: the
same swarm on a 64-8-10 MLP, the measured peak minus everything but the runtime.

    python benchmarks/bench_lean_agent.py              # ~3 minutes on two shared cores
    python benchmarks/bench_lean_agent.py --calibrate
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECRET = "bench-lean-agent-secret"
DRONES = 4
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"kind": "mlp", "hidden": [128]},
    "cnn": {"kind": "cnn", "channels": [16, 32]},
    "tiny": {"kind": "mlp", "hidden": [8]},
}


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_config(folder: Path, drone: int, swarm_id: int, model: str, backend: str) -> Path:
    tables: dict[str, dict[str, Any]] = {
        "drone": {"id": drone},
        "swarm": {"swarm_id": swarm_id},
        "run": {"seed": 3, "eval_interval_s": 1.0},
        "data": {
            "dataset": "digits",
            "partition": "dirichlet",
            "alpha": 0.5,
            "shards": DRONES,
            "shard": drone,
        },
        "model": MODELS[model],
        "training": {"lr": 0.1, "batch_size": 32, "backend": backend},
        "gossip": {"period_s": 0.3, "codec": "int8", "keyframe_interval": 5},
        "radio": {"kind": "udp", "rate_bps": 20_000_000},
        "radio.udp": {"host": "127.0.0.1", "port": free_port()},
        "discovery": {"interfaces": ["127.0.0.1"]},
        "checkpoint": {"dir": f"ckpt-{drone}", "interval_rounds": 10},
        "status": {"log": f"status-{drone}.jsonl", "interval_s": 0.5},
        "identity": {"mode": "swarm-key"},  # as measured before per-drone keys were the default
    }
    if backend == "torch":
        tables["training"]["threads"] = 1
    path = folder / f"drone{drone}.toml"
    path.write_text(toml(tables), encoding="utf-8")
    return path


def last_status(path: Path) -> dict[str, Any] | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return dict(json.loads(line))
        except ValueError:
            continue
    return None


def predicted_and_round_time(config: Path, repeats: int) -> tuple[Any, float]:
    """The drone's whole-process plan and its median seconds per local round, in this process."""
    from swarmfl.config.drone_file import load_drone_config
    from swarmfl.drone import DroneAssembly
    from swarmfl.field.agent import drone_settings, field_device
    from swarmfl.field.footprint import process_plan

    loaded = load_drone_config(config)
    assembly = DroneAssembly(drone_settings(loaded))
    drone = assembly.build(loaded.config.drone.id, loaded.config.data.shard, field_device(loaded))
    plan = process_plan(
        assembly, drone, neighbour_replicas=loaded.config.training.neighbour_replicas
    )
    drone.learner.train_round()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        drone.learner.train_round()
        times.append(time.perf_counter() - start)
    return plan, statistics.median(times)


def vm_hwm_bytes(pid: int) -> int:
    """The process's peak RSS so far (``VmHWM``), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reap_all(pids: list[int], peaks: dict[int, int]) -> list[tuple[int, Any]]:
    """Wait for every process to exit, reading peak RSS into ``peaks`` until each does;
    ``(status, rusage)`` per process.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark (this process holds torch)
    into a forked child across exec, so it would report the parent's peak.
    """
    done: dict[int, tuple[int, Any]] = {}
    while len(done) < len(pids):
        for pid in pids:
            if pid in done:
                continue
            peaks[pid] = max(peaks[pid], vm_hwm_bytes(pid))
            reaped, status, rusage = os.wait4(pid, os.WNOHANG)
            if reaped:
                done[pid] = (status, rusage)
        time.sleep(0.02)
    return [done[pid] for pid in pids]


def run_swarm(model: str, backend: str, rounds: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-lean-agent-") as tmp:
        folder = Path(tmp)
        swarm_id = int.from_bytes(os.urandom(3), "big") + 1
        configs = [write_config(folder, d, swarm_id, model, backend) for d in range(DRONES)]
        plan, round_s = predicted_and_round_time(configs[0], repeats)
        env = dict(os.environ, SWARMFL_SECRET=SECRET)
        processes = []
        started = []
        for config in configs:
            started.append(time.monotonic())
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(config)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=folder,
                )
            )
        statuses = [folder / f"status-{d}.jsonl" for d in range(DRONES)]
        deadline = time.monotonic() + 300
        peaks = {p.pid: 0 for p in processes}
        try:
            while not all((last_status(s) or {}).get("rounds", 0) >= rounds for s in statuses):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError(
                        f"{model}/{backend}: the swarm did not reach {rounds} rounds"
                    )
                for process in processes:
                    peaks[process.pid] = max(peaks[process.pid], vm_hwm_bytes(process.pid))
                time.sleep(0.1)
            for process in processes:
                process.send_signal(signal.SIGTERM)
            ended = reap_all([p.pid for p in processes], peaks)
            usage = []
            for process, start, (status, rusage) in zip(processes, started, ended, strict=True):
                process.returncode = os.waitstatus_to_exitcode(status)
                usage.append((peaks[process.pid], rusage, time.monotonic() - start))
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    process.wait()
        lasts = [last_status(s) or {} for s in statuses]
    peak = statistics.mean(hwm for hwm, _, _ in usage)
    outside = statistics.mean(
        (r.ru_utime + r.ru_stime - last.get("rounds", 0) * round_s) / wall
        for (_, r, wall), last in zip(usage, lasts, strict=True)
    )
    accuracies = [last.get("accuracy") for last in lasts]
    return {
        "kind": "agent",
        "model": model,
        "backend": backend,
        "drones": DRONES,
        "rounds": rounds,
        "peak_rss_mib": round(peak / 2**20, 1),
        "predicted_rss_mib": round(plan.total / 2**20, 1),
        "predicted_over_measured": round(plan.total / peak, 3),
        "predicted_parts_kib": {k: round(v / 1024) for k, v in plan.as_dict().items()},
        "runtime_baseline_kib": round((peak - (plan.total - plan.runtime)) / 1024),
        "seconds_per_round": round(round_s, 5),
        "cpu_outside_training_pct": round(100 * outside, 1),
        "final_mean_accuracy": (
            round(statistics.mean(accuracies), 4) if None not in accuracies else None
        ),
        "exit_codes": sorted({p.returncode for p in processes}),
    }


def copy_peaks(hidden: list[int], codec: str) -> dict[str, Any]:
    """Peak bytes Python and numpy allocate (tracemalloc) in each step a model takes from one
    lean drone to another: encode (``GossipNode.publish``: the codec and the frame), fragment
    (``Fragmenter.split`` into 1,472-byte datagrams), reassemble (``Reassembler.push``) and
    decode (``GossipNode.receive``: authenticate, decode, keep the replica). Each as a multiple
    of the model's fp32 bytes: 1.0 is one copy of the model."""
    import tracemalloc

    from swarmfl.drone import DeviceProfile, DroneAssembly
    from swarmfl.radio.fragment import Fragmenter
    from swarmfl.radio.reassembly import Reassembler
    from swarmfl.sim.swarm import swarm_settings
    from swarmfl.testing import scenario

    overrides = {
        "swarm.drones": 2,
        "model.hidden": hidden,
        "gossip.codec": codec,
        "radio.max_frame_bytes": 64 * 2**20,
    }
    assembly = DroneAssembly(swarm_settings(scenario("quickstart", overrides)))
    lean = DeviceProfile(backend="lean")
    sender, receiver = assembly.build(0, 0, lean), assembly.build(1, 1, lean)
    model_bytes = sender.learner.flat_parameters().nbytes
    # the stream's first frame is a keyframe: the receiver holds the sender's replica after it
    for first in sender.node.publish(sender.learner.flat_parameters(), 1, 0.0):
        receiver.node.receive(first, 0.0)
    x = sender.learner.flat_parameters()
    x += 0.01  # a change to send
    peaks: dict[str, float] = {}

    def measured(step: str, call: Any) -> Any:
        tracemalloc.start()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        peaks[step] = round(peak / model_bytes, 2)
        return result

    frames = measured("encode", lambda: sender.node.publish(x, 1, 1.0))
    fragmenter = Fragmenter(0, 1472, max_frame_bytes=64 * 2**20)
    datagrams = measured("fragment", lambda: fragmenter.split(frames[0]))
    reassembler = Reassembler(5.0, 128 * 2**20, 64 * 2**20)

    def reassemble() -> bytes:
        whole = None
        for datagram in datagrams:
            whole = reassembler.push(datagram, 0, 1.0) or whole
        assert whole is not None
        return whole

    frame = measured("reassemble", reassemble)
    measured("decode", lambda: receiver.node.receive(frame, 1.0))
    assert receiver.node.stats.frames_accepted == 2
    return {
        "kind": "copies",
        "model": f"mlp 64-{'-'.join(map(str, hidden))}-10",
        "codec": codec,
        "model_bytes": model_bytes,
        "frame_bytes": len(frame),
        "peak_over_model_bytes": peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="local rounds every drone trains")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per backend")
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--calibrate", action="store_true", help="measure the runtime baselines")
    parser.add_argument("--copies", action="store_true", help="only the encode/decode peaks")
    args = parser.parse_args()
    os.environ["SWARMFL_SECRET"] = SECRET
    # One BLAS thread here and in the agents, before numpy loads: on tiny matrices OpenBLAS's
    # threads only contend (the lean CNN's round took 12x longer with them on two busy cores).
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    if not args.calibrate:
        for codec in ("fp32", "int8"):
            emit(copy_peaks([1024, 1024], codec))
    if args.copies:
        return
    models = ["tiny"] if args.calibrate else args.models
    for model in models:
        by_backend = {}
        for backend in ("torch", "lean"):
            record = run_swarm(model, backend, args.rounds, args.repeats)
            by_backend[backend] = record
            emit(record)
        if not args.calibrate:
            torch_, lean = by_backend["torch"], by_backend["lean"]
            emit(
                {
                    "kind": "ratio",
                    "model": model,
                    "lean_over_torch_seconds_per_round": round(
                        lean["seconds_per_round"] / torch_["seconds_per_round"], 3
                    ),
                    "lean_over_torch_peak_rss": round(
                        lean["peak_rss_mib"] / torch_["peak_rss_mib"], 3
                    ),
                }
            )


if __name__ == "__main__":
    main()
