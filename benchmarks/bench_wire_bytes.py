"""Bytes on the wire to reach 0.90: fp32 vs int8 vs int4 model streams, side by side in one run.

Workload: the foundation's swarm with N = 20 drones: digits, Dirichlet 0.5, MLP 64-128-10, one
local epoch per 1 s period, a random 4-regular graph, lossless, 150 virtual seconds, swarm
accuracy measured every virtual second. For each codec: the bytes all drones had sent when the
swarm's mean accuracy first reached 0.90, the ratio to fp32's, the final mean accuracy, and the
lz4 ratio (wire payload bytes / quantised payload bytes). int8 also runs with dense deltas
(``delta_density = 1``) to show what sparse deltas add.

    python benchmarks/bench_wire_bytes.py
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files

from swarmfl.config.scenario_file import load_scenario
from swarmfl.core.wire import Frame, FrameKind, encode_frame
from swarmfl.sim.metrics import MetricsRecorder
from swarmfl.sim.runner import simulate
from swarmfl.sim.vtime import run_virtual

VARIANTS = {
    "fp32": ["gossip.codec='fp32'"],
    "int8-dense": ["gossip.codec='int8'", "gossip.delta_density=1.0"],
    "int8": ["gossip.codec='int8'"],
    "int4": ["gossip.codec='int4'"],
}


def overrides(seed: int, duration_s: float) -> list[str]:
    return [
        "swarm.drones=20",
        f"run.seed={seed}",
        f"run.duration_s={duration_s}",
        "run.eval_interval_s=1.0",
        "topology.kind='random_regular'",
        "topology.degree=4",
        "radio.loss=0.0",
        "churn.enabled=false",
    ]


def header_bytes(layers: int) -> int:
    frame = Frame(
        kind=FrameKind.KEY,
        swarm_id=1,
        sender=1,
        signature=b"12345678",
        seq=0,
        counter=0,
        layers=tuple(range(layers)),
        samples=0,
        codec=0,
        block_size=128,
        payload=b"",
    )
    return len(encode_frame(frame, b"k" * 32))


def run(name: str, seed: int, duration_s: float) -> dict[str, object]:
    path = str(files("swarmfl.scenarios") / "quickstart.toml")
    scenario = load_scenario(path, overrides(seed, duration_s) + VARIANTS[name])
    recorder = MetricsRecorder()
    sent_at: dict[float, int] = {}

    def on_point(point) -> None:  # bytes sent so far at each evaluation instant
        sent_at[point.t] = sum(s.bytes_sent for s in recorder.last.values())

    swarm = run_virtual(simulate(scenario, recorder, on_point))
    t90 = recorder.time_to_accuracy(0.9)
    stats = [d.agent.node.stats for d in swarm.drones]
    frames = sum(s.frames_published for s in stats)
    layers = len(swarm.drones[0].agent.learner.layer_offsets) - 1
    raw = sum(s.payload_bytes for s in stats)
    wire_payload = sum(s.frame_bytes for s in stats) - frames * header_bytes(layers)
    return {
        "codec": name,
        "time_to_090_s": t90,
        "bytes_to_090": None if t90 is None else sent_at[t90],
        "final_accuracy": round(recorder.series[-1].mean, 4),
        "bytes_per_frame": round(sum(s.frame_bytes for s in stats) / frames, 1),
        "lz4_ratio": round(wire_payload / raw, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--duration", type=float, default=150.0)
    args = parser.parse_args()
    results = {name: run(name, args.seed, args.duration) for name in VARIANTS}
    base = results["fp32"]
    for result in results.values():
        if result["bytes_to_090"] is not None and base["bytes_to_090"]:
            result["bytes_to_090_vs_fp32"] = round(result["bytes_to_090"] / base["bytes_to_090"], 4)  # type: ignore[operator]
        result["final_accuracy_minus_fp32"] = round(
            result["final_accuracy"] - base["final_accuracy"], 4
        )  # type: ignore[operator]
        print(json.dumps({"bench": "wire_bytes", "drones": 20, **result}))
    print(
        json.dumps(
            {
                "bench": "wire_bytes",
                "target": "int8 bytes_to_090_vs_fp32 <= 0.15, final accuracy within 0.01 of fp32",
            }
        )
    )


if __name__ == "__main__":
    main()
